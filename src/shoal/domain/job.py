"""Training jobs: the schedulable unit.  Pod sets, gangs, GPU fractions, affinity."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from shoal.domain import priority as priorities
from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.quantity import CpuMilli, MemoryMiB
from shoal.domain.resources import MILLI


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

    count: int = Field(default=1, ge=0, le=64)
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
    cpu: CpuMilli = 0
    memory: MemoryMiB = 0
    gpu: Annotated[GpuRequest | None, BeforeValidator(_gpu_request)] = None


class PodSet(Spec):
    name: Name = "worker"
    count: int = Field(default=1, ge=1, le=100_000)
    resources: PodResources = Field(default_factory=PodResources)


class LabelRequirement(Spec):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = "In"
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class Toleration(Spec):
    key: str = Field(min_length=1)
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Affinity(Spec):
    """Where pods may go (``required``) and how a gang is laid out."""

    required: list[LabelRequirement] = Field(default_factory=list)
    anti_affinity: Literal["none", "node", "rack"] = Field(
        default="none", description="pods of this job must be on distinct nodes or racks"
    )
    pack: Literal["none", "nvlink", "rack", "zone"] = Field(
        default="none", description="keep a gang within one topology domain if possible"
    )


class Elastic(Spec):
    min_workers: int = Field(ge=1)
    max_workers: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Elastic:
        if self.min_workers > self.max_workers:
            raise ValueError("minWorkers cannot exceed maxWorkers")
        return self


class TrainingJobSpec(Spec):
    tenant: Name
    priority: int | str = "normal"
    pod_sets: list[PodSet] = Field(min_length=1)
    gang: bool = True
    preemptible: bool = True
    checkpoint_interval_seconds: float | None = Field(default=None, gt=0)
    elastic: Elastic | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    affinity: Affinity = Field(default_factory=Affinity)
    tolerations: list[Toleration] = Field(default_factory=list)
    duration_seconds: float | None = Field(
        default=None, gt=0, description="known run time (simulation)"
    )
    command: list[str] | None = Field(default=None, min_length=1)
    working_dir: str | None = Field(
        default=None,
        description="where the pods run (shared); default: a private folder per pod. "
        "The CLI resolves a relative path against the manifest's folder.",
    )
    env: dict[str, str] = Field(default_factory=dict)
    max_retries: int = Field(default=3, ge=0)

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
    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["TrainingJob"]
    metadata: Metadata
    spec: TrainingJobSpec
