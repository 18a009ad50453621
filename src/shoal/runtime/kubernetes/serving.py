"""Inference services on Kubernetes: the Replicas and Traffic ports, and the serving loop.

``KubeReplicas`` (``control.services.Replicas``): one ``apps/v1`` Deployment
per revision (``serving_objects.replica_deployment``), whose
``spec.replicas`` is the count Shoal's autoscaler decided (0: scaled to
zero), and a PodDisruptionBudget per revision in the version discovery
finds (``policy/v1``, or ``policy/v1beta1`` on 1.20).  ``observe`` reads the
service's pods: a pod waiting for a node is pending (with the scheduler's
message), a Running pod whose Ready condition is True is ready (its
endpoint is ``http://<pod IP>:8080``), a container that ended with the
replica server's load-failure exit code fails its revision with the
kubelet's termination message (the tail of its log); a ReplicaSet the
namespace's ResourceQuota refused shows as a pending replica with the
quota's message.  Replica pods are placed by the cluster's scheduler (they
are foreign pods to Shoal's inventory, which takes their room off before
it places jobs); Shoal binds only its jobs' pods.

``KubeTraffic`` (``control.services.Traffic``): the router is a Deployment of
one pod in the tenant's namespace with a Service in front
(``http://<service>.<tenant>.svc``); its routing table (the split and the
ready replicas' addresses) is the ConfigMap ``<service>-routes``, mounted in
the router's pod and rewritten only when the table changes.  The router
runs as the tenant's ServiceAccount ``shoal-router``, bound to the
ClusterRole ``system:auth-delegator`` (both made with the table when
missing: it checks callers with TokenReviews and SubjectAccessReviews).  ``load``
and ``window`` read what the routers measured from their ``/metrics``
(``serving_load.py``), so the autoscaler and the canary analysis see the
same figures as in the embedded runtime (the p95 to a bucket bound of the
routers' latency histogram).

``ServingLoop`` runs ``control.services.ServiceReconciler`` over these ports
(the same reconciler as every runtime) in a thread of the operator
(``operator.py`` starts it): every ``period_s`` seconds while services exist,
and on every change to them, reading from watches; with no service it sends
nothing but its watches.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.control.ports import Clock
from shoal.control.services import (
    ReplicaStatus,
    RevisionLoad,
    ServiceReconciler,
    ServiceRecord,
)
from shoal.domain.names import job_name
from shoal.domain.replica import REVISION_LABEL, SERVICE_LABEL
from shoal.errors import AlreadyExistsError, ConflictError, ShoalError
from shoal.policy.autoscaling.for_service import policy_for
from shoal.policy.rollout import RevisionWindow
from shoal.runtime.kubernetes.cache import Cache, CachedKube, Watched
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import JobObject, claim_name
from shoal.runtime.kubernetes.serving_load import RouterLoad
from shoal.runtime.kubernetes.serving_objects import (
    LOAD_FAILED,
    MODEL_MOUNT,
    PORT,
    ROUTER_LABEL,
    disruption_budget,
    replica_deployment,
    router_access,
    router_deployment,
    router_service,
    routes_config,
    routes_of,
)
from shoal.runtime.kubernetes.serving_store import KubeServices

__all__ = ["DEFAULT_IMAGE", "KubeReplicas", "KubeTraffic", "ServingLoop", "serving_reconciler"]

log = logging.getLogger("shoal.operator")

DEFAULT_IMAGE = os.environ.get("SHOAL_SERVING_IMAGE", "shoal")
"""The image of replicas and routers: one with Shoal installed (``shoal[serving]``)."""
_MESSAGE_MAX = 1024


def _ensure(kube: Kube, body: Body) -> Body:
    """Create ``body`` if missing; else bring its ``spec`` (or ``data``) to ``body``'s."""
    meta = body["metadata"]
    live = kube.get(body["kind"], meta["name"], meta["namespace"])
    if live is None:
        try:
            created: Body = kube.create(body)
            return created
        except AlreadyExistsError:  # made meanwhile: the next pass compares it
            return body
    field = "data" if "data" in body else "spec"
    if _covers(live.get(field), body[field]):
        return live
    updated: Body = kube.replace({**body, "metadata": {
        **meta, "resourceVersion": live["metadata"]["resourceVersion"]}})
    return updated


def _made(kube: Kube, body: Body) -> None:
    """Create ``body`` unless it exists (kept as found: the routers' account and binding)."""
    meta = body["metadata"]
    if kube.get(body["kind"], meta["name"], meta.get("namespace")) is None:
        try:
            kube.create(body)
        except AlreadyExistsError:  # made meanwhile (another service of the tenant)
            return


def _covers(live: Any, wanted: Any) -> bool:
    """Whether ``live`` holds every field of ``wanted`` (the server adds defaults)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(_covers(live.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(
            _covers(a, b) for a, b in zip(live, wanted, strict=True))
    return bool(live == wanted)


def _labels(body: Body) -> dict[str, str]:
    labels: dict[str, str] = body["metadata"].get("labels") or {}
    return labels


class KubeReplicas:
    """Implements ``control.services.Replicas`` with a Deployment per revision."""

    def __init__(self, kube: Kube, services: KubeServices, image: str = DEFAULT_IMAGE) -> None:
        self.kube, self.services, self.image = kube, services, image

    def _source(self, record: ServiceRecord) -> tuple[str, str] | tuple[None, str | None]:
        """("pending"|"failed", why) while ``model.from``'s job has no model; else
        (None, its checkpoint claim, or None for ``model.path``)."""
        source = record.spec.model.from_
        if source is None:
            return None, None
        job = self.kube.get("TrainingJob", source.training_job, record.row.tenant)
        if job is None:
            return "pending", f"waiting for TrainingJob {source.training_job} (not found)"
        phase = (job.get("status") or {}).get("phase")
        if (job.get("spec") or {}).get("checkpointIntervalSeconds") is None:
            # Only a checkpointing job has a claim that outlives its pods.
            return "failed", (f"TrainingJob {source.training_job} keeps no checkpoint folder "
                              f"(no checkpointIntervalSeconds): nothing to serve from")
        if phase == "Succeeded":
            return None, claim_name(JobObject(job))
        if phase in ("Failed", "Cancelled"):
            return "failed", f"TrainingJob {source.training_job} ended {phase}: no model"
        return "pending", f"waiting for TrainingJob {source.training_job} to succeed"

    def observe(self, record: ServiceRecord) -> list[ReplicaStatus]:
        tenant, service = record.row.tenant, job_name(record.row.name)
        state, why = self._source(record)
        if state is not None:
            return [ReplicaStatus(f"{r.name}-model", r.name, state,  # type: ignore[arg-type]
                                  message=why or "", load_failed=state == "failed")
                    for r in record.row.revisions if r.phase == "Loading"]
        found: list[ReplicaStatus] = []
        pods = self.kube.list("Pod", tenant, labels=f"{SERVICE_LABEL}={service},{REVISION_LABEL}")
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            seen = self._pod(tenant, pod)
            if seen is not None:
                found.append(seen)
        for deployment in self.kube.list("Deployment", tenant, labels=f"{SERVICE_LABEL}={service}"):
            revision = _labels(deployment).get(REVISION_LABEL)
            refused = self._refused(deployment)
            if revision and refused:
                found.append(ReplicaStatus(f"{revision}-quota", f"{tenant}/{revision}",
                                           "pending", message=refused))
        return found

    @staticmethod
    def _pod(tenant: str, pod: Body) -> ReplicaStatus | None:
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            return None
        name = meta["name"]
        revision = f"{tenant}/{_labels(pod).get(REVISION_LABEL, '')}"
        for container in status.get("containerStatuses") or []:
            ended = ((container.get("state") or {}).get("terminated")
                     or (container.get("lastState") or {}).get("terminated"))
            if ended and ended.get("exitCode") == LOAD_FAILED:
                message = str(ended.get("message") or ended.get("reason") or "exit code 1")
                return ReplicaStatus(name, revision, "failed", load_failed=True,
                                     message=message.strip()[-_MESSAGE_MAX:])
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        phase = status.get("phase")
        if phase == "Pending" and not (pod.get("spec") or {}).get("nodeName"):
            scheduled = conditions.get("PodScheduled") or {}
            return ReplicaStatus(name, revision, "pending", message=str(
                scheduled.get("message") or "waiting for a node"))
        if phase == "Running" and (conditions.get("Ready") or {}).get("status") == "True" \
                and status.get("podIP"):
            return ReplicaStatus(name, revision, "ready",
                                 endpoint=f"http://{status['podIP']}:{PORT}")
        if phase in ("Succeeded", "Failed"):
            return None  # its ReplicaSet makes another
        return ReplicaStatus(name, revision, "starting")

    @staticmethod
    def _refused(deployment: Body) -> str:
        """The ReplicaSet could not make a pod (the quota refused it): the message."""
        for condition in (deployment.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
                return str(condition.get("message") or condition.get("reason") or "")
        return ""

    def scale(self, record: ServiceRecord, revision: str, count: int) -> None:
        """Write ``count`` into the revision's Deployment (made, with its PDB, when first asked)."""
        tenant, short = record.row.tenant, job_name(revision)
        live = self.kube.get("Deployment", short, tenant)
        if live is None:
            if count == 0 or record.deleted:
                return
            state, claim = self._source(record)
            if state is not None:
                return  # its model does not exist yet
            owner = self.services.object_of(record)
            model = record.spec.model
            path = (f"{MODEL_MOUNT}/{model.from_.path}" if model.from_ is not None
                    else model.path)
            body = replica_deployment(owner, record.spec, short, count, self.image, path, claim)
            try:
                self.kube.create(body)
            except AlreadyExistsError:
                return  # made meanwhile: the next pass writes its count
            self._budget(owner, short)
            return
        if (live.get("spec") or {}).get("replicas") == count:
            return
        try:
            self.kube.replace({**live, "spec": {**live["spec"], "replicas": count}})
        except ConflictError:
            return  # the Deployment controller wrote it meanwhile: the next pass writes again

    def _budget(self, owner: Body, revision: str) -> None:
        version = self.kube.discovery.api_version("PodDisruptionBudget")
        try:
            self.kube.create(disruption_budget(owner, revision, version))
        except AlreadyExistsError:
            return


class KubeTraffic:
    """Implements ``control.services.Traffic``: the router's Deployment, Service and table."""

    def __init__(self, kube: Kube, services: KubeServices, image: str = DEFAULT_IMAGE,
                 load: RouterLoad | None = None) -> None:
        self.kube, self.services, self.image = kube, services, image
        self._tables: dict[str, str] = {}
        self.routers = load or RouterLoad(kube)

    def route(self, record: ServiceRecord, split: Mapping[str, int],
              endpoints: Mapping[str, Sequence[str]], activating: Sequence[str],
              now: float) -> None:
        if record.deleted:
            return
        owner = self.services.object_of(record)
        table = routes_of(job_name(record.row.name), split, endpoints, activating)
        text = json.dumps(table, sort_keys=True)
        if self._tables.get(record.row.name) == text:
            return
        _ensure(self.kube, routes_config(owner, table))
        for body in router_access(owner["metadata"]["namespace"]):
            _made(self.kube, body)
        _ensure(self.kube, router_deployment(owner, self.image))
        _ensure(self.kube, router_service(owner))
        self._tables[record.row.name] = text

    def close(self, service: str) -> None:
        # Its router, Service and table are owned by the InferenceService: the garbage
        # collector removes them with it.
        self._tables.pop(service, None)
        tenant, _, name = service.partition("/")
        self.routers.forget(tenant, name)

    def load(self, service: str, revision: str, now: float) -> RevisionLoad:
        """What the service's routers measured (``serving_load.py``)."""
        tenant, _, name = service.partition("/")
        return self.routers.load(tenant, name, job_name(revision), now)

    def window(self, service: str, revision: str, now: float, seconds: float) -> RevisionWindow:
        tenant, _, name = service.partition("/")
        return self.routers.window(tenant, name, job_name(revision), now, seconds)


class _WallClock:
    def now(self) -> float:
        return time.time()


def serving_reconciler(kube: Kube, clock: Clock | None = None, image: str = DEFAULT_IMAGE,
                       load: RouterLoad | None = None) -> ServiceReconciler:
    """The control core's service reconciler over the Kubernetes ports."""
    services = KubeServices(kube)
    return ServiceReconciler(services, KubeReplicas(kube, services, image),
                             KubeTraffic(kube, services, image, load), clock or _WallClock(),
                             policy_for)


SERVING_WATCHED: tuple[Watched, ...] = (
    Watched("InferenceService"),
    Watched("Pod", SERVICE_LABEL, whole=True),
    Watched("Pod", ROUTER_LABEL, whole=True),
    Watched("Deployment", SERVICE_LABEL),
)
"""What the serving passes read, kept by watches: the services, their replicas'
pods (whole: their IPs and Ready conditions), their routers' pods, their
revisions' Deployments."""


class ServingLoop:
    """The serving reconciler's passes in the operator's thread for serving.

    Reads come from watches (``SERVING_WATCHED``), so a pass that changes
    nothing sends the API server nothing.  While any InferenceService exists
    a pass runs every ``period_s`` seconds (the autoscalers sample the
    routers' load, from the routers themselves) and at once on any change
    to what is watched; with none, the loop only waits for one to appear.
    """

    def __init__(self, kube: Kube, period_s: float = 2.0, image: str = DEFAULT_IMAGE,
                 watch: bool = True, clock: Clock | None = None) -> None:
        self.wake = threading.Event()
        self.cache = Cache(kube, SERVING_WATCHED, on_change=self.wake.set) if watch else None
        self.kube = kube if self.cache is None else CachedKube(kube, self.cache)
        """The seam the ports use: reads of the watched kinds from memory once listed."""
        self.reconciler = serving_reconciler(self.kube, clock, image=image)
        self.period_s = period_s
        self.passes = 0

    def run(self, done: threading.Event) -> None:
        if self.cache is not None:
            self.cache.start(done)
            while not done.is_set() and not self.cache.wait_synced(1.0):
                continue
        said: dict[str, str] = {}
        while not done.is_set():
            self.wake.clear()
            self.passes += 1
            failed = False
            try:
                self.reconciler.step()
            except ShoalError as exc:  # the API server away, a 403: say so and try again
                log.warning("serving pass failed: %s", exc)
                failed = True
            except Exception:  # a bug must not end the thread: the next pass tries again
                log.exception("serving pass failed")
                failed = True
            said = _report(self.reconciler.errors, said)
            self._rest(done, patient=failed or bool(self.reconciler.errors))

    def _rest(self, done: threading.Event, patient: bool = False) -> None:
        """Until the next pass: ``period_s``, or the next change while no service exists.

        ``patient``: the pass failed somewhere; the next waits ``period_s`` whatever
        changes meanwhile (a namespace being deleted changes much, and each try
        would be a request).
        """
        until = time.monotonic() + self.period_s
        if patient:
            done.wait(self.period_s)
            self.wake.clear()
            return
        while not done.is_set():
            idle = self.cache is not None and self.cache.answers("InferenceService") \
                and not self.cache.list("InferenceService", None, "")
            left = until - time.monotonic()
            if not idle and left <= 0:
                return
            # Looked at each second at most (in memory: no request) so that ``done`` is heard.
            if self.wake.wait(1.0 if idle else min(1.0, left)):
                return


def _report(errors: Mapping[str, ShoalError], said: Mapping[str, str]) -> dict[str, str]:
    """Log each service's error once (while it lasts); returns what has been said."""
    now = {name: str(exc) for name, exc in errors.items()}
    for name, message in now.items():
        if said.get(name) == message:
            continue
        # Its namespace is being deleted, and the service with it: nothing to repair.
        quiet = "is being terminated" in message
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "service %s: %s", name, message)
    return now


def start(kube: Kube, done: threading.Event, period_s: float = 2.0) -> threading.Thread:
    """Start the serving loop in a daemon thread until ``done`` is set."""
    loop = ServingLoop(kube, period_s)
    thread = threading.Thread(target=loop.run, args=(done,), name="shoal-serving", daemon=True)
    thread.start()
    return thread
