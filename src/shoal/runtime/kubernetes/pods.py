"""The pods port on Kubernetes: a ``batch/v1`` Job per pod, whose pod Shoal binds.

``start`` makes sure the job's headless Service (and, for a job that
checkpoints, its PersistentVolumeClaim) exists, creates the pod's worker Job
(``convert.worker_job``: one pod, ``schedulerName: shoal``, labelled with the
job and Shoal's pod uid, owned by the TrainingJob; the first pod's start
creates those of the whole gang, so that the Job controller makes their pods
while Shoal waits for the first), waits on a watch for the
Job controller to create its pod and binds that pod, through the Binding API,
to the node the placement chose: gangs, fractional GPUs and topology are
Shoal's decisions on Kubernetes too.  The handle is the bound Pod's name.

**Gang bind timeout.**  The pods of an attempt must all be bound within
``bind_timeout_s`` of the first one's start.  A pod that the Job controller
does not create in time (a ResourceQuota refuses it, say), or that cannot be
bound (its node is gone), gets the handle ``UNBOUND + <job name>``; observe
reports it ``lost`` with the reason, so the control core stops the whole gang
and requeues it (no retry used, after the retry backoff): no gang holds part
of its nodes while it waits.

Everything is idempotent: a Job that exists already is taken as it is, a pod
found by its uid label that is bound already stays where it is, and after a
restart a pod without a handle whose Job or pod was never made or never
bound is ``absent``, which the control core starts (again) under the same id.

``observe`` reads the bound Pod (``convert.pod_status``).  A pod deleted by
hand is gone: ``lost``, and the control core requeues the gang (the Job
controller's replacement pod is never bound, and goes with its Job).
``stop`` deletes the worker Job first (so that the Job controller makes no
new pod) and then the pod with the grace period (the kubelet sends SIGTERM,
then SIGKILL); ``kill`` does the same at once; ``release`` deletes the
attempt's Jobs, and with them (background propagation) their ended pods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from shoal.control import cluster_view as view
from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.errors import AlreadyExistsError, NotFoundError, ShoalError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import (
    NOT_BOUND,
    UID_LABEL,
    JobObject,
    checkpoints,
    claim_manifest,
    pod_name,
    pod_status,
    service_manifest,
    worker_job,
)
from shoal.runtime.kubernetes.store import KubeStore

__all__ = ["BIND_TIMEOUT_S", "UNBOUND", "KubePods"]

UNBOUND = "job:"
"""Handle prefix of a pod whose worker Job exists but whose pod was not bound (no pod name
has a colon)."""
BIND_TIMEOUT_S = 30.0
"""How long the pods of one attempt may take, together, to be created and bound."""
_DEADLINES_KEPT = 1000


class KubePods:
    """Implements ``control.ports.Pods`` with worker Jobs and the Binding API.

    ``monotonic``: the clock of the bind timeout (the wall's: it measures
    how long the API server and the Job controller take, not control time).
    """

    def __init__(self, kube: Kube, store: KubeStore, grace_seconds: float = 30.0,
                 bind_timeout_s: float = BIND_TIMEOUT_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.store, self.grace_seconds = kube, store, grace_seconds
        self.bind_timeout_s = bind_timeout_s
        self.monotonic = monotonic
        self._deadlines: dict[tuple[str, int], float] = {}
        self._made: set[str] = set()
        """Pods whose worker Job this process created with their gang's first (by uid)."""
        self._why: dict[str, str] = {}
        """Why a pod was not bound, by its uid (observe reports it)."""

    # -- start --------------------------------------------------------------------------

    def start(self, job: JobRow, pod: PodRecord) -> str:
        owner = self.store.object_of(job)
        spec = view.manifest_of(job).spec
        name = pod_name(owner, pod)
        if pod.index == 0:  # once per attempt, before any of its Jobs: kept across attempts
            self._ensure(service_manifest(owner))
            if checkpoints(spec):
                self._ensure(claim_manifest(owner, spec))
            # Every Job of the gang at once: the Job controller makes their pods
            # while this waits for the first.
            for other in job.pods:
                self._ensure(worker_job(owner, job, other, spec, self.grace_seconds))
                self._made.add(other.uid)
        if pod.uid not in self._made:
            self._ensure(worker_job(owner, job, pod, spec, self.grace_seconds))
        self._made.discard(pod.uid)
        key = (job.name, job.attempts)
        if key not in self._deadlines and len(self._deadlines) > _DEADLINES_KEPT:
            self._deadlines.clear()
        deadline = self._deadlines.setdefault(key, self.monotonic() + self.bind_timeout_s)
        bound = self._bind_within(owner, name, pod, deadline)
        return bound if bound is not None else UNBOUND + name

    def _ensure(self, body: Body) -> None:
        try:
            self.kube.create(body)
        except AlreadyExistsError:
            return  # made before a restart, or by an earlier attempt: taken as it is

    def _bind_within(self, owner: JobObject, job_name: str, pod: PodRecord,
                     deadline: float) -> str | None:
        """The name of the Job's pod once bound to ``pod.node``; None when it cannot be in time."""
        selector = f"{UID_LABEL}={pod.uid}"
        while True:
            listing = self.kube.listing("Pod", owner.namespace, labels=selector)
            alive = [p for p in listing.get("items", [])
                     if not p["metadata"].get("deletionTimestamp")]
            bound = [p for p in alive if (p.get("spec") or {}).get("nodeName")]
            if bound:
                name: str = bound[0]["metadata"]["name"]
                return name
            if alive:
                return self._bind(owner, alive[0]["metadata"]["name"], pod)
            left = deadline - self.monotonic()
            if left <= 0:
                self._why[pod.uid] = (f"{NOT_BOUND} {self.bind_timeout_s:g} s: the Job "
                                      f"{job_name} has no pod{self._job_trouble(owner, job_name)}")
                return None
            since = str(listing.get("metadata", {}).get("resourceVersion", ""))
            for kind, _ in self.kube.watch("Pod", owner.namespace, since=since,
                                           timeout_s=min(left, 30.0), labels=selector):
                if kind != "DELETED":
                    break  # made (or changed): look again

    def _bind(self, owner: JobObject, name: str, pod: PodRecord) -> str | None:
        # The Binding API takes any node name, even one that is gone (the pod
        # would then wait for ever): the node is looked up first.
        try:
            if self.kube.get("Node", pod.node) is None:
                raise NotFoundError(f"node {pod.node} is gone")
            self.kube.bind(name, owner.namespace, pod.node)
        except ShoalError as exc:
            self._why[pod.uid] = f"{NOT_BOUND} {self.bind_timeout_s:g} s: pod {name}: {exc}"
            return None
        return name

    def _job_trouble(self, owner: JobObject, job_name: str) -> str:
        """What the Job controller said about the Job lately (why it made no pod), if anything."""
        try:
            events = self.kube.listing("Event", owner.namespace,
                                       fields=f"involvedObject.name={job_name}")
        except ShoalError:
            return ""
        said = [e for e in events.get("items", []) if e.get("type") == "Warning"]
        if not said:
            return ""
        last = max(said, key=lambda e: str(e.get("lastTimestamp") or ""))
        return f" ({last.get('reason', '')}: {last.get('message', '')})"

    # -- observe ------------------------------------------------------------------------

    def observe(self, job: JobRow, pod: PodRecord) -> PodStatus:
        owner = self.store.object_of(job)
        if pod.handle is None:
            return self._unrecorded(owner, pod)
        if pod.handle.startswith(UNBOUND):
            why = self._why.get(pod.uid) or f"{NOT_BOUND} {self.bind_timeout_s:g} s"
            return PodStatus("lost", None, why)
        found = self.kube.get("Pod", pod.handle, owner.namespace)
        if found is None:
            # Asked of the server itself: a watch cache may not have seen the pod yet.
            items = self.kube.listing("Pod", owner.namespace,
                                      fields=f"metadata.name={pod.handle}").get("items")
            if items:
                return pod_status(items[0])
            self._why.pop(pod.uid, None)
            return PodStatus("lost", None, f"pod {pod.handle} is gone (deleted)")
        return pod_status(found)

    def _unrecorded(self, owner: JobObject, pod: PodRecord) -> PodStatus:
        """A pod saved ``starting`` whose start was not recorded (the loop stopped between)."""
        pods = self.kube.list("Pod", owner.namespace, labels=f"{UID_LABEL}={pod.uid}")
        bound = [p for p in pods if (p.get("spec") or {}).get("nodeName")]
        if bound:
            return pod_status(bound[0])
        # Never bound, so it never ran: ``start`` (idempotent) makes and binds it.
        return PodStatus("absent", None, "never bound")

    # -- stop ---------------------------------------------------------------------------

    def stop(self, job: JobRow, pod: PodRecord, grace_seconds: float) -> None:
        self._delete(job, pod, max(0, round(grace_seconds)))

    def kill(self, job: JobRow, pod: PodRecord) -> None:
        self._delete(job, pod, 0)

    def release(self, job: JobRow, pods: Sequence[PodRecord]) -> None:
        owner = self.store.object_of(job)
        for pod in pods:
            self.kube.delete("Job", pod_name(owner, pod), owner.namespace)
            self._why.pop(pod.uid, None)
            self._made.discard(pod.uid)
        self._deadlines.pop((job.name, job.attempts), None)

    def _delete(self, job: JobRow, pod: PodRecord, grace: int) -> None:
        owner = self.store.object_of(job)
        # The Job first: the Job controller replaces a deleted pod of a live Job.
        self.kube.delete("Job", pod_name(owner, pod), owner.namespace)
        if pod.handle and not pod.handle.startswith(UNBOUND):
            self.kube.delete("Pod", pod.handle, owner.namespace, grace_seconds=grace)
