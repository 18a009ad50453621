"""The pods port on Kubernetes: a ``batch/v1`` Job per pod, whose pod Shoal binds.

``start`` makes sure the headless Service of a gang (and, for a job that
checkpoints, its PersistentVolumeClaim) exists and creates the pod's worker
Job (``convert.worker_job``: one pod, ``schedulerName: shoal``, labelled with
the job and Shoal's pod uid, owned by the TrainingJob; the first pod's start
creates those of the whole gang).  The Job controller then makes the pod,
which Shoal binds, through the Binding API, to the node the placement chose:
gangs, fractional GPUs and topology are Shoal's decisions on Kubernetes too.

**In the background** (``background``, as the control loop's ``run`` sets
it): ``start`` hands the creates to a small pool of threads and returns at
once, with no handle (so the control core writes nothing yet).  The pod is
bound when it appears on the Pod watch: until then ``observe`` reports it
``starting`` (nothing to record), finding it in the watch-fed cache by its
uid label and handing the Binding to the pool; once bound, ``observe``
reports it running with its name as the handle (``PodStatus.handle``), and
the control core records its start and its name in one write.  (Records of
earlier versions may hold the handle ``BINDING + <Job name>`` for the same
state.)  The loop never
waits for the Job controller, and independent requests (the Jobs of many
gangs, their Bindings, events) go out side by side, at most ``workers`` at a
time.  Without it (a test calling ``settle`` at moments it chooses) ``start``
does all of it before it returns, waiting on a watch for the pod: the handle
is then the bound pod's name at once.

**Gang bind timeout.**  The Job controller must make an attempt's first pod
within ``create_timeout_s`` (300 s) of its Jobs' creation (of the first look
at them, after a restart): in a burst its queue runs long, and giving a gang
up for that would only make its Jobs again.  From the moment the first pod
exists, all the attempt's pods must be bound within ``bind_timeout_s``
(30 s).  A pod that the Job controller does not create in time (a
ResourceQuota refuses it, say), or that cannot be bound (its node is gone),
is reported ``lost`` with the reason, so the control core stops the whole
gang and requeues it (no retry used, after the retry backoff): no gang holds
part of its nodes while it waits.  (A handle ``UNBOUND + <Job name>`` says
the same: earlier versions recorded it.)

Everything is idempotent: a Job that exists already is taken as it is, a pod
found by its uid label that is bound already stays where it is, and after a
restart a pod without a handle whose Job or pod was never made or never
bound is ``absent``, which the control core starts (again) under the same
id.  A pod that this process bound and that is gone before its name was
recorded is lost, never replaced: the Job controller's replacement is never
bound.  (After a restart that memory is gone: a pod bound, then deleted by
hand while no operator ran, before its name was recorded, is replaced by
the Job controller's next one.)

``observe`` reads the bound Pod (``convert.pod_status``).  A pod deleted by
hand is gone: ``lost``, and the control core requeues the gang (the Job
controller's replacement pod is never bound, and goes with its Job).
``stop`` deletes the worker Job first (so that the Job controller makes no
new pod) and then the pod with the grace period (the kubelet sends SIGTERM,
then SIGKILL); ``kill`` does the same at once; ``release`` deletes the
attempt's Jobs, and with them (background propagation) their ended pods.
In the background these deletes go to the pool too, each after the pod's
creates and Binding still in flight, so that nothing is made after it is
deleted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from shoal.control import cluster_view as view
from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.domain.priority import BUILTIN_CLASSES
from shoal.errors import AlreadyExistsError, InputError, NotFoundError, ShoalError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import (
    NOT_BOUND,
    UID_LABEL,
    JobObject,
    checkpoints,
    claim_manifest,
    needs_service,
    pod_name,
    pod_status,
    service_manifest,
    worker_job,
)
from shoal.runtime.kubernetes.store import KubeStore
from shoal.runtime.kubernetes.tenancy import class_object
from shoal.runtime.kubernetes.tenancy_access import class_name

__all__ = ["BINDING", "BIND_TIMEOUT_S", "UNBOUND", "WORKERS", "KubePods"]

UNBOUND = "job:"
"""Handle prefix of a pod whose worker Job exists but whose pod was not bound (no pod name
has a colon)."""
BINDING = "bind:"
"""Handle prefix of a pod whose worker Job is made and whose pod Shoal binds when it appears."""
BIND_TIMEOUT_S = 30.0
"""How long the pods of one attempt may take, together, to be bound once the first exists."""
CREATE_TIMEOUT_S = 300.0
"""How long the Job controller may take to make an attempt's first pod (Kueue's
``waitForPodsReady`` waits 5 minutes too): in a burst its queue runs long, and
a gang given up for that would only be made again, lengthening it."""
WORKERS = 8
"""Requests in flight at most, in the background (creates and Bindings)."""
_DEADLINES_KEPT = 100_000
_RUNNING = PodStatus("running", None, "")
_STARTING = PodStatus("starting", None, "")

log = logging.getLogger("shoal.operator")


ABSENT_S = 60.0
"""How long a missing class of an integer priority is taken as missing: a Tenant that
lists the priority has it written, and later pods name it."""
_ABSENT_KEPT = 4096


class KubePods:
    """Implements ``control.ports.Pods`` with worker Jobs and the Binding API.

    ``monotonic``: the clock of the bind timeout (the wall's: it measures
    how long the API server and the Job controller take, not control time).
    """

    def __init__(self, kube: Kube, store: KubeStore, grace_seconds: float = 30.0,
                 bind_timeout_s: float = BIND_TIMEOUT_S,
                 monotonic: Callable[[], float] = time.monotonic,
                 create_timeout_s: float = CREATE_TIMEOUT_S) -> None:
        self.kube, self.store, self.grace_seconds = kube, store, grace_seconds
        self.bind_timeout_s, self.create_timeout_s = bind_timeout_s, create_timeout_s
        self.monotonic = monotonic
        self._deadlines: dict[tuple[str, int], float] = {}
        """By attempt: when its first pod must exist (or, in the foreground, all be bound)."""
        self._first_pod: dict[tuple[str, int], float] = {}
        """By attempt: when its first pod was seen (all must be bound ``bind_timeout_s`` on)."""
        self._made: set[str] = set()
        """Pods whose worker Job this process created with their gang's first (by uid)."""
        self._classes: set[str] = set()
        """PriorityClasses this process made or found (shared, never deleted)."""
        self._absent: dict[str, float] = {}
        """Classes of integer priorities found missing, and until when (``monotonic``)
        that holds without asking again."""
        self._why: dict[str, str] = {}
        """Why a pod was not bound, by its uid (observe reports it)."""
        self.pool: ThreadPoolExecutor | None = None
        """Creates, in the background (None: ``start`` does them in turn)."""
        self.binder: ThreadPoolExecutor | None = None
        """Bindings, apart: never queued behind a burst of creates."""
        self._wake: Callable[[], None] = lambda: None
        self._creating: dict[str, Future[None]] = {}
        """The creates of a pod's worker Job (and its gang's objects), by pod uid."""
        self._binding: dict[str, Future[str | None]] = {}
        """Bindings in flight or done, by pod uid."""
        self._bound: dict[str, str] = {}
        """The pod this process bound, by Shoal's pod uid, until its name is recorded."""
        self._deleting: dict[str, Future[None]] = {}
        """Deletes in flight, by pod uid (a kill is asked again on every pass)."""
        self._placed: dict[str, tuple[JobObject, PodRecord]] = {}
        """Pods started in the background and not bound yet: bound as soon as they appear."""
        self._lock = threading.Lock()
        """Hands each pod's Binding to the pool once (the watch's thread and the loop's)."""
        self._unbound: dict[str, float] = {}
        """Pods last seen waiting for their pod (by uid), with their gang's deadline."""
        self._attempt_of: dict[str, tuple[str, int]] = {}
        """Pods started in the background (by uid): their job's name and attempt."""

    # -- the background ---------------------------------------------------------------

    def background(self, wake: Callable[[], None], workers: int = WORKERS) -> None:
        """Create, and bind, in ``workers`` threads each from now on; ``wake`` when one ends."""
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="kube-create")
        self.binder = ThreadPoolExecutor(workers, thread_name_prefix="kube-bind")
        self._wake = wake

    def foreground(self) -> None:
        """Finish what is in flight and go back to doing everything in ``start``."""
        pools, self.pool, self.binder = (self.pool, self.binder), None, None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)

    def next_due(self) -> float | None:
        """When (``monotonic``) a pod waiting for its pod runs out of time; None: none waits."""
        return min(list(self._unbound.values()), default=None)  # (pool threads add)

    # -- start --------------------------------------------------------------------------

    def start(self, job: JobRow, pod: PodRecord) -> str | None:
        owner = self.store.object_of(job)
        spec = view.manifest_of(job).spec
        name = pod_name(owner, pod)
        bodies: list[Body] = []
        if pod.index == 0:  # once per attempt, before any of its Jobs: kept across attempts
            klass, missing = self.class_for(spec.priority_value)
            if missing is not None:  # the API server refuses a pod naming a missing class
                bodies.append(missing)
            if needs_service(spec):
                bodies.append(service_manifest(owner))
            if checkpoints(spec):
                bodies.append(claim_manifest(owner, spec))
            # Every Job of the gang at once: the Job controller makes their pods
            # while the first is bound.
            bodies += [worker_job(owner, job, other, spec, self.grace_seconds, klass)
                       for other in job.pods]
            gang = [other.uid for other in job.pods]
        elif pod.uid not in self._made and pod.uid not in self._creating:
            klass, missing = self.class_for(spec.priority_value)
            bodies += [missing] if missing is not None else []
            bodies.append(worker_job(owner, job, pod, spec, self.grace_seconds, klass))
            gang = [pod.uid]
        else:
            gang = []
        self._made.discard(pod.uid)
        key = (job.name, job.attempts)
        if key not in self._deadlines and len(self._deadlines) > _DEADLINES_KEPT:
            self._deadlines.clear()
            self._first_pod.clear()
        if self.pool is not None:
            if bodies:
                made = self.pool.submit(self._make, key, bodies, gang)
                for uid in gang:
                    self._creating[uid] = made
            for other in job.pods if pod.index == 0 else (pod,):
                self._placed[other.uid] = (owner, other)
                self._attempt_of[other.uid] = key
            return None  # observe reports it starting, then bound (under its name)
        deadline = self._deadlines.setdefault(key, self.monotonic() + self.bind_timeout_s)
        self._ensure_all(bodies)
        self._made.update(u for u in gang if u != pod.uid)
        bound = self._bind_within(owner, name, pod, deadline)
        return bound if bound is not None else UNBOUND + name

    def _make(self, key: tuple[str, int], bodies: Sequence[Body], gang: Sequence[str]) -> None:
        """Create the gang's objects; the wait for its first pod runs from when its Jobs exist.

        (Not from ``start``: a burst of gangs waits its turn in the pool first.)
        """
        self._ensure_all(bodies)
        deadline = self._deadlines[key] = self.monotonic() + self.create_timeout_s
        # The loop must look again by then even if the Job controller never makes
        # the pod (no watch event would come): woken only when it waits for nothing.
        idle = self.next_due() is None
        for uid in gang:
            self._unbound.setdefault(uid, deadline)
        if idle:
            self._wake()

    def _ensure_all(self, bodies: Sequence[Body]) -> None:
        for body in bodies:
            self._ensure(body)

    def _ensure(self, body: Body) -> None:
        # Made before a restart, or by an earlier attempt: taken as it is.
        with contextlib.suppress(AlreadyExistsError):
            self.kube.create(body)
        if body["kind"] == "PriorityClass":
            self._classes.add(body["metadata"]["name"])

    def class_for(self, priority: int) -> tuple[str | None, Body | None]:
        """The PriorityClass pods of ``priority`` name, and its body if it must be made first.

        A built-in priority names its class, made if this process has not
        seen it (at most four).  Another integer names ``shoal-priority-<value>``
        if that class exists (a Tenant that lists the value has it written), else
        the built-in class just below it (none below 0): tenants choose their
        jobs' priorities, and must not make the operator create cluster-wide
        objects at will.
        """
        name = class_name(priority)
        if name is None:
            return None, None
        if priority not in BUILTIN_CLASSES.values():
            if name in self._classes:
                return name, None
            # Asked at most once a minute per class: a tenant's jobs of one unlisted
            # priority must not cost the loop a request each.
            now = self.monotonic()
            if self._absent.get(name, now) <= now:
                if self.kube.get("PriorityClass", name) is not None:
                    self._classes.add(name)
                    self._absent.pop(name, None)
                    return name, None
                if len(self._absent) > _ABSENT_KEPT:
                    self._absent.clear()
                self._absent[name] = now + ABSENT_S
            below = [value for value in BUILTIN_CLASSES.values() if value <= priority]
            if not below:
                return None, None
            priority = max(below)
            name = class_name(priority)
            assert name is not None
        if name in self._classes:
            return name, None
        return name, class_object(priority, self.kube.discovery.api_version)

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
                self._why[pod.uid] = self._no_pod(owner, job_name)
                return None
            since = str(listing.get("metadata", {}).get("resourceVersion", ""))
            for kind, _ in self.kube.watch("Pod", owner.namespace, since=since,
                                           timeout_s=min(left, 30.0), labels=selector):
                if kind != "DELETED":
                    break  # made (or changed): look again

    def _no_pod(self, owner: JobObject, job_name: str, waited: float | None = None) -> str:
        waited = self.bind_timeout_s if waited is None else waited
        return (f"{NOT_BOUND} {waited:g} s: the Job {job_name} has no pod"
                f"{self._job_trouble(owner, job_name)}")

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

    def appeared(self, obj: Body) -> None:
        """A pod the Pod watch brought (its thread): bind it now if it is one Shoal waits for.

        So a pod is bound as soon as the Job controller makes it, even while
        the loop is busy with a long pass (a burst's admissions).
        """
        meta = obj.get("metadata") or {}
        uid = (meta.get("labels") or {}).get(UID_LABEL)
        placed = self._placed.get(uid) if uid else None
        if placed is None or meta.get("deletionTimestamp") or \
                (obj.get("spec") or {}).get("nodeName"):
            return
        owner, pod = placed
        self._bind_later(owner, str(meta["name"]), pod)

    def _bind_later(self, owner: JobObject, name: str, pod: PodRecord) -> None:
        """Bind in the pool, once; the loop is woken when it is done (observe records it)."""
        def bind() -> str | None:
            try:
                bound = self._bind(owner, name, pod)
                if bound is not None:
                    self._bound[pod.uid] = bound
                return bound
            finally:
                self._wake()

        binder = self.binder
        if binder is None:
            return
        with self._lock:
            if pod.uid in self._binding or pod.uid not in self._placed:
                return  # bound, or being bound, already; or no longer wanted
            self._binding[pod.uid] = binder.submit(bind)

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

    def changed_pods(self, mark: object) -> tuple[set[str] | None, object]:
        """``control.ports.PodChanges``: the pods whose ``observe`` may answer otherwise now.

        Those whose Pod changed or went since ``mark`` (the Pod watch's journal
        of its uid label), and every pod this port still follows a start, a
        Binding, a delete or a deadline of: for the others ``observe`` reads
        only their Pod.  None when no watch can tell (every pod may have).
        """
        changed = getattr(self.kube, "changed_labels", None)
        found = None if changed is None else changed("Pod", UID_LABEL, mark)
        if found is None:
            return None, None
        uids, at = found
        if uids is None:
            return None, at
        with self._lock:  # the pool threads add to these
            followed = {*self._creating, *self._binding, *self._bound, *self._deleting,
                        *self._placed, *self._why, *self._unbound, *self._made}
            followed -= self._awaiting_pod()
        return uids | followed, at

    def _awaiting_pod(self) -> set[str]:
        """Pods whose ``observe`` answers "starting" until their pod shows up or their
        deadline comes: their Jobs are made, and no pod of their gang exists yet.

        In a burst the Job controller makes pods minutes after their Jobs; looking
        at each of thousands on every pass cost the loop more than deciding did.
        Their pod's appearance is in the Pod watch's journal (its uid label), and
        the loop wakes at ``next_due``.  Once a gang's first pod exists the others'
        deadline moves closer (``bind_timeout_s``): they are looked at again.
        """
        now = self.monotonic()
        found = set()
        for uid, due in list(self._unbound.items()):
            made = self._creating.get(uid)
            if (now >= due or made is None or not made.done()
                    or made.exception() is not None
                    or uid in self._binding or uid in self._bound or uid in self._deleting
                    or uid in self._why or uid in self._made):
                continue
            attempt = self._attempt_of.get(uid)
            if attempt is not None and attempt not in self._first_pod:
                found.add(uid)
        return found

    def observe(self, job: JobRow, pod: PodRecord) -> PodStatus:
        owner = self.store.object_of(job)
        if pod.handle is None:
            return self._unrecorded(job, owner, pod)
        if pod.handle.startswith(UNBOUND):
            why = self._why.get(pod.uid) or f"{NOT_BOUND} {self.bind_timeout_s:g} s"
            return PodStatus("lost", None, why)
        if pod.handle.startswith(BINDING):
            return self._waiting(job, owner, pod, pod.handle[len(BINDING):])
        self._forget(pod.uid)
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

    def _started_here(self, uid: str) -> bool:
        """Whether this process started the pod and still follows its start."""
        return (uid in self._placed or uid in self._creating or uid in self._binding
                or uid in self._bound)

    def _forget(self, uid: str) -> None:
        """The pod's name is recorded: what was kept to bind it is done with."""
        self._attempt_of.pop(uid, None)
        if uid in self._bound or uid in self._binding or uid in self._creating:
            self._bound.pop(uid, None)
            self._binding.pop(uid, None)
            self._creating.pop(uid, None)
        self._unbound.pop(uid, None)
        if uid in self._placed:
            with self._lock:
                self._placed.pop(uid, None)

    def _pods_of(self, owner: JobObject, pod: PodRecord) -> list[Body]:
        """The pod's pods not being deleted (found by its uid label; from the cache if watched)."""
        labelled: Callable[..., list[Body]] | None = getattr(self.kube, "labelled", None)
        found = (labelled("Pod", owner.namespace, UID_LABEL, pod.uid) if labelled is not None
                 else self.kube.list("Pod", owner.namespace, labels=f"{UID_LABEL}={pod.uid}"))
        return [p for p in found if not p["metadata"].get("deletionTimestamp")]

    def _waiting(self, job: JobRow, owner: JobObject, pod: PodRecord,
                 job_name: str) -> PodStatus:
        """A pod started in the background: bound (its name the new handle), or bound now."""
        self._unbound.pop(pod.uid, None)
        status = self._look(job, owner, pod, job_name)
        if status.state != "running" or status.handle is not None:
            with self._lock:  # bound, or given up: a pod that shows up later is not bound
                self._placed.pop(pod.uid, None)
        return status

    def _look(self, job: JobRow, owner: JobObject, pod: PodRecord, job_name: str) -> PodStatus:
        made = self._creating.get(pod.uid)
        if made is not None and not made.done():
            return _RUNNING  # its Job's pod shows up on the watch, which wakes the loop
        failed = made.exception() if made is not None else None
        if failed is not None:
            if isinstance(failed, InputError):  # the server refuses it as written: every time
                return PodStatus("failed", None, f"the Job {job_name}: {failed}")
            return PodStatus("lost", None, f"the Job {job_name} was not made: {failed}")
        pods = self._pods_of(owner, pod)
        key = (job.name, job.attempts)
        if pods and key not in self._first_pod:
            self._first_pod[key] = self.monotonic()
        mine = self._bound.get(pod.uid)
        if mine is not None:
            kept = next((p for p in pods if p["metadata"]["name"] == mine), None)
            if kept is None:  # bound by this process, gone before its name was recorded
                return PodStatus("lost", None, f"pod {mine} is gone (deleted)")
            return replace(pod_status(kept), handle=mine)
        bound = next((p for p in pods if (p.get("spec") or {}).get("nodeName")), None)
        if bound is not None:
            return replace(pod_status(bound), handle=bound["metadata"]["name"])
        binding = self._binding.get(pod.uid)
        if binding is not None and not binding.done():
            return _RUNNING
        if binding is not None and binding.result() is None:
            return PodStatus("lost", None, self._why.get(pod.uid) or NOT_BOUND)
        if job.phase != "Running" or job.deleted:
            # Being stopped before it was bound: it never ran, and never will
            # (its Job goes with the attempt).
            return PodStatus("lost", None, "stopped before it was bound")
        now = self.monotonic()
        # Until the gang's first pod exists, the Job controller's queue sets the pace;
        # from then on, all its pods have ``bind_timeout_s`` (no partial hold).
        deadline = self._deadlines.setdefault(key, now + self.create_timeout_s)
        first = self._first_pod.get(key)
        if first is not None:
            deadline = min(deadline, first + self.bind_timeout_s)
        if now >= deadline:
            if pods:
                return PodStatus("lost", None, f"{NOT_BOUND} {self.bind_timeout_s:g} s: "
                                               f"pod {pods[0]['metadata']['name']} not bound")
            if first is not None:
                return PodStatus("lost", None, self._no_pod(owner, job_name))
            return PodStatus("lost", None,
                             self._no_pod(owner, job_name, self.create_timeout_s))
        if pods:
            if self.pool is None:
                name = self._bind(owner, pods[0]["metadata"]["name"], pod)
                if name is None:
                    return PodStatus("lost", None, self._why.get(pod.uid) or NOT_BOUND)
                return replace(_RUNNING, handle=name)
            self._placed.setdefault(pod.uid, (owner, pod))  # after a restart
            self._bind_later(owner, pods[0]["metadata"]["name"], pod)
        elif made is None and self.pool is not None:
            # Started by an earlier process (or never made): make sure of it, once.
            spec = view.manifest_of(job).spec
            klass, missing = self.class_for(spec.priority_value)
            self._creating[pod.uid] = self.pool.submit(self._ensure_all, [
                *([missing] if missing is not None else []),
                worker_job(owner, job, pod, spec, self.grace_seconds, klass)])
        if not pods:
            self._unbound[pod.uid] = deadline  # the loop looks again then, if nothing else
        return _RUNNING

    def _unrecorded(self, job: JobRow, owner: JobObject, pod: PodRecord) -> PodStatus:
        """A pod saved ``starting``: started in the background by this process, or its start
        was not recorded (the loop stopped between)."""
        if self._started_here(pod.uid):
            status = self._waiting(job, owner, pod, pod_name(owner, pod))
            return _STARTING if status == _RUNNING else status
        bound = [p for p in self._pods_of(owner, pod) if (p.get("spec") or {}).get("nodeName")]
        if bound:
            return replace(pod_status(bound[0]), handle=bound[0]["metadata"]["name"])
        # Never bound, so it never ran: ``start`` (idempotent) makes and binds it.
        return PodStatus("absent", None, "never bound")

    # -- stop ---------------------------------------------------------------------------

    def stop(self, job: JobRow, pod: PodRecord, grace_seconds: float) -> None:
        self._delete(job, pod, max(0, round(grace_seconds)))

    def kill(self, job: JobRow, pod: PodRecord) -> None:
        self._delete(job, pod, 0)

    def release(self, job: JobRow, pods: Sequence[PodRecord]) -> None:
        owner = self.store.object_of(job)
        names = [pod_name(owner, pod) for pod in pods]
        waits = self._in_flight(pods)
        for pod in pods:
            self._why.pop(pod.uid, None)
            self._made.discard(pod.uid)
            self._forget(pod.uid)
            self._deleting.pop(pod.uid, None)
        self._deadlines.pop((job.name, job.attempts), None)
        self._first_pod.pop((job.name, job.attempts), None)

        def delete() -> None:
            _wait(waits)
            for name in names:
                self.kube.delete("Job", name, owner.namespace)

        self._later(delete)

    def _delete(self, job: JobRow, pod: PodRecord, grace: int) -> None:
        owner = self.store.object_of(job)
        with self._lock:  # stopped: a pod that shows up from now on is not bound
            self._placed.pop(pod.uid, None)
        busy = self._deleting.get(pod.uid)
        if busy is not None and not busy.done():
            return  # asked already: the next pass asks again if the pod is still there
        waits = self._in_flight([pod])

        def delete() -> None:
            _wait(waits)
            # The Job first: the Job controller replaces a deleted pod of a live Job.
            self.kube.delete("Job", pod_name(owner, pod), owner.namespace)
            handle = pod.handle or ""
            if not handle or handle.startswith(BINDING):
                handle = self._bound.get(pod.uid) or next(
                    (p["metadata"]["name"] for p in self._pods_of(owner, pod)
                     if (p.get("spec") or {}).get("nodeName")), "")
            if handle and not handle.startswith(UNBOUND):
                self.kube.delete("Pod", handle, owner.namespace, grace_seconds=grace)

        done = self._later(delete)
        if done is not None:
            self._deleting[pod.uid] = done

    def _in_flight(self, pods: Sequence[PodRecord]) -> list[Future[Any]]:
        """The pods' creates and Bindings not known to be done (deletes wait for them)."""
        return [f for pod in pods for f in (self._creating.get(pod.uid),
                                            self._binding.get(pod.uid))
                if f is not None and not f.done()]

    def _later(self, work: Callable[[], None]) -> Future[None] | None:
        """``work`` in the pool (after what was handed to it before); at once without one."""
        if self.pool is None:
            work()
            return None
        done = self.pool.submit(work)
        done.add_done_callback(_log_failure)
        return done


def _wait(futures: Sequence[Future[Any]]) -> None:
    for future in futures:
        future.exception()  # waits; what failed is reported by observe, or moot now


def _log_failure(done: Future[None]) -> None:
    failed = done.exception()
    if failed is not None:  # the next pass asks again where it matters (a pod still there)
        log.warning("deleting a worker: %s", failed)
