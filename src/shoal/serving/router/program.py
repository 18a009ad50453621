"""A service's router as a program of its own (one process, one service).

``serve`` runs a ``Router`` on ``--host:--port`` (the Open Inference
Protocol v2 paths of ``--service``), takes its routing table from
``--routes`` (``routes_file``: read at start, polled every ``--poll-s``
seconds, a bad table logged in one line and the last good one kept), and
serves on ``--metrics-port`` ``/metrics`` (the router's Prometheus
registry) and ``/healthz`` (200 while it serves: ``{"ok": true, "table":
...}``).  SIGTERM or SIGINT: it stops accepting, finishes the requests in
flight, and exits 0.  ``--ready-file`` gets ``{"ready": true, "port",
"metrics_port", "pid"}`` once both listen (port 0: any free port).

Who may call is the caller's business: ``serve`` takes a ``Verifier``
(on Kubernetes, ``api.kube_router`` passes one that asks the API server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from shoal.errors import ShoalError
from shoal.serving.router.front import Verifier
from shoal.serving.router.router import Router, RouterLimits
from shoal.serving.router.routes_file import MAX_BYTES, RoutesFile, RoutesTable

_log = logging.getLogger("shoal.router")

DEFAULT_PORT = 8080
DEFAULT_METRICS_PORT = 9090
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A service's router.")
    parser.add_argument("--service", required=True, help="the service (the model's name)")
    parser.add_argument("--tenant", required=True, help="the tenant owning it")
    parser.add_argument("--routes", required=True, type=Path, help="the routing table file")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help="/metrics and /healthz (0: any free port)")
    parser.add_argument("--poll-s", type=float, default=1.0,
                        help="how often the table file is looked at (seconds)")
    parser.add_argument("--max-routes-bytes", type=int, default=MAX_BYTES)
    parser.add_argument("--ready-file", type=Path, help="where to write the ready line")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (exit 2, with the usage) for values the types do not catch."""
    for option in ("service", "tenant"):
        if not _DNS_LABEL.match(getattr(args, option)):
            parser.error(f"--{option}: expected a lowercase DNS name, "
                         f"got {getattr(args, option)!r}")
    for option in ("port", "metrics_port"):
        if not 0 <= getattr(args, option) <= 65535:
            parser.error(f"--{option.replace('_', '-')}: expected 0 to 65535, "
                         f"got {getattr(args, option)}")
    if args.port == args.metrics_port != 0:
        parser.error("--metrics-port: must differ from --port")
    if not args.poll_s > 0:
        parser.error(f"--poll-s: expected a positive number of seconds, got {args.poll_s}")
    if args.max_routes_bytes < 1:
        parser.error("--max-routes-bytes: expected a positive number of bytes")


class _Quiet(uvicorn.Server):
    """uvicorn without its signal handlers: ``serve`` handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Health:
    """The ASGI app of the metrics port: ``/metrics`` and ``/healthz``."""

    def __init__(self, router: Router, routes: RoutesFile) -> None:
        self.router, self.routes = router, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            status, body = 200, generate_latest(self.router.metrics.registry)
            kind = CONTENT_TYPE_LATEST
        elif path == "/healthz":
            table = self.routes.table
            status, kind = 200, "application/json"
            body = json.dumps({
                "ok": True, "table": "none" if table is None else "loaded",
                "weights": self.router.weights, "error": self.routes.error}).encode()
        else:
            status, kind = 404, "application/json"
            body = json.dumps({"error": f"unknown path {path!r}: expected /metrics "
                                        "or /healthz"}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _write_atomically(path: Path, content: dict[str, Any]) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ready-")
    with os.fdopen(fd, "w") as file:
        json.dump(content, file)
    os.replace(temporary, path)


def _describe(table: RoutesTable) -> str:
    return ", ".join(f"{r.name}={r.weight}% ({len(r.replicas)} replicas)"
                     for r in table.revisions) or "no revisions"


def apply(router: Router, table: RoutesTable | None) -> None:
    if table is None:
        return
    try:
        router.update(table.revisions)
    except ShoalError as exc:  # validated already; said rather than ending the program
        _log.warning("routing table not taken: %s", exc)
        return
    _log.info("routing table taken: %s", _describe(table))


async def serve(args: argparse.Namespace, verifier: Verifier,
                stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    routes = RoutesFile(args.routes, args.max_routes_bytes)
    router = Router(args.service, args.tenant, verifier, host=args.host, port=args.port,
                    limits=RouterLimits())
    try:
        health_socket = _listen(args.host, args.metrics_port)
    except OSError as exc:
        _log.error("cannot listen on %s:%s: %s", args.host, args.metrics_port,
                   exc.strerror or exc)
        return 2
    try:
        await router.start()
    except ShoalError as exc:
        health_socket.close()
        _log.error("%s", exc)
        return 2
    health = _Quiet(uvicorn.Config(Health(router, routes), lifespan="off",
                                   log_level="warning", access_log=False))
    health_task = asyncio.create_task(health.serve(sockets=[health_socket]))
    try:
        apply(router, routes.poll())
        while not health.started and not health_task.done():
            await asyncio.sleep(0.005)  # uvicorn offers no event; the socket already listens
        if args.ready_file is not None:
            _write_atomically(args.ready_file, {
                "ready": True, "port": router.port,
                "metrics_port": health_socket.getsockname()[1], "pid": os.getpid()})
        _log.info("router of service %s (tenant %s) on %s", args.service, args.tenant,
                  router.url)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.poll_s)
            if not stop.is_set():
                apply(router, routes.poll())
    finally:
        await router.stop()
        health.should_exit = True
        with contextlib.suppress(Exception):
            await health_task
        health_socket.close()
    return 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s")
