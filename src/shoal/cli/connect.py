"""Find the control plane for a command: a given URL, or the local one, started if need be.

Order: ``--server``/``SHOAL_SERVER``; else the server recorded in
``<state>/server.json`` if it answers; else a background control plane that
this command starts (``python -m shoal server --port 0``, detached, its log in
``<state>/server.log``), like ``ray start``: it keeps scheduling queued jobs
between commands until ``shoal server stop``.  A lock file makes two
commands started at once share one server.

With ``--kubeconfig PATH`` (and ``--context NAME``) the control plane is that
cluster instead (``cli/cluster.py``).  Only the flag selects it: ``$KUBECONFIG``
is not read, so a shell set up for ``kubectl`` never sends ``shoal`` commands
to a cluster unasked (as ``$SHOAL_SERVER`` is Shoal's own variable).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from shoal.api.client import ShoalClient
from shoal.cli.cluster import Plane
from shoal.cli.cluster import connect as cluster_connect
from shoal.errors import InputError, ShoalError, UnreachableError

SERVER_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
START_TIMEOUT_S = 60.0

err = Console(stderr=True)


SYSTEM_STATE_DIR = Path("/var/lib/shoal")


def state_dir(explicit: Path | None = None) -> Path:
    """``--state-dir``, else ``$SHOAL_HOME``, else /var/lib/shoal for root, ~/.shoal for others.

    Root's pods run as unprivileged users that must pass through the state
    folder to their own folders, which root's private home would not let them.
    """
    if explicit is not None:
        return explicit
    if os.environ.get("SHOAL_HOME"):
        return Path(os.environ["SHOAL_HOME"])
    return SYSTEM_STATE_DIR if os.geteuid() == 0 else Path.home() / ".shoal"


def _token(directory: Path, explicit: str | None) -> str | None:
    token = explicit or os.environ.get("SHOAL_TOKEN")
    if token:
        return token
    path = directory / "admin-token"
    return path.read_text().strip() if path.exists() else None


@contextmanager
def client(server: str | None, token: str | None, home: Path | None,
           kubeconfig: Path | None = None, context: str | None = None) -> Iterator[Plane]:
    """The control plane: a cluster with ``kubeconfig``, else Shoal's API (see the module)."""
    if kubeconfig is not None:
        given = [flag for flag, value in (("--server", server), ("--token", token),
                                          ("--state-dir", home)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)}: not used with --kubeconfig (the cluster is "
                             "the control plane, and the kubeconfig says who you are)")
        with cluster_connect(kubeconfig, context) as api:
            yield api
        return
    if context is not None:
        raise InputError("--context: names a context of a kubeconfig; pass --kubeconfig too")
    directory = state_dir(home)
    url = server or os.environ.get("SHOAL_SERVER") or ensure_local(directory)
    plane = ShoalClient(url, _token(directory, token))
    try:
        yield plane
    finally:
        plane.close()


def recorded(directory: Path) -> dict[str, Any] | None:
    """``server.json`` of the state dir, if a server recorded one."""
    try:
        record = json.loads((directory / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "url" in record else None


def answering(directory: Path) -> str | None:
    """The recorded server's URL if it answers ``/healthz``."""
    record = recorded(directory)
    if record is None:
        return None
    url = str(record["url"])
    try:
        with ShoalClient(url, None, timeout=2.0) as probe:
            probe.health()
    except (ShoalError, ValueError, httpx.HTTPError, httpx.InvalidURL):  # dead or malformed: stale
        return None
    return url


def ensure_local(directory: Path) -> str:
    """The local control plane's URL, starting one in the background if none answers."""
    url = answering(directory)
    if url is not None:
        return url
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot use {directory} as Shoal's state folder: "
                         f"{exc.strerror or exc}", hint="set SHOAL_HOME or --state-dir") from exc
    with _locked(directory / LOCK_FILE):
        url = answering(directory)  # another command may have started it meanwhile
        if url is None:
            url = _start_background(directory)
            err.print(f"started a background control plane at {url} "
                      "(stop it with `shoal server stop`)", highlight=False, soft_wrap=True)
    return url


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _start_background(directory: Path) -> str:
    (directory / SERVER_FILE).unlink(missing_ok=True)  # stale: it did not answer
    command = [sys.executable, "-m", "shoal", "server", "--port", "0",
               "--state-dir", str(directory)]
    with (directory / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command and its Ctrl-C
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    tick = threading.Event()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ShoalError(
                f"the background control plane exited with code {process.returncode}: "
                f"{_last_line(directory / LOG_FILE)} (log: {directory / LOG_FILE})"
            )
        url = answering(directory)
        if url is not None:
            return url
        tick.wait(0.05)  # bounded wait for the server to write server.json
    process.terminate()
    raise UnreachableError(
        f"the background control plane did not answer within {START_TIMEOUT_S:.0f} s "
        f"(log: {directory / LOG_FILE})"
    )


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"
