"""The ``shoal`` command: one error boundary around the subcommands.

Known errors print one red line and exit non-zero (2 for bad input); the
traceback only appears with ``--debug``.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from shoal.cli import jobs as jobs_command
from shoal.cli import run as run_command
from shoal.cli import server as server_command
from shoal.cli import sim as sim_command
from shoal.cli import validate as validate_command
from shoal.errors import ShoalError

app = typer.Typer(
    name="shoal",
    help="Shoal: fair, fast and safe sharing of GPU clusters between teams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command.run)
app.command("server")(server_command.server)
app.command("apply")(jobs_command.apply)
app.command("get")(jobs_command.get)
app.command("describe")(jobs_command.describe)
app.command("logs")(jobs_command.logs)
app.command("delete")(jobs_command.delete)
app.command("sim")(sim_command.sim)
app.command("validate")(validate_command.validate)
app.command("policies")(sim_command.policies)

err = Console(stderr=True)


def run() -> None:
    """Console-script entry point."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app(standalone_mode=False)
    except ShoalError as exc:
        if debug:
            err.print_exception()
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # the click usage errors and anything unexpected
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if debug:
            raise
        err.print(f"[bold red]internal error:[/] {escape(repr(exc))} (run again with --debug for details)")
        sys.exit(1)


if __name__ == "__main__":
    run()
