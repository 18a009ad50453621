"""Admission checks made before anything is written: who may apply what, and
whether a job can ever run.

These checks are pure: they read the tenants and node pools they are given
(the store's merged with those of the same request, or only those of the
files ``shoal validate`` reads) and never the filesystem; what depends on the
machine that runs the pods is the ``Workspace``'s to check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shoal.app.ports import Caller
from shoal.domain.cluster import ClusterState
from shoal.domain.job import TrainingJob
from shoal.domain.manifest import Manifest
from shoal.domain.names import job_key
from shoal.domain.nodes import NodePool, NodePoolSpec, expand_pool
from shoal.domain.replica import MODEL_ANNOTATION, RESERVED_LABELS
from shoal.domain.service import InferenceService
from shoal.domain.tenant import Tenant, TenantSpec
from shoal.domain.workload import from_training_job
from shoal.errors import Forbidden, InputError, UnknownReferenceError
from shoal.policy.flavors import candidates, never_fits, restrict
from shoal.policy.placement import Placer, ScorerContext, make_scorer, node_ranks
from shoal.policy.quota import TenantQuota

Specs = Mapping[str, dict[str, Any]]


def authorise(caller: Caller, manifest: Manifest) -> None:
    """Forbidden unless the caller may apply this document."""
    kind, name = manifest.kind, manifest.metadata.name
    if isinstance(manifest, NodePool | Tenant):
        if caller.role != "admin":
            raise Forbidden(f"{kind} {name}: only an admin token may change {kind}s")
        return
    if isinstance(manifest, TrainingJob):
        tenant = manifest.spec.tenant
        if caller.role != "admin" and caller.tenant != tenant:
            raise Forbidden(
                f"TrainingJob {name}: your token belongs to tenant {caller.tenant!r}, "
                f"not {tenant!r}"
            )
        reserved = sorted(set(manifest.metadata.labels) & set(RESERVED_LABELS))
        if reserved:
            raise InputError(
                f"TrainingJob {name}: metadata.labels.{reserved[0]}: the label is Shoal's "
                "(it marks the replicas of an InferenceService)")
        if MODEL_ANNOTATION in manifest.metadata.annotations:
            raise InputError(
                f"TrainingJob {name}: metadata.annotations.{MODEL_ANNOTATION}: the annotation "
                "is Shoal's (it shows an InferenceService replica its model)")
        return
    if isinstance(manifest, InferenceService):
        tenant = manifest.spec.tenant
        if caller.role != "admin" and caller.tenant != tenant:
            raise Forbidden(
                f"InferenceService {name}: your token belongs to tenant {caller.tenant!r}, "
                f"not {tenant!r}"
            )
        return
    raise InputError(f"{kind} {name}: the control plane does not accept kind {kind}")


def check_tenant(job: TrainingJob, tenants: Specs) -> None:
    """The job's tenant exists and allows its priority."""
    name, spec = job.metadata.name, job.spec
    if spec.tenant not in tenants:
        known = ", ".join(sorted(tenants)) or "none yet"
        raise UnknownReferenceError(
            f"TrainingJob {name}: tenant {spec.tenant!r} does not exist (tenants: {known})"
        )
    quota = TenantQuota.from_spec(spec.tenant, TenantSpec.model_validate(tenants[spec.tenant]))
    allowed = quota.allowed_priorities
    if allowed is not None and spec.priority_value not in allowed:
        raise InputError(
            f"TrainingJob {name}: priority {spec.priority!r} is not allowed for tenant "
            f"{spec.tenant} (allowed: {', '.join(str(p) for p in sorted(allowed))})"
        )


def with_tenant_defaults(job: TrainingJob, tenants: Specs) -> TrainingJob:
    """``job`` with its tenant's ``defaultRequests`` (else Shoal's) for pods that request none.

    An unknown tenant gets Shoal's defaults; ``check_tenant`` rejects the job anyway.
    """
    spec = tenants.get(job.spec.tenant)
    defaults = None if spec is None else TenantSpec.model_validate(spec).default_requests
    return job.with_default_requests(defaults)


def _empty_cluster(nodes: Specs) -> tuple[ClusterState, Placer] | None:
    """The node pools' nodes, all empty, and a placer over them; None without nodes."""
    cluster = [
        node
        for pool, spec in sorted(nodes.items())
        for node in expand_pool(pool, NodePoolSpec.model_validate(spec))
    ]
    if not cluster:
        return None
    state = ClusterState(cluster)
    placer = Placer(make_scorer("most-allocated", ScorerContext()), node_ranks(len(state), None))
    return state, placer


def check_fits(job: TrainingJob, nodes: Specs) -> None:
    """The job fits on the node pools, even if it has to wait for them to empty."""
    name = job.metadata.name
    empty = _empty_cluster(nodes)
    if empty is None:
        raise InputError(f"TrainingJob {name}: the control plane has no nodes yet")
    reason = never_fits(*empty, from_training_job(job))
    if reason is not None:
        raise InputError(f"TrainingJob {name}: cannot run on any node: {reason}")


def unplaceable(jobs: Iterable[TrainingJob], tenants: Specs, nodes: Specs) -> list[str]:
    """The keys (``tenant/name``) of the jobs that no node of ``nodes`` could ever run (even
    empty) with a GPU model their tenant has quota for: the scheduler would
    fail them as inadmissible.

    A job that no node pool could matter for (unknown tenant, no quota for
    its GPUs) is not listed.  The cluster is built once, and identical
    requests are checked once (the placer's memo).
    """
    empty = _empty_cluster(nodes)
    stranded = []
    for job in jobs:
        spec = tenants.get(job.spec.tenant)
        if spec is None:
            continue
        quota = TenantQuota.from_spec(job.spec.tenant, TenantSpec.model_validate(spec))
        workload = from_training_job(job)
        flavors = candidates(workload, quota)
        if not flavors:
            continue
        if empty is None or all(never_fits(*empty, restrict(workload, flavor)) is not None
                                for flavor in flavors):
            stranded.append(job_key(job.spec.tenant, job.metadata.name))
    return stranded


def check_job(job: TrainingJob, tenants: Specs, nodes: Specs) -> None:
    check_tenant(job, tenants)
    check_fits(job, nodes)


def check_unique(manifests: list[Manifest]) -> None:
    """One request may not define the same object twice."""
    seen: set[tuple[str, str]] = set()
    for manifest in manifests:
        key = (manifest.kind, manifest.metadata.name)
        if key in seen:
            raise InputError(f"{key[0]} {key[1]} is defined twice")
        seen.add(key)


def offline_checks(manifests: list[Manifest], strict: bool) -> list[str]:
    """The checks ``apply`` makes, against only the objects of ``manifests``.

    Returns notes on what could not be checked without the control plane
    (a tenant or node pools defined elsewhere); with ``strict`` those are
    errors instead.
    """
    check_unique(manifests)
    tenants = {m.metadata.name: _dump(m) for m in manifests if isinstance(m, Tenant)}
    nodes = {m.metadata.name: _dump(m) for m in manifests if isinstance(m, NodePool)}
    notes: list[str] = []
    for job in (m for m in manifests if isinstance(m, TrainingJob)):
        name, tenant = job.metadata.name, job.spec.tenant
        job = with_tenant_defaults(job, tenants)
        if tenant in tenants:
            check_tenant(job, tenants)
        else:
            notes.append(f"TrainingJob {name}: tenant {tenant!r} is not defined in these files; "
                         "its existence and allowed priorities are checked when applied")
        if nodes:
            check_fits(job, nodes)
        else:
            notes.append(f"TrainingJob {name}: no NodePool in these files; whether it fits on "
                         "a node is checked when applied")
    if strict and notes:
        raise UnknownReferenceError(f"{notes[0]} (--strict)")
    return notes


def _dump(manifest: Tenant | NodePool) -> dict[str, Any]:
    dumped: dict[str, Any] = manifest.spec.model_dump(mode="json", by_alias=True)
    return dumped
