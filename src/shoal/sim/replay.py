"""Replay mode: a discrete-event run of a job trace on a virtual clock.

Events (arrivals, completions, node failures and recoveries) are processed in
time order; after each instant the same admission cycle that the live
runtimes use (``shoal.policy.admission``) decides what to admit and whom to
preempt, and the engine applies those decisions to its own state.  Progress
survives a preemption up to the victim's last checkpoint; the rest is lost
work, counted in GPU-hours.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.nodes import Node
from shoal.domain.resources import MILLI
from shoal.domain.workload import Workload
from shoal.policy.admission import Snapshot, schedule
from shoal.policy.decisions import Admit, Inadmissible, Preempt
from shoal.policy.placement import Placer, ScorerContext, make_scorer, node_ranks, typical_pods
from shoal.policy.placement.fgd import Fragmentation
from shoal.policy.preemption import Running
from shoal.policy.quota import TenantQuota
from shoal.sim.timeline import Timeline

ARRIVE, FINISH, NODE_DOWN, NODE_UP = 3, 0, 1, 2
_MAX_CYCLES_PER_INSTANT = 8
_FRAG_SAMPLES = 400


@dataclass(frozen=True)
class NodeFailure:
    at: float
    node: str
    down_for: float | None = None


@dataclass
class JobRecord:
    """What happened to one job; mutable bookkeeping owned by the engine."""

    workload: Workload
    work_left: float
    first_start: float | None = None
    finish: float | None = None
    attempts: int = 0
    preemptions: int = 0
    lost_gpu_seconds: float = 0.0
    inadmissible: str | None = None
    running: Running | None = None


@dataclass
class ReplayRun:
    policy: str
    seed: int
    jobs: dict[str, JobRecord]
    timeline: Timeline
    events: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    horizon: float = 0.0
    fragmentation: list[tuple[float, float]] = field(default_factory=list)


class ReplayEngine:
    """Owns the clock, the cluster state and the job records of one replay."""

    def __init__(
        self,
        nodes: Sequence[Node],
        tenants: Mapping[str, TenantQuota],
        workloads: Sequence[Workload],
        policy: str,
        seed: int,
        checkpoint_interval: float | None = None,
        failures: Sequence[NodeFailure] = (),
        record_events: bool = False,
        horizon: float | None = None,
    ) -> None:
        self.horizon = horizon
        self.state = ClusterState(nodes)
        self.tenants = dict(tenants)
        context = ScorerContext(
            typical_pods=typical_pods([pod for w in workloads for pod in w.pods]), seed=seed
        )
        self.placer = Placer(make_scorer(policy, context), node_ranks(len(self.state), seed))
        self.policy, self.seed = policy, seed
        self.default_interval = checkpoint_interval
        self.jobs = {w.name: JobRecord(w, work_left=w.duration or 0.0) for w in workloads}
        self.pending: dict[str, Workload] = {}
        self.active: dict[str, JobRecord] = {}  # running jobs, in admission order
        self.running: dict[str, Running] = {}  # what the admission cycle sees
        self.by_tenant: dict[str, dict[str, Running]] = {}
        self.usage: dict[str, dict[str, int]] = {}
        self.preempting: set[str] = set()
        self.record_events = record_events
        self.events: list[dict[str, Any]] = []
        self._queue: list[tuple[float, int, int, str, int]] = []
        self._seq = itertools.count()
        for w in workloads:
            self._push(w.submit_time, ARRIVE, w.name)
        for failure in failures:
            node = self.state.index[failure.node]
            self._push(failure.at, NODE_DOWN, failure.node)
            if failure.down_for is not None:
                self._push(failure.at + failure.down_for, NODE_UP, self.state.names[node])
        self.timeline = Timeline(self.state, sorted(self.tenants))
        # Fragmentation (FGD's measure against the trace's GPU pod mix) is
        # sampled a few hundred times over the expected span of the run.
        gpu_pods = [pod for w in workloads for pod in w.pods if pod.gpu_count]
        self._frag = Fragmentation(typical_pods(gpu_pods), self.state.models)
        span = max((w.submit_time for w in workloads), default=0.0) + max(
            (w.duration or 0.0 for w in workloads), default=0.0
        )
        self._frag_every = max(span / _FRAG_SAMPLES, 1e-9)
        self._next_frag = 0.0
        self.fragmentation: list[tuple[float, float]] = []

    def _push(self, at: float, kind: int, name: str, attempt: int = 0) -> None:
        heapq.heappush(self._queue, (at, kind, next(self._seq), name, attempt))

    def _log(self, now: float, kind: str, **fields: Any) -> None:
        if self.record_events:
            self.events.append({"time_s": round(now, 3), "event": kind, **fields})

    # -- the loop -------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> ReplayRun:
        started = time.perf_counter()
        now = 0.0
        handled = 0
        while self._queue:
            if self.horizon is not None and self._queue[0][0] > self.horizon:
                now = self.horizon
                break
            now = self._queue[0][0]
            self.timeline.advance(now)
            if now >= self._next_frag:
                self._sample_fragmentation(now)
            freed = False
            while self._queue and self._queue[0][0] == now:
                _, kind, _, name, attempt = heapq.heappop(self._queue)
                freed |= self._handle(now, kind, name, attempt)
                handled += 1
            self._cycle(now)
            if progress is not None:
                progress(handled)
        self.timeline.advance(now)
        return ReplayRun(
            policy=self.policy,
            seed=self.seed,
            jobs=self.jobs,
            timeline=self.timeline,
            events=self.events,
            wall_time_s=time.perf_counter() - started,
            horizon=now,
            fragmentation=self.fragmentation,
        )

    def _sample_fragmentation(self, now: float) -> None:
        state = self.state
        if state.total_gpu_milli:
            frag = self._frag.of(state.gpu_free, state.cpu_free, state.model_id)
            share = float(frag[state.up].sum()) / state.total_gpu_milli
            self.fragmentation.append((now, share))
        while self._next_frag <= now:
            self._next_frag += self._frag_every

    def _handle(self, now: float, kind: int, name: str, attempt: int) -> bool:
        if kind == ARRIVE:
            self.pending[name] = self.jobs[name].workload
            self._log(now, "submitted", job=name, tenant=self.jobs[name].workload.tenant)
            return False
        if kind == FINISH:
            record = self.jobs[name]
            if record.running is None or record.attempts != attempt:
                return False  # a completion of an attempt that was preempted
            self._stop(record)
            record.finish, record.work_left = now, 0.0
            self._log(now, "completed", job=name, tenant=record.workload.tenant)
            return True
        node = self.state.index[name]
        if kind == NODE_DOWN:
            self.state.set_up(node, False)
            self._log(now, "node-down", node=name)
            for record in list(self.active.values()):
                running = record.running
                if running is not None and any(b.node == node for b in running.bindings):
                    self._evict(now, record, reason="node-failure")
            return True
        self.state.set_up(node, True)
        self._log(now, "node-up", node=name)
        return True

    def _cycle(self, now: float) -> None:
        # Victims stop at once in simulation, so a cycle that preempted is
        # followed by another at the same instant to admit the preemptors.
        for _ in range(_MAX_CYCLES_PER_INSTANT):
            if not self.pending or not self._cycle_once(now):
                break
        # Victims are gone by the end of the instant: a preemptor that still
        # waits (its room went to someone ordered first) may preempt again.
        self.preempting.clear()

    def _cycle_once(self, now: float) -> bool:
        """One admission cycle; True when it preempted something."""
        running = self.running.values()
        snapshot = Snapshot(
            now=now,
            cluster=self.state,
            tenants=self.tenants,
            running=running,
            pending=tuple(self.pending.values()),
            preempting=frozenset(self.preempting),
            usage=self.usage,
            running_by_tenant={t: runs.values() for t, runs in self.by_tenant.items()},
        )
        preempted = False
        for decision in schedule(snapshot, self.placer).decisions:
            if isinstance(decision, Admit):
                self._admit(now, decision)
            elif isinstance(decision, Preempt):
                self._evict(now, self.jobs[decision.victim], reason=decision.reason)
                self.preempting.add(decision.preemptor)
                preempted = True
            elif isinstance(decision, Inadmissible):
                record = self.jobs[decision.workload]
                record.inadmissible = decision.reason
                self.pending.pop(decision.workload, None)
                self._log(now, "inadmissible", job=decision.workload, reason=decision.reason)
        return preempted

    # -- applying decisions -----------------------------------------------------

    def _admit(self, now: float, decision: Admit) -> None:
        record = self.jobs[decision.workload]
        for binding in decision.bindings:
            self.state.bind(binding)
        record.attempts += 1
        if record.first_start is None:
            record.first_start = now
        record.running = Running(
            workload=record.workload,
            bindings=tuple(decision.bindings),
            usage=dict(decision.usage),
            start_time=now,
            checkpoint_interval=record.workload.checkpoint_interval or self.default_interval,
        )
        self._charge(record.workload.tenant, decision.usage, +1)
        self.pending.pop(decision.workload, None)
        self.active[decision.workload] = record
        self.running[decision.workload] = record.running
        self.by_tenant.setdefault(record.workload.tenant, {})[decision.workload] = record.running
        self.preempting.discard(decision.workload)
        self.timeline.start(record.workload.tenant, _gpu_milli(decision.bindings))
        self._push(now + record.work_left, FINISH, decision.workload, record.attempts)
        self._log(now, "admitted", job=decision.workload, tenant=decision.tenant,
                  nodes=sorted({self.state.names[b.node] for b in decision.bindings}))

    def _stop(self, record: JobRecord) -> None:
        running = record.running
        assert running is not None
        for binding in running.bindings:
            self.state.unbind(binding)
        self.timeline.stop(record.workload.tenant, _gpu_milli(running.bindings))
        self._charge(record.workload.tenant, running.usage, -1)
        record.running = None
        self.active.pop(record.workload.name, None)
        self.running.pop(record.workload.name, None)
        self.by_tenant.get(record.workload.tenant, {}).pop(record.workload.name, None)

    def _evict(self, now: float, record: JobRecord, reason: str) -> None:
        """Stop a running job; keep progress up to its last checkpoint and requeue it."""
        running = record.running
        assert running is not None
        ran = now - running.start_time
        kept = running.saved_at(now) - running.start_time
        record.work_left -= kept
        lost = ran - kept
        record.lost_gpu_seconds += lost * _gpu_milli(running.bindings) / MILLI
        record.preemptions += 1
        self._stop(record)
        self.pending[record.workload.name] = record.workload
        self._log(now, "preempted", job=record.workload.name, reason=reason,
                  lost_seconds=round(lost, 3))

    def _charge(self, tenant: str, usage: Mapping[str, int], sign: int) -> None:
        held = self.usage.setdefault(tenant, {})
        for resource, amount in usage.items():
            held[resource] = held.get(resource, 0) + sign * amount


def _gpu_milli(bindings: Sequence[Binding]) -> int:
    return sum(len(b.gpus) * b.shape.gpu_milli for b in bindings)


def run_replay(
    nodes: Sequence[Node],
    tenants: Mapping[str, TenantQuota],
    workloads: Sequence[Workload],
    policy: str,
    seed: int,
    **options: Any,
) -> ReplayRun:
    progress = options.pop("progress", None)
    engine = ReplayEngine(nodes, tenants, workloads, policy, seed, **options)
    return engine.run(progress)

