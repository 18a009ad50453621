"""The serving simulator: request arrivals against autoscaled replicas on a virtual clock.

An event-driven discrete-event simulation.  Requests arrive (from a trace)
at the service's router, which dispatches each to the ready replica with the
fewest requests outstanding that has a free slot (a replica serves
``concurrency`` requests at once); when every slot is busy, or no replica is
up (scale from zero: the activator), requests wait in the router's FIFO
queue.  A replica takes ``cold_start_s`` from being ordered to serving.

Every ``policy.tick_seconds`` the simulator gathers the 1 s metric samples
(time-averaged requests in the system, arrivals) since the last decision and
asks the ``Autoscaler`` of ``shoal.policy.autoscaling``, the one the live
control plane uses, with a virtual clock as its clock port.  A request arriving while there is no replica at all
triggers a decision at once, as the activator's poke does in Knative.
Scaling down removes starting replicas first, then idle ones; a busy
replica drains (takes no new requests) and stops when its last one is done.

Replica-seconds count every replica from being ordered (cold start
included: its GPU is held) until it stops or the simulation ends.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.policy.autoscaling import Autoscaler, AutoscalingPolicy, MetricSample

SAMPLE_S = 1.0
TIMELINE_STEP_S = 10.0

_READY, _DONE, _ARRIVE, _TICK = 0, 1, 2, 3  # same-time order: capacity first, then demand


@dataclass(frozen=True, slots=True)
class Requests:
    """The trace: arrival times (from 0), service times and the part before the first token."""

    arrival: Sequence[float]
    service: Sequence[float]
    first_token: Sequence[float]
    """Seconds of service until the first token (fixed + prompt terms)."""


@dataclass(slots=True)
class _VirtualClock:
    """The clock port the autoscaler reads: the simulation's own time."""

    time: float = 0.0

    def now(self) -> float:
        return self.time


@dataclass(slots=True)
class _Replica:
    ident: int
    ordered_at: float
    ready_at: float
    busy: int = 0
    ready: bool = False
    draining: bool = False


@dataclass
class ServeRun:
    """What one policy's run produced; ``results.serve_result`` turns it into JSON."""

    policy: str
    latency: list[float]
    first_token: list[float]
    wait: list[float]
    cold_starts: int
    replica_seconds: float
    horizon: float
    wall_time_s: float = 0.0
    decisions: int = 0
    panic_decisions: int = 0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    """(time, replicas ordered, replicas ready) at each change."""


class _Engine:
    def __init__(
        self,
        requests: Requests,
        policy: AutoscalingPolicy[Any],
        *,
        concurrency: int,
        cold_start_s: float,
        initial_replicas: int,
    ) -> None:
        self.req, self.policy = requests, policy
        self.slots, self.cold_start = concurrency, cold_start_s
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = itertools.count()
        self.replicas: dict[int, _Replica] = {}
        self.ids = itertools.count()
        self.queue: deque[int] = deque()
        self.started = [0.0] * len(requests.arrival)
        self.finished = [0.0] * len(requests.arrival)
        self.in_flight = 0
        self.replica_seconds = 0.0
        self.cold_starts = 0
        self.desired = initial_replicas
        self.clock = _VirtualClock()
        self.autoscaler = Autoscaler(policy, self.clock)
        self.service_mean: float | None = None
        self.decisions = self.panics = 0
        # 1 s metric buckets: the area under in-flight, arrivals, and the buckets closed
        # since the last decision.
        self.bucket_end, self.area, self.bucket_arrivals, self.last = SAMPLE_S, 0.0, 0, 0.0
        self.samples: list[MetricSample] = []
        self.timeline: list[tuple[float, int, int]] = []
        for _ in range(initial_replicas):
            self._add_replica(0.0, warm=True)
        self._mark(0.0)

    def run(self) -> ServeRun:
        for index, at in enumerate(self.req.arrival):
            self._push(at, _ARRIVE, index)
        self._push(0.0, _TICK, 0)
        remaining = len(self.req.arrival)
        now = 0.0
        while self.events and remaining:
            now, kind, _, payload = heapq.heappop(self.events)
            self.clock.time = now
            self._advance(now)
            if kind == _ARRIVE:
                self._arrive(now, payload)
            elif kind == _DONE:
                remaining -= 1
                self._done(now, payload)
            elif kind == _READY:
                self._ready(now, payload)
            else:
                self._decide(now)
                self._push(now + self.policy.tick_seconds, _TICK, 0)
        for replica in self.replicas.values():
            self.replica_seconds += now - replica.ordered_at
        arrival = self.req.arrival
        return ServeRun(
            policy=self.policy.name,
            latency=[f - a for f, a in zip(self.finished, arrival, strict=True)],
            first_token=[
                s - a + t for s, a, t in zip(self.started, arrival, self.req.first_token, strict=True)
            ],
            wait=[s - a for s, a in zip(self.started, arrival, strict=True)],
            cold_starts=self.cold_starts,
            replica_seconds=self.replica_seconds,
            horizon=now,
            decisions=self.decisions,
            panic_decisions=self.panics,
            timeline=self.timeline,
        )

    # -- events ---------------------------------------------------------------

    def _push(self, at: float, kind: int, payload: int) -> None:
        heapq.heappush(self.events, (at, kind, next(self.seq), payload))

    def _arrive(self, now: float, index: int) -> None:
        self.in_flight += 1
        self.bucket_arrivals += 1
        self.queue.append(index)
        if self.desired == 0:
            self._decide(now)  # the activator's poke: decide now, not at the next tick
        self._dispatch(now)

    def _done(self, now: float, payload: int) -> None:
        ident, index = divmod(payload, 1 << 32)
        self.in_flight -= 1
        self.finished[index] = now
        service = self.req.service[index]
        self.service_mean = service if self.service_mean is None else (
            0.95 * self.service_mean + 0.05 * service
        )
        replica = self.replicas[ident]
        replica.busy -= 1
        if replica.draining and replica.busy == 0:
            self._stop(now, replica)
        self._dispatch(now)

    def _ready(self, now: float, ident: int) -> None:
        replica = self.replicas.get(ident)
        if replica is None or replica.ready:
            return
        replica.ready = True
        self._mark(now)
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        while self.queue:
            free = [r for r in self.replicas.values()
                    if r.ready and not r.draining and r.busy < self.slots]
            if not free:
                return
            replica = min(free, key=lambda r: r.busy)  # least outstanding requests
            index = self.queue.popleft()
            replica.busy += 1
            self.started[index] = now
            done_at = now + self.req.service[index]
            # One int payload keeps heap entries plain tuples: replica id and request.
            self._push(done_at, _DONE, (replica.ident << 32) + index)

    # -- metrics and decisions --------------------------------------------------

    def _advance(self, now: float) -> None:
        """Close the 1 s metric buckets that end by ``now``."""
        while self.bucket_end <= now:
            self.area += self.in_flight * (self.bucket_end - self.last)
            self.samples.append(
                MetricSample(self.bucket_end, SAMPLE_S, self.area / SAMPLE_S, self.bucket_arrivals)
            )
            self.last, self.area, self.bucket_arrivals = self.bucket_end, 0.0, 0
            self.bucket_end += SAMPLE_S
        self.area += self.in_flight * (now - self.last)
        self.last = now

    def _decide(self, now: float) -> None:
        live = [r for r in self.replicas.values() if not r.draining]
        decision = self.autoscaler.decide(
            desired=self.desired,
            ready=sum(1 for r in live if r.ready),
            in_flight=self.in_flight,
            samples=self.samples,
            service_time_s=self.service_mean,
        )
        self.samples = []
        self.decisions += 1
        self.panics += decision.panic
        self.desired = decision.replicas
        self._scale(now, decision.replicas)

    def _scale(self, now: float, target: int) -> None:
        live = [r for r in self.replicas.values() if not r.draining]
        if target > len(live):
            revived = [r for r in self.replicas.values() if r.draining]
            for replica in revived[: target - len(live)]:
                replica.draining = False  # a draining replica is warm: take it back
            for _ in range(target - len(live) - len(revived[: target - len(live)])):
                self._add_replica(now, warm=False)
        elif target < len(live):
            # Starting ones first (newest first), then idle ones, then busy ones drain.
            order = sorted(live, key=lambda r: (r.ready, r.busy > 0, -r.ordered_at))
            for replica in order[: len(live) - target]:
                if replica.busy:
                    replica.draining = True
                else:
                    self._stop(now, replica)
        self._mark(now)
        self._dispatch(now)  # a revived replica takes waiting requests at once

    def _add_replica(self, now: float, warm: bool) -> None:
        ident = next(self.ids)
        ready_at = now if warm else now + self.cold_start
        self.replicas[ident] = _Replica(ident, now, ready_at, ready=warm)
        if not warm:
            self.cold_starts += 1
            self._push(ready_at, _READY, ident)

    def _stop(self, now: float, replica: _Replica) -> None:
        self.replica_seconds += now - replica.ordered_at
        del self.replicas[replica.ident]

    def _mark(self, now: float) -> None:
        live = [r for r in self.replicas.values() if not r.draining]
        point = (now, len(live), sum(1 for r in live if r.ready))
        if not self.timeline or self.timeline[-1][1:] != point[1:]:
            self.timeline.append(point)


def simulate(
    requests: Requests,
    policy: AutoscalingPolicy[Any],
    *,
    concurrency: int,
    cold_start_s: float,
    initial_replicas: int = 1,
    clock: Callable[[], float] | None = None,
) -> ServeRun:
    """Replay ``requests`` against replicas scaled by ``policy``; ``clock`` times the run."""
    begin = clock() if clock else 0.0
    engine = _Engine(
        requests, policy, concurrency=concurrency, cold_start_s=cold_start_s,
        initial_replicas=initial_replicas,
    )
    run = engine.run()
    run.wall_time_s = (clock() - begin) if clock else 0.0
    return run
