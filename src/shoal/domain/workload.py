"""The scheduler's own view of a job: flat, hashable values built from specs or traces."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.domain.job import DefaultRequests, TrainingJob, requests_with_defaults
from shoal.domain.nodes import HOSTNAME, NVLINK, RACK, ZONE
from shoal.domain.resources import CPU, MEMORY, MILLI, PODS, gpu_resource

PACK_LABELS = {"nvlink": NVLINK, "rack": RACK, "zone": ZONE}
ANTI_AFFINITY_LABELS = {"node": HOSTNAME, "rack": RACK}


@dataclass(frozen=True, slots=True)
class PodShape:
    """What one pod needs.  ``gpu_milli`` is per GPU: 1000 for whole GPUs."""

    cpu: int = 0
    memory: int = 0
    gpu_count: int = 0
    gpu_milli: int = 0
    gpu_memory: int = 0
    models: tuple[str, ...] = ()

    @property
    def gpu_total_milli(self) -> int:
        return self.gpu_count * self.gpu_milli

    @property
    def is_fractional(self) -> bool:
        return self.gpu_count == 1 and 0 < self.gpu_milli < MILLI

    def quota_vector(self, model: str) -> dict[str, int]:
        """Quota this pod charges when its GPUs are of ``model``: one of ``pods`` too."""
        vector = {CPU: self.cpu, MEMORY: self.memory, PODS: 1}
        if self.gpu_count:
            vector[gpu_resource(model)] = self.gpu_total_milli
        return vector


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where a job's pods may run; shared by all its pods."""

    node_selector: tuple[tuple[str, str], ...] = ()
    required: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    tolerations: tuple[tuple[str, str | None, str | None], ...] = ()
    anti_affinity: str = "none"
    pack: str = "none"


@dataclass(frozen=True, slots=True)
class Workload:
    """A job as the scheduler sees it: one or more pods admitted together."""

    name: str
    tenant: str
    pods: tuple[PodShape, ...]
    priority: int = 0
    submit_time: float = 0.0
    duration: float | None = None
    gang: bool = True
    preemptible: bool = True
    checkpoint_interval: float | None = None
    constraints: Constraints = field(default_factory=Constraints)

    @property
    def gpu_milli(self) -> int:
        return sum(pod.gpu_total_milli for pod in self.pods)


def from_training_job(
    job: TrainingJob, submit_time: float = 0.0, defaults: DefaultRequests | None = None,
    name: str | None = None,
) -> Workload:
    """Flatten a TrainingJob manifest into a Workload.

    A pod that requests no CPU or memory gets ``defaults`` (its tenant's
    ``defaultRequests``; unset: Shoal's), as ``apply`` writes them into the
    jobs it stores, so a pod's CPU and memory are never zero here.
    """
    spec = job.spec
    pods: list[PodShape] = []
    for pod_set in spec.pod_sets:
        res = requests_with_defaults(pod_set.resources, defaults)
        gpu = res.gpu
        shape = PodShape(
            cpu=res.cpu,
            memory=res.memory,
            gpu_count=gpu.count if gpu else 0,
            gpu_milli=gpu.milli_per_gpu if gpu else 0,
            gpu_memory=gpu.memory if gpu else 0,
            models=tuple(gpu.models) if gpu else (),
        )
        pods.extend([shape] * pod_set.count)
    constraints = Constraints(
        node_selector=tuple(sorted(spec.node_selector.items())),
        required=tuple(
            (req.key, req.operator, tuple(req.values)) for req in spec.affinity.required
        ),
        tolerations=tuple((t.key, t.value, t.effect) for t in spec.tolerations),
        anti_affinity=spec.affinity.anti_affinity,
        pack=spec.affinity.pack,
    )
    return Workload(
        name=name or job.metadata.name,  # a stored job: its key (shoal.domain.names)
        tenant=spec.tenant,
        pods=tuple(pods),
        priority=spec.priority_value,
        submit_time=submit_time,
        duration=spec.duration_seconds,
        gang=spec.gang,
        preemptible=spec.preemptible,
        checkpoint_interval=spec.checkpoint_interval_seconds,
        constraints=constraints,
    )
