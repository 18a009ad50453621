"""``shoal server``: the long-lived control plane with its REST API on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shoal.cli.connect import SERVER_FILE, state_dir

out = Console()


def server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8765,
    home: Annotated[Path | None, typer.Option("--state-dir", help="state (default ~/.shoal)")] = None,
    policy: Annotated[str, typer.Option(help="placement policy")] = "most-allocated",
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
) -> None:
    """Run the control plane until interrupted (Ctrl-C or SIGTERM); jobs keep their state."""
    from shoal.api import launch

    directory = state_dir(home)
    running = launch.start(directory, host=host, port=port, policy=policy, grace_seconds=grace)
    record = directory / SERVER_FILE
    record.write_text(json.dumps({"url": running.url}))
    out.print(f"Shoal control plane on {running.url} (state in {directory})", highlight=False)
    out.print(f"admin token in {directory / launch.ADMIN_TOKEN_FILE}; OpenAPI at "
              f"{running.url}/docs", highlight=False)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    record.unlink(missing_ok=True)
    running.stop()
    out.print("stopped; running jobs keep running and are re-adopted at the next start")
