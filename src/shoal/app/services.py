"""Inference services: apply, list, describe, delete, promote or abort a rollout.

A service is stored under ``<tenant>/<name>`` like a job; its spec may change
(a new model is a new revision, rolled out by the control loop), unlike a
job's.  Applying checks what applying a job checks, on the job each replica
becomes (``domain.replica``): the tenant exists, one replica fits on the
node pools; the replica's requests get the tenant's defaults and are stored
with the spec.  A model file must be an absolute path (the CLI resolves a
relative one against the manifest's folder); ``from`` must name a
TrainingJob of the same tenant, existing or applied in the same request.

What the control loop decided lives in ``state`` (revisions, traffic, replicas
wanted and ready): read here, written only by the loop.  Promote and abort
are requests the loop carries out on its next pass; they are refused here
when there is nothing to promote or abort, with the loop's own words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shoal.app.checks import check_job, with_tenant_defaults
from shoal.app.core import App
from shoal.app.ports import Caller
from shoal.domain.job import TrainingJob
from shoal.domain.names import job_key, job_name
from shoal.domain.replica import replica_job
from shoal.domain.service import InferenceService
from shoal.errors import Forbidden, InputError, NotFoundError, UnknownReferenceError

Live = Callable[[str], Mapping[str, Any]]
"""A service's live figures by its key: ``url`` and ``p95_s`` (either may be missing)."""

__all__ = [
    "delete_service", "get_service", "list_services", "plan_service", "rollout", "service_view",
]


def authorise_service(caller: Caller, service: InferenceService) -> None:
    tenant, name = service.spec.tenant, service.metadata.name
    if caller.role != "admin" and caller.tenant != tenant:
        raise Forbidden(f"InferenceService {name}: your token belongs to tenant "
                        f"{caller.tenant!r}, not {tenant!r}")


def plan_service(app: App, service: InferenceService, tenants: Mapping[str, Any],
                 nodes: Mapping[str, Any], jobs_in_request: set[str]) -> tuple[dict[str, Any], str]:
    """The spec to store (requests defaulted) and kubectl's word for what applying does."""
    name, spec = service.metadata.name, service.spec
    if spec.tenant not in tenants:
        known = ", ".join(sorted(tenants)) or "none yet"
        raise UnknownReferenceError(
            f"InferenceService {name}: tenant {spec.tenant!r} does not exist (tenants: {known})")
    if spec.model.path is not None and not spec.model.path.startswith("/"):
        raise InputError(
            f"InferenceService {name}: spec.model.path: expected an absolute path, got "
            f"{spec.model.path!r}", hint="shoal apply -f resolves a relative path against the "
            "manifest's folder; over the API, send an absolute one")
    source = spec.model.from_
    if source is not None and source.training_job not in jobs_in_request:
        try:
            app.store.get_job(job_key(spec.tenant, source.training_job))
        except NotFoundError:
            raise UnknownReferenceError(
                f"InferenceService {name}: spec.model.from.trainingJob: tenant {spec.tenant} "
                f"has no TrainingJob {source.training_job!r}") from None
    replica = TrainingJob.model_validate(replica_job(name, f"{name}-r1", 0, spec, ["python"]))
    replica = with_tenant_defaults(replica, dict(tenants))
    try:
        check_job(replica, dict(tenants), dict(nodes))
    except InputError as exc:
        # The replica's job is Shoal's doing: name the service, not the job.
        message = exc.message.replace(f"TrainingJob {replica.metadata.name}: ", "")
        raise type(exc)(f"InferenceService {name}: one replica: {message}",
                        hint=exc.hint) from None
    stored = service.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    stored["resources"] = replica.spec.pod_sets[0].resources.model_dump(
        mode="json", by_alias=True, exclude_none=True)
    found = [s for s in app.store.services(spec.tenant) if s["name"] == job_key(spec.tenant, name)]
    if not found:
        return stored, "created"
    return stored, "unchanged" if found[0]["spec"] == stored and not found[0]["deleted"] \
        else "configured"


def service_view(record: Mapping[str, Any], live: Live) -> dict[str, Any]:
    """What ``get services`` shows of a stored service, and ``-o json`` gives; ``live``
    adds what only the running plane knows (its router's ``url``, the recent ``p95_s``)."""
    state, spec = record["state"], record["spec"]
    key = record["name"]
    now = live(key)
    revisions = [
        {**{k: v for k, v in r.items() if k != "name"}, "name": job_name(r["name"])}
        for r in state.get("revisions", [])
    ]
    traffic = {job_name(k): v for k, v in (state.get("traffic") or {}).items()}
    replicas = {job_name(k): v for k, v in (state.get("replicas") or {}).items()}
    stable, canary = state.get("stable"), state.get("canary")
    phase = "Deleting" if record["deleted"] else state.get("phase", "Loading")
    return {
        "name": job_name(key), "tenant": record["tenant"], "phase": phase,
        "url": now.get("url"), "revisions": revisions, "traffic": traffic, "replicas": replicas,
        "stable": job_name(stable) if stable else None,
        "canary": job_name(canary) if canary else None,
        "autoscaling": spec.get("autoscaling", {}), "minReplicas": spec["replicas"]["min"],
        "maxReplicas": spec["replicas"]["max"], "sloP95Ms": spec.get("autoscaling", {}).get(
            "sloP95Ms"),
        "p95_s": now.get("p95_s"), "request": record.get("request") or None,
    }


_REVISION_FIELDS = ("revision", "stable", "previous")


def _short(event: dict[str, Any]) -> dict[str, Any]:
    """An event as people read it: revisions and the service by their names, no tenant."""
    data = dict(event.get("data") or {})
    for key in _REVISION_FIELDS:
        if isinstance(data.get(key), str):
            data[key] = job_name(data[key])
    return {**event, "service": job_name(str(event.get("service"))), "data": data}


def _scope(caller: Caller) -> str | None:
    return None if caller.role == "admin" else caller.tenant or ""


def _visible(app: App, caller: Caller, name: str, tenant: str | None) -> Mapping[str, Any]:
    scope = _scope(caller)
    if scope is not None:
        if tenant not in (None, scope):
            raise NotFoundError(f"service '{name}' not found")
        tenant = scope
    found = [s for s in app.store.services(tenant) if job_name(s["name"]) == name]
    if not found:
        raise NotFoundError(f"service '{name}' not found"
                            + (f" in tenant '{tenant}'" if tenant and scope is None else ""))
    if len(found) > 1:
        owners = ", ".join(sorted(s["tenant"] for s in found))
        raise InputError(f"service '{name}' exists in tenants {owners}",
                         hint="say which: --tenant T (the API's ?tenant=T)")
    return found[0]


def list_services(app: App, caller: Caller, live: Live) -> list[dict[str, Any]]:
    return [service_view(s, live) for s in app.store.services(_scope(caller))]


def get_service(app: App, caller: Caller, name: str, tenant: str | None,
                live: Live) -> dict[str, Any]:
    record = _visible(app, caller, name, tenant)
    events = [_short(e) for e in app.store.events(tenant=record["tenant"])
              if e.get("service") == record["name"]]
    return {**service_view(record, live), "spec": record["spec"], "events": events}


def delete_service(app: App, caller: Caller, name: str, tenant: str | None,
                   live: Live) -> dict[str, Any]:
    record = _visible(app, caller, name, tenant)
    deleted = app.store.delete_service(record["name"])
    app.wake()
    return service_view(deleted, live)


def rollout(app: App, caller: Caller, name: str, action: str, tenant: str | None,
            live: Live) -> dict[str, Any]:
    """Ask for the canary to be promoted or aborted; refused when there is none to act on."""
    if action not in ("promote", "abort"):
        raise InputError(f"rollout: expected promote or abort, got {action!r}")
    record = _visible(app, caller, name, tenant)
    state = record["state"]
    canary = state.get("canary")
    if canary is None:
        raise InputError(f"service {name} has no canary to {action}")
    if action == "promote":
        phase = next((r["phase"] for r in state.get("revisions", []) if r["name"] == canary), "")
        if phase != "Ready":
            raise InputError(f"canary {job_name(canary)} is not ready yet")
    asked = app.store.request_rollout(record["name"], action)
    app.wake()
    return service_view(asked, live)
