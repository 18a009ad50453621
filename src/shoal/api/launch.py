"""Start the control plane and its API in this process, on 127.0.0.1.

``shoal server`` runs it in the foreground; other commands start one in the
background of their own process when no server is running, then talk to it
through the same HTTP client as to a remote one.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from shoal.api.server import create_app
from shoal.runtime.local.machine import LOCAL_NODE, local_node_spec
from shoal.runtime.local.plane import EmbeddedPlane

ADMIN_TOKEN_FILE = "admin-token"


@dataclass
class Running:
    url: str
    token: str
    plane: EmbeddedPlane
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.plane.stop()


def admin_token(plane: EmbeddedPlane) -> str:
    """The local admin token, created on first start and kept in the state dir (0600)."""
    path = plane.state_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if plane.store.resolve_token(token) is not None:
            return token
    token = plane.store.create_token("admin", "admin", None)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start(state_dir: Path, host: str = "127.0.0.1", port: int = 0,
          policy: str = "most-allocated", grace_seconds: float = 10.0) -> Running:
    plane = EmbeddedPlane(state_dir, policy=policy, grace_seconds=grace_seconds)
    token = admin_token(plane)
    if not plane.store.nodes():
        plane.store.put_node(LOCAL_NODE, local_node_spec())
    port = port or free_port(host)
    config = uvicorn.Config(create_app(plane), host=host, port=port, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="shoal-api", daemon=True)
    plane.start()
    thread.start()
    started = threading.Event()

    def wait_started() -> None:
        while not server.started and thread.is_alive():
            started.wait(0.01)

    wait_started()
    return Running(url=f"http://{host}:{port}", token=token, plane=plane, server=server,
                   thread=thread)
