"""A stand-in OIP v2 replica for the router's tests: a bare ASGI app on a real
uvicorn server on 127.0.0.1, that says which replica answered, can hold an
inference until released, and answers errors as a replica does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import uvicorn

SERVICE = "svc"


class StandIn:
    """One replica: ``name`` comes back in every infer answer's ``id``."""

    def __init__(self, name: str, model: str = SERVICE) -> None:
        self.name, self.model = name, model
        self.seen: list[str] = []
        self.headers: list[dict[bytes, bytes]] = []
        self.holding = asyncio.Event()
        """Set when a request asking to be held has arrived."""
        self.release = asyncio.Event()
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Coroutine[Any, Any, Any]],
                       send: Callable[[dict[str, Any]], Coroutine[Any, Any, None]]) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        self.seen.append(path)
        self.headers.append(dict(scope["headers"]))
        status, answer = 200, {}
        if path == "/v2":
            answer = {"name": "standin", "version": "1", "extensions": []}
        elif path == f"/v2/models/{self.model}":
            answer = {"name": self.model, "versions": [self.name], "platform": "standin",
                      "inputs": [], "outputs": []}
        elif path == f"/v2/models/{self.model}/ready":
            answer = {}
        elif path == f"/v2/models/{self.model}/infer":
            request = json.loads(body)
            params = request.get("parameters", {})
            if params.get("fail"):
                status, answer = 400, {"error": "input 'x': expected shape [1, 4], got [1, 3]"}
            else:
                if params.get("hold"):
                    self.holding.set()
                    await self.release.wait()
                answer = {"model_name": self.model, "id": self.name,
                          "outputs": [{"name": "y", "datatype": "FP32", "shape": [1],
                                       "data": [float(len(body))]}]}
        else:
            status, answer = 404, {"error": f"unknown path {path}"}
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


@contextlib.asynccontextmanager
async def serving(*replicas: StandIn) -> AsyncIterator[list[str]]:
    """Run the replicas on free ports of 127.0.0.1; yields their base URLs."""
    servers, tasks = [], []
    for replica in replicas:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        replica.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(replica, lifespan="off", log_level="warning",
                                               access_log=False))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        servers.append(server)
        tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
    try:
        yield [r.url for r in replicas]
    finally:
        for replica in replicas:
            replica.release.set()
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
