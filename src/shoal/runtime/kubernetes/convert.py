"""Kubernetes objects <-> the control core's records, as pure functions of JSON.

* A Node becomes a ``domain.nodes.Node``: allocatable CPU, memory and GPUs
  (whole, MIG slices or shared: ``gpu_resources.py``), the GPU model from the
  label NVIDIA's GPU feature discovery sets (``nvidia.com/gpu.product``), GPU
  memory from ``nvidia.com/gpu.memory`` (MiB), labels and taints.
* A TrainingJob object *is* the job record: its spec is the manifest, its
  ``status`` holds everything the state machine keeps (``status.py``), and its
  ``metadata.resourceVersion`` is the version every write is fenced by.
* A pod of an attempt becomes a ``batch/v1`` Job of one pod (``worker_job``)
  whose pod only Shoal schedules (``schedulerName: shoal``), bound later
  through the Binding API.  Its rank, the world size and the master's address
  (the rank-0 pod's name under the job's headless Service, ``service_manifest``)
  are in its environment (a job of one pod gets no Service: its master is
  ``127.0.0.1``); a job that checkpoints mounts its PersistentVolumeClaim
  (``claim_manifest``) at ``CHECKPOINT_PATH``.

No I/O here, and no ``kubernetes`` import: the adapters do the calls.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.domain.base import API_VERSION
from shoal.domain.job import TrainingJobSpec
from shoal.domain.names import job_key
from shoal.domain.nodes import Node, Taint
from shoal.domain.resources import MILLI
from shoal.runtime.kubernetes import gpu_resources, quantities
from shoal.runtime.kubernetes.status import Condition, JobControl, PodEntry, TrainingJobStatus

__all__ = [
    "FINALIZER",
    "GPU",
    "GPU_MEMORY_LABEL",
    "GPU_MODEL_LABEL",
    "JOB_LABEL",
    "SCHEDULER",
    "UID_LABEL",
    "JobObject",
    "claim_manifest",
    "claim_name",
    "conditions_of",
    "foreign_usage",
    "node_of",
    "nodes_of",
    "pod_manifest",
    "pod_name",
    "pod_status",
    "quantity_mib",
    "quantity_milli",
    "reported_step",
    "row_of",
    "service_manifest",
    "service_name",
    "status_of",
    "worker_job",
]

SCHEDULER = "shoal"
"""``spec.schedulerName`` of every pod Shoal places: other schedulers leave them alone."""
GPU = "nvidia.com/gpu"
GPU_MODEL_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
JOB_LABEL = "shoal.dev/job"
UID_LABEL = "shoal.dev/pod-uid"
RANK_ANNOTATION = "shoal.dev/rank"
FINALIZER = "shoal.dev/stop"
"""Keeps a deleted TrainingJob until its pods are stopped and its quota is released."""
NOBODY = 65534
"""The user and group tenants' pods run as."""
DEFAULT_IMAGE = "busybox:1.36"
"""The container image of a job that names none (the embedded runtime needs none)."""
MASTER_PORT = 29500
"""``MASTER_PORT`` of every job (PyTorch's default rendezvous port)."""
CHECKPOINT_PATH = "/shoal/checkpoints"
"""Where a job's checkpoint volume is mounted; ``$SHOAL_CHECKPOINT_DIR`` says so, as embedded."""
CHECKPOINT_ANNOTATION = "shoal.dev/checkpoint"
"""On a pod: ``{"step": N}``, the newest checkpoint the job saved (see ``reported_step``)."""
CHECKPOINT_SIZE_ANNOTATION = "shoal.dev/checkpoint-size"
"""On a TrainingJob: the size its checkpoint claim asks for (default ``DEFAULT_CHECKPOINT_SIZE``)."""
CHECKPOINT_CLASS_ANNOTATION = "shoal.dev/checkpoint-storage-class"
"""On a TrainingJob: the StorageClass of its checkpoint claim (default: the cluster's)."""
DEFAULT_CHECKPOINT_SIZE = "10Gi"
_MAX_MESSAGE = 4096

# Annotations that tools write on every object: not the job's, and large.
_TOOL_ANNOTATIONS = ("kubectl.kubernetes.io/", "kopf.zalando.org/")

def quantity_milli(text: str | int | float) -> int:
    """A CPU quantity (``"32"``, ``"500m"``) in millicores."""
    return round(quantities.value(text) * MILLI)


def quantity_mib(text: str | int | float) -> int:
    """A memory quantity (``"256Gi"``, ``"1e9"``) in MiB, rounded down."""
    return int(quantities.value(text) // 2**20)


def node_of(obj: Mapping[str, Any]) -> Node | None:
    """The schedulable node a Node object describes; None when it takes no pods.

    A node that is cordoned or not Ready takes no new pods, so it is left out
    (the pods on it still hold what they use: the controller binds them from
    its own records).
    """
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
    if spec.get("unschedulable"):
        return None
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    if ready and ready[-1].get("status") != "True":
        return None
    allocatable = status.get("allocatable") or {}
    labels: dict[str, str] = dict(meta.get("labels") or {})
    # Whole GPUs, MIG slices or shared GPUs: ``gpu_resources`` says which.
    offer = gpu_resources.offer_of(allocatable, labels)
    if offer is not None and offer.sharing:
        labels[gpu_resources.SHARING_LABEL] = gpu_resources.SHARING
    taints = tuple(
        Taint(key=t["key"], value=t.get("value") or "", effect=t.get("effect", "NoSchedule"))
        for t in spec.get("taints") or []
        if t.get("effect") in ("NoSchedule", "PreferNoSchedule", "NoExecute")
    )
    return Node(
        name=meta["name"],
        pool=labels.get("shoal.dev/pool", "kubernetes"),
        cpu=quantity_milli(allocatable.get("cpu", 0)),
        memory=quantity_mib(allocatable.get("memory", 0)),
        gpu_model=offer.model if offer else "",
        gpu_count=offer.count if offer else 0,
        gpu_memory=offer.memory if offer else 0,
        labels=labels,
        taints=taints,
    )


_DONE = ("Succeeded", "Failed")


def foreign_usage(pods: Sequence[Mapping[str, Any]], counted: Mapping[str, str] | None = None,
                  ) -> dict[str, tuple[int, int, int]]:
    """Per node: CPU (milli), memory (MiB) and GPUs requested by pods Shoal did not place.

    ``counted``: per node, the resource that counts the GPUs Shoal places
    there (``gpu_resources.resource_of_model``; default ``nvidia.com/gpu``).
    A share of a shared GPU counts as a whole one: which GPU it is on, its
    plugin knows, not Shoal.
    """
    used: dict[str, tuple[int, int, int]] = {}
    for pod in pods:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node or JOB_LABEL in (meta.get("labels") or {}):
            continue
        if (pod.get("status") or {}).get("phase") in _DONE:
            continue
        cpu = memory = gpus = 0
        for container in spec.get("containers") or []:
            resources = container.get("resources") or {}
            requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
            cpu += quantity_milli(requests.get("cpu", 0))
            memory += quantity_mib(requests.get("memory", 0))
            gpus += gpu_resources.gpus_requested(requests, (counted or {}).get(node, GPU))
        was = used.get(node, (0, 0, 0))
        used[node] = (was[0] + cpu, was[1] + memory, was[2] + gpus)
    return used


def nodes_of(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> list[Node]:
    """Schedulable nodes, by name, with the room others' pods hold taken off."""
    found = [n for obj in sorted(nodes, key=lambda n: n["metadata"]["name"])
             if (n := node_of(obj)) is not None]
    used = foreign_usage(pods, {n.name: gpu_resources.resource_of_model(n.gpu_model)
                                for n in found})
    out: list[Node] = []
    for node in found:
        cpu, memory, gpus = used.get(node.name, (0, 0, 0))
        if cpu or memory or gpus:
            count = max(0, node.gpu_count - gpus)
            node = node.model_copy(update={
                "cpu": max(0, node.cpu - cpu),
                "memory": max(0, node.memory - memory),
                "gpu_count": count,
                "gpu_model": node.gpu_model if count else "",
            })
        out.append(node)
    return out


class JobObject:
    """What the adapters need of one TrainingJob object besides its record."""

    __slots__ = ("annotations", "conditions", "name", "namespace", "resource_version", "uid")

    def __init__(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace", "")
        self.uid: str = meta.get("uid", "")
        self.resource_version: str = meta.get("resourceVersion", "0")
        self.annotations: dict[str, str] = {
            k: v for k, v in (meta.get("annotations") or {}).items()
            if not k.startswith(_TOOL_ANNOTATIONS)
        }
        self.conditions: list[dict[str, Any]] = list(
            (obj.get("status") or {}).get("conditions") or [])


def _epoch(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def row_of(obj: Mapping[str, Any]) -> JobRow:
    """The ``JobRow`` a TrainingJob object stands for (its status, or a new job's)."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    job = JobObject(obj)
    status = TrainingJobStatus.model_validate(obj.get("status") or {})
    control = status.control
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": job.name, "labels": dict(meta.get("labels") or {}),
                     "annotations": job.annotations},
        "spec": dict(spec),
    }
    tenant = str(spec.get("tenant", job.namespace))
    pods = tuple(
        PodRecord(index=p.index, node=p.node, gpus=tuple(p.gpus), uid=p.uid,
                  started_at=p.started_at, state=p.state, handle=p.name or None,
                  exit_code=p.exit_code, message=p.message)
        for p in status.pods
    )
    return JobRow(
        name=job_key(tenant, job.name),
        tenant=tenant,
        manifest=manifest,
        phase=status.phase or "Pending",
        version=int(job.resource_version),
        attempts=status.attempts,
        preemptions=status.preemptions,
        lost_seconds=control.lost_seconds,
        submit_time=control.submit_time or _epoch(meta.get("creationTimestamp")),
        start_time=control.start_time,
        finish_time=control.finish_time,
        reason=status.reason,
        pods=pods,
        next_attempt_at=control.next_attempt_at,
        deleted=bool(meta.get("deletionTimestamp")),
        stop_cause=control.stop_cause,
        stop_deadline=control.stop_deadline,
        preemptor=control.preemptor,
        preemptor_attempts=control.preemptor_attempts,
        checkpoint_time=control.checkpoint_time,
        checkpoint_step=control.checkpoint_step,
        resumed_from=control.resumed_from,
        failures=status.failures,
        ran_seconds=control.ran_seconds,
        queued_at=control.queued_at,
    )


ADMITTED = "Admitted"
REQUEUED = "Requeued"
NOT_BOUND = "not bound within"
"""How the reason of a gang that could not be bound in time begins (``pods.py``)."""


def _second(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(int(seconds), UTC)


def _admitted(job: JobRow) -> Condition:
    """Whether the job holds quota now, and if not, why (its ``reason`` in one word)."""
    if job.phase in ("Running", "Preempting", "Stopping"):
        nodes = ", ".join(sorted({p.node for p in job.pods}))
        return Condition(type=ADMITTED, status="True", reason="Admitted",
                         message=f"attempt {job.attempts} admitted on {nodes}; "
                                 f"Shoal binds its pods there",
                         last_transition_time=_second(job.attempt_start))
    if job.phase == "Pending":
        if job.reason.startswith("retrying after"):
            why = "BackingOff"
        elif job.reason.startswith("unknown tenant"):
            why = "TenantNotFound"
        else:
            why = "Waiting"
        return Condition(type=ADMITTED, status="False", reason=why,
                         message=job.reason or "waiting for the next admission cycle",
                         last_transition_time=_second(job.queued_at or job.submit_time))
    return Condition(type=ADMITTED, status="False", reason=job.phase,
                     message=job.reason or f"the job {job.phase.lower()}",
                     last_transition_time=_second(job.finish_time))


def _requeue_reason(reason: str) -> str:
    if reason.startswith("preempted"):
        return "Preempted"
    if reason.startswith("retrying after"):
        return "AttemptFailed"
    if NOT_BOUND in reason:
        return "BindTimeout"
    return "PodLost"


def conditions_of(job: JobRow, previous: Sequence[Mapping[str, Any]] = ()) -> list[Condition]:
    """``Admitted`` (now) and ``Requeued`` (the last attempt that ended early, and why).

    ``Requeued`` is set when an attempt ends and the job goes back to
    Pending (``queued_at`` moves on) and kept, with the reason it had then,
    while later attempts run: reasons change, the condition says what happened.
    """
    conditions = [_admitted(job)]
    kept = next((Condition.model_validate(c) for c in previous if c.get("type") == REQUEUED),
                None)
    when = _second(job.queued_at)
    ran_before = job.attempts > 0 and (job.preemptions or job.failures)
    if job.phase == "Pending" and when is not None and ran_before and (
            kept is None or kept.last_transition_time != when):
        kept = Condition(type=REQUEUED, status="True", reason=_requeue_reason(job.reason),
                         message=job.reason or "requeued", last_transition_time=when)
    if kept is not None:
        conditions.append(kept)
    return conditions


def _rfc3339(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def status_of(job: JobRow, gpu_milli: int,
              previous: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``status`` to write for ``job``, which holds ``gpu_milli`` milli-GPUs.

    ``previous``: the conditions the object has now (``conditions_of``).
    Defaults are left out: the 1.20 API server reads an empty string in a
    custom resource as null and refuses it.
    """
    holding = job.phase in ("Running", "Preempting", "Stopping")
    status = TrainingJobStatus(
        phase=job.phase,
        admitted=holding,
        gpus=gpu_milli / MILLI if holding else 0,
        reason=job.reason,
        attempts=job.attempts,
        preemptions=job.preemptions,
        failures=job.failures,
        start_time=_rfc3339(job.start_time),
        completion_time=_rfc3339(job.finish_time),
        pods=[
            PodEntry(index=p.index, name=p.handle or "", node=p.node, gpus=list(p.gpus),
                     uid=p.uid, started_at=p.started_at, state=p.state,
                     exit_code=p.exit_code, message=p.message)
            for p in job.pods
        ],
        conditions=conditions_of(job, previous),
        control=JobControl(
            stop_cause=job.stop_cause, stop_deadline=job.stop_deadline,
            preemptor=job.preemptor, preemptor_attempts=job.preemptor_attempts,
            next_attempt_at=job.next_attempt_at,
            lost_seconds=job.lost_seconds, ran_seconds=job.ran_seconds,
            submit_time=job.submit_time, start_time=job.start_time,
            finish_time=job.finish_time, queued_at=job.queued_at,
            checkpoint_time=job.checkpoint_time, checkpoint_step=job.checkpoint_step,
            resumed_from=job.resumed_from,
        ),
    )
    dumped: dict[str, Any] = status.model_dump(
        mode="json", by_alias=True, exclude_defaults=True
    )
    return dumped


def pod_name(job: JobObject, pod: PodRecord) -> str:
    """A DNS-1123 name unique per pod of every attempt (the uid makes it so).

    It names the pod's worker Job; the Job controller names the pod after it.
    """
    return f"{job.name[:40].rstrip('-.')}-{pod.uid[:12]}".lower()


_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def service_name(job: JobObject) -> str:
    """The job's headless Service: a DNS-1035 label (a letter first, 63 at most)."""
    plain = f"tj-{job.name}"
    if len(plain) <= 63 and not _NOT_LABEL.search(plain):
        return plain
    digest = hashlib.blake2b(job.name.encode(), digest_size=4).hexdigest()
    return f"tj-{_NOT_LABEL.sub('-', job.name)[:48].strip('-')}-{digest}"


def claim_name(job: JobObject) -> str:
    """The job's checkpoint PersistentVolumeClaim."""
    return f"{job.name[:240]}-checkpoints"


def _owner(job: JobObject) -> list[dict[str, Any]]:
    return [{
        "apiVersion": API_VERSION, "kind": "TrainingJob", "name": job.name,
        "uid": job.uid, "controller": True, "blockOwnerDeletion": True,
    }] if job.uid else []


def checkpoints(spec: TrainingJobSpec) -> bool:
    """Whether the job asks for checkpointing (it says how often it saves one)."""
    return spec.checkpoint_interval_seconds is not None


def needs_service(spec: TrainingJobSpec) -> bool:
    """Whether the job gets a headless Service: only a gang, whose workers find their
    master by name.  (Each Service costs the cluster's endpoints controllers writes
    on every change of its pods.)"""
    return sum(ps.count for ps in spec.pod_sets) > 1


def pod_manifest(
    job: JobObject, row: JobRow, pod: PodRecord, spec: TrainingJobSpec, grace_seconds: float,
    priority: str | None = None,
) -> dict[str, Any]:
    """The Pod of ``pod`` of ``row``: the template of its worker Job (``worker_job``).

    ``priority``: the PriorityClass it names (``KubePods.class_for``), the
    priority a kubelet evicts by under node pressure (Shoal alone preempts).
    """
    pods = [ps for ps in spec.pod_sets for _ in range(ps.count)]
    pod_set = pods[pod.index]
    resources = pod_set.resources
    requests: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = f"{resources.cpu}m"
    if resources.memory:
        requests["memory"] = f"{resources.memory}Mi"
    # Whole GPUs, MIG slices or a share of one GPU (``gpu_resources``).
    gpus = gpu_resources.pod_gpus(resources.gpu, pod.gpus)
    annotations = {**job.annotations, RANK_ANNOTATION: str(pod.index), **gpus.annotations}
    limits = gpus.limits
    service = service_name(job) if needs_service(spec) else None
    env = [{"name": k, "value": v} for k, v in sorted({**spec.env, **gpus.env}.items())]
    env += [
        {"name": "RANK", "value": str(pod.index)},
        {"name": "WORLD_SIZE", "value": str(len(pods))},
        # The rank-0 pod's name under the job's headless Service (its
        # hostname and subdomain below): resolvable before it is Ready.  A
        # job of one pod is its own master, as in the embedded runtime.
        {"name": "MASTER_ADDR",
         "value": f"worker-0.{service}.{job.namespace}.svc" if service else "127.0.0.1"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "SHOAL_JOB", "value": row.name},
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image or DEFAULT_IMAGE,
        "env": env,
        "ports": [{"name": "master", "containerPort": MASTER_PORT}],
        "resources": {"requests": {**requests, **limits}, "limits": limits}
        if limits else {"requests": requests},
    }
    container["securityContext"] = {
        "allowPrivilegeEscalation": False, "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    if spec.command:
        container["command"] = list(spec.command)
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    security: dict[str, Any] = {
        "runAsNonRoot": True, "runAsUser": NOBODY, "runAsGroup": NOBODY,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_spec: dict[str, Any] = {
        "schedulerName": SCHEDULER,
        **({"priorityClassName": priority} if priority is not None else {}),
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(0, round(grace_seconds)),
        "hostname": f"worker-{pod.index}",
        # A tenant's code gets no API credentials and no privilege: it runs
        # as nobody, gains none, holds no capability, under the runtime's
        # default seccomp profile.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": security,
        "containers": [container],
    }
    if service:
        pod_spec["subdomain"] = service
    if checkpoints(spec):
        env.append({"name": "SHOAL_CHECKPOINT_DIR", "value": CHECKPOINT_PATH})
        container["volumeMounts"] = [{"name": "checkpoints", "mountPath": CHECKPOINT_PATH}]
        pod_spec["volumes"] = [{"name": "checkpoints",
                                "persistentVolumeClaim": {"claimName": claim_name(job)}}]
        security["fsGroup"] = NOBODY  # the volume is writable by the job's user
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job, pod),
            "namespace": job.namespace,
            "labels": {JOB_LABEL: job.name, UID_LABEL: pod.uid},
            "annotations": annotations,
            "ownerReferences": _owner(job),
        },
        "spec": pod_spec,
    }


def worker_job(
    job: JobObject, row: JobRow, pod: PodRecord, spec: TrainingJobSpec, grace_seconds: float,
    priority: str | None = None,
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs ``pod``: one pod, never retried by the Job controller.

    ``backoffLimit: 0`` and ``restartPolicy: Never``: a failed pod fails the
    Job, and the control core decides about retries (the whole gang, with its
    backoff).  One Job per pod, so each carries its rank, GPU indices and
    hostname in its template (v1.20 has no Indexed completion mode).
    """
    pod_body = pod_manifest(job, row, pod, spec, grace_seconds, priority)
    meta = pod_body["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": meta["name"],
            "namespace": job.namespace,
            "labels": dict(meta["labels"]),
            "annotations": {RANK_ANNOTATION: str(pod.index)},
            "ownerReferences": meta["ownerReferences"],
        },
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": dict(meta["labels"]),
                             "annotations": dict(meta["annotations"])},
                "spec": pod_body["spec"],
            },
        },
    }


def service_manifest(job: JobObject) -> dict[str, Any]:
    """The job's headless Service: DNS names for its pods (``worker-<rank>.<service>``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(job), "namespace": job.namespace,
                     "labels": {JOB_LABEL: job.name}, "ownerReferences": _owner(job)},
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: job.name},
            # Workers look the master up while it starts, before it is Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "master", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def claim_manifest(job: JobObject, spec: TrainingJobSpec) -> dict[str, Any]:
    """The job's checkpoint volume: kept across attempts, deleted with the TrainingJob.

    ReadWriteOnce for one pod; ReadWriteMany for a gang, whose pods may land
    on several nodes.  ``shoal.dev/checkpoint-size`` and
    ``shoal.dev/checkpoint-storage-class`` on the TrainingJob choose size and class.
    """
    world = sum(ps.count for ps in spec.pod_sets)
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce" if world == 1 else "ReadWriteMany"],
        "resources": {"requests": {
            "storage": job.annotations.get(CHECKPOINT_SIZE_ANNOTATION, DEFAULT_CHECKPOINT_SIZE)}},
    }
    storage_class = job.annotations.get(CHECKPOINT_CLASS_ANNOTATION)
    if storage_class:
        claim["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name(job), "namespace": job.namespace,
                     "labels": {JOB_LABEL: job.name}, "ownerReferences": _owner(job)},
        "spec": claim,
    }


def _step_of(text: str | None) -> int | None:
    """``{"step": N}`` (N >= 0) in ``text``, else None: the tenant wrote it, so anything goes."""
    if not text or len(text) > _MAX_MESSAGE:
        return None
    try:
        step = json.loads(text).get("step")
    except (ValueError, AttributeError, RecursionError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def reported_step(obj: Mapping[str, Any]) -> int | None:
    """The newest checkpoint step a pod reports, by Shoal's convention (None: none).

    Either its annotation ``shoal.dev/checkpoint`` or the termination message
    of a container that ended, both ``{"step": N}`` (the message is what the
    workload writes to ``/dev/termination-log``; the kubelet copies it into
    the pod's status).  The larger wins.
    """
    steps = [_step_of(((obj.get("metadata") or {}).get("annotations") or {})
                      .get(CHECKPOINT_ANNOTATION))]
    for container in (obj.get("status") or {}).get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        steps.append(_step_of(ended.get("message")))
    found = [s for s in steps if s is not None]
    return max(found) if found else None


def pod_status(obj: Mapping[str, Any] | None) -> PodStatus:
    """How a Pod object stands, in the control core's words (None: it is gone)."""
    if obj is None:
        return PodStatus("lost", None, "the pod is gone")
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    terminated = None
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state:
            terminated = state["terminated"]
    code = terminated.get("exitCode") if terminated else None
    message = (terminated or {}).get("message") or status.get("message") or ""
    if phase == "Succeeded":
        return PodStatus("succeeded", 0 if code is None else int(code), message)
    if phase == "Failed":
        reason = (terminated or {}).get("reason") or status.get("reason") or ""
        if reason == "OOMKilled":
            return PodStatus("oom_killed", code, message or "killed: out of memory")
        if code in (137, 143):
            return PodStatus("signalled", code, message or f"killed by a signal (exit {code})")
        return PodStatus("failed", 1 if code is None else int(code), message or reason)
    if phase == "Unknown":
        return PodStatus("lost", None, "its node stopped reporting")
    return PodStatus("running", None, "")
