"""The checkpoints port on Kubernetes: the step a job's pods report, by convention.

A job that checkpoints (``checkpointIntervalSeconds``) writes to its
PersistentVolumeClaim, mounted at ``$SHOAL_CHECKPOINT_DIR`` in every pod
(``convert.claim_manifest``).  The operator cannot read that volume, so a job
says what it saved the Kubernetes way (``convert.reported_step``): the
annotation ``shoal.dev/checkpoint: '{"step": N}'`` on one of its pods, or the
same JSON as a container's termination message (what it writes to
``/dev/termination-log`` before it exits; the kubelet copies it into the pod's
status).

A step the pods report that is newer than the one recorded is a checkpoint
saved now (the control clock's time when the operator first sees it); the
control core records it in the TrainingJob's status (``status.control``), so
it outlives the pods: the next attempt is admitted with ``resumedFrom`` that
step, and lost work counts from that time.  A pending job's checkpoint is the
recorded one; no API call is made for it.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal.control import cluster_view as view
from shoal.control.ports import Clock
from shoal.control.records import HOLDING_PHASES, Checkpoint, JobRow
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL, UID_LABEL, checkpoints, reported_step
from shoal.runtime.kubernetes.store import KubeStore

__all__ = ["KubeCheckpoints"]


class KubeCheckpoints:
    """Implements ``control.ports.Checkpoints`` from what the job's pods report."""

    follows_pods = True
    """What ``latest`` reads is the record and the job's Pods: unchanged, the same answer."""

    def __init__(self, kube: Kube, store: KubeStore, clock: Clock) -> None:
        self.kube, self.store, self.clock = kube, store, clock

    def latest(self, job: JobRow) -> Checkpoint | None:
        if not checkpoints(view.manifest_of(job).spec):
            return None
        recorded = (None if job.checkpoint_time is None
                    else Checkpoint(time=job.checkpoint_time, step=job.checkpoint_step))
        if job.phase not in HOLDING_PHASES or not job.pods:
            return recorded
        owner = self.store.object_of(job)
        steps = [
            step for pod in self._pods(owner.namespace, owner.name, [p.uid for p in job.pods])
            if (step := reported_step(pod)) is not None
        ]
        if not steps:
            return recorded
        newest = max(steps)
        if recorded is not None and recorded.step is not None and newest <= recorded.step:
            return recorded
        return Checkpoint(time=self.clock.now(), step=newest)

    def _pods(self, namespace: str, name: str, uids: list[str]) -> list[Body]:
        """The attempt's pods: by the uid index of the watch cache where there is one (a
        pass asks for every running job, and the job's pods of all time may be many)."""
        labelled: Callable[..., list[Body]] | None = getattr(self.kube, "labelled", None)
        if labelled is not None:
            return [pod for uid in uids for pod in labelled("Pod", namespace, UID_LABEL, uid)]
        wanted = set(uids)
        return [pod for pod in self.kube.list("Pod", namespace, labels=f"{JOB_LABEL}={name}")
                if (pod["metadata"].get("labels") or {}).get(UID_LABEL) in wanted]
