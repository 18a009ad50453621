"""``shoal server``: the long-lived control plane with its REST API on 127.0.0.1.

``shoal server stop`` stops the one recorded in ``<state>/server.json`` (in
the foreground elsewhere, or started in the background by another command).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shoal.cli.connect import SERVER_FILE, recorded, state_dir
from shoal.cli.options import PodUidBaseOption, PodUserOption
from shoal.domain.quantity import parse_memory_mib
from shoal.errors import InputError, ShoalError

STOP_TIMEOUT_S = 30.0

out = Console()


def server(
    action: Annotated[str | None, typer.Argument(help="'stop' to stop the running one")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8765,
    home: Annotated[Path | None, typer.Option("--state-dir", help="state (default /var/lib/shoal as root, else ~/.shoal)")] = None,
    policy: Annotated[str, typer.Option(help="placement policy")] = "most-allocated",
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
    pod_user: PodUserOption = None,
    pod_uid_base: PodUidBaseOption = None,
    log_max_size: Annotated[str, typer.Option(
        help="rotate a pod's log past this size (e.g. 64Mi)")] = "64Mi",
    log_files: Annotated[int, typer.Option(
        min=1, max=100, help="rotated log files kept per pod")] = 3,
) -> None:
    """Run the control plane until interrupted (Ctrl-C or SIGTERM); jobs keep their state."""
    directory = state_dir(home)
    if action == "stop":
        stop(directory)
        return
    if action is not None:
        raise InputError(f"shoal server: expected no argument or 'stop', got {action!r}")
    if not 0 <= port <= 65535:
        raise InputError(f"--port: expected 0 to 65535, got {port}")
    try:
        max_bytes = parse_memory_mib(log_max_size) * 1024 * 1024
    except ValueError as exc:
        raise InputError(f"--log-max-size: {exc}", hint="e.g. 64Mi or 1Gi") from None
    if max_bytes < 1024 * 1024:
        raise InputError(f"--log-max-size: expected at least 1Mi, got {log_max_size!r}")
    serve(directory, host, port, policy, grace, pod_user, pod_uid_base, (max_bytes, log_files))


def serve(directory: Path, host: str, port: int, policy: str, grace: float,
          pod_user: str | None = None, pod_uid_base: int | None = None,
          logs: tuple[int, int] | None = None) -> None:
    from shoal.api import launch  # the one place the CLI starts a control plane

    limits = None if logs is None else launch.LogLimits(max_bytes=logs[0], files=logs[1])
    running = launch.start(directory, host=host, port=port, policy=policy, grace_seconds=grace,
                           pod_user=pod_user, pod_uid_base=pod_uid_base, log_limits=limits)
    record = directory / SERVER_FILE
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"url": running.url, "pid": os.getpid()}))
        out.print(f"Shoal control plane on {running.url} (state in {directory})", highlight=False)
        out.print(f"admin token in {directory / launch.ADMIN_TOKEN_FILE}; OpenAPI at "
                  f"{running.url}/docs", highlight=False)
        done.wait()
    finally:
        current = recorded(directory)
        if current is not None and current.get("pid") == os.getpid():
            record.unlink(missing_ok=True)
        running.stop()
    out.print("stopped; running jobs keep running and are re-adopted at the next start")


def stop(directory: Path) -> None:
    """SIGTERM the server recorded in the state dir and wait until it is gone."""
    record = recorded(directory)
    pid = record.get("pid") if record else None
    # Only a real process id: kill(0) or kill(-1) would signal a whole group
    # or every process this user may signal (a hand-edited or corrupt record).
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 \
            or not _alive(pid) or not _is_shoal(pid):
        (directory / SERVER_FILE).unlink(missing_ok=True)
        out.print(f"no control plane is running for {directory}", highlight=False)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    tick = threading.Event()
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ShoalError(f"the control plane (pid {pid}) did not stop within "
                             f"{STOP_TIMEOUT_S:.0f} s", hint=f"kill {pid}")
        tick.wait(0.05)
    out.print(f"stopped the control plane (pid {pid}); running jobs keep running",
              highlight=False)


def _is_shoal(pid: int) -> bool:
    """Whether ``pid`` is still a Shoal server (and not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"shoal" in handle.read()
    except OSError:
        # Without /proc at all, trust the record; with it, the process is gone.
        return not os.path.isdir("/proc/self")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return not handle.read().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True
