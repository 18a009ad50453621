"""The tenancy reconciler: load a Tenant and its objects, decide, apply, report.

``reconcile_tenant(kube, name)`` reads the Tenant (and the other tenants,
whose lending bounds its ResourceQuota), computes its objects
(``tenancy.py``), compares each with the live one (``sync.py``) and
creates, updates or recreates what is missing or drifted: a NetworkPolicy
deleted by hand comes back, a ResourceQuota edited by hand is restored.
Every update is a PUT fenced by the resourceVersion it read, so a
concurrent change makes it fail with ``ConflictError`` (retry) rather than
overwrite.  It then sets the Tenant's ``Ready`` condition and
``status.namespace``, writing only when they change, so a reconcile that
finds everything in place writes nothing.  Each change to the objects of a
namespace that existed already (one deleted or edited by hand, or one that
follows a change of the Tenant or its cohort) is also recorded as a
``DriftRepaired`` Event on the Tenant, saying what was done and which
fields differed; the first reconcile, which creates them, records none.

A Tenant whose nominal quota asks for more than the cluster's nodes have
(more GPUs of a model, CPU or memory than all Ready nodes together) is
accepted all the same (quota is a promise about sharing; nodes come and go),
with the warning condition ``QuotaFits=False``, reason
``QuotaExceedsCluster``, naming what exceeds and by how much; ``True`` when
it fits.  Nodes are read at each reconcile of the tenant (a change of nodes
alone does not reconcile it, but the first node that shares its GPUs, or
the last one going, reconciles every tenant: the ResourceQuota then has no
GPU count, ``tenancy_quota``).

Problems a retry cannot fix become ``Ready=False`` with a reason, not an
exception: ``InvalidTenant`` (a name that cannot name a namespace, a spec
the model refuses), ``NamespaceTaken`` (a namespace of that name that
Shoal did not create; it is never adopted or deleted).  A namespace still
being deleted is ``NamespaceTerminating`` and raises ``UnavailableError``
(retry later).  A Tenant that is gone or being deleted is cleaned up: its
namespace is deleted, and everything in it with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shoal.domain.base import API_VERSION
from shoal.domain.resources import CPU, GPU_PREFIX, MEMORY, MILLI
from shoal.domain.tenant import Tenant
from shoal.errors import AlreadyExistsError, ConflictError, ManifestError, UnavailableError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import nodes_of
from shoal.runtime.kubernetes.gpu_resources import shares_gpus
from shoal.runtime.kubernetes.status import Condition, TenantStatus
from shoal.runtime.kubernetes.sync import Action, plan
from shoal.runtime.kubernetes.tenancy import (
    TENANT_LABEL,
    TenantObjects,
    tenant_from_resource,
    tenant_objects,
)

READY = "Ready"
QUOTA_FITS = "QuotaFits"
DRIFT_REPAIRED = "DriftRepaired"
EVENT_NAMESPACE = "default"
_EVENT_MESSAGE_MAX = 1024
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class TenancyOutcome:
    """What one reconcile did."""

    tenant: str
    actions: tuple[Action, ...] = ()
    ready: Condition | None = None
    """The condition written (None when the Tenant is gone)."""
    deleting: bool = False
    """The tenant is gone or going: its namespace was asked to go."""
    skipped: tuple[str, ...] = field(default=())
    """Other tenants left out of the quota ceiling because they are invalid."""

    @property
    def changes(self) -> list[Action]:
        return [action for action in self.actions if action.verb != "keep"]


def reconcile_tenant(kube: Kube, name: str, now: Clock = _utcnow) -> TenancyOutcome:
    """Bring tenant ``name``'s objects to what its Tenant says (see the module's doc)."""
    resources = kube.list("Tenant")
    me = next((t for t in resources if t["metadata"]["name"] == name), None)
    if me is None or me["metadata"].get("deletionTimestamp"):
        return TenancyOutcome(name, deleting=not cleanup_tenant(kube, name))
    nodes = kube.list("Node")
    try:
        objects, skipped = _desired(kube, me, resources, nodes)
    except ManifestError as exc:
        return _report(kube, me, now, "InvalidTenant", str(exc))
    live_ns = kube.get("Namespace", name)
    if live_ns is not None and not _ours(live_ns, name, me["metadata"].get("uid")):
        return _report(kube, me, now, "NamespaceTaken",
                       f"namespace {name} exists and was not created by Shoal for this tenant; "
                       f"delete it or rename the tenant")
    if live_ns is not None and live_ns["metadata"].get("deletionTimestamp"):
        _report(kube, me, now, "NamespaceTerminating",
                f"namespace {name} is still being deleted; it is recreated once it is gone")
        raise UnavailableError(f"namespace {name} is terminating", retry_after_s=5.0)
    actions = [_apply(kube, plan(objects.namespace, live_ns))]
    for desired in (*objects.namespaced, *objects.cluster):
        meta = desired["metadata"]
        live = kube.get(desired["kind"], meta["name"], meta.get("namespace"))
        actions.append(_apply(kube, plan(desired, live)))
    if live_ns is not None:
        # Its objects were made before: a change now repairs one that was
        # deleted or edited by hand (or follows a change of the Tenant).
        for action in actions:
            if action.verb != "keep":
                _repaired(kube, me, action, now)
    done = _report(kube, me, now, "Reconciled",
                   f"namespace {name} with its quota, default requests, network policies, "
                   f"member role and priority classes is in place", namespace=name,
                   fits=quota_fits(tenant_from_resource(me), nodes))
    return TenancyOutcome(name, tuple(actions), done.ready, skipped=skipped)


def cleanup_tenant(kube: Kube, name: str) -> bool:
    """Delete the tenant's namespace if Shoal made it; True once there is none of Shoal's."""
    live = kube.get("Namespace", name)
    if live is None or not _ours(live, name):
        return True
    if not live["metadata"].get("deletionTimestamp"):
        kube.delete("Namespace", name)
    return False


def is_drift(kube: Kube, live: Body) -> bool:
    """Whether ``live``, an object Shoal made, differs from what its tenant needs now.

    Only reads (the Tenants, and the Nodes for a ResourceQuota); lets a
    watcher skip the events of changes that are not drift, such as a
    ResourceQuota's usage in its status.
    """
    meta = live["metadata"]
    owner = (meta.get("labels") or {}).get(TENANT_LABEL)
    where = (live["kind"], meta["name"], meta.get("namespace"))
    resources = kube.list("Tenant")
    nodes = kube.list("Node") if live["kind"] == "ResourceQuota" else []
    for me in resources:
        if owner is not None and me["metadata"]["name"] != owner:
            continue
        try:
            objects, _ = _desired(kube, me, resources, nodes)
        except ManifestError:
            continue
        for desired in objects.all():
            dmeta = desired["metadata"]
            if (desired["kind"], dmeta["name"], dmeta.get("namespace")) == where:
                return plan(desired, live).verb != "keep"
    return False


def _desired(kube: Kube, me: Body, resources: list[Body],
             nodes: list[Body]) -> tuple[TenantObjects, tuple[str, ...]]:
    tenant = tenant_from_resource(me)
    others, skipped = [], []
    for body in resources:
        if body is me or body["metadata"].get("deletionTimestamp"):
            continue
        try:
            others.append(tenant_from_resource(body))
        except ManifestError:
            skipped.append(body["metadata"]["name"])
    objects = tenant_objects(tenant, others, owner=me, api_version=kube.discovery.api_version,
                             shared_gpus=any(map(shares_gpus, nodes)))
    return objects, tuple(skipped)


def _ours(namespace: Body, tenant: str, uid: str | None = None) -> bool:
    """Shoal made it for this tenant: it carries the tenant's label or is owned by its Tenant."""
    meta = namespace["metadata"]
    if (meta.get("labels") or {}).get(TENANT_LABEL) == tenant:
        return True
    return uid is not None and any(r.get("uid") == uid for r in meta.get("ownerReferences") or [])


def _apply(kube: Kube, action: Action) -> Action:
    body, meta = action.body, action.body["metadata"]
    if action.verb == "create":
        try:
            kube.create(body)
        except AlreadyExistsError as exc:  # made since it was read: decide again
            raise ConflictError(str(exc)) from exc
    elif action.verb == "update":
        kube.replace(body)
    elif action.verb == "recreate":
        kube.delete(body["kind"], meta["name"], meta.get("namespace"))
        kube.create(body)
    return action


def repair_message(action: Action) -> str:
    """What a ``DriftRepaired`` Event says of one change."""
    done = {"create": "created", "update": "updated", "recreate": "recreated"}[action.verb]
    why = (f"{', '.join(action.changed)} differed from the Tenant"
           if action.changed else "it was missing")
    return f"{done} {action.key}: {why}"[:_EVENT_MESSAGE_MAX]


def _repaired(kube: Kube, me: Body, action: Action, now: Clock) -> None:
    """A ``DriftRepaired`` Event on the Tenant (cluster-scoped: in namespace ``default``,
    as Kubernetes records events of nodes)."""
    meta = me["metadata"]
    message = repair_message(action)
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = hashlib.blake2b(f"{meta.get('uid')}{stamp}{message}".encode(),
                             digest_size=6).hexdigest()
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name'][:200]}.{digest}", "namespace": EVENT_NAMESPACE},
        "involvedObject": {"apiVersion": me.get("apiVersion", API_VERSION),
                           "kind": "Tenant", "name": meta["name"], "uid": meta.get("uid", "")},
        "reason": DRIFT_REPAIRED, "message": message, "type": "Normal",
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "source": {"component": "shoal"},
    }
    try:
        kube.create(body)
    except Exception:  # an event is a note for people: never worth failing a reconcile over
        return


def quota_fits(tenant: Tenant, nodes: list[Body]) -> tuple[str, str, str]:
    """``(status, reason, message)`` of ``QuotaFits``: does nominal quota fit in the nodes?"""
    have: dict[str, int] = {CPU: 0, MEMORY: 0}
    for node in nodes_of(nodes, []):
        have[CPU] += node.cpu
        have[MEMORY] += node.memory
        if node.gpu_count:
            key = GPU_PREFIX + node.gpu_model
            have[key] = have.get(key, 0) + node.gpu_count * MILLI
    over = []
    for resource, (nominal, _, _) in sorted(tenant.spec.quota.by_resource().items()):
        if resource not in have and not resource.startswith(GPU_PREFIX):
            continue  # pods: no node capacity to compare with
        if nominal > have.get(resource, 0):
            over.append(_exceeds(resource, nominal, have.get(resource, 0)))
    if over:
        return ("False", "QuotaExceedsCluster",
                f"nominal quota exceeds what the cluster's Ready nodes have: {'; '.join(over)}; "
                f"the tenant is accepted, but cannot use all of it at once")
    return ("True", "QuotaFits", "nominal quota fits in the cluster's Ready nodes")


def _exceeds(resource: str, nominal: int, have: int) -> str:
    if resource.startswith(GPU_PREFIX):
        model = resource[len(GPU_PREFIX):]
        return f"{nominal / MILLI:g} {model} GPUs asked, {have / MILLI:g} in the cluster"
    if resource == CPU:
        return f"{nominal / MILLI:g} CPUs asked, {have / MILLI:g} in the cluster"
    return f"{nominal / 1024:g} GiB of memory asked, {have / 1024:g} GiB in the cluster"


def _condition(old: Condition | None, kind: str, status: str, reason: str, message: str,
               now: Clock) -> Condition:
    changed_at = old.last_transition_time if old is not None and old.status == status else now()
    return Condition(type=kind, status=status,
                     reason=reason, message=message, last_transition_time=changed_at)


def _report(kube: Kube, me: Body, now: Clock, reason: str, message: str,
            namespace: str = "", fits: tuple[str, str, str] | None = None) -> TenancyOutcome:
    """Set the Ready condition (True only for ``Reconciled``) unless it says that already.

    ``fits``: the ``QuotaFits`` condition to set with it (None: left as it is).
    """
    name = me["metadata"]["name"]
    status = TenantStatus.model_validate(me.get("status") or {})
    ready = "True" if reason == "Reconciled" else "False"
    old = next((c for c in status.conditions if c.type == READY), None)
    old_fits = next((c for c in status.conditions if c.type == QUOTA_FITS), None)
    same_fits = fits is None or (old_fits is not None and (
        old_fits.status, old_fits.reason, old_fits.message) == fits)
    if old is not None and (old.status, old.reason, old.message) == (ready, reason, message) \
            and status.namespace == namespace and same_fits:
        return TenancyOutcome(name, ready=old)
    condition = _condition(old, READY, ready, reason, message, now)
    others = [c for c in status.conditions if c.type not in (READY, QUOTA_FITS)]
    extra = [] if old_fits is None else [old_fits]
    if fits is not None:
        extra = [_condition(old_fits, QUOTA_FITS, *fits, now)]
    status = status.model_copy(update={"namespace": namespace,
                                       "conditions": [*others, condition, *extra]})
    body: dict[str, Any] = {
        **{k: v for k, v in me.items() if k != "status"},
        # "" reads as null on this 1.20 build (kubernetes#99804): defaults are left out
        "status": status.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }
    kube.replace_status(body)
    return TenancyOutcome(name, ready=condition)
