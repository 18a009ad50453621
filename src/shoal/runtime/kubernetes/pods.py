"""The pods port on Kubernetes: Shoal creates each pod and binds it to the node it chose.

``start`` creates the Pod (``convert.pod_manifest``: ``schedulerName:
shoal``, so no other scheduler touches it; labelled with the job and Shoal's
pod uid; owned by the TrainingJob) and binds it through the Binding API to
the node the placement chose, so gangs, fractional GPUs and topology are
Shoal's decisions on Kubernetes too.  Both steps are idempotent: after a
crash the pod is found again by its uid label, and a pod already bound stays
where it is.  ``observe`` reads the Pod (``convert.pod_status``); ``stop``
deletes it with the grace period (the kubelet sends SIGTERM, then SIGKILL);
``kill`` deletes it at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.control import cluster_view as view
from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.errors import AlreadyExistsError, NotFoundError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import UID_LABEL, pod_manifest, pod_name, pod_status
from shoal.runtime.kubernetes.store import KubeStore

__all__ = ["KubePods"]


class KubePods:
    """Implements ``control.ports.Pods`` with Pod objects and the Binding API."""

    def __init__(self, kube: Kube, store: KubeStore, grace_seconds: float = 30.0) -> None:
        self.kube, self.store, self.grace_seconds = kube, store, grace_seconds

    def start(self, job: JobRow, pod: PodRecord) -> str:
        owner = self.store.object_of(job)
        body = pod_manifest(owner, job, pod, view.manifest_of(job).spec, self.grace_seconds)
        name: str = body["metadata"]["name"]
        try:
            found = self.kube.create(body)
        except AlreadyExistsError:
            existing = self.kube.get("Pod", name, owner.namespace)
            if existing is None:
                raise
            found = existing
        if not (found.get("spec") or {}).get("nodeName"):
            self.kube.bind(name, owner.namespace, pod.node)
        return name

    def _find(self, job: JobRow, pod: PodRecord) -> Body | None:
        namespace = self.store.object_of(job).namespace
        if pod.handle:
            return self.kube.get("Pod", pod.handle, namespace)
        found = self.kube.list("Pod", namespace, labels=f"{UID_LABEL}={pod.uid}")
        return found[0] if found else None

    def observe(self, job: JobRow, pod: PodRecord) -> PodStatus:
        found = self._find(job, pod)
        if found is None and pod.handle is None:
            return PodStatus("absent", None, "never created")
        if found is not None and not (found.get("spec") or {}).get("nodeName"):
            # Created, not bound yet (the loop stopped between the two): bind it now.
            namespace = self.store.object_of(job).namespace
            self.kube.bind(found["metadata"]["name"], namespace, pod.node)
        return pod_status(found)

    def stop(self, job: JobRow, pod: PodRecord, grace_seconds: float) -> None:
        self._delete(job, pod, max(0, round(grace_seconds)))

    def kill(self, job: JobRow, pod: PodRecord) -> None:
        self._delete(job, pod, 0)

    def release(self, job: JobRow, pods: Sequence[PodRecord]) -> None:
        for pod in pods:
            self._delete(job, pod, 0)

    def _delete(self, job: JobRow, pod: PodRecord, grace: int) -> None:
        namespace = self.store.object_of(job).namespace
        name = pod.handle or pod_name(self.store.object_of(job), pod)
        try:
            self.kube.delete("Pod", name, namespace, grace_seconds=grace)
        except NotFoundError:
            return
