"""REST API of the control plane (FastAPI; OpenAPI at ``/openapi.json``).

Routes are thin: they authenticate the caller and call the application layer
(``shoal.app``), which holds every rule.  Every route but ``/healthz`` (which
says only whether the plane is up) needs a bearer token.  Every error is ``{"error": {"code", "message", "retryable",
"retry_after_s"}}`` with the HTTP status of its class in ``shoal.errors``
(never 422: a malformed request is a 400 naming the field); temporary errors
are 503 with ``Retry-After``.

Hostile callers are bounded: the token of every ``/v1/`` request is checked
before a byte of its body is read (401), an authenticated body over
``MAX_BODY_BYTES`` is refused as soon as that is known (413), and a log is
read ``queries.MAX_LOG_CHUNK`` bytes at a time, never whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal import errors
from shoal.app import apply as applying
from shoal.app import lifecycle, metrics, queries, services
from shoal.app.core import App
from shoal.app.ports import Caller
from shoal.domain.phases import FINAL_PHASES
from shoal.errors import InputError, ShoalError, Unauthorized

BY_CODE = {cls.code: cls for cls in errors.error_classes()}
FOLLOW_POLL_S = 0.2
NEXT_OFFSET = "X-Shoal-Next-Offset"
"""Response header of a log read: the offset to ask for next."""
MAX_BODY_BYTES = 8 * applying.MAX_TEXT
"""Largest request body read (bytes): room for the largest manifest text
``apply`` accepts, however JSON escapes its characters."""
DRAIN_BYTES = 64 * 1024
"""A refused request's body up to this size is read and dropped; a larger one
is left unread and its connection closed."""


class ApplyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = "<request>"
    text: str


class ApplyRequest(BaseModel):
    """One manifest text, or several files applied together (all or nothing)."""

    model_config = ConfigDict(extra="forbid")
    source: str = "<request>"
    text: str = ""
    files: list[ApplyFile] = []


class TokenRequest(BaseModel):
    """A new token: a tenant's (the default) or an admin's, for ``ttlSeconds``
    (unset: it never expires), named ``name`` in listings (default: its tenant)."""

    model_config = ConfigDict(extra="forbid")
    tenant: str | None = None
    role: Literal["admin", "tenant"] = "tenant"
    ttl_seconds: int | None = Field(default=None, alias="ttlSeconds", ge=1,
                                    le=lifecycle.MAX_TTL_SECONDS, strict=True)
    name: str | None = Field(default=None, min_length=1, max_length=lifecycle.MAX_TOKEN_NAME)


def error_body(exc: ShoalError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The JSON body, HTTP status and headers of an error (by its code's class)."""
    cls = BY_CODE.get(exc.code, type(exc))
    retry_after = exc.retry_after_s if cls.retry == "after" else None
    body = {"error": {"code": exc.code, "message": str(exc),
                      "retryable": cls.retry == "after", "retry_after_s": retry_after}}
    headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else {}
    return body, cls.http_status, headers


class SafeJSONResponse(JSONResponse):
    """JSON in ASCII: a lone surrogate or control character a caller sent (and
    an error message repeats) cannot fail the encoding; NaN is refused."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def _respond(exc: ShoalError) -> JSONResponse:
    body, status, headers = error_body(exc)
    return SafeJSONResponse(body, status, headers=headers)


def _field_errors(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        where = ".".join(loc[1:] if len(loc) > 1 and loc[0] in ("body", "query", "path") else loc)
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def authenticate(core: App, authorization: str | None) -> Caller:
    """The caller named by a bearer ``Authorization`` header, else ``Unauthorized``."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing token: pass 'Authorization: Bearer <token>' (--token)")
    found = lifecycle.resolve(core, authorization[7:].strip())
    if found is None:
        raise Unauthorized("unknown, expired or revoked token")
    return found


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The caller named by the bearer token (already resolved by ``Guard``)."""
    found: Caller | None = request.scope.get("shoal.caller")
    if found is not None:
        return found
    return authenticate(request.app.state.core, authorization)


class Guard:
    """ASGI middleware: a ``/v1/`` request is authenticated from its headers
    alone, before its body is read, and an authenticated body is read only up
    to ``max_body`` bytes.

    FastAPI reads and parses a body before it resolves a route's
    dependencies, so a token checked there comes too late: a caller without
    one could make the server buffer any body.  Here a 401 (or a 413, for a
    declared or streamed body over the limit) is answered without reading on.
    """

    def __init__(self, app: ASGIApp, core: App, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.core, self.max_body = app, core, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        raw = headers.get(b"authorization")
        try:
            who = await anyio.to_thread.run_sync(
                authenticate, self.core, None if raw is None else raw.decode("latin-1"))
        except ShoalError as exc:
            await _refuse(exc, scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            await _refuse(_too_large(self.max_body), scope, receive, send, drain=False)
            return
        body = bytearray()
        more = scope["method"] not in ("GET", "HEAD")
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the caller went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await _refuse(_too_large(self.max_body), scope, receive, send, drain=False)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # a disconnect, once the body is consumed

        await self.app({**scope, "shoal.caller": who}, replay, send)


async def _refuse(exc: ShoalError, scope: Scope, receive: Receive, send: Send,
                  drain: bool = True) -> None:
    """Answer ``exc`` without reading a large body: a body of at most
    ``DRAIN_BYTES`` is read and dropped (so the connection stays usable and the
    caller sees the answer, not a reset); a larger one is left unread and the
    connection closed (kept alive, the server would have to read it all)."""
    response = _respond(exc)
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    declared = headers.get(b"content-length", b"").strip()
    small = declared.isdigit() and int(declared) <= DRAIN_BYTES
    close = True
    if drain and (small or (not declared and b"transfer-encoding" not in headers)):
        seen, more = 0, True
        while more and seen <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the caller went away
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)
        close = more
    if close:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"request body over {limit} bytes (split the manifests)")


Who = Annotated[Caller, Depends(caller)]
TenantParam = Annotated[str | None, Query(
    max_length=253, description="the job's tenant: needed by an admin when several tenants "
    "have a job of that name; a tenant's token may only name its own")]


class _Scrape(Collector):
    """The control plane's metric families (``app.metrics``) for one scrape."""

    def __init__(self, found: list[metrics.Family]) -> None:
        self.found = found

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for family in self.found:
            gauge = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
            for values, value in family.samples:
                gauge.add_metric(list(values), value)
            yield gauge


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["promote", "abort"]


def _nothing_live(key: str) -> dict[str, Any]:
    return {}


def create_app(core: App, health: Callable[[], dict[str, Any]],
               collectors: Sequence[Collector] = (),
               service_live: services.Live = _nothing_live) -> FastAPI:
    """The API over ``core``; ``collectors``: more metrics for ``/metrics`` (e.g. the
    routers'); ``service_live``: a service's router URL and recent p95, by its key."""
    api = FastAPI(title="Shoal control plane", version="v1", default_response_class=SafeJSONResponse)
    api.state.core = core
    api.add_middleware(Guard, core=core)

    @api.exception_handler(ShoalError)
    async def _shoal_error(request: Request, exc: ShoalError) -> JSONResponse:
        return _respond(exc)

    @api.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _respond(InputError(f"bad request: {_field_errors(exc)}"))

    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        by_status = {404: errors.NotFoundError, 401: Unauthorized, 403: errors.Forbidden}
        cls = by_status.get(exc.status_code, InputError if exc.status_code < 500 else ShoalError)
        body, _, headers = error_body(cls(f"{request.method} {request.url.path}: {exc.detail}"))
        return SafeJSONResponse(body, exc.status_code, headers=headers)

    @api.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return _respond(errors.InternalError(f"internal error: {exc!r} (see the server log)"))

    @api.get("/healthz")
    def healthz() -> dict[str, Any]:
        # Anyone may ask whether the plane is up; what went wrong is the admin's.
        return {"status": health()["status"]}

    @api.get("/v1/health")
    def health_details(who: Who) -> dict[str, Any]:
        if who.role != "admin":
            raise errors.Forbidden("only an admin token may read the control loop's errors")
        return health()

    @api.get("/metrics")
    def prometheus(who: Who) -> Response:
        """Prometheus text format; needs an admin token (``bearer_token`` in a scrape config)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(metrics.families(core, who)))
        for collector in collectors:
            registry.register(collector)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/apply")
    def apply(body: ApplyRequest, who: Who) -> dict[str, Any]:
        files = [(f.source, f.text) for f in body.files] or [(body.source, body.text)]
        return {"applied": applying.apply_files(core, who, files)}

    @api.get("/v1/jobs")
    def list_jobs(who: Who) -> dict[str, Any]:
        return {"jobs": queries.list_jobs(core, who)}

    @api.get("/v1/jobs/{name}")
    def get_job(name: str, who: Who, tenant: TenantParam = None) -> dict[str, Any]:
        return queries.get_job(core, who, name, tenant)

    @api.delete("/v1/jobs/{name}")
    def delete_job(name: str, who: Who, tenant: TenantParam = None) -> dict[str, Any]:
        return queries.delete_job(core, who, name, tenant)

    @api.get("/v1/jobs/{name}/logs")
    def logs(
        name: str, who: Who,
        tenant: TenantParam = None,
        pod: Annotated[int, Query(ge=0, le=queries.MAX_POD_INDEX)] = 0,
        follow: bool = False,
        offset: Annotated[int, Query(ge=0, le=queries.MAX_LOG_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_LOG_OFFSET)] = queries.MAX_LOG_CHUNK,
    ) -> Any:
        """The log's bytes from ``offset``, at most ``limit`` (capped at
        ``MAX_LOG_CHUNK``); ``X-Shoal-Next-Offset`` says where the next read
        starts (after a rotation, the log is read again from its new start).
        ``follow`` streams from ``offset`` until the job ends."""
        # 404 before any streaming starts
        first, offset = queries.read_log(core, who, name, pod, offset, limit, tenant)
        if not follow:
            return Response(first, media_type="text/plain; charset=utf-8",
                            headers={NEXT_OFFSET: str(offset + len(first))})
        return StreamingResponse(_follow(core, who, name, pod, offset, first, tenant),
                                 media_type="text/plain; charset=utf-8")

    @api.get("/v1/services")
    def list_services(who: Who) -> dict[str, Any]:
        return {"services": services.list_services(core, who, service_live)}

    @api.get("/v1/services/{name}")
    def get_service(name: str, who: Who, tenant: TenantParam = None) -> dict[str, Any]:
        return services.get_service(core, who, name, tenant, service_live)

    @api.delete("/v1/services/{name}")
    def delete_service(name: str, who: Who, tenant: TenantParam = None) -> dict[str, Any]:
        return services.delete_service(core, who, name, tenant, service_live)

    @api.post("/v1/services/{name}/rollout")
    def rollout(name: str, body: RolloutRequest, who: Who,
                tenant: TenantParam = None) -> dict[str, Any]:
        """Promote the canary now, or abort it (rolled back); refused without a canary."""
        return services.rollout(core, who, name, body.action, tenant, service_live)

    @api.get("/v1/events")
    def events(
        who: Who, since: Annotated[int, Query(ge=0, le=queries.MAX_EVENT_ID)] = 0
    ) -> dict[str, Any]:
        return {"events": queries.events(core, who, since)}

    @api.get("/v1/tenants")
    def tenants(who: Who) -> dict[str, Any]:
        return queries.tenants(core, who)

    @api.delete("/v1/tenants/{name}")
    def delete_tenant(name: str, who: Who) -> dict[str, Any]:
        """Delete a tenant without active jobs and revoke its tokens (409 if it has some)."""
        return lifecycle.delete_tenant(core, who, name)

    @api.get("/v1/nodes")
    def nodes(who: Who) -> dict[str, Any]:
        return queries.nodes(core, who)

    @api.delete("/v1/nodes/{name}")
    def delete_nodepool(name: str, who: Who) -> dict[str, Any]:
        """Delete a node pool that runs no pod and strands no active job (409 otherwise)."""
        return lifecycle.delete_nodepool(core, who, name)

    @api.post("/v1/tokens")
    def token(body: TokenRequest, who: Who) -> dict[str, Any]:
        return lifecycle.create_token(core, who, body.tenant, body.role, body.ttl_seconds,
                                      body.name)

    @api.get("/v1/tokens")
    def tokens(who: Who) -> dict[str, Any]:
        return {"tokens": lifecycle.list_tokens(core, who)}

    @api.delete("/v1/tokens/{ident}")
    def revoke_token(ident: str, who: Who) -> dict[str, Any]:
        """Revoke a token by its id (idempotent); it stops working at once."""
        return lifecycle.revoke_token(core, who, ident)

    return api


async def _follow(
    core: App, who: Caller, name: str, pod: int, offset: int, first: bytes, tenant: str | None
) -> AsyncIterator[bytes]:
    """Stream a log as it grows until the job reaches a final phase, in chunks
    of at most ``MAX_LOG_CHUNK`` bytes.

    Every read of the store or the file runs in a worker thread, so a slow
    disk or a busy database never stalls the server's event loop.
    """
    if first:
        yield first
    offset += len(first)
    try:
        async for chunk in _chunks(core, who, name, pod, offset, tenant):
            yield chunk
    except errors.NotFoundError:
        return  # deleted and finalised while followed: nothing more will come


async def _chunks(core: App, who: Caller, name: str, pod: int, offset: int,
                  tenant: str | None) -> AsyncIterator[bytes]:
    final = False
    while True:
        chunk, offset = await anyio.to_thread.run_sync(
            queries.read_log, core, who, name, pod, offset, queries.MAX_LOG_CHUNK, tenant)
        if chunk:  # after a rotation, the log goes on from its new start
            offset += len(chunk)
            yield chunk
            continue
        if final:
            return  # read to the end after the job ended: nothing more will come
        phase = await anyio.to_thread.run_sync(queries.job_phase, core, who, name, tenant)
        if phase in FINAL_PHASES:
            # Read on to the end: the pod may have written between the two reads.
            final = True
            continue
        await anyio.sleep(FOLLOW_POLL_S)  # a log tail: wait for the file to grow
