"""Reads and deletes on behalf of a caller, with the tenancy rules in one place.

What a tenant's token sees: its own jobs, their logs and events; its own
tenant's quota and usage; of the nodes only the cluster's total capacity,
not their names.  Another tenant's job reads as missing (404), whatever the
verb, so job names stay private.  An admin token sees everything.  Tokens,
and deleting tenants and node pools, are the admin's (``shoal.app.lifecycle``).
"""

from __future__ import annotations

from typing import Any

from shoal.app.core import App
from shoal.app.ports import Caller, JobRecord
from shoal.app.usage import capacity, tenant_status
from shoal.app.views import (
    event_view,
    for_tenant_event,
    for_tenant_job,
    job_detail,
    job_summary,
    pod_count,
)
from shoal.domain.names import job_key, job_name
from shoal.domain.phases import ACTIVE_PHASES
from shoal.errors import InputError, NotFoundError

MAX_EVENT_ID = 2**62
MAX_POD_INDEX = 100_000
MAX_LOG_CHUNK = 1024 * 1024
"""Most bytes of a log returned by one read (a caller pages with ``offset``)."""
MAX_LOG_OFFSET = 2**62


def _scope(caller: Caller) -> str | None:
    """The tenant a caller is limited to; None for an admin."""
    return None if caller.role == "admin" else caller.tenant or ""


class AmbiguousNameError(InputError):
    """An admin named a job that several tenants have: the tenant must be given."""

    code = "ambiguous_name"


def visible_job(app: App, caller: Caller, name: str, tenant: str | None = None) -> JobRecord:
    """The job ``name`` of ``tenant`` (a tenant's token: always its own tenant).

    An admin may leave the tenant out when only one tenant has a live job of
    that name. Another tenant's job reads as missing, as an unknown one does.
    """
    scope = _scope(caller)
    if scope is not None:
        if tenant not in (None, scope):
            raise NotFoundError(f"job '{name}' not found")
        tenant = scope
    if tenant is not None:
        try:
            return app.store.get_job(job_key(tenant, name))
        except NotFoundError:
            raise NotFoundError(f"job '{name}' not found"
                                + (f" in tenant '{tenant}'" if scope is None else "")) from None
    found = app.store.jobs_named(name)
    if not found:
        raise NotFoundError(f"job '{name}' not found")
    if len(found) > 1:
        owners = ", ".join(sorted(row.tenant for row in found))
        raise AmbiguousNameError(f"job '{name}' exists in tenants {owners}",
                                 hint="say which: --tenant T (the API's ?tenant=T)")
    return found[0]


def list_jobs(app: App, caller: Caller) -> list[dict[str, Any]]:
    scope = _scope(caller)
    views = [job_summary(row) for row in app.store.list_jobs(tenant=scope)]
    return views if scope is None else [for_tenant_job(v) for v in views]


def get_job(app: App, caller: Caller, name: str, tenant: str | None = None) -> dict[str, Any]:
    row = visible_job(app, caller, name, tenant)
    # Only this job's events: the name may have been used before.
    events = [event_view(e) for e in app.store.events(job=row.name, tenant=row.tenant)
              if e["time"] >= row.submit_time]
    view = job_detail(row, events)
    return view if _scope(caller) is None else for_tenant_job(view)


def delete_job(app: App, caller: Caller, name: str, tenant: str | None = None) -> dict[str, Any]:
    row = visible_job(app, caller, name, tenant)
    row = app.store.request_delete(row.name, _scope(caller))
    app.wake()
    return job_summary(row)


def check_pod(row: JobRecord, pod: int) -> None:
    """NotFoundError naming the valid indices when the job has no pod ``pod``."""
    count = pod_count(row.manifest)
    if not 0 <= pod < count:
        valid = "0" if count == 1 else f"0 to {count - 1}"
        raise NotFoundError(f"job '{job_name(row.name)}' has no pod {pod} (pods: {valid})")


def read_log(
    app: App, caller: Caller, name: str, pod: int, offset: int = 0, limit: int = MAX_LOG_CHUNK,
    tenant: str | None = None,
) -> tuple[bytes, int]:
    """At most ``limit`` bytes (never over ``MAX_LOG_CHUNK``) of the pod's log from ``offset``,
    and where they start (0 when the log was rotated meanwhile)."""
    if not 0 <= offset <= MAX_LOG_OFFSET:
        raise InputError(f"offset: expected a byte offset from 0 to {MAX_LOG_OFFSET}, got {offset}")
    if limit < 1:
        raise InputError(f"limit: expected a positive number of bytes, got {limit}")
    row = visible_job(app, caller, name, tenant)
    check_pod(row, pod)
    return app.workspace.read_log(row.name, pod, offset, min(limit, MAX_LOG_CHUNK))


def job_phase(app: App, caller: Caller, name: str, tenant: str | None = None) -> str:
    return visible_job(app, caller, name, tenant).phase


def events(app: App, caller: Caller, since: int = 0) -> list[dict[str, Any]]:
    if not 0 <= since <= MAX_EVENT_ID:
        raise InputError(f"since: expected an event id from 0 to {MAX_EVENT_ID}, got {since}")
    scope = _scope(caller)
    found = [event_view(e) for e in app.store.events(since_id=since, tenant=scope)]
    return found if scope is None else [for_tenant_event(e) for e in found]


def tenants(app: App, caller: Caller) -> dict[str, Any]:
    """Specs and status (quota, usage, borrowed, pending) of the tenants the caller may see."""
    scope = _scope(caller)
    specs = {k: v for k, v in app.store.tenants().items() if scope is None or k == scope}
    jobs = app.store.list_jobs(phases=ACTIVE_PHASES)
    status = tenant_status(specs, app.store.nodes(), jobs)
    return {"tenants": specs, "status": status}


def nodes(app: App, caller: Caller) -> dict[str, Any]:
    specs = app.store.nodes()
    summary = capacity(specs)
    if _scope(caller) is not None:
        return {"nodes": {}, **summary}  # names and shapes are the admin's business
    return {"nodes": specs, **summary}
