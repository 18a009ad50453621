"""Tenants: quotas per resource and GPU flavor, cohort, fair-share weight, priorities.

Quota semantics follow Kueue's ClusterQueue: ``nominal`` is what the tenant is
guaranteed; inside a cohort unused nominal quota is lent to others up to
``lendingLimit`` and a tenant may borrow up to ``borrowingLimit`` beyond its
nominal quota.  GPU quota is kept in milli-GPUs so fractional jobs count
exactly.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.job import DEFAULT_CPU_MILLI, DEFAULT_MEMORY_MIB, DefaultRequests
from shoal.domain.quantity import cpu_text, memory_text, parse_cpu_milli, parse_memory_mib
from shoal.domain.resources import CPU, MEMORY, PODS, gpu_resource

UNLIMITED = None


def _gpu_milli(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number of GPUs, e.g. 8 or 0.5")
    if value < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return round(float(value) * 1000)


def _limit(parse: object) -> object:
    def check(value: object) -> int | None:
        if value is None:
            return None
        result: int = parse(value)  # type: ignore[operator]
        return result

    return check


def _optional(text: object) -> object:
    def write(value: int | None) -> object:
        return None if value is None else text(value)  # type: ignore[operator]

    return write


def _gpus(milli: int) -> float:
    return milli / 1000


# JSON dumps write limits back as the user wrote them (cores, MiB, GPUs), so
# a stored tenant round-trips exactly.
CpuLimit = Annotated[
    int | None,
    BeforeValidator(_limit(parse_cpu_milli)),
    PlainSerializer(_optional(cpu_text), when_used="json"),
]
MemLimit = Annotated[
    int | None,
    BeforeValidator(_limit(parse_memory_mib)),
    PlainSerializer(_optional(memory_text), when_used="json"),
]
GpuLimit = Annotated[
    int | None,
    BeforeValidator(_limit(_gpu_milli)),
    PlainSerializer(_optional(_gpus), when_used="json"),
]


_NOMINAL = "guaranteed amount; while idle it is lent to the cohort"
_BORROWING = "at most this much beyond nominal, borrowed from the cohort; unset: no limit"
_LENDING = "at most this much of nominal is lent to the cohort; unset: all of it"


class CpuQuota(Spec):
    """CPU quota in cores (or millicores, ``"500m"``)."""

    nominal: CpuLimit = Field(default=0, description=_NOMINAL)
    borrowing_limit: CpuLimit = Field(default=UNLIMITED, description=_BORROWING)
    lending_limit: CpuLimit = Field(default=UNLIMITED, description=_LENDING)


class MemoryQuota(Spec):
    """Memory quota (``"1Ti"``, ``"512Gi"``, or MiB)."""

    nominal: MemLimit = Field(default=0, description=_NOMINAL)
    borrowing_limit: MemLimit = Field(default=UNLIMITED, description=_BORROWING)
    lending_limit: MemLimit = Field(default=UNLIMITED, description=_LENDING)


class GpuQuota(Spec):
    """Quota of one GPU model, in GPUs (``0.5`` is half a GPU)."""

    nominal: GpuLimit = Field(default=0, description=_NOMINAL)
    borrowing_limit: GpuLimit = Field(default=UNLIMITED, description=_BORROWING)
    lending_limit: GpuLimit = Field(default=UNLIMITED, description=_LENDING)


class PodsQuota(Spec):
    """Quota of pods: every pod of an admitted job counts one, whatever it requests."""

    nominal: int = Field(default=0, ge=0, description=_NOMINAL)
    borrowing_limit: int | None = Field(default=UNLIMITED, ge=0, description=_BORROWING)
    lending_limit: int | None = Field(default=UNLIMITED, ge=0, description=_LENDING)


class Quota(Spec):
    """Nominal quota and limits; ``gpus`` is keyed by GPU model (the flavor)."""

    cpu: CpuQuota | None = Field(
        default=None, description="unset: jobs that request CPU are never admitted"
    )
    memory: MemoryQuota | None = Field(
        default=None, description="unset: jobs that request memory are never admitted"
    )
    gpus: dict[str, GpuQuota] = Field(
        default_factory=dict,
        description="GPU model -> quota; a model not listed is never admitted",
    )
    pods: PodsQuota | None = Field(
        default=None,
        description="pods running at once, one per pod of every admitted job (Kueue's pods "
        "resource); bounds how many small jobs a tenant can run; unset: no limit",
    )

    def by_resource(self) -> dict[str, tuple[int, int | None, int | None]]:
        """``resource -> (nominal, borrowing_limit, lending_limit)``; None means no limit."""
        out: dict[str, tuple[int, int | None, int | None]] = {}
        if self.cpu is not None:
            out[CPU] = (self.cpu.nominal or 0, self.cpu.borrowing_limit, self.cpu.lending_limit)
        if self.memory is not None:
            mem = self.memory
            out[MEMORY] = (mem.nominal or 0, mem.borrowing_limit, mem.lending_limit)
        for model, gpu in self.gpus.items():
            out[gpu_resource(model)] = (gpu.nominal or 0, gpu.borrowing_limit, gpu.lending_limit)
        if self.pods is not None:
            pods = self.pods
            out[PODS] = (pods.nominal, pods.borrowing_limit, pods.lending_limit)
        return out


class WithinTenant(StrEnum):
    NEVER = "Never"
    LOWER_PRIORITY = "LowerPriority"


class ReclaimWithinCohort(StrEnum):
    NEVER = "Never"
    LOWER_PRIORITY = "LowerPriority"
    ANY = "Any"


class BorrowWithinCohort(StrEnum):
    NEVER = "Never"
    LOWER_PRIORITY = "LowerPriority"


class PreemptionPolicy(Spec):
    """Which running jobs this tenant's pending jobs may preempt (Kueue semantics)."""

    within_tenant: WithinTenant = Field(
        default=WithinTenant.LOWER_PRIORITY,
        description="preempt the tenant's own jobs of lower priority, or never",
    )
    reclaim_within_cohort: ReclaimWithinCohort = Field(
        default=ReclaimWithinCohort.ANY,
        description="take back nominal quota lent to other tenants: from any of their jobs, "
        "only from lower-priority ones, or never",
    )
    borrow_within_cohort: BorrowWithinCohort = Field(
        default=BorrowWithinCohort.NEVER,
        description="while borrowing, preempt lower-priority jobs of other tenants, or never",
    )


class JobOrder(StrEnum):
    FIFO = "fifo"
    LAS = "las"
    SRTF = "srtf"


class Ordering(Spec):
    """How a tenant orders its own waiting jobs (fairness between tenants stays DRF).

    ``fifo``: priority, then age.  ``las``: Tiresias's discretised two-dimensional
    least attained service: priority, then the queue a job's attained service
    (GPUs x seconds it has run, over all its attempts) puts it in, then age; a
    waiting job may preempt the tenant's running jobs of its priority that sit
    in a later queue.  ``srtf``: priority, then the least remaining GPU time by
    the job's declared duration (jobs without one last), with the same
    preemption between jobs of one priority.
    """

    policy: JobOrder = Field(default=JobOrder.FIFO, description="fifo, las or srtf")
    thresholds_gpu_hours: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [16.0],
        max_length=16,
        description="las: attained service, in GPU-hours, at which a job moves to the next "
        "queue (ascending; n thresholds make n+1 queues)",
    )
    starvation_factor: float | None = Field(
        default=None,
        gt=0,
        description="las: a job that has run before and has waited this many times as long "
        "as it has run goes back to the first queue; unset: never",
    )

    @model_validator(mode="after")
    def _ascending(self) -> Ordering:
        values = self.thresholds_gpu_hours
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"thresholdsGpuHours must be strictly ascending, got {values}")
        return self


class TenantSpec(Spec):
    """A team's quota, fair-share weight, cohort and preemption policy."""

    cohort: Name | None = Field(
        default=None,
        description="tenants of one cohort lend each other idle quota; unset: a cohort of one",
    )
    weight: float = Field(
        default=1.0, gt=0, description="fair-share weight for capacity borrowed in the cohort"
    )
    quota: Quota = Field(default_factory=Quota)
    default_requests: DefaultRequests | None = Field(
        default=None,
        description="CPU and memory given to each pod of the tenant's jobs that requests none "
        "(like a Kubernetes LimitRange's defaultRequest), written into the job when it is "
        f"applied and charged to quota; unset: {DEFAULT_CPU_MILLI}m CPU and "
        f"{DEFAULT_MEMORY_MIB}Mi memory. A pod's CPU and memory request is never zero",
    )
    allowed_priorities: list[int | str] | None = Field(
        default=None,
        description="priorities (integers or class names) the tenant's jobs may use; "
        "unset: any",
    )
    preemption: PreemptionPolicy = Field(default_factory=PreemptionPolicy)
    queueing: Literal["BestEffortFIFO", "StrictFIFO"] = Field(
        default="BestEffortFIFO",
        description="StrictFIFO: a job that does not fit blocks the tenant's later jobs; "
        "BestEffortFIFO: later jobs that fit go first",
    )
    ordering: Ordering = Field(default_factory=Ordering)
    isolation: Literal["process", "sandbox"] = Field(
        default="process",
        description="embedded runtime: plain processes, or bubblewrap sandboxes per pod",
    )

    @model_validator(mode="after")
    def _limits_make_sense(self) -> TenantSpec:
        for resource, (nominal, _borrow, lend) in self.quota.by_resource().items():
            if lend is not None and lend > nominal:
                raise ValueError(
                    f"quota {resource}: lendingLimit ({lend}) cannot exceed nominal ({nominal})"
                )
        return self


class Tenant(Spec):
    """A team sharing the cluster: quota per resource and GPU model, cohort, weight."""

    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["Tenant"]
    metadata: Metadata
    spec: TenantSpec


class InlineTenant(TenantSpec):
    """A tenant written inside a Simulation manifest."""

    name: Name = Field(description="the tenant's name, as the trace's tenant column gives it")
