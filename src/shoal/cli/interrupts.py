"""Ctrl-C in a command: one line saying what keeps going, exit code 130.

typer turns a ``KeyboardInterrupt`` into an exit code that it returns
instead of raising, so a command that wants to say something specific raises
``Interrupted`` with its line; the boundary in ``cli.main`` prints it.
"""

from __future__ import annotations

import signal
from typing import Any

EXIT_CODE = 130


class Interrupted(Exception):
    """The user pressed Ctrl-C; ``message`` says what happens to the work."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CtrlC:
    """SIGINT raises KeyboardInterrupt *and* is remembered, so long work can check again.

    CPython may swallow a KeyboardInterrupt that lands inside a finaliser
    (``__del__``, a garbage-collection callback): busy loops that make many
    objects, like a simulation, then run on as if nothing was pressed.  Code
    that calls :meth:`check` now and then stops all the same.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt
