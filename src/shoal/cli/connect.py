"""Find the control plane for a command: a given URL, a running server, or one in-process.

Order: ``--server``/``SHOAL_SERVER``; the server recorded in the state dir
by ``shoal server`` if it answers; else an embedded control plane started in
this process on the same state dir (jobs keep running after the command
exits, and the next command re-adopts them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shoal.api.client import ShoalClient
from shoal.errors import ShoalError

SERVER_FILE = "server.json"


def state_dir(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    return Path(os.environ.get("SHOAL_HOME", Path.home() / ".shoal"))


def _token(directory: Path, explicit: str | None) -> str | None:
    token = explicit or os.environ.get("SHOAL_TOKEN")
    if token:
        return token
    path = directory / "admin-token"
    return path.read_text().strip() if path.exists() else None


@contextmanager
def client(server: str | None, token: str | None, home: Path | None) -> Iterator[ShoalClient]:
    directory = state_dir(home)
    url = server or os.environ.get("SHOAL_SERVER")
    if url is None:
        url = _recorded_server(directory)
    if url is not None:
        api = ShoalClient(url, _token(directory, token))
        try:
            yield api
        finally:
            api.close()
        return
    from shoal.api import launch

    running = launch.start(directory)
    api = ShoalClient(running.url, token or running.token)
    try:
        yield api
    finally:
        api.close()
        running.stop()
        # Nobody watches the jobs once this command exits: give what was just
        # applied its first scheduling pass before leaving.
        running.plane.settle()


def _recorded_server(directory: Path) -> str | None:
    path = directory / SERVER_FILE
    if not path.exists():
        return None
    try:
        url = str(json.loads(path.read_text())["url"])
        ShoalClient(url, None, timeout=1.0).health()
    except (OSError, ValueError, KeyError, ShoalError):
        return None
    return url
