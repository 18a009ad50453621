"""What one scheduling cycle decides: small frozen values a runtime applies.

``Admit`` and ``Preempt`` change the cluster; ``Pending`` (temporary: quota
or capacity is busy) and ``Inadmissible`` (permanent: the workload can never
run as written) only explain why nothing happened, so that users see a reason
for every workload they submitted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from shoal.domain.cluster import Binding

PreemptReason = Literal["reclaim", "priority", "borrow", "queue"]


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


class Pending:
    """``workload`` waits; ``reason`` may be given as a function, worded on first read.

    Most pending workloads in a busy cluster are never shown to anyone, so the
    cycle does not word their reasons up front.
    """

    __slots__ = ("_reason", "workload")

    def __init__(self, workload: str, reason: str | Callable[[], str]) -> None:
        self.workload = workload
        self._reason = reason

    @property
    def reason(self) -> str:
        if not isinstance(self._reason, str):
            self._reason = self._reason()
        return self._reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pending):
            return NotImplemented
        return (self.workload, self.reason) == (other.workload, other.reason)

    def __hash__(self) -> int:
        return hash((self.workload, self.reason))

    def __repr__(self) -> str:
        return f"Pending(workload={self.workload!r}, reason={self.reason!r})"


Decision = Admit | Preempt | Inadmissible | Pending


@dataclass(slots=True)
class Waiting:
    """Pending workloads that share one reason, listed only when read.

    A long queue's workloads mostly wait for the same reason; a cycle keeps
    them as one ``Waiting`` instead of one ``Pending`` each.  Not frozen: a
    busy cycle makes dozens, and a frozen dataclass's ``__init__`` costs
    several times a plain one's.
    """

    names: Callable[[], Iterable[str]]
    reason: Callable[[], str]


@dataclass(frozen=True)
class CycleResult:
    """Decisions in the order they were taken; the helpers select one kind.

    ``actions`` are the decisions a runtime must carry out or record one by
    one (admissions, preemptions, rejections, and the pending workloads that
    the cycle tried); ``waiting`` holds the rest of the pending workloads in
    bulk.  ``decisions`` lists both, the bulk ones last.
    """

    actions: tuple[Decision, ...]
    waiting: tuple[Waiting, ...] = ()
    parked: tuple[tuple[Sequence[tuple[float, str, object]], Callable[[], str]], ...] = ()
    """Whole buckets of the pending queue (its entries: submit time, name,
    workload) that wait for one reason each, listed before ``waiting``: a busy
    queue holds dozens, and a pair costs less to keep than a ``Waiting``."""

    @cached_property
    def decisions(self) -> tuple[Decision, ...]:
        bulk = [
            Pending(entry[1], reason)
            for entries, why in self.parked
            for reason in (why(),)
            for entry in entries
        ]
        bulk.extend(
            Pending(name, reason)
            for group in self.waiting
            for reason in (group.reason(),)
            for name in group.names()
        )
        return self.actions + tuple(bulk)

    @property
    def admitted(self) -> tuple[Admit, ...]:
        return tuple(d for d in self.actions if isinstance(d, Admit))

    @property
    def preempted(self) -> tuple[Preempt, ...]:
        return tuple(d for d in self.actions if isinstance(d, Preempt))

    @property
    def pending(self) -> tuple[Pending, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Pending))

    @property
    def inadmissible(self) -> tuple[Inadmissible, ...]:
        return tuple(d for d in self.actions if isinstance(d, Inadmissible))

    def for_workload(self, name: str) -> Admit | Inadmissible | Pending | None:
        """The decision about pending workload ``name`` (None if it was not pending)."""
        for decision in self.decisions:
            if not isinstance(decision, Preempt) and decision.workload == name:
                return decision
        return None
