"""The ``shoal`` command: one error boundary around the subcommands.

Known errors print one red line and exit non-zero: 2 for bad input (a
usage error or typo included), 1 for a failure, 130 for Ctrl-C; the
traceback only appears with ``--debug``.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape

from shoal.cli import jobs as jobs_command
from shoal.cli import operator as operator_command
from shoal.cli import run as run_command
from shoal.cli import schema as schema_command
from shoal.cli import server as server_command
from shoal.cli import services as services_command
from shoal.cli import sim as sim_command
from shoal.cli import validate as validate_command
from shoal.cli.interrupts import EXIT_CODE, Interrupted
from shoal.errors import ShoalError

app = typer.Typer(
    name="shoal",
    help="Shoal: fair, fast and safe sharing of GPU clusters between teams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        try:
            print(f"shoal {version('shoal')}")
        except PackageNotFoundError:
            print("shoal (not installed: unknown version)")
        raise typer.Exit(0)


@app.callback()
def _main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="print the version and exit")
    ] = False,
) -> None:
    """Shoal: fair, fast and safe sharing of GPU clusters between teams."""


app.command("run")(run_command.run)
app.command("server")(server_command.server)
app.command("apply")(jobs_command.apply)
app.command("get")(jobs_command.get)
app.command("describe")(jobs_command.describe)
app.command("logs")(jobs_command.logs)
app.command("delete")(jobs_command.delete)
app.command("create")(jobs_command.create)
app.command("infer")(services_command.infer)
app.command("rollout")(services_command.rollout)
app.command("sim")(sim_command.sim)
app.command("validate")(validate_command.validate)
app.command("policies")(sim_command.policies)
app.command("operator")(operator_command.operator)
schema_command.register(app)  # shoal schema, shoal explain

err = Console(stderr=True)

# typer ships its own copy of click: its exceptions are not click's classes.
_TYPER_CLICK_ERROR = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException, _TYPER_CLICK_ERROR)


def _usage_line(exc: Exception) -> str:
    """click's own one-line message, with where to get help."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "shoal"
    return f"{message} (see '{command} --help')"


def run() -> None:
    """Console-script entry point."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        code = app(standalone_mode=False)
    except Interrupted as exc:
        err.print(exc.message, highlight=False)
        sys.exit(EXIT_CODE)
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
        sys.exit(EXIT_CODE)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_CODE)
    except USAGE_ERRORS as exc:
        if debug:
            err.print_exception()
        err.print(f"[bold red]error:[/] {escape(_usage_line(exc))}", highlight=False,
                  soft_wrap=True)
        code = getattr(exc, "exit_code", 2)
        sys.exit(code if isinstance(code, int) and code != 1 else 2)
    except Exception as exc:  # anything unexpected: a bug
        if debug:
            raise
        err.print(f"[bold red]internal error:[/] {escape(repr(exc))} "
                  "(run again with --debug for details)")
        sys.exit(1)
    # Without standalone mode typer returns (not raises) the code of a
    # typer.Exit, and turns Ctrl-C into 130.
    if code == EXIT_CODE:
        err.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
