"""REST API of the embedded control plane (FastAPI; OpenAPI at ``/openapi.json``).

Every route but ``/healthz`` needs a bearer token.  A tenant's token sees and
changes only its own jobs and logs; an admin token manages tenants and nodes
and sees everything.  Errors are ``{"error": {"code", "message"}}`` with the
HTTP status of their code, so the CLI can print one clear line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from shoal.api.admission_checks import authorise, check_job
from shoal.control.records import FINAL_PHASES, JobRow, Principal
from shoal.domain.job import TrainingJob
from shoal.domain.manifest import parse_manifests
from shoal.domain.nodes import NodePool
from shoal.domain.tenant import Tenant
from shoal.errors import Forbidden, NotFoundError, ShoalError, Unauthorized
from shoal.runtime.local.plane import EmbeddedPlane

STATUS = {
    "unauthorized": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
    "already_exists": 409, "internal": 500, "shoal_error": 500,
}


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = "<request>"
    text: str


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str | None = None
    role: Literal["admin", "tenant"] = "tenant"


def principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing token: pass 'Authorization: Bearer <token>' (--token)")
    found = request.app.state.plane.store.resolve_token(authorization[7:].strip())
    if found is None:
        raise Unauthorized("unknown or revoked token")
    return Principal(role=found.role, tenant=found.tenant, name=found.name)


Caller = Annotated[Principal, Depends(principal)]


def create_app(plane: EmbeddedPlane) -> FastAPI:
    app = FastAPI(title="Shoal control plane", version="v1")
    app.state.plane = plane
    store = plane.store

    @app.exception_handler(ShoalError)
    async def _shoal_error(request: Request, exc: ShoalError) -> JSONResponse:
        status = STATUS.get(exc.code, 400 if exc.exit_code == 2 else 500)
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status)

    def visible(caller: Principal, name: str) -> JobRow:
        row: JobRow = store.get_job(name)  # NotFoundError when there is none
        if caller.role != "admin" and row.tenant != caller.tenant:
            # Same answer as a missing job: other tenants' names stay private.
            raise NotFoundError(f"job {name!r} not found")
        return row

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        error = plane.error
        return {"status": "ok" if error is None else "degraded",
                "loop_error": None if error is None else repr(error)}

    @app.post("/v1/apply")
    def apply(body: ApplyRequest, caller: Caller) -> dict[str, Any]:
        manifests = parse_manifests(body.text, body.source)
        for manifest in manifests:
            authorise(caller, manifest)
        tenants, nodes = store.tenants(), store.nodes()
        for manifest in manifests:  # later documents may define what earlier ones use
            dumped = manifest.spec.model_dump(mode="json", by_alias=True)
            if isinstance(manifest, Tenant):
                tenants[manifest.metadata.name] = dumped
            elif isinstance(manifest, NodePool):
                nodes[manifest.metadata.name] = dumped
        jobs = [m for m in manifests if isinstance(m, TrainingJob)]
        for job in jobs:
            _forget_previous(plane, job.metadata.name)
            check_job(job, tenants, nodes, plane.checkpoint_dir(job.metadata.name),
                      plane.state_dir)
        applied = []
        now = plane.clock.now()
        with store.transaction():
            for manifest in manifests:
                name = manifest.metadata.name
                if isinstance(manifest, Tenant):
                    store.put_tenant(name, tenants[name])
                elif isinstance(manifest, NodePool):
                    store.put_node(name, nodes[name])
                elif isinstance(manifest, TrainingJob):
                    row = store.create_job(
                        name, manifest.spec.tenant,
                        manifest.model_dump(mode="json", by_alias=True), now,
                        str(plane.checkpoint_dir(name)),
                    )
                    store.append_event(now, "submitted", name, row.tenant, {})
                applied.append({"kind": manifest.kind, "name": name})
        plane.wake()
        return {"applied": applied}

    @app.get("/v1/jobs")
    def list_jobs(caller: Caller) -> dict[str, Any]:
        tenant = None if caller.role == "admin" else caller.tenant
        return {"jobs": [job_view(row) for row in store.list_jobs(tenant=tenant)]}

    @app.get("/v1/jobs/{name}")
    def get_job(name: str, caller: Caller) -> dict[str, Any]:
        row = visible(caller, name)
        # Only this job's events: a name may have been used before.
        events = [e for e in store.events(job=name, tenant=row.tenant)
                  if e["time"] >= row.submit_time]
        return {**job_view(row), "manifest": row.manifest, "pods": row.pods, "events": events}

    @app.delete("/v1/jobs/{name}")
    def delete_job(name: str, caller: Caller) -> dict[str, Any]:
        row = visible(caller, name)
        row = store.request_delete(name, None if caller.role == "admin" else caller.tenant)
        plane.wake()
        return job_view(row)

    @app.get("/v1/jobs/{name}/logs")
    def logs(name: str, caller: Caller, pod: int = 0, follow: bool = False) -> Any:
        row = visible(caller, name)
        path = plane.log_path(name, pod)
        if not follow:
            return PlainTextResponse(path.read_text(errors="replace") if path.exists() else "")
        return StreamingResponse(_follow(plane, row.name, path), media_type="text/plain")

    @app.get("/v1/events")
    def events(caller: Caller, since: int = 0) -> dict[str, Any]:
        tenant = None if caller.role == "admin" else caller.tenant
        return {"events": store.events(since_id=since, tenant=tenant)}

    @app.get("/v1/tenants")
    def tenants(caller: Caller) -> dict[str, Any]:
        rows = store.tenants()
        if caller.role != "admin":
            rows = {k: v for k, v in rows.items() if k == caller.tenant}
        return {"tenants": rows}

    @app.get("/v1/nodes")
    def nodes(caller: Caller) -> dict[str, Any]:
        del caller
        return {"nodes": store.nodes()}

    @app.post("/v1/tokens")
    def token(body: TokenRequest, caller: Caller) -> dict[str, Any]:
        if caller.role != "admin":
            raise Forbidden("only an admin token may create tokens")
        if body.role == "tenant" and body.tenant not in store.tenants():
            raise NotFoundError(f"tenant {body.tenant!r} not found")
        name = body.tenant or "admin"
        return {"token": store.create_token(name, body.role, body.tenant), "tenant": body.tenant}

    return app


def _forget_previous(plane: EmbeddedPlane, name: str) -> None:
    """Remove the files of a finished job whose name is being reused.

    Its logs and checkpoints must not leak into (or be resumed by) a new job
    of the same name, possibly another tenant's.
    """
    try:
        previous = plane.store.get_job(name)
    except NotFoundError:
        return
    if previous.phase not in FINAL_PHASES or not previous.deleted:
        return  # still there: create_job will refuse the name
    folder = plane.state_dir / "jobs" / name
    if folder.exists():
        shutil.rmtree(folder)


def job_view(row: JobRow) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    for key in ("manifest", "pods", "checkpoint_dir", "version"):
        data.pop(key, None)
    data["pods"] = len(row.pods)
    return data


async def _follow(plane: EmbeddedPlane, job: str, path: Path) -> AsyncIterator[bytes]:
    """Stream a log as it grows until the job reaches a final phase."""
    offset = 0
    while True:
        if path.exists():
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
        if plane.store.get_job(job).phase in FINAL_PHASES:
            return
        await asyncio.sleep(0.2)  # a log tail: wait for the file to grow
