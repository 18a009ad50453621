"""The same autoscaling decisions live and simulated.

The serving simulator (``sim.serve``) replays a bursty arrival pattern with
KPA, and Shoal's policy, over a virtual clock; every input its autoscaler
saw is recorded.  The live service reconciler (``control.services``), on a
fake clock and fakes of its ports that report the same measurements at the
same moments, must ask its autoscaler at the same moments (ticks, and the
activator's poke at zero) with the same inputs, and so decide the same
replica counts, through the same wrapper (bounds, activation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from shoal.control import service_machine as sm
from shoal.control.services import RevisionLoad, ServiceReconciler, ServiceRecord, model_key
from shoal.domain.service import InferenceServiceSpec
from shoal.policy.autoscaling import Bounded, KpaPolicy, ScaleDecision, ScalingContext
from shoal.policy.autoscaling.base import AutoscalingPolicy
from shoal.policy.autoscaling.shoal import ShoalPolicy
from shoal.sim.serve import Requests, simulate
from shoal.testing import FakeClock, FakeReplicas, FakeTraffic, MemoryServices


@dataclass
class Recording:
    """A policy that records every context it decides on, and its answers."""

    inner: AutoscalingPolicy[Any]
    seen: list[tuple[ScalingContext, ScaleDecision]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def tick_seconds(self) -> float:
        return self.inner.tick_seconds

    def initial_state(self) -> Any:
        return self.inner.initial_state()

    def decide(self, context: ScalingContext, state: Any) -> tuple[ScaleDecision, Any]:
        decision, state = self.inner.decide(context, state)
        self.seen.append((context, decision))
        return decision, state


def bursts(seed: int) -> Requests:
    """Five minutes: a quiet start, a burst, silence long enough to reach zero, a second burst."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    for start, end, rate in ((0, 40, 0.5), (40, 70, 30.0), (200, 230, 20.0)):
        at = float(start)
        while True:
            at += rng.expovariate(rate)
            if at >= end:
                break
            arrivals.append(at)
    service = [0.05 + rng.random() * 0.1 for _ in arrivals]
    return Requests(arrivals, service, [s / 2 for s in service])


POLICIES = {
    "kpa": lambda: Bounded(KpaPolicy(container_concurrency=4), min_replicas=0, max_replicas=20),
    "shoal": lambda: Bounded(ShoalPolicy(slots=4, wait_budget_s=0.5, service_time_s=0.1,
                                         cold_start_s=2.0), min_replicas=0, max_replicas=20),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_live_reconciler_decides_as_the_simulator(name: str) -> None:
    simulated = Recording(POLICIES[name]())
    simulate(bursts(7), simulated, concurrency=4, cold_start_s=2.0, initial_replicas=1)
    assert len(simulated.seen) > 50
    assert {d.replicas for _, d in simulated.seen} >= {0, 1}, "it scaled to zero and back"
    assert max(d.replicas for _, d in simulated.seen) >= 2, "and up under the burst"

    live = Recording(POLICIES[name]())
    spec = InferenceServiceSpec.model_validate(
        {"tenant": "team-a", "framework": "sklearn", "model": {"path": "/m.joblib"},
         "replicas": {"min": 1, "max": 20}})
    store, replicas, traffic = MemoryServices(), FakeReplicas(), FakeTraffic()
    clock = FakeClock(0.0)
    reconciler = ServiceReconciler(store, replicas, traffic, clock, lambda _: live)
    row = sm.loaded(sm.deploy(sm.ServiceRow("svc", "team-a"), model_key(spec), 0, 0.0).service,
                    "svc-r1", 0.0).service
    store.put(ServiceRecord(spec, row, 0))
    replicas.counts[("svc", "svc-r1")] = 1  # the simulation starts with one warm replica
    for context, _ in simulated.seen:
        clock.set(context.now)
        for index in range(20):
            replicas.set("svc", "svc-r1", index, "ready" if index < context.ready else "starting",
                         endpoint=f"r{index}")
        traffic.loads[("svc", "svc-r1")] = [RevisionLoad(
            samples=context.samples, in_flight=context.in_flight,
            service_time_s=context.service_time_s)]
        traffic.in_flight[("svc", "svc-r1")] = context.in_flight
        reconciler.step()
    assert [c for c, _ in live.seen] == [c for c, _ in simulated.seen]
    assert [d for _, d in live.seen] == [d for _, d in simulated.seen]
