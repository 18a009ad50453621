"""Which group version serves each kind, chosen by asking the server (discovery).

Kubernetes moves kinds between versions (``PodDisruptionBudget`` is
``policy/v1`` from 1.21 and ``policy/v1beta1`` before; ``PriorityClass``
``scheduling.k8s.io/v1`` from 1.14).  ``CANDIDATES`` lists, per kind Shoal
uses, the versions it can write, newest first; ``Discovery.kind`` returns
the first one the server serves, with the plural and scope the server
reports, and remembers it.  Only v1.20.2 is tested (``../shared/kube``);
there every tenancy kind is served at the first candidate and
``PodDisruptionBudget`` at its second.

No ``kubernetes`` import: the resource lists come from a callable (the
client seam, or a test's dict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.errors import UnavailableError

CANDIDATES: dict[str, tuple[str, ...]] = {
    "Namespace": ("v1",),
    "Node": ("v1",),
    "Pod": ("v1",),
    "Service": ("v1",),
    "Endpoints": ("v1",),
    "ConfigMap": ("v1",),
    "ServiceAccount": ("v1",),
    "Deployment": ("apps/v1",),
    "PersistentVolumeClaim": ("v1",),
    "Event": ("v1",),
    "Job": ("batch/v1",),
    "ResourceQuota": ("v1",),
    "LimitRange": ("v1",),
    "NetworkPolicy": ("networking.k8s.io/v1",),
    "Role": ("rbac.authorization.k8s.io/v1",),
    "RoleBinding": ("rbac.authorization.k8s.io/v1",),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1",),
    "PriorityClass": ("scheduling.k8s.io/v1", "scheduling.k8s.io/v1beta1"),
    "PodDisruptionBudget": ("policy/v1", "policy/v1beta1"),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1",),
    "Lease": ("coordination.k8s.io/v1",),
    "Tenant": ("shoal.dev/v1alpha1",),
    "TrainingJob": ("shoal.dev/v1alpha1",),
    "InferenceService": ("shoal.dev/v1alpha1",),
}
"""Group versions Shoal can write, per kind, in order of preference."""


@dataclass(frozen=True)
class ApiKind:
    """Where a kind is served."""

    kind: str
    group: str
    """"" for the core group."""
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def snake(self) -> str:
        """``ResourceQuota`` -> ``resource_quota`` (the core client's method names)."""
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in self.kind).lstrip("_")


ResourceLists = Callable[[str], dict[str, Any] | None]
"""group version -> the server's APIResourceList, or None when it is not served."""


class Discovery:
    """The served version of each kind, asked for once per group version."""

    def __init__(self, resources: ResourceLists) -> None:
        self._resources = resources
        self._lists: dict[str, dict[str, Any] | None] = {}
        self._kinds: dict[str, ApiKind] = {}

    def kind(self, kind: str) -> ApiKind:
        """Where ``kind`` is served; UnavailableError when no candidate version is."""
        if kind not in self._kinds:
            self._kinds[kind] = self._find(kind)
        return self._kinds[kind]

    def api_version(self, kind: str) -> str:
        return self.kind(kind).api_version

    def forget(self) -> None:
        """Ask again next time (after CRDs were installed or the server upgraded)."""
        self._lists.clear()
        self._kinds.clear()

    def _find(self, kind: str) -> ApiKind:
        candidates = CANDIDATES.get(kind)
        if candidates is None:
            raise KeyError(f"no known group version for kind {kind!r}")
        for group_version in candidates:
            found = self._served(group_version, kind)
            if found is not None:
                return found
        raise UnavailableError(
            f"the API server serves {kind} at none of {', '.join(candidates)}",
            hint="install Shoal's CRDs" if kind in ("Tenant", "TrainingJob", "InferenceService")
            else None,
        )

    def _served(self, group_version: str, kind: str) -> ApiKind | None:
        if group_version not in self._lists:
            self._lists[group_version] = self._resources(group_version)
        listing = self._lists[group_version]
        for resource in (listing or {}).get("resources", []):
            if resource.get("kind") == kind and "/" not in resource.get("name", "/"):
                group, _, version = group_version.rpartition("/")
                return ApiKind(kind, group, version, resource["name"],
                               bool(resource.get("namespaced")))
        return None
