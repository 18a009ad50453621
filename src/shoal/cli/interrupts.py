"""Ctrl-C in a command: one line saying what keeps going, exit code 130.

typer turns a ``KeyboardInterrupt`` into an exit code that it returns
instead of raising, so a command that wants to say something specific raises
``Interrupted`` with its line; the boundary in ``cli.main`` prints it.
"""

from __future__ import annotations

EXIT_CODE = 130


class Interrupted(Exception):
    """The user pressed Ctrl-C; ``message`` says what happens to the work."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
