"""``python -m shoal``: the same as the ``shoal`` command."""

from shoal.cli.main import run

run()
