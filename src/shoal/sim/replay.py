"""Replay mode: a discrete-event run of a job trace on a virtual clock.

Events (arrivals, completions, pods stopping, node failures and recoveries)
are processed in time order; after each instant the admission cycle that the
live runtimes use (``shoal.policy.admission``) decides what to admit and whom
to preempt, and the job state machine they use (``shoal.control.machine``)
applies those decisions: a victim gets its grace period, progress survives
up to its last checkpoint, the rest is lost work (in GPU-hours), and it is
requeued.  The engine is the simulator's runtime: it plays the pods
(finishing after their remaining work, stopping ``stop_seconds`` after
SIGTERM, at most at the grace deadline) and keeps incremental views
(usage, running set) so that large traces replay quickly.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.control import machine
from shoal.control.machine import DEFAULT_GRACE_SECONDS, Emit, RetryPolicy, Step
from shoal.control.records import HOLDING_PHASES, JobRow, PodStatus
from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.nodes import Node
from shoal.domain.resources import MILLI
from shoal.domain.workload import Workload
from shoal.policy.admission import Snapshot, schedule
from shoal.policy.decisions import Admit, Inadmissible, Preempt
from shoal.policy.ordering import NO_SERVICE, Service, next_change
from shoal.policy.placement import build_placer, typical_pods
from shoal.policy.placement.fgd import Fragmentation
from shoal.policy.preemption import Running
from shoal.policy.queue import PendingQueue
from shoal.policy.quota import TenantQuota
from shoal.policy.running_table import RunningTable
from shoal.policy.snapshot import ReleaseLog
from shoal.sim.timeline import Timeline

FINISH, STOPPED, NODE_DOWN, NODE_UP, ARRIVE, SERVICE = 0, 1, 2, 3, 4, 5
_MAX_CYCLES_PER_INSTANT = 8
_FRAG_SAMPLES = 400
_DONE = PodStatus("succeeded", 0, "exited with code 0")
_TERMINATED = PodStatus("signalled", 143, "killed by signal SIGTERM")


@dataclass(frozen=True)
class NodeFailure:
    at: float
    node: str
    down_for: float | None = None


@dataclass
class JobRecord:
    """One job: its state-machine record plus what only a simulation knows (work left)."""

    workload: Workload
    work_left: float
    row: JobRow
    first_start: float | None = None
    finish: float | None = None
    lost_gpu_seconds: float = 0.0
    inadmissible: str | None = None
    running: Running | None = None
    bindings: tuple[Binding, ...] = ()
    gpu_milli_held: int = 0
    """Milli-GPUs its last attempt held (for lost GPU-seconds)."""

    @property
    def attempts(self) -> int:
        return self.row.attempts

    @property
    def preemptions(self) -> int:
        return self.row.preemptions


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
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        stop_seconds: float = 0.0,
    ) -> None:
        self.horizon = horizon
        self.state = ClusterState(nodes)
        self.tenants = dict(tenants)
        self.placer = build_placer(
            policy, len(self.state), seed, (pod for w in workloads for pod in w.pods)
        )
        self.policy, self.seed = policy, seed
        self.retry = RetryPolicy(grace_seconds=grace_seconds)
        self.stop_seconds = min(stop_seconds, grace_seconds)
        self.default_interval = checkpoint_interval
        self.jobs = {
            w.name: JobRecord(
                w, work_left=w.duration or 0.0,
                row=JobRow(name=w.name, tenant=w.tenant, manifest={}, phase="Pending",
                           version=1, submit_time=w.submit_time),
            )
            for w in workloads
        }
        self.pending = PendingQueue()  # kept across cycles: no cycle sorts the queue again
        self.running: dict[str, Running] = {}  # what the admission cycle sees
        # The same, as columns kept across cycles: victim searches read them.
        self.table = RunningTable()
        # What gave room back, for the cycles' memory of failed victim searches.
        self.released = ReleaseLog()
        self.usage: dict[str, dict[str, int]] = {}
        self.preempting: dict[str, str] = {}  # victim -> preemptor, until the victim stops
        # victim -> (preemptor, its attempts then), until the victim runs again
        # (its record's preemptor and preemptor_attempts)
        self.evicted_for: dict[str, tuple[str, int | None]] = {}
        # How many waiting victims name each preemptor, and the nominated set
        # worked out from them, kept until a victim or a preemptor changes.
        self._named: dict[str, int] = {}
        self._nominated_now: frozenset[str] | None = None
        # Orderings by attained service read what each job ran; a view over
        # the records, so nothing is copied per cycle.
        self.by_service = any(t.job_order != "fifo" for t in self.tenants.values())
        self.services: Mapping[str, Service] = _Services(self.jobs) if self.by_service else {}
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
        self.handled = 0
        self.cycles = 0

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
            # An event for an attempt that already ended (the finish of a job
            # that was preempted, a queue change of one that stopped) is
            # dropped unseen: it must not move the clock past the real end.
            head = self._queue[0]
            if self._stale(head[1], head[3], head[4]):
                heapq.heappop(self._queue)
                continue
            if self.horizon is not None and self._queue[0][0] > self.horizon:
                now = self.horizon
                break
            now = self._queue[0][0]
            self.timeline.advance(now)
            if now >= self._next_frag:
                self._sample_fragmentation(now)
            while self._queue and self._queue[0][0] == now:
                _, kind, _, name, attempt = heapq.heappop(self._queue)
                self._handle(now, kind, name, attempt)
                handled += 1
                self.handled += 1
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

    def _stale(self, kind: int, name: str, attempt: int) -> bool:
        if kind in (FINISH, STOPPED):
            row = self.jobs[name].row
            return row.phase not in HOLDING_PHASES or row.attempts != attempt
        if kind == SERVICE:
            if attempt == 0:  # a waiting job's starvation deadline
                return name not in self.pending
            record = self.jobs[name]
            return record.running is None or record.row.attempts != attempt
        return False

    def _sample_fragmentation(self, now: float) -> None:
        state = self.state
        if state.total_gpu_milli:
            frag = self._frag.of(state.gpu_free, state.cpu_free, state.model_id)
            share = float(frag[state.up].sum()) / state.total_gpu_milli
            self.fragmentation.append((now, share))
        while self._next_frag <= now:
            self._next_frag += self._frag_every

    def _handle(self, now: float, kind: int, name: str, attempt: int) -> None:
        if kind == SERVICE:
            # A job changed LAS queue, or a waiting one starved: the cycle after
            # this instant sees it; a running one wakes again at its next change.
            record = self.jobs[name]
            if record.running is not None and record.row.attempts == attempt:
                self._wake_at_next_queue(now, record)
            return
        if kind == ARRIVE:
            self.pending.add(self.jobs[name].workload)
            self._log(now, "submitted", job=name, tenant=self.jobs[name].workload.tenant)
            return
        if kind in (FINISH, STOPPED):
            record = self.jobs[name]
            if record.row.phase not in HOLDING_PHASES or record.row.attempts != attempt:
                return  # an attempt that already ended
            status = _DONE if kind == FINISH else _TERMINATED
            statuses = {p.uid: status for p in record.row.pods if not p.done}
            self._apply(now, record, machine.observe(
                record.row, statuses, now, None, self.retry, 0, self._interval(record)))
            return
        node = self.state.index[name]
        if kind == NODE_DOWN:
            self.state.set_up(node, False)
            self._log(now, "node-down", node=name)
            for record in [self.jobs[n] for n in list(self.running)]:
                if any(b.node == node for b in record.bindings):
                    self._apply(now, record, machine.disrupt(
                        record.row, now, "node failure", self._interval(record)))
            return
        self.state.set_up(node, True)
        self.released.reset()
        self._log(now, "node-up", node=name)

    def _interval(self, record: JobRecord) -> float | None:
        return record.workload.checkpoint_interval or self.default_interval

    def _cycle(self, now: float) -> None:
        # Victims that stop at once are gone within the instant, so a cycle
        # that preempted is followed by another to admit the preemptors.
        for _ in range(_MAX_CYCLES_PER_INSTANT):
            if not self.pending or not self._cycle_once(now):
                break

    def _nominated(self) -> frozenset[str]:
        """``machine.nominated`` over the victims that still wait, without a pass over all.

        It reads the victims' records and their preemptors' (waiting or not,
        attempts): every change to one comes through ``_apply``, which forgets
        the answer kept since the last time.
        """
        if self._nominated_now is None:
            self._nominated_now = frozenset(
                preemptor for preemptor, attempts in self.evicted_for.values()
                if preemptor in self.pending
                and attempts in (None, self.jobs[preemptor].row.attempts)
            )
        return self._nominated_now

    def _cycle_once(self, now: float) -> bool:
        """One admission cycle; True when it preempted something."""
        self.cycles += 1
        snapshot = Snapshot(
            now=now,
            cluster=self.state,
            tenants=self.tenants,
            running=self.running.values(),
            pending=self.pending,
            preempting=frozenset(self.preempting.values()),
            nominated=self._nominated(),
            service=self.services,
            usage=self.usage,
            running_table=self.table,
            released=self.released,
        )
        preempted = False
        # Only the actions: the queue's bulk Pending decisions carry nothing to apply.
        for decision in schedule(snapshot, self.placer).actions:
            if isinstance(decision, Admit):
                record = self.jobs[decision.workload]
                placement = [(self.state.names[b.node], b.gpus) for b in decision.bindings]
                uids = [f"{decision.workload}-{record.row.attempts + 1}-{i}"
                        for i in range(len(placement))]
                step = machine.admit(record.row, placement, uids, now, None)
                self._admitted(now, record, decision)
                self._apply(now, record, step)
            elif isinstance(decision, Preempt):
                record = self.jobs[decision.victim]
                if record.row.phase != "Running":
                    continue  # already stopping: never a victim twice
                why = f"preempted: {machine.PREEMPT_REASONS[decision.reason]}"
                self.preempting[decision.victim] = decision.preemptor
                self._apply(now, record, machine.preempt(
                    record.row, now, self.retry.grace_seconds, decision.preemptor, why,
                    self.jobs[decision.preemptor].row.attempts))
                self._stopping(record)
                self._terminate(now, record)
                preempted = True
            elif isinstance(decision, Inadmissible):
                record = self.jobs[decision.workload]
                record.inadmissible = decision.reason
                self.pending.discard(decision.workload)
                self._apply(now, record, machine.reject(record.row, decision.reason, now))
            # Pending: the reason is only kept by live runtimes (users read it).
        return preempted

    def _stopping(self, record: JobRecord) -> None:
        """A victim holds its resources until it stops, but is never chosen again (as live)."""
        running = record.running
        if running is None or not running.workload.preemptible:
            return
        frozen = dataclasses.replace(
            running, workload=dataclasses.replace(running.workload, preemptible=False))
        record.running = frozen
        name = record.workload.name
        self.running[name] = frozen
        self.table.add(frozen)

    def _terminate(self, now: float, record: JobRecord) -> None:
        """SIGTERM reached the victim's pods: they stop ``stop_seconds`` later."""
        if self.stop_seconds <= 0:
            self._handle(now, STOPPED, record.workload.name, record.row.attempts)
        else:
            self._push(now + self.stop_seconds, STOPPED, record.workload.name, record.row.attempts)

    # -- applying the state machine's steps ----------------------------------------

    def _admitted(self, now: float, record: JobRecord, decision: Admit) -> None:
        name = decision.workload
        for binding in decision.bindings:
            self.state.bind(binding)
        if record.first_start is None:
            record.first_start = now
        record.bindings = tuple(decision.bindings)
        record.running = Running(
            workload=record.workload,
            bindings=record.bindings,
            usage=dict(decision.usage),
            start_time=now,
            checkpoint_interval=self._interval(record),
            attempt=record.row.attempts + 1,
        )
        self._charge(record.workload.tenant, decision.usage, +1)
        self.pending.discard(name)
        self.running[name] = record.running
        self.table.add(record.running)
        self.timeline.start(record.workload.tenant, _gpu_milli(decision.bindings))
        self._push(now + record.work_left, FINISH, name, record.row.attempts + 1)
        if self.by_service:
            self._wake_at_next_queue(now, record, record.row.attempts + 1)

    def _wake_at_next_queue(self, now: float, record: JobRecord, attempt: int | None = None
                            ) -> None:
        running = record.running
        assert running is not None
        tenant = self.tenants.get(record.workload.tenant)
        if tenant is None:
            return
        service = self.services.get(record.workload.name, NO_SERVICE)
        at = next_change(tenant, record.workload, service, running.start_time, now)
        if at is not None:
            self._push(at, SERVICE, record.workload.name,
                       record.row.attempts if attempt is None else attempt)

    def _apply(self, now: float, record: JobRecord, step: Step) -> None:
        before = record.row.phase
        record.row = step.job
        name = step.job.name
        now_for = (step.job.preemptor, step.job.preemptor_attempts) if step.job.preemptor else None
        was_for = self.evicted_for.get(name)
        if now_for != was_for:
            if was_for is not None:
                left = self._named[was_for[0]] - 1
                if left:
                    self._named[was_for[0]] = left
                else:
                    del self._named[was_for[0]]
                del self.evicted_for[name]
            if now_for is not None:
                self.evicted_for[name] = now_for
                self._named[now_for[0]] = self._named.get(now_for[0], 0) + 1
            self._nominated_now = None
        elif name in self._named:
            self._nominated_now = None  # a preemptor started, stopped or waits again
        after = step.job.phase
        for effect in step.effects:
            if isinstance(effect, Emit):
                self._log(now, effect.kind, job=record.workload.name,
                          tenant=record.workload.tenant, **effect.data)
        if before in HOLDING_PHASES and after not in HOLDING_PHASES:
            self._release(record)
            if after == "Pending":  # requeued: keep what was saved, charge what was lost
                requeue = next(e for e in step.effects if isinstance(e, Emit))
                kept, lost = float(requeue.data["kept_seconds"]), float(requeue.data["lost_seconds"])
                record.work_left -= kept
                record.lost_gpu_seconds += lost * record.gpu_milli_held / MILLI
                self.pending.add(record.workload)
                tenant = self.tenants.get(record.workload.tenant)
                factor = tenant.starvation_factor if tenant is not None else None
                if self.by_service and factor is not None:
                    self._push(now + factor * record.row.ran_seconds, SERVICE, record.workload.name)
            elif after == "Succeeded":
                record.finish, record.work_left = now, 0.0

    def _release(self, record: JobRecord) -> None:
        running = record.running
        assert running is not None
        for binding in record.bindings:
            self.state.unbind(binding)
        record.gpu_milli_held = _gpu_milli(record.bindings)
        self.timeline.stop(record.workload.tenant, record.gpu_milli_held)
        self._charge(record.workload.tenant, running.usage, -1)
        record.running, record.bindings = None, ()
        name = record.workload.name
        self.running.pop(name, None)
        self.preempting.pop(name, None)
        self.table.remove(name)
        self.released.add(name, running.attempt, running.bindings)

    def _charge(self, tenant: str, usage: Mapping[str, int], sign: int) -> None:
        held = self.usage.setdefault(tenant, {})
        for resource, amount in usage.items():
            held[resource] = held.get(resource, 0) + sign * amount


class _Services(Mapping[str, Service]):
    """What each job ran before its current attempt, read from its record on demand."""

    def __init__(self, jobs: Mapping[str, JobRecord]) -> None:
        self._jobs = jobs

    def __getitem__(self, name: str) -> Service:
        return machine.service(self._jobs[name].row)

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)


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
