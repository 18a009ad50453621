"""What a Tenant becomes on Kubernetes: the objects the tenancy reconciler keeps in place.

``tenant_objects(tenant, cohort)`` is a pure function from the Tenant model
(and the other tenants of its cohort, which bound what it can borrow) to:

* a ``Namespace`` named after the tenant, labelled ``shoal.dev/tenant``,
  owned by the Tenant object (so the garbage collector removes it, and all
  in it, with the Tenant even while the operator is down);
* in it, a ``ResourceQuota`` and a ``LimitRange`` (``tenancy_quota.py``),
  four ``NetworkPolicy`` objects (``tenancy_network.py``), a ``Role`` and its
  ``RoleBinding`` for the tenant's members (``tenancy_access.py``);
* the cluster-wide ``PriorityClass`` of each built-in priority the tenant may
  use (shared by tenants, so never deleted with one).

A tenant whose name cannot name a Namespace (a DNS-1123 *label*: no dots, at
most 63 characters, where Tenant names may be longer subdomains) or names
a system one (``default``, ``kube-*``) raises ``ManifestError`` saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shoal.domain.manifest_errors import format_path
from shoal.domain.tenant import Tenant
from shoal.errors import ManifestError
from shoal.runtime.kubernetes.discovery import CANDIDATES
from shoal.runtime.kubernetes.tenancy_access import (
    member_role,
    members_binding,
    priority_class,
    priority_classes,
)
from shoal.runtime.kubernetes.tenancy_network import network_policies
from shoal.runtime.kubernetes.tenancy_quota import limit_range, resource_quota

Body = dict[str, Any]
ApiVersions = Callable[[str], str]
"""kind -> the group version to write it in (discovery's choice)."""

TENANT_LABEL = "shoal.dev/tenant"
MANAGED_BY = ("app.kubernetes.io/managed-by", "shoal")

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RESERVED = ("default",)
_RESERVED_PREFIX = "kube-"


def preferred_version(kind: str) -> str:
    """The newest group version Shoal writes ``kind`` in (when no server was asked)."""
    return CANDIDATES[kind][0]


@dataclass(frozen=True)
class TenantObjects:
    """Everything one tenant needs, in the order it is created."""

    namespace: Body
    namespaced: tuple[Body, ...]
    cluster: tuple[Body, ...]

    def all(self) -> tuple[Body, ...]:
        return (self.namespace, *self.namespaced, *self.cluster)


def namespace_problem(name: str) -> str | None:
    """Why ``name`` cannot be a tenant's namespace, or None when it can."""
    if len(name) > 63:
        return f"tenant name {name!r} is {len(name)} characters; a namespace has at most 63"
    if not _LABEL.match(name):
        return (f"tenant name {name!r} cannot name a namespace: lowercase letters, digits "
                f"and '-' only (no dots), starting and ending with a letter or digit")
    if name in _RESERVED or name.startswith(_RESERVED_PREFIX):
        return f"tenant name {name!r} is a system namespace's (default, kube-*)"
    return None


def tenant_objects(
    tenant: Tenant,
    cohort: Iterable[Tenant] = (),
    owner: Body | None = None,
    api_version: ApiVersions = preferred_version,
    shared_gpus: bool = False,
) -> TenantObjects:
    """The desired objects of ``tenant``; ``cohort``: the other tenants (any cohort).

    ``owner`` is the Tenant object as the server holds it (for the Namespace's
    ownerReference); without it the Namespace has none.  ``shared_gpus``:
    whether a node of the cluster shares its GPUs (``tenancy_quota``).
    """
    name = tenant.metadata.name
    problem = namespace_problem(name)
    if problem is not None:
        raise ManifestError(problem, hint="rename the tenant")
    labels = tenant_labels(name)
    namespaced = [
        resource_quota(tenant, cohort, shared_gpus), limit_range(tenant),
        *network_policies(), member_role(), members_binding(name),
    ]
    for body in namespaced:
        body["metadata"].update(namespace=name, labels=dict(labels))
    cluster = priority_classes(tenant)
    for body in cluster:
        body["metadata"]["labels"] = dict([MANAGED_BY])
    namespace: Body = {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    if owner is not None:
        namespace["metadata"]["ownerReferences"] = [owner_reference(owner)]

    def versioned(body: Body) -> Body:
        return {"apiVersion": api_version(body["kind"]), **body}

    return TenantObjects(versioned(namespace), tuple(map(versioned, namespaced)),
                         tuple(map(versioned, cluster)))


def class_object(value: int, api_version: Callable[[str], str]) -> Body | None:
    """The PriorityClass pods of priority ``value`` name, as a tenant's reconcile writes
    it (None: they name none)."""
    body = priority_class(value)
    if body is None:
        return None
    body["metadata"]["labels"] = dict([MANAGED_BY])
    return {"apiVersion": api_version("PriorityClass"), **body}


def tenant_labels(name: str) -> dict[str, str]:
    return {TENANT_LABEL: name, MANAGED_BY[0]: MANAGED_BY[1]}


def owner_reference(owner: Body) -> Body:
    """A reference to ``owner`` (as read from the server) that makes it the controller."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True}


def tenant_from_resource(body: Body) -> Tenant:
    """The Tenant model of a Tenant object read from the server; ManifestError if invalid.

    The CRD's schema cannot check what the model checks in code (a
    ``lendingLimit`` above ``nominal``), so this can fail on a stored object.
    """
    meta = body.get("metadata", {})
    manifest = {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {key: meta[key] for key in ("name", "labels", "annotations") if key in meta},
        "spec": body.get("spec", {}),
    }
    try:
        return Tenant.model_validate(manifest)
    except ValidationError as exc:
        problems = "; ".join(f"{format_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"Tenant {meta.get('name', '?')} is invalid: {problems}") from exc
