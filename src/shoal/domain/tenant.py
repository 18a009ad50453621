"""Tenants: quotas per resource and GPU flavor, cohort, fair-share weight, priorities.

Quota semantics follow Kueue's ClusterQueue: ``nominal`` is what the tenant is
guaranteed; inside a cohort unused nominal quota is lent to others up to
``lendingLimit`` and a tenant may borrow up to ``borrowingLimit`` beyond its
nominal quota.  GPU quota is kept in milli-GPUs so fractional jobs count
exactly.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.quantity import cpu_text, memory_text, parse_cpu_milli, parse_memory_mib
from shoal.domain.resources import CPU, MEMORY, gpu_resource

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


class CpuQuota(Spec):
    nominal: CpuLimit = 0
    borrowing_limit: CpuLimit = UNLIMITED
    lending_limit: CpuLimit = UNLIMITED


class MemoryQuota(Spec):
    nominal: MemLimit = 0
    borrowing_limit: MemLimit = UNLIMITED
    lending_limit: MemLimit = UNLIMITED


class GpuQuota(Spec):
    nominal: GpuLimit = 0
    borrowing_limit: GpuLimit = UNLIMITED
    lending_limit: GpuLimit = UNLIMITED


class Quota(Spec):
    """Nominal quota and limits; ``gpus`` is keyed by GPU model (the flavor)."""

    cpu: CpuQuota | None = None
    memory: MemoryQuota | None = None
    gpus: dict[str, GpuQuota] = Field(default_factory=dict)

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
    within_tenant: WithinTenant = WithinTenant.LOWER_PRIORITY
    reclaim_within_cohort: ReclaimWithinCohort = ReclaimWithinCohort.ANY
    borrow_within_cohort: BorrowWithinCohort = BorrowWithinCohort.NEVER


class TenantSpec(Spec):
    cohort: Name | None = None
    weight: float = Field(default=1.0, gt=0)
    quota: Quota = Field(default_factory=Quota)
    allowed_priorities: list[int | str] | None = None
    preemption: PreemptionPolicy = Field(default_factory=PreemptionPolicy)
    queueing: Literal["BestEffortFIFO", "StrictFIFO"] = "BestEffortFIFO"
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
    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["Tenant"]
    metadata: Metadata
    spec: TenantSpec


class InlineTenant(TenantSpec):
    """A tenant written inside a Simulation manifest."""

    name: Name
