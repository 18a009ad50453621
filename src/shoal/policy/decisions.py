"""What one scheduling cycle decides: small frozen values a runtime applies.

``Admit`` and ``Preempt`` change the cluster; ``Pending`` (temporary: quota
or capacity is busy) and ``Inadmissible`` (permanent: the workload can never
run as written) only explain why nothing happened, so that users see a reason
for every workload they submitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from shoal.domain.cluster import Binding

PreemptReason = Literal["reclaim", "priority", "borrow"]


@dataclass(frozen=True, slots=True)
class Admit:
    workload: str
    tenant: str
    bindings: tuple[Binding, ...]
    usage: Mapping[str, int]
    borrowing: bool


@dataclass(frozen=True, slots=True)
class Preempt:
    """Evict ``victim`` (of ``tenant``) to make room for ``preemptor``."""

    victim: str
    tenant: str
    preemptor: str
    reason: PreemptReason
    lost_gpu_seconds: float


@dataclass(frozen=True, slots=True)
class Inadmissible:
    workload: str
    reason: str


@dataclass(frozen=True, slots=True)
class Pending:
    workload: str
    reason: str


Decision = Admit | Preempt | Inadmissible | Pending


@dataclass(frozen=True, slots=True)
class CycleResult:
    """Decisions in the order they were taken; the helpers select one kind."""

    decisions: tuple[Decision, ...]

    @property
    def admitted(self) -> tuple[Admit, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Admit))

    @property
    def preempted(self) -> tuple[Preempt, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Preempt))

    @property
    def pending(self) -> tuple[Pending, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Pending))

    @property
    def inadmissible(self) -> tuple[Inadmissible, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Inadmissible))

    def for_workload(self, name: str) -> Admit | Inadmissible | Pending | None:
        """The decision about pending workload ``name`` (None if it was not pending)."""
        for decision in self.decisions:
            if not isinstance(decision, Preempt) and decision.workload == name:
                return decision
        return None
