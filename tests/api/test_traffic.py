"""The live traffic port turns the router's counters into 1 s samples, as the simulator does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from shoal.api.traffic import RouterTraffic
from shoal.control import service_machine as sm
from shoal.control.services import ServiceRecord
from shoal.domain.service import InferenceServiceSpec
from shoal.serving.router import StatsSnapshot


@dataclass
class Routers:
    """Stands for ``serving.routers.ServiceRouters``: the figures the test sets."""

    in_flight: int = 0
    arrivals: int = 0
    updates: list[Any] = field(default_factory=list)

    def ensure(self, key: str, service: str, tenant: str) -> str:
        return "http://127.0.0.1:1"

    def update(self, key: str, revisions: Any) -> None:
        self.updates.append(revisions)

    def stats(self, key: str, window_s: float) -> dict[str, StatsSnapshot]:
        return {"svc-r1": StatsSnapshot(self.in_flight, 0, self.arrivals, 0, 0, 0, 0.0, None, 0)}

    def remove(self, key: str) -> None:
        return None


def record() -> ServiceRecord:
    spec = InferenceServiceSpec.model_validate(
        {"tenant": "team-a", "framework": "sklearn", "model": {"path": "/m.joblib"}})
    return ServiceRecord(spec, sm.ServiceRow("team-a/svc", "team-a"), 1)


def test_samples_are_one_second_buckets_of_mean_in_flight_and_arrivals() -> None:
    routers = Routers()
    traffic = RouterTraffic(routers)  # type: ignore[arg-type]
    svc, revision = record(), "team-a/svc-r1"

    def at(now: float, in_flight: int, arrivals: int) -> None:
        routers.in_flight, routers.arrivals = in_flight, arrivals
        traffic.route(svc, {revision: 100}, {revision: ["/r.sock"]}, [], now)

    at(10.0, 0, 0)
    at(10.25, 2, 2)   # two arrive: two in flight until 11.5
    at(11.5, 0, 2)
    at(12.0, 1, 3)
    load = traffic.load("team-a/svc", revision, 12.5)
    assert [(s.end, s.seconds, s.arrivals) for s in load.samples] == [
        (11.0, 1.0, 2), (12.0, 1.0, 0)]
    assert [s.concurrency for s in load.samples] == pytest.approx([1.5, 1.0])
    assert load.in_flight == 1
    # The next call gets only what closed since, the open bucket included once closed.
    at(13.25, 0, 3)
    later = traffic.load("team-a/svc", revision, 13.5)
    assert [(s.end, s.arrivals) for s in later.samples] == [(13.0, 1)]
    assert later.samples[0].concurrency == pytest.approx(1.0)
