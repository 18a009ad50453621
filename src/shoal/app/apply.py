"""Apply manifests: parse, authorise, check, then write everything or nothing.

The answer names what happened to each object in kubectl's words:
``created``, ``configured`` (a changed tenant or node pool) or ``unchanged``.
A job's spec never changes once submitted: applying a different spec under
the name of a live job is an ``ImmutableError`` and nothing is applied.

Checks run before the first write and create nothing (the workspace checks
the checkpoint folder could be written without creating it); the writes run
in one store transaction, and the files of a finished job whose name is
reused are removed as its last step, so a rejected request leaves no trace.
If a tenant or node pool changed between the checks and the transaction (an
admin deleted one), the new jobs are checked again inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shoal.app import services
from shoal.app.checks import Specs, authorise, check_job, check_unique, with_tenant_defaults
from shoal.app.core import App
from shoal.app.ports import Caller, JobRecord
from shoal.domain.job import TrainingJob
from shoal.domain.manifest import Manifest, parse_manifests
from shoal.domain.names import job_key
from shoal.domain.nodes import NodePool
from shoal.domain.phases import FINAL_PHASES
from shoal.domain.service import InferenceService
from shoal.domain.tenant import Tenant
from shoal.errors import AlreadyExistsError, ImmutableError, NotFoundError, PayloadTooLarge

Result = Literal["created", "configured", "unchanged"]

MAX_TEXT = 4 * 1024 * 1024
"""Largest manifest text accepted in one request (characters)."""


@dataclass(frozen=True)
class Planned:
    manifest: Manifest
    spec: dict[str, Any]
    result: Result
    reuses_name: bool = False  # a finished, deleted job of this name left files


def apply_text(app: App, caller: Caller, text: str, source: str) -> list[dict[str, str]]:
    """Apply every document of ``text`` or none; ``source`` names it in errors."""
    return apply_files(app, caller, [(source, text)])


def apply_files(app: App, caller: Caller, files: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Apply every document of every ``(source, text)`` or none at all."""
    size = sum(len(text) for _, text in files)
    if size > MAX_TEXT:
        raise PayloadTooLarge(
            f"{size} characters of manifests; at most {MAX_TEXT} per request (split them)"
        )
    manifests = [m for source, text in files for m in parse_manifests(text, source)]
    return apply_manifests(app, caller, manifests)


def apply_manifests(app: App, caller: Caller, manifests: list[Manifest]) -> list[dict[str, str]]:
    for manifest in manifests:
        authorise(caller, manifest)
    check_unique(manifests)
    store = app.store
    seen = (store.tenants(), store.nodes())
    tenants, nodes = dict(seen[0]), dict(seen[1])
    plans = {i: _plan(m, tenants, nodes) for i, m in enumerate(manifests)
             if isinstance(m, Tenant | NodePool)}
    for item in plans.values():  # later documents may define what earlier ones use
        if isinstance(item.manifest, Tenant):
            tenants[item.manifest.metadata.name] = item.spec
        elif isinstance(item.manifest, NodePool):
            nodes[item.manifest.metadata.name] = item.spec
    for i, manifest in enumerate(manifests):
        if isinstance(manifest, TrainingJob):
            # Stored with its tenant's default requests, so the scheduler, the
            # quota charge and the pods' cgroups all see the same numbers.
            defaulted = with_tenant_defaults(manifest, tenants)
            spec = defaulted.model_dump(mode="json", by_alias=True)
            plans[i] = _plan_job(app, caller, defaulted, spec)
    jobs_here = {m.metadata.name for m in manifests if isinstance(m, TrainingJob)}
    for i, manifest in enumerate(manifests):
        if isinstance(manifest, InferenceService):
            spec, result = services.plan_service(app, manifest, tenants, nodes, jobs_here)
            plans[i] = Planned(manifest, spec, result)  # type: ignore[arg-type]
    plan = [plans[i] for i in range(len(manifests))]
    for item in plan:
        job = item.manifest
        if isinstance(job, TrainingJob) and item.result == "created":
            check_job(job, tenants, nodes)
            app.workspace.check(job, tenants[job.spec.tenant])
    _write(app, plan, seen)
    return [{"kind": i.manifest.kind, "name": i.manifest.metadata.name, "result": i.result}
            for i in plan]


def _plan(manifest: Manifest, tenants: dict[str, Any], nodes: dict[str, Any]) -> Planned:
    name = manifest.metadata.name
    spec = manifest.spec.model_dump(mode="json", by_alias=True)
    stored = tenants if isinstance(manifest, Tenant) else nodes
    if name not in stored:
        return Planned(manifest, spec, "created")
    return Planned(manifest, spec, "unchanged" if stored[name] == spec else "configured")


def _plan_job(app: App, caller: Caller, job: TrainingJob, spec: dict[str, Any]) -> Planned:
    # Names are the tenant's own: another tenant's job of the same name is another job.
    name = job.metadata.name
    try:
        live: JobRecord | None = app.store.get_job(job_key(job.spec.tenant, name))
    except NotFoundError:
        live = None
    if live is None:
        return Planned(job, spec, "created")
    if live.deleted and live.phase in FINAL_PHASES:
        return Planned(job, spec, "created", reuses_name=True)
    if live.deleted:
        raise AlreadyExistsError(
            f"job '{name}' already exists",
            hint="it is being deleted; create it again once it is gone",
        )
    if live.manifest == spec:
        return Planned(job, spec, "unchanged")
    raise ImmutableError(
        f"TrainingJob {name}: jobs are immutable; delete it first "
        f"(shoal delete job {name}) to apply a changed spec"
    )


def _write(app: App, plan: list[Planned], seen: tuple[Specs, Specs]) -> None:
    store, now = app.store, app.clock.now()
    with store.transaction():
        _recheck(app, plan, seen)
        for item in plan:
            manifest, name = item.manifest, item.manifest.metadata.name
            if item.result == "unchanged":
                continue
            if isinstance(manifest, Tenant):
                store.put_tenant(name, item.spec)
                store.append_event(now, f"tenant-{item.result}", None, name, {})
            elif isinstance(manifest, NodePool):
                store.put_node(name, item.spec)
                store.append_event(now, f"nodepool-{item.result}", None, None, {"name": name})
            elif isinstance(manifest, TrainingJob):
                key = job_key(manifest.spec.tenant, name)
                row = store.create_job(key, manifest.spec.tenant, item.spec, now,
                                       app.workspace.checkpoint_dir(key))
                store.append_event(now, "submitted", key, row.tenant, {})
            elif isinstance(manifest, InferenceService):
                key = job_key(manifest.spec.tenant, name)
                store.put_service(key, manifest.spec.tenant, item.spec)
                store.append_event(now, f"service-{item.result}", None, manifest.spec.tenant,
                                   {"service": name})
        # Last, so that nothing before it can fail afterwards: the new job must
        # not see (or resume from) the files of the finished job it replaces.
        for item in plan:
            if item.reuses_name and isinstance(item.manifest, TrainingJob):
                app.workspace.forget(job_key(item.manifest.spec.tenant, item.manifest.metadata.name))
    app.wake()


def _recheck(app: App, plan: list[Planned], seen: tuple[Specs, Specs]) -> None:
    """Check the new jobs again if a tenant or node pool changed since they were
    checked (an admin deleted one meanwhile, say): inside the write transaction,
    so that no job is created for a tenant that is gone."""
    tenants, nodes = app.store.tenants(), app.store.nodes()
    if (tenants, nodes) == seen:
        return
    for item in plan:  # what this request defines itself
        if isinstance(item.manifest, Tenant):
            tenants[item.manifest.metadata.name] = item.spec
        elif isinstance(item.manifest, NodePool):
            nodes[item.manifest.metadata.name] = item.spec
    for item in plan:
        if isinstance(item.manifest, TrainingJob) and item.result == "created":
            check_job(item.manifest, tenants, nodes)
