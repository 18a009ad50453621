"""The service reconciler on fakes of its ports and a fake clock: revisions, scaling, rollouts."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.control import service_machine as sm
from shoal.control.services import RevisionLoad, ServiceReconciler, ServiceRecord
from shoal.domain.service import InferenceServiceSpec
from shoal.policy.autoscaling import Bounded, KpaPolicy
from shoal.policy.autoscaling.base import MetricSample
from shoal.policy.rollout import RevisionWindow
from shoal.testing import FakeClock, FakeReplicas, FakeTraffic, MemoryServices


def spec(path: str = "model-a.joblib", **more: Any) -> InferenceServiceSpec:
    body = {"tenant": "team-a", "framework": "sklearn", "model": {"path": path}, **more}
    return InferenceServiceSpec.model_validate(body)


def kpa(service: InferenceServiceSpec) -> Bounded[Any]:
    return Bounded(KpaPolicy(metric="concurrency", target=service.autoscaling.target),
                   min_replicas=service.replicas.min, max_replicas=service.replicas.max)


class World:
    def __init__(self, first: InferenceServiceSpec) -> None:
        self.store, self.replicas, self.traffic = MemoryServices(), FakeReplicas(), FakeTraffic()
        self.clock = FakeClock(0.0)
        self.reconciler = ServiceReconciler(self.store, self.replicas, self.traffic, self.clock, kpa)
        self.store.put(ServiceRecord(first, sm.ServiceRow("digits", "team-a"), 0))

    def apply(self, new: InferenceServiceSpec) -> None:
        self.store.put(ServiceRecord(new, sm.ServiceRow("digits", "team-a"), 0))

    @property
    def row(self) -> sm.ServiceRow:
        return self.store.records["digits"].row

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.store.events]

    def settle(self) -> None:
        for _ in range(10):
            if not self.reconciler.step():
                return
        raise AssertionError("the reconciler kept changing the service")


def test_a_new_service_loads_its_first_revision_then_routes_to_its_replica() -> None:
    world = World(spec())
    world.settle()
    assert world.row.stable == "digits-r1" and world.row.phase == "Loading"
    assert world.replicas.counts[("digits", "digits-r1")] == 1
    assert world.traffic.routes["digits"] == ({"digits-r1": 100}, {"digits-r1": []}, ["digits-r1"])
    world.replicas.set("digits", "digits-r1", 0, "ready", endpoint="unix:/r1-0.sock")
    world.settle()
    assert world.row.phase == "Ready"
    assert world.traffic.routes["digits"] == (
        {"digits-r1": 100}, {"digits-r1": ["unix:/r1-0.sock"]}, [])
    assert world.kinds() == ["revision-created", "revision-ready"]


def ready_world(**more: Any) -> World:
    world = World(spec(**more))
    world.settle()
    world.replicas.set("digits", "digits-r1", 0, "ready", endpoint="r1-0")
    world.settle()
    return world


def test_a_new_model_is_a_canary_rolled_back_on_errors_with_the_evidence() -> None:
    world = ready_world(canary={"trafficPercent": 20})
    world.apply(spec("model-b.joblib", canary={"trafficPercent": 20}))
    world.settle()
    assert world.row.canary == "digits-r2"
    assert world.replicas.counts[("digits", "digits-r2")] == 1
    world.replicas.set("digits", "digits-r2", 0, "ready", endpoint="r2-0")
    world.settle()
    split, endpoints, _ = world.traffic.routes["digits"]
    assert split == {"digits-r1": 80, "digits-r2": 20}
    assert endpoints == {"digits-r1": ["r1-0"], "digits-r2": ["r2-0"]}
    world.traffic.windows[("digits", "digits-r1")] = RevisionWindow(800, 1, 0.010)
    world.traffic.windows[("digits", "digits-r2")] = RevisionWindow(200, 40, 0.011)
    world.clock.advance(30)
    world.settle()
    assert world.row.canary == "digits-r2", "judged only once a whole window has passed"
    world.clock.advance(30)
    world.settle()
    assert world.row.canary is None
    assert world.row.revision("digits-r2").phase == "RolledBack"
    assert world.replicas.counts[("digits", "digits-r2")] == 0
    assert world.traffic.routes["digits"][0] == {"digits-r1": 100}
    back = [e for e in world.store.events if e["kind"] == "rolled-back"][-1]
    assert back["data"]["canary_errors"] == 40 and back["data"]["stable_requests"] == 800


def test_a_healthy_canary_is_promoted_after_the_success_window() -> None:
    world = ready_world(canary={"trafficPercent": 10},
                        rollback={"windowSeconds": 60, "successWindowSeconds": 120})
    world.apply(spec("model-b.joblib", canary={"trafficPercent": 10},
                     rollback={"windowSeconds": 60, "successWindowSeconds": 120}))
    world.settle()
    world.replicas.set("digits", "digits-r2", 0, "ready", endpoint="r2-0")
    world.traffic.windows[("digits", "digits-r1")] = RevisionWindow(900, 0, 0.010)
    world.traffic.windows[("digits", "digits-r2")] = RevisionWindow(100, 0, 0.010)
    for _ in range(5):
        world.settle()
        world.clock.advance(60)
    assert world.row.stable == "digits-r2" and world.row.canary is None
    assert world.replicas.counts[("digits", "digits-r1")] == 0
    assert "promoted" in world.kinds()


def test_a_canary_that_cannot_load_its_model_fails_and_traffic_stays() -> None:
    world = ready_world(canary={"trafficPercent": 50})
    world.apply(spec("broken.joblib", canary={"trafficPercent": 50}))
    world.settle()
    world.replicas.set("digits", "digits-r2", 0, "failed", message="cannot load broken.joblib",
                       load_failed=True)
    world.settle()
    assert world.row.revision("digits-r2").phase == "Failed"
    assert world.row.revision("digits-r2").reason == "cannot load broken.joblib"
    assert world.traffic.routes["digits"][0] == {"digits-r1": 100}
    assert world.replicas.counts[("digits", "digits-r2")] == 0
    assert world.kinds()[-2:] == ["revision-failed", "rolled-back"]


def test_scales_to_zero_when_idle_and_wakes_at_once_for_a_held_request() -> None:
    world = ready_world(replicas={"min": 0, "max": 3})
    for _ in range(60):  # two minutes without a request: past KPA's 60 s window + 30 s grace
        world.clock.advance(2)
        world.traffic.loads[("digits", "digits-r1")] = [
            RevisionLoad(samples=(MetricSample(world.clock.now(), 2, 0.0, 0),))]
        world.settle()
    assert world.replicas.counts[("digits", "digits-r1")] == 0
    assert world.traffic.routes["digits"][2] == ["digits-r1"], "requests are held, not refused"
    world.clock.advance(0.1)  # well before the next 2 s tick
    world.traffic.in_flight[("digits", "digits-r1")] = 1
    world.settle()
    assert world.replicas.counts[("digits", "digits-r1")] == 1


def test_a_concurrent_write_is_not_lost_the_pass_reads_again() -> None:
    world = World(spec())
    stale = world.store.records["digits"]
    world.apply(spec("model-b.joblib"))  # the spec changed after the pass read it
    with pytest.raises(Exception, match="changed since it was read"):
        world.reconciler.reconcile(stale)
    world.settle()
    assert world.row.revisions[-1].model.startswith("sklearn:model-b.joblib")
