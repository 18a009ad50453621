"""The verbs' control plane when it is a cluster: ``--kubeconfig PATH [--context NAME]``.

``ClusterApi`` answers the calls the verbs make of ``api.client.ShoalClient``
(``apply_files``, ``jobs``, ``job``, ``delete``, ``iter_log``, ...) with the
same data, so ``shoal get/describe`` print the same columns and the same JSON
on both: a TrainingJob becomes the control core's job record
(``runtime.kubernetes.cluster``, from the status the operator writes) and
then the application layer's views (``app.views``, ``app.usage``), as the
embedded API makes them.  Manifests go through the same checks as the
embedded ``apply`` first (``domain.manifest.parse_manifests``, ``app.checks``:
the same messages, exit 2, nothing written).

What a cluster keeps elsewhere is refused with one line: tokens (its users
are Kubernetes'), node pools (its nodes are Node objects).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shoal.api.client import ShoalClient
from shoal.app.checks import check_tenant, check_unique, with_tenant_defaults
from shoal.app.queries import AmbiguousNameError, check_pod
from shoal.app.services import service_view
from shoal.app.usage import capacity_of, node_spec, tenant_status_in
from shoal.app.views import job_detail, job_summary
from shoal.domain.cluster import ClusterState
from shoal.domain.job import TrainingJob
from shoal.domain.manifest import Manifest, parse_manifests
from shoal.domain.phases import ACTIVE_PHASES
from shoal.domain.service import InferenceServiceSpec
from shoal.domain.tenant import Tenant
from shoal.errors import Forbidden, InputError, NotFoundError, ShoalError

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.cluster import Cluster

Body = dict[str, Any]


class Changes(Protocol):
    """Watches of a cluster's objects (``runtime.kubernetes.changes``)."""

    def wait(self) -> None: ...

    def close(self) -> None: ...


@contextmanager
def connect(kubeconfig: Path, context: str | None) -> Iterator[ClusterApi]:
    """The cluster of ``kubeconfig``; errors inside name it in one line."""
    try:
        from shoal.runtime.kubernetes.cluster import Cluster
    except ImportError as exc:
        raise InputError(f"--kubeconfig needs the kube extra ({exc.name} is missing)",
                         hint="pip install 'shoal[kube]'") from exc
    cluster = Cluster.connect(kubeconfig, context)
    try:
        with cluster.reaching():
            yield ClusterApi(cluster)
    finally:
        cluster.close()


def _service_record(obj: Body) -> dict[str, Any]:
    """An InferenceService object as the embedded store's service row (``service_view``'s input)."""
    meta, status = obj["metadata"], obj.get("status") or {}
    raw = obj.get("spec") or {}
    try:
        spec = InferenceServiceSpec.model_validate(raw).model_dump(
            mode="json", by_alias=True, exclude_none=True)
    except ValueError:  # refused by the operator (status says why): shown as stored
        spec = {**raw, "replicas": {"min": 1, "max": 1, **(raw.get("replicas") or {})}}
    state = dict(status.get("control") or {})
    if status.get("phase"):
        state["phase"] = status["phase"]
    return {"name": f"{meta['namespace']}/{meta['name']}", "tenant": meta["namespace"],
            "spec": spec, "state": state, "deleted": bool(meta.get("deletionTimestamp")),
            "request": None}


def _url_of(obj: Body) -> Any:
    url = (obj.get("status") or {}).get("url")
    return lambda _key: {"url": url} if url else {}


def _not_here(what: str, instead: str) -> InputError:
    return InputError(f"{what}: not available with --kubeconfig ({instead})")


class ClusterApi:
    """What the verbs ask of a control plane, answered by a cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    # --- apply -------------------------------------------------------------------

    def apply_files(self, files: list[tuple[str, str]]) -> list[dict[str, str]]:
        """Check every document of every file, then create or update each (see Cluster.apply)."""
        manifests = [m for source, text in files for m in parse_manifests(text, source)]
        check_unique(manifests)
        self._check(manifests)
        return [{"kind": kind, "name": name, "result": result}
                for kind, name, result in self.cluster.apply(manifests)]

    def _check(self, manifests: list[Manifest]) -> None:
        """The embedded ``apply``'s checks of each job against its tenant (live or in the files).

        A tenant's member may not read Tenants (its Role covers its namespace):
        then only tenants defined in the files are checked, and the cluster
        refuses a job whose namespace it may not write.
        """
        live: dict[str, Any] | None
        try:
            live = self.cluster.tenants()
        except Forbidden:
            live = None
        tenants = dict(live or {})
        for manifest in manifests:
            if isinstance(manifest, Tenant):
                tenants[manifest.metadata.name] = manifest.spec.model_dump(
                    mode="json", by_alias=True)
        for manifest in manifests:
            if isinstance(manifest, TrainingJob) and (
                    live is not None or manifest.spec.tenant in tenants):
                check_tenant(with_tenant_defaults(manifest, tenants), tenants)

    # --- jobs --------------------------------------------------------------------

    def changes(self, what: str, tenant: str | None = None) -> Changes:
        """Watches of what ``get what`` shows (a tenant's usage moves with its jobs)."""
        kinds = {"jobs": ["TrainingJob"], "services": ["InferenceService"],
                 "tenants": ["Tenant", "TrainingJob"], "nodes": ["Node"],
                 "events": ["Event"]}.get(what)
        if kinds is None:
            raise _not_here(f"shoal get {what} --watch", "a cluster keeps them elsewhere")
        return self.cluster.changes(kinds, tenant)

    def jobs(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every job, or ``tenant``'s (listed in its namespace: all a member may list)."""
        return [job_summary(row) for row in self.cluster.jobs(tenant)]

    def _object(self, name: str, tenant: str | None) -> Body:
        """The TrainingJob ``name`` (of ``tenant``), with the embedded API's words when none."""
        return _one(self.cluster.jobs_named(name, tenant), "job", name, tenant)

    def job(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        obj = self._object(name, tenant)
        row = self.cluster.row(obj)
        return job_detail(row, self.cluster.events(obj))

    def delete(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        obj = self._object(name, tenant)
        if not self.cluster.delete_job(obj):
            raise NotFoundError(f"job '{name}' not found")
        return job_summary(self.cluster.row(obj))

    # --- inference services ------------------------------------------------------

    def services(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every InferenceService (of ``tenant``), as ``get services`` shows them."""
        return [service_view(_service_record(o), _url_of(o))
                for o in self.cluster.services(tenant=tenant)]

    def _service(self, name: str, tenant: str | None) -> Body:
        return _one(self.cluster.services(name, tenant), "service", name, tenant)

    def service(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        obj = self._service(name, tenant)
        record = _service_record(obj)
        events = [{**e, "kind": e["kind"].replace("_", "-"), "data": {
            k: v.rpartition("/")[2] if k in ("revision", "stable", "previous") else v
            for k, v in e["data"].items()}} for e in self.cluster.events(obj)]
        return {**service_view(record, _url_of(obj)), "spec": record["spec"], "events": events}

    def delete_service(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        obj = self._service(name, tenant)
        if not self.cluster.delete_service(obj):
            raise NotFoundError(f"service '{name}' not found")
        return service_view(_service_record(obj), _url_of(obj))

    # --- logs --------------------------------------------------------------------

    def _pod(self, name: str, pod: int, tenant: str | None) -> tuple[Body, str]:
        obj = self._object(name, tenant)
        row = self.cluster.row(obj)
        check_pod(row, pod)
        for record in row.pods:
            if record.index == pod and record.handle:
                return obj, record.handle
        raise ShoalError(f"job '{name}' has no pod {pod} on the cluster now "
                         f"(phase {row.phase}): no log to read",
                         hint=row.reason or None)

    def iter_log(self, name: str, pod: int = 0, offset: int = 0,
                 limit_bytes: int | None = None, tenant: str | None = None) -> Iterator[bytes]:
        obj, pod_name = self._pod(name, pod, tenant)
        yield from self.cluster.log(obj, pod_name, limit_bytes=limit_bytes)

    def follow_logs(self, name: str, pod: int = 0, tenant: str | None = None) -> Iterator[str]:
        obj, pod_name = self._pod(name, pod, tenant)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in self.cluster.log(obj, pod_name, follow=True):
            yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)

    # --- tenants -----------------------------------------------------------------

    def tenant_status(self) -> list[dict[str, Any]]:
        """Quota, usage (the pods the operator bound), borrowed, pending and running jobs."""
        jobs = [row for row in self.cluster.jobs() if row.phase in ACTIVE_PHASES]
        state = ClusterState(self.cluster.nodes())
        return tenant_status_in(self.cluster.tenants(), state, jobs)

    def delete_tenant(self, name: str) -> dict[str, Any]:
        if not self.cluster.delete_tenant(name):
            raise NotFoundError(f"tenant '{name}' not found")
        return {"name": name}

    # --- what a cluster keeps elsewhere -------------------------------------------

    def node_summary(self) -> dict[str, Any]:
        """The nodes that take pods, as the control loop sees them: each a pool of one."""
        nodes = self.cluster.nodes()
        return {"nodes": {node.name: node_spec(node) for node in nodes}, **capacity_of(nodes)}

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The Events on every TrainingJob, oldest first, in the embedded event shape."""
        return self.cluster.job_events()

    def tokens(self) -> list[dict[str, Any]]:
        raise _not_here("tokens", "a cluster's users and their rights are Kubernetes'")

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        raise _not_here("tokens", "a cluster's users and their rights are Kubernetes'")

    def mint_token(self, tenant: str | None, role: str = "tenant",
                   ttl_seconds: int | None = None, name: str | None = None) -> dict[str, Any]:
        raise _not_here("tokens", "a cluster's users and their rights are Kubernetes'")

    def delete_nodepool(self, name: str) -> dict[str, Any]:
        raise _not_here("node pools", "a cluster's nodes are its Node objects")

    def close(self) -> None:
        self.cluster.close()


Plane = ShoalClient | ClusterApi
"""What the verbs talk to: Shoal's API, or a cluster (``--kubeconfig``)."""


def _one(found: list[Body], what: str, name: str, tenant: str | None) -> Body:
    """The one object called ``name``, with the embedded API's words when none or several."""
    if not found:
        raise NotFoundError(f"{what} '{name}' not found"
                            + (f" in tenant '{tenant}'" if tenant is not None else ""))
    if len(found) > 1:
        owners = ", ".join(sorted(o["metadata"]["namespace"] for o in found))
        raise AmbiguousNameError(f"{what} '{name}' exists in tenants {owners}",
                                 hint="say which: --tenant T")
    return found[0]
