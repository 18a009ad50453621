"""REST API of the control plane (FastAPI; OpenAPI at ``/openapi.json``).

Routes are thin: they authenticate the caller and call the application layer
(``shoal.app``), which holds every rule.  Every route but ``/healthz`` (which
says only whether the plane is up) needs a bearer token.  Every error is ``{"error": {"code", "message", "retryable",
"retry_after_s"}}`` with the HTTP status of its class in ``shoal.errors``
(never 422: a malformed request is a 400 naming the field); temporary errors
are 503 with ``Retry-After``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from shoal import errors
from shoal.app import apply as applying
from shoal.app import queries
from shoal.app.core import App
from shoal.app.ports import Caller
from shoal.domain.phases import FINAL_PHASES
from shoal.errors import InputError, ShoalError, Unauthorized

BY_CODE = {cls.code: cls for cls in errors.error_classes()}
FOLLOW_POLL_S = 0.2


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
    model_config = ConfigDict(extra="forbid")
    tenant: str | None = None
    role: Literal["admin", "tenant"] = "tenant"


def error_body(exc: ShoalError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The JSON body, HTTP status and headers of an error (by its code's class)."""
    cls = BY_CODE.get(exc.code, type(exc))
    retry_after = exc.retry_after_s if cls.retry == "after" else None
    body = {"error": {"code": exc.code, "message": str(exc),
                      "retryable": cls.retry == "after", "retry_after_s": retry_after}}
    headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else {}
    return body, cls.http_status, headers


def _respond(exc: ShoalError) -> JSONResponse:
    body, status, headers = error_body(exc)
    return JSONResponse(body, status, headers=headers)


def _field_errors(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        where = ".".join(loc[1:] if len(loc) > 1 and loc[0] in ("body", "query", "path") else loc)
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The caller named by the bearer token."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing token: pass 'Authorization: Bearer <token>' (--token)")
    found = queries.resolve(request.app.state.core, authorization[7:].strip())
    if found is None:
        raise Unauthorized("unknown or revoked token")
    return found


Who = Annotated[Caller, Depends(caller)]


def create_app(core: App, health: Callable[[], dict[str, Any]]) -> FastAPI:
    api = FastAPI(title="Shoal control plane", version="v1")
    api.state.core = core

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
        return JSONResponse(body, exc.status_code, headers=headers)

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

    @api.post("/v1/apply")
    def apply(body: ApplyRequest, who: Who) -> dict[str, Any]:
        files = [(f.source, f.text) for f in body.files] or [(body.source, body.text)]
        return {"applied": applying.apply_files(core, who, files)}

    @api.get("/v1/jobs")
    def list_jobs(who: Who) -> dict[str, Any]:
        return {"jobs": queries.list_jobs(core, who)}

    @api.get("/v1/jobs/{name}")
    def get_job(name: str, who: Who) -> dict[str, Any]:
        return queries.get_job(core, who, name)

    @api.delete("/v1/jobs/{name}")
    def delete_job(name: str, who: Who) -> dict[str, Any]:
        return queries.delete_job(core, who, name)

    @api.get("/v1/jobs/{name}/logs")
    def logs(
        name: str, who: Who,
        pod: Annotated[int, Query(ge=0, le=queries.MAX_POD_INDEX)] = 0,
        follow: bool = False,
    ) -> Any:
        first = queries.read_log(core, who, name, pod)  # 404 before any streaming starts
        if not follow:
            return PlainTextResponse(first.decode(errors="replace"))
        return StreamingResponse(_follow(core, who, name, pod, first), media_type="text/plain")

    @api.get("/v1/events")
    def events(
        who: Who, since: Annotated[int, Query(ge=0, le=queries.MAX_EVENT_ID)] = 0
    ) -> dict[str, Any]:
        return {"events": queries.events(core, who, since)}

    @api.get("/v1/tenants")
    def tenants(who: Who) -> dict[str, Any]:
        return queries.tenants(core, who)

    @api.get("/v1/nodes")
    def nodes(who: Who) -> dict[str, Any]:
        return queries.nodes(core, who)

    @api.post("/v1/tokens")
    def token(body: TokenRequest, who: Who) -> dict[str, Any]:
        return queries.create_token(core, who, body.tenant, body.role)

    return api


async def _follow(core: App, who: Caller, name: str, pod: int, first: bytes) -> AsyncIterator[bytes]:
    """Stream a log as it grows until the job reaches a final phase.

    Every read of the store or the file runs in a worker thread, so a slow
    disk or a busy database never stalls the server's event loop.
    """
    if first:
        yield first
    offset = len(first)
    try:
        async for chunk in _chunks(core, who, name, pod, offset):
            yield chunk
    except errors.NotFoundError:
        return  # deleted and finalised while followed: nothing more will come


async def _chunks(core: App, who: Caller, name: str, pod: int, offset: int) -> AsyncIterator[bytes]:
    while True:
        chunk = await anyio.to_thread.run_sync(queries.read_log, core, who, name, pod, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        phase = await anyio.to_thread.run_sync(queries.job_phase, core, name)
        if phase in FINAL_PHASES:
            # One last read: the pod may have written between the two reads.
            tail = await anyio.to_thread.run_sync(queries.read_log, core, who, name, pod, offset)
            if tail:
                yield tail
            return
        await anyio.sleep(FOLLOW_POLL_S)  # a log tail: wait for the file to grow
