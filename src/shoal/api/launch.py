"""Start the embedded control plane and its API in this process, on 127.0.0.1.

This is where the runtime's objects are plugged into the application
layer's ports: the SQLite store, the job files (``LocalWorkspace``), the
clock and the control loop's wake-up.  ``shoal server`` runs it in the
foreground; ``shoal run`` starts one for the length of a scenario.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from shoal.api.server import create_app
from shoal.api.traffic import AutoscalerMetrics, RouterTraffic
from shoal.api.workspace import LocalWorkspace
from shoal.app.core import App
from shoal.errors import ShoalError, UnknownReferenceError
from shoal.plugins import require_policies
from shoal.policy.placement import scorer_names
from shoal.runtime.local import memory
from shoal.runtime.local.listen import socket_folder
from shoal.runtime.local.logs import LogLimits as LogLimits  # for the CLI
from shoal.runtime.local.machine import LOCAL_NODE, local_node_spec
from shoal.runtime.local.plane import EmbeddedPlane
from shoal.runtime.local.users import (
    DEFAULT_UID_BASE,
    ENV_MODE,
    PodUser,
    resolve_mode,
    unreachable,
)
from shoal.serving.routers import ServiceRouters

_log = logging.getLogger(__name__)
PROBE_UID = 2**31 - 2
ADMIN_TOKEN_FILE = "admin-token"
START_TIMEOUT_S = 30.0


@dataclass
class Running:
    url: str
    token: str
    plane: EmbeddedPlane
    server: uvicorn.Server
    thread: threading.Thread

    routers: ServiceRouters | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.plane.stop()
        if self.routers is not None:
            self.routers.close()


def admin_token(plane: EmbeddedPlane) -> str:
    """The local admin token, created on first start and kept in the state dir (0600)."""
    path = plane.state_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if plane.store.resolve_token(token, plane.clock.now()) is not None:
            return token
    token = plane.store.create_token("admin", "admin", None, now=plane.clock.now())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound before anything else starts: a busy port fails here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle's algorithm off only on
    # connections whose socket says it (else every answer written in two parts
    # waits ~40 ms for the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ShoalError(f"cannot listen on {host}:{port}: the port is in use",
                             hint="choose another with --port, or --port 0 for any free one"
                             ) from exc
        raise ShoalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    return sock


def wire(plane: EmbeddedPlane) -> App:
    """The application layer over the embedded runtime's adapters."""
    probe = PodUser(PROBE_UID, PROBE_UID)  # a user that owns nothing, as any tenant's

    def reachable(path: Path, sandboxed: bool) -> bool:
        return unreachable(path, probe, sandboxed=sandboxed) is None

    workspace = LocalWorkspace(plane.state_dir, plane.checkpoint_dir, plane.log_path,
                               reachable if plane.users.mode == "tenant" else None)
    return App(store=plane.store, workspace=workspace, clock=plane.clock, wake=plane.wake)


def _health(plane: EmbeddedPlane) -> dict[str, Any]:
    error = plane.error
    jobs = dict(plane.controller.job_errors)
    return {"status": "ok" if error is None and not jobs else "degraded",
            "loop_error": None if error is None else repr(error), "job_errors": jobs,
            "pid": os.getpid()}


def scenario_pod_user(asked: str | None, jobs: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """Who a ``shoal run`` scenario's pods run as, and a warning when it is not their tenants.

    A scenario is its author's own code on a private, throwaway plane: when
    nothing says who pods run as (``auto``) and a tenant's unprivileged user
    could not run a job's program or enter its working folder (a Python
    installed under /root, say), the pods run as the author instead, and the
    warning says so and why. Asked for ``tenant`` explicitly, it is that or an
    error when the pods start.
    """
    if (asked or os.environ.get(ENV_MODE) or "auto") != "auto" or resolve_mode(None) != "tenant":
        return asked, None
    probe = PodUser(DEFAULT_UID_BASE, DEFAULT_UID_BASE)
    for doc in jobs:
        spec = doc.get("spec") or {}
        folder = Path(spec["workingDir"]) if spec.get("workingDir") else None
        command = spec.get("command") or []
        program = _program(str(command[0]), folder) if command else None
        for path in (folder, program):
            problem = unreachable(path, probe) if path is not None else None
            if problem is not None:
                return "self", (
                    f"pods run as {getpass.getuser()}, not as their tenants' unprivileged "
                    f"users, which cannot reach {path} ({problem}); --pod-user tenant insists")
    return "tenant", None


def _program(program: str, folder: Path | None) -> Path | None:
    if "/" in program:
        return (folder or Path.cwd()) / program
    found = shutil.which(program)
    return Path(found) if found else None


def start(state_dir: Path, host: str = "127.0.0.1", port: int = 0,
          policy: str = "most-allocated", grace_seconds: float = 10.0,
          pod_user: str | None = None, pod_uid_base: int | None = None,
          log_limits: LogLimits | None = None) -> Running:
    # Placement policies may come from plugins (the shoal.policies entry points).
    require_policies([policy], _log.warning)
    if policy not in scorer_names():
        raise UnknownReferenceError(
            f"--policy: unknown placement policy {policy!r}; known: {', '.join(scorer_names())}")
    sock = listen(host, port)
    memory.limit_arenas()  # before the API's worker threads exist
    try:
        plane = EmbeddedPlane(state_dir, policy=policy, grace_seconds=grace_seconds,
                              pod_user=pod_user, pod_uid_base=pod_uid_base or DEFAULT_UID_BASE,
                              log_limits=log_limits)
    except BaseException:
        sock.close()
        raise
    token = admin_token(plane)
    if not plane.store.nodes():
        plane.store.put_node(LOCAL_NODE, local_node_spec())
    port = sock.getsockname()[1]
    core = wire(plane)
    # Each service's router checks callers' tokens with the API's own check.
    routers = ServiceRouters(lambda token: plane.store.resolve_token(token, plane.clock.now()),
                             ports=socket_folder(plane.state_dir) / "router-ports.json")
    plane.serve(RouterTraffic(routers))
    assert plane.services is not None
    api = create_app(core, lambda: _health(plane),
                     collectors=[routers.registry, AutoscalerMetrics(plane.services)],
                     service_live=routers.live)
    config = uvicorn.Config(api, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="shoal-api",
                              daemon=True)
    plane.start()
    thread.start()
    tick, deadline = threading.Event(), time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        tick.wait(0.01)
    if not server.started:
        plane.stop()
        routers.close()
        sock.close()
        raise ShoalError(f"the API on {host}:{port} did not start (see the messages above)")
    display = f"[{host}]" if ":" in host else host
    return Running(url=f"http://{display}:{port}", token=token, plane=plane, server=server,
                   thread=thread, routers=routers)
