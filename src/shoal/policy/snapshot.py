"""The immutable input of a scheduling cycle: cluster, tenants, running and pending work.

A runtime builds a ``Snapshot`` at the start of each cycle; policies read it
and never change it, which keeps them pure and replayable.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.resources import MILLI
from shoal.domain.workload import Workload
from shoal.policy.ordering import Service
from shoal.policy.queue import PendingQueue
from shoal.policy.quota import TenantQuota

if TYPE_CHECKING:  # the table's rows are Running values defined here
    from shoal.policy.running_table import RunningTable


@dataclass(frozen=True, slots=True)
class Running:
    """An admitted workload, where it runs, what quota it holds, and its progress."""

    workload: Workload
    bindings: tuple[Binding, ...]
    usage: Mapping[str, int]
    start_time: float
    last_checkpoint: float | None = None
    checkpoint_interval: float | None = None
    attempt: int = 0
    """Which attempt of the workload this is (its job record's ``attempts``), where the
    runtime counts them: with the name, it tells attempts apart in a ``ReleaseLog``."""
    weight: float = field(init=False, repr=False, compare=False)
    """What one second of its lost work costs: milli-GPUs held, or cores when it has none."""

    def __post_init__(self) -> None:
        workload = self.workload
        weight = workload.gpu_milli or sum(pod.cpu for pod in workload.pods) / MILLI
        object.__setattr__(self, "weight", float(weight))

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def tenant(self) -> str:
        return self.workload.tenant

    @property
    def priority(self) -> int:
        return self.workload.priority

    def saved_at(self, now: float) -> float:
        """When progress was last saved by ``now``.

        A reported checkpoint time wins; otherwise a job that checkpoints
        every ``checkpoint_interval`` seconds saved at the last multiple of
        it since its start, and one that never checkpoints loses everything.
        """
        return progress_saved(self.start_time, now, self.last_checkpoint, self.checkpoint_interval)


def progress_saved(
    start: float, now: float, last_checkpoint: float | None, interval: float | None
) -> float:
    """When an attempt that started at ``start`` last saved its progress, as of ``now``.

    A reported checkpoint (at or after ``start``) wins; otherwise a job that
    checkpoints every ``interval`` seconds saved at the last multiple of it
    since its start, and one that never checkpoints loses everything.  The
    admission cycle (choosing victims) and the state machine (charging lost
    work) both use this one rule.
    """
    if last_checkpoint is not None and last_checkpoint >= start:
        return min(last_checkpoint, now)
    if not interval:
        return start
    return start + ((now - start) // interval) * interval


class ReleaseLog:
    """What gave room back, as a runtime keeps it across cycles: each running
    workload that stopped holding resources (name, attempt and bindings), in
    order, and *resets* for anything else (a node that came up or changed,
    tenants that changed).

    A cycle remembers ``count`` when a victim search fails and later reads
    what was released since (``since``), to tell whether the failure can still
    hold (``preemption.Unfound``).  Only the last ``kept`` entries are kept.
    """

    def __init__(self, kept: int = 4096) -> None:
        self.kept = kept
        self._entries: list[tuple[str, int, tuple[Binding, ...]]] = []
        self._dropped = 0  # entries dropped from the front
        self._reset = 0  # ``count`` at the last reset
        self.resets = 0
        """Resets so far: a mark taken before one is worth nothing, even when
        nothing was added since (``since`` alone cannot tell)."""

    @property
    def count(self) -> int:
        """Entries added so far."""
        return self._dropped + len(self._entries)

    def add(self, name: str, attempt: int, bindings: tuple[Binding, ...]) -> None:
        """The attempt ``attempt`` of workload ``name`` stopped holding ``bindings``."""
        self._entries.append((name, attempt, bindings))
        if len(self._entries) >= 2 * self.kept:
            del self._entries[: self.kept]
            self._dropped += self.kept

    def reset(self) -> None:
        """Room came back otherwise (or node indices moved): nothing before counts."""
        self._reset = self.count
        self.resets += 1

    def since(self, mark: int) -> list[tuple[str, int, tuple[Binding, ...]]] | None:
        """What was released after the first ``mark`` entries, oldest first; None
        after a reset, or when the entries are no longer kept."""
        if mark < self._reset or mark < self._dropped:
            return None
        return self._entries[mark - self._dropped:]


@dataclass(frozen=True)
class Snapshot:
    """What a cycle sees; it leaves every part as it found it.

    A policy may change ``cluster`` only inside ``cluster.trial()``, which puts
    every row back (stamps included) when it ends.
    """

    now: float
    cluster: ClusterState
    tenants: Mapping[str, TenantQuota]
    running: Collection[Running] = ()
    """Admitted workloads; the runtime must not change it while a cycle runs."""
    pending: tuple[Workload, ...] | PendingQueue = ()
    """Waiting workloads; a runtime that keeps a ``PendingQueue`` across cycles passes it."""
    preempting: frozenset[str] = field(default_factory=frozenset)
    """Pending workloads whose victims still hold their resources."""
    nominated: frozenset[str] = field(default_factory=frozenset)
    """Pending workloads that evicted others and have not run since (``preempting``
    included): they are tried before all others, so the room they freed is theirs."""
    running_table: RunningTable | None = None
    """``running`` as columns (``policy.running_table``), if the runtime keeps them
    across cycles; else a cycle that searches for victims builds them."""
    usage: Mapping[str, Mapping[str, int]] | None = None
    """Quota held per tenant, if the runtime keeps it; else summed from ``running``."""
    epoch: Hashable | None = None
    """What the runtime says of room given back: two snapshots with equal epochs have
    no workload stopped, no node come up and no tenant changed between them (so a
    victim search that failed in the first fails in the second).  None: unknown; the
    cycle then compares cluster states, which only a runtime that keeps one can match."""
    released: ReleaseLog | None = None
    """The runtime's log of what gave room back, kept across cycles, if it keeps one:
    a failed victim search then survives releases that cannot change its answer
    (``preemption.Unfound``).  With none, any release retries it (``epoch``)."""
    service: Mapping[str, Service] = field(default_factory=dict)
    """What each workload ran before its current attempt (read by las and srtf orderings);
    a workload missing here has run nothing."""
