"""The immutable input of a scheduling cycle: cluster, tenants, running and pending work.

A runtime builds a ``Snapshot`` at the start of each cycle; policies read it
and never change it, which keeps them pure and replayable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.workload import Workload
from shoal.policy.quota import TenantQuota


@dataclass(frozen=True, slots=True)
class Running:
    """An admitted workload, where it runs, what quota it holds, and its progress."""

    workload: Workload
    bindings: tuple[Binding, ...]
    usage: Mapping[str, int]
    start_time: float
    last_checkpoint: float | None = None

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def tenant(self) -> str:
        return self.workload.tenant

    @property
    def priority(self) -> int:
        return self.workload.priority

    @property
    def saved_at(self) -> float:
        """When progress was last saved: a job that never checkpointed loses it all."""
        return self.start_time if self.last_checkpoint is None else self.last_checkpoint


@dataclass(frozen=True)
class Snapshot:
    """``cluster`` is read-only to policies: they work on a copy."""

    now: float
    cluster: ClusterState
    tenants: Mapping[str, TenantQuota]
    running: tuple[Running, ...] = ()
    pending: tuple[Workload, ...] = ()
    preempting: frozenset[str] = field(default_factory=frozenset)
