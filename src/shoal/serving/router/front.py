"""The router's front door: a bare ASGI app for the Open Inference Protocol v2
paths of one service.

It parses the path, authenticates the caller from the headers alone (before a
byte of the body is read), bounds the body, and hands the request to the
``Router`` to forward.  Every refusal is ``{"error": "..."}`` with its status
(``ShoalError``'s class gives it); anything unexpected is logged and
answered 503, never a traceback.  No web framework sits here: the request
path is short and hot, and routing five path shapes needs no router of its own.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Receive, Scope, Send

from shoal.errors import (
    Forbidden,
    InputError,
    NotFoundError,
    PayloadTooLarge,
    ShoalError,
    Unauthorized,
)
from shoal.serving.router.metrics import RevisionStats

if TYPE_CHECKING:
    from shoal.serving.router.router import Router

_log = logging.getLogger(__name__)

_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/(?P<action>infer|ready))?$")
FORWARDED_REQUEST_HEADERS = (b"content-type", b"inference-header-content-length",
                             b"content-encoding", b"accept")
"""Request headers a replica sees (never the caller's token)."""


class Principal(Protocol):
    """Who a token stands for: an admin (no tenant) or a member of a tenant
    (``shoal.app.ports.Caller`` is one)."""

    @property
    def role(self) -> str: ...
    @property
    def tenant(self) -> str | None: ...


Verifier = Callable[[str], "Principal | Awaitable[Principal | None] | None"]
"""A token's principal, or None for an unknown, expired or revoked one.  It may
be a coroutine function (one that asks another server, so the loop is not
blocked), and may raise a ``ShoalError`` itself (``Forbidden``, say)."""


class MethodNotAllowed(InputError):
    """A path asked with the wrong HTTP method."""

    code = "method_not_allowed"
    http_status = 405


@dataclass(frozen=True)
class Target:
    """What a request asks for: ``path`` is the replica's path (without a version)."""

    action: str
    """``infer``, ``ready``, ``model`` (model metadata) or ``server`` (``/v2``)."""
    version: str | None
    method: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    stats: RevisionStats | None = None
    """The revision's figures, counted once the answer is sent (None: not routed)."""


def error_answer(exc: ShoalError) -> Answer:
    headers = [(b"content-type", b"application/json")]
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(math.ceil(exc.retry_after_s)).encode()))
    if isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    body = json.dumps({"error": str(exc)}, ensure_ascii=True).encode()
    return Answer(exc.http_status, body, headers)


def json_answer(status: int, content: dict[str, Any]) -> Answer:
    return Answer(status, json.dumps(content).encode(), [(b"content-type", b"application/json")])


class Front:
    """The ASGI app of one router."""

    def __init__(self, router: Router, verifier: Verifier, tenant: str, max_body_bytes: int,
                 auth_cache_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.router, self.verifier, self.tenant = router, verifier, tenant
        self.max_body_bytes, self.auth_cache_s, self.clock = max_body_bytes, auth_cache_s, clock
        self._verdicts: dict[str, tuple[float, Principal | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = self.clock()
        try:
            answer = await self._answer(scope, receive)
        except ShoalError as exc:
            answer = error_answer(exc)
        except Exception as exc:  # a bug here must not become a traceback for the caller
            _log.exception("router of service %r failed on %s", self.router.service, scope["path"])
            answer = error_answer(ShoalError(f"the router failed: {type(exc).__name__}"))
            answer = Answer(503, answer.body, answer.headers)
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
        try:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": answer.body})
        finally:  # counted even if the caller left: in-flight figures must come down
            self.router.record(answer.stats, answer.status, self.clock() - started)

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        path: str = scope["path"]
        if path.startswith("/v2/health/"):
            return self._health(path)
        headers: dict[bytes, bytes] = dict(scope["headers"])
        action, version = self._parse(path)
        await self._authorize(headers.get(b"authorization"))
        method = scope["method"]
        if (action == "infer") != (method == "POST") or method not in ("GET", "POST"):
            raise MethodNotAllowed(f"{method} {path}: expected "
                                   f"{'POST' if action == 'infer' else 'GET'}")
        body = await self._body(headers, receive) if method == "POST" else b""
        forwarded = [(k, v) for k, v in scope["headers"] if k in FORWARDED_REQUEST_HEADERS]
        target = Target(action, version, method, scope.get("query_string", b""), forwarded, body)
        return await self.router.forward(target)

    def _health(self, path: str) -> Answer:
        if path == "/v2/health/live":
            return json_answer(200, {"live": True})
        if path == "/v2/health/ready":
            ready = self.router.takes_traffic()
            return json_answer(200 if ready else 503, {"ready": ready})
        raise NotFoundError(f"unknown path {path!r}: expected /v2/health/live or /v2/health/ready")

    def _parse(self, path: str) -> tuple[str, str | None]:
        if path in ("/v2", "/v2/"):
            return "server", None
        match = _MODEL_PATH.match(path)
        if match is None:
            raise NotFoundError(
                f"unknown path {path!r}: expected /v2, /v2/health/live|ready or "
                f"/v2/models/{self.router.service}[/versions/<v>][/infer|/ready]")
        if match["model"] != self.router.service:
            raise NotFoundError(f"unknown model {match['model']!r}: this endpoint serves "
                                f"{self.router.service!r}")
        return match["action"] or "model", match["version"]

    async def _authorize(self, header: bytes | None) -> None:
        text = header.decode("latin-1") if header is not None else ""
        if not text.lower().startswith("bearer ") or not text[7:].strip():
            raise Unauthorized("missing token: pass 'Authorization: Bearer <token>'")
        who = await self._verify(text[7:].strip())
        if who is None:
            raise Unauthorized("unknown, expired or revoked token")
        if who.role != "admin" and who.tenant != self.tenant:
            raise Forbidden(f"service {self.router.service!r} belongs to another tenant; "
                            f"a token of tenant {who.tenant!r} may not call it")

    async def _verify(self, token: str) -> Principal | None:
        """The verifier's answer, remembered ``auth_cache_s`` seconds (a revoked
        token works that long at most) so the hot path skips the store."""
        now = self.clock()
        cached = self._verdicts.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = self.verifier(token)
        who = await answer if inspect.isawaitable(answer) else answer
        if self.auth_cache_s > 0:
            if len(self._verdicts) >= 1024:
                self._verdicts.clear()  # bounded: a flood of bad tokens cannot grow it
            self._verdicts[token] = (now + self.auth_cache_s, who)
        return who

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the "
                                  f"limit of {limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise InputError("the caller went away before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)
