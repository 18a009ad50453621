"""Training jobs: the schedulable unit.  Pod sets, gangs, GPU fractions, affinity."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from shoal.domain import priority as priorities
from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.quantity import CpuMilli, MemoryMiB
from shoal.domain.resources import MILLI

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DEFAULT_CPU_MILLI = 100
"""CPU (millicores) of a pod that requests none, when its tenant sets no ``defaultRequests``."""
DEFAULT_MEMORY_MIB = 256
"""Memory (MiB) of a pod that requests none, when its tenant sets no ``defaultRequests``."""
MAX_PODS_PER_JOB = 1024
"""Most pods one job may have, over all its pod sets."""


def _gpu_request(value: object) -> object:
    """``gpu: 2`` is shorthand for two whole GPUs."""
    if isinstance(value, bool):
        raise ValueError("expected a number of whole GPUs or {count|fraction, model, memory}")
    if isinstance(value, int | float):
        if value != int(value):
            raise ValueError(
                f"a GPU count must be whole, got {value}; use gpu: {{fraction: {value}}} "
                "for a share of one GPU"
            )
        return {"count": int(value)}
    return value


class GpuRequest(Spec):
    """Whole GPUs (``count``) or a share of one GPU (``fraction`` + ``memory``)."""

    count: int = Field(default=1, ge=0, le=64, description="whole GPUs per pod")
    fraction: float | None = Field(
        default=None, gt=0, description="share of one GPU's compute, 0 < fraction <= 1"
    )
    memory: MemoryMiB = Field(default=0, description="GPU memory needed (for fractions)")
    models: list[str] = Field(default_factory=list, description="allowed GPU models, any if empty")

    @field_validator("fraction")
    @classmethod
    def _at_most_one(cls, value: float | None) -> float | None:
        if value is not None and value > 1:
            raise ValueError(
                f"a GPU fraction must be at most 1, got {value}; ask for count: N whole GPUs"
            )
        return value

    @model_validator(mode="after")
    def _fraction_is_one_gpu(self) -> GpuRequest:
        if self.fraction is not None and self.fraction < 1 and self.count != 1:
            raise ValueError("a fractional GPU request is for exactly one GPU (count: 1)")
        return self

    @property
    def milli_per_gpu(self) -> int:
        """Milli-GPUs taken on each assigned GPU (1000 for whole GPUs)."""
        if self.count == 0:
            return 0
        return MILLI if self.fraction is None else max(1, round(self.fraction * MILLI))

    @property
    def total_milli(self) -> int:
        return self.count * self.milli_per_gpu


class PodResources(Spec):
    """What each pod of the set needs."""

    cpu: CpuMilli = Field(
        default=0,
        description="CPU of one pod; unset or 0: the tenant's defaultRequests.cpu "
        f"(else {DEFAULT_CPU_MILLI}m), written into the job when it is applied",
    )
    memory: MemoryMiB = Field(
        default=0,
        description="memory of one pod; unset or 0: the tenant's defaultRequests.memory "
        f"(else {DEFAULT_MEMORY_MIB}Mi), written into the job when it is applied",
    )
    gpu: Annotated[GpuRequest | None, BeforeValidator(_gpu_request)] = Field(
        default=None,
        description="GPUs of one pod: a number of whole GPUs (gpu: 2), or "
        "{count | fraction, memory, models}; unset: none",
    )


class PodSet(Spec):
    """A group of identical pods of the job."""

    name: Name = Field(default="worker", description="unique within the job")
    count: int = Field(
        default=1, ge=1, le=MAX_PODS_PER_JOB,
        description=f"number of pods; at most {MAX_PODS_PER_JOB} per job over all pod sets",
    )
    resources: PodResources = Field(default_factory=PodResources)


class DefaultRequests(Spec):
    """Per-pod requests given to pods that ask for none, like a LimitRange's defaultRequest."""

    cpu: CpuMilli = Field(
        default=DEFAULT_CPU_MILLI,
        description=f"CPU of a pod that requests no CPU; unset: {DEFAULT_CPU_MILLI}m",
    )
    memory: MemoryMiB = Field(
        default=DEFAULT_MEMORY_MIB,
        description=f"memory of a pod that requests no memory; unset: {DEFAULT_MEMORY_MIB}Mi",
    )

    @field_validator("cpu", "memory")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        # A zero default would let pods run uncharged, which defaults exist to prevent.
        if value <= 0:
            raise ValueError("a default request must be more than 0")
        return value


SHOAL_DEFAULT_REQUESTS = DefaultRequests()
"""Shoal's own defaults, for tenants without ``defaultRequests``."""


def requests_with_defaults(
    resources: PodResources, defaults: DefaultRequests | None = None
) -> PodResources:
    """``resources`` with a zero CPU or memory request replaced by ``defaults``.

    The one place requests are defaulted, so the scheduler, the quota charge
    and the runtime's cgroup limits all see the same numbers: ``apply`` writes
    the result into the stored job; workloads built from manifests that never
    pass ``apply`` (simulations, jobs stored before defaults existed) get it in
    ``from_training_job``.  Unset ``defaults``: Shoal's.
    """
    chosen = defaults or SHOAL_DEFAULT_REQUESTS
    changes: dict[str, int] = {}
    if resources.cpu <= 0:
        changes["cpu"] = chosen.cpu
    if resources.memory <= 0:
        changes["memory"] = chosen.memory
    return resources.model_copy(update=changes) if changes else resources


class LabelRequirement(Spec):
    """A condition on one node label, as in Kubernetes node affinity."""

    key: str = Field(min_length=1, description="node label key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = "In"
    values: list[str] = Field(
        default_factory=list,
        description="needed by In and NotIn; must be empty for Exists and DoesNotExist",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class Toleration(Spec):
    """Lets the job's pods onto nodes with a matching taint."""

    key: str = Field(min_length=1, description="the taint's key")
    value: str | None = Field(default=None, description="the taint's value; unset: any value")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="the taint's effect; unset: any effect"
    )


class Affinity(Spec):
    """Where pods may go (``required``) and how a gang is laid out."""

    required: list[LabelRequirement] = Field(
        default_factory=list, description="conditions every pod's node must meet"
    )
    anti_affinity: Literal["none", "node", "rack"] = Field(
        default="none", description="pods of this job must be on distinct nodes or racks"
    )
    pack: Literal["none", "nvlink", "rack", "zone"] = Field(
        default="none", description="keep a gang within one topology domain if possible"
    )


class Elastic(Spec):
    """A range of workers the job can run with (accepted; jobs are not resized yet)."""

    min_workers: int = Field(ge=1)
    max_workers: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Elastic:
        if self.min_workers > self.max_workers:
            raise ValueError("minWorkers cannot exceed maxWorkers")
        return self


class TrainingJobSpec(Spec):
    """What the job runs, who pays for it, and where its pods may go."""

    tenant: Name = Field(description="the tenant whose quota the job uses")
    priority: int | str = Field(
        default="normal",
        description="an integer or a class: low, normal, high, critical; higher may preempt lower",
    )
    pod_sets: list[PodSet] = Field(
        min_length=1,
        description=f"the job's pods, in groups; at most {MAX_PODS_PER_JOB} pods in all, as a "
        "job is admitted, placed and started as one unit in one scheduling cycle (use a "
        "tenant's pods quota to bound what it runs at once)",
    )
    gang: bool = Field(default=True, description="start all pods together or none of them")
    preemptible: bool = Field(
        default=True, description="may be stopped to make room for other jobs"
    )
    checkpoint_interval_seconds: float | None = Field(
        default=None,
        gt=0,
        description="how often the job checkpoints: bounds the work a preemption loses",
    )
    elastic: Elastic | None = None
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="node labels that every pod's node must have"
    )
    affinity: Affinity = Field(default_factory=Affinity)
    tolerations: list[Toleration] = Field(
        default_factory=list, description="taints the pods tolerate"
    )
    duration_seconds: float | None = Field(
        default=None, gt=0,
        description="known or estimated run time: a replay runs the job this long; the srtf "
        "ordering ranks jobs by it",
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="argv of every pod, run without a shell; needed to run, not to simulate",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="container image of every pod on Kubernetes; the embedded runtime runs "
        "the command on the host and ignores it",
    )
    working_dir: str | None = Field(
        default=None,
        description="where the pods run (shared); default: a private folder per pod. "
        "The CLI resolves a relative path against the manifest's folder.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="environment variables of every pod"
    )
    pids_limit: int | None = Field(
        default=None, ge=16, le=65_536,
        description="processes and threads each pod may have at once (a cgroup's pids.max); "
        "default 1024, so that no pod can fork-bomb the machine",
    )
    max_retries: int = Field(
        default=3, ge=0, description="times a failed job is started again before it fails"
    )

    @field_validator("command", "working_dir")
    @classmethod
    def _no_nul(cls, value: list[str] | str | None) -> list[str] | str | None:
        # A NUL cannot be passed to a process: the pod could never start.
        items = [value] if isinstance(value, str) else (value or [])
        if any("\0" in item for item in items):
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("env")
    @classmethod
    def _environment_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(
                    f"{key!r} is not a variable name: letters, digits and _, not starting "
                    "with a digit")
            if "\0" in text:
                raise ValueError(f"the value of {key} must not contain a NUL character")
        return value

    @field_validator("pod_sets")
    @classmethod
    def _pods_per_job(cls, value: list[PodSet]) -> list[PodSet]:
        # A job is admitted, placed and started in one scheduling cycle: its
        # size bounds that cycle's work and what one manifest can take.
        pods = sum(pod_set.count for pod_set in value)
        if pods > MAX_PODS_PER_JOB:
            raise ValueError(
                f"{pods} pods in all; a job may have at most {MAX_PODS_PER_JOB} pods over all "
                "its pod sets (split it into several jobs)"
            )
        return value

    @field_validator("priority")
    @classmethod
    def _known_priority(cls, value: int | str) -> int | str:
        priorities.resolve(value)
        return value

    @model_validator(mode="after")
    def _unique_pod_sets(self) -> TrainingJobSpec:
        names = [pod_set.name for pod_set in self.pod_sets]
        if len(set(names)) != len(names):
            raise ValueError("pod set names must be unique")
        return self

    @property
    def priority_value(self) -> int:
        return priorities.resolve(self.priority)


class TrainingJob(Spec):
    """A training job: one or more pod sets, admitted and placed as a unit."""

    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["TrainingJob"]
    metadata: Metadata
    spec: TrainingJobSpec

    def with_default_requests(self, defaults: DefaultRequests | None = None) -> TrainingJob:
        """This job with every pod's zero CPU or memory request set from ``defaults``."""
        pod_sets = [
            pod_set.model_copy(update={"resources": resources})
            if (resources := requests_with_defaults(pod_set.resources, defaults))
            is not pod_set.resources else pod_set
            for pod_set in self.spec.pod_sets
        ]
        if all(new is old for new, old in zip(pod_sets, self.spec.pod_sets, strict=True)):
            return self
        return self.model_copy(
            update={"spec": self.spec.model_copy(update={"pod_sets": pod_sets})}
        )
