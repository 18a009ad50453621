"""Shoal's SLO-sizing policy, its Erlang-C core, and the bounds wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shoal.policy.autoscaling import (
    Bounded,
    KpaPolicy,
    MetricSample,
    ScaleDecision,
    ScalingContext,
    ShoalPolicy,
)
from shoal.policy.autoscaling.queueing import servers_for, wait_exceeds
from shoal.sim.serve import Requests, simulate
from tests.unit.test_autoscaling_kpa import Driver


def erlang_c_by_factorials(c: int, load: float) -> float:
    """The textbook formula, independently of the recursion under test."""
    top = load**c / math.factorial(c) * c / (c - load)
    return top / (sum(load**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("servers", "load"), [(2, 1.0), (12, 10.0), (30, 25.5)])
def test_erlang_c_matches_the_textbook_formula(servers: int, load: float) -> None:
    assert wait_exceeds(servers, load, 1.0, 0.0) == pytest.approx(
        erlang_c_by_factorials(servers, load), rel=1e-9
    )


def test_servers_for_is_the_fewest_that_meet_the_quantile() -> None:
    lam, mu, t = 40.0, 5.0, 0.1
    n = servers_for(lam, mu, t, 0.99)
    assert wait_exceeds(n, lam, mu, t) <= 0.01 < wait_exceeds(n - 1, lam, mu, t)
    assert servers_for(0.0, mu, t, 0.99) == 0
    assert servers_for(lam, mu, t, 0.999) > n  # a stricter SLO needs more
    assert servers_for(lam, mu, t, 0.99, scv=4.0) > n  # so does a more variable service


def poisson(rate: float, seconds: float, service: float, seed: int) -> Requests:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, int(rate * seconds)))
    times = rng.exponential(service, len(arrival))
    return Requests(list(arrival), list(times), list(times))


def test_shoal_sizing_meets_the_slo_on_poisson_load() -> None:
    requests = poisson(rate=40.0, seconds=1800, service=0.2, seed=7)
    budget = 0.1
    policy = ShoalPolicy(slots=4, wait_budget_s=budget, service_time_s=0.2, cold_start_s=5.0,
                         quantile=0.95)
    run = simulate(requests, Bounded(policy), concurrency=4, cold_start_s=5.0)
    waits = np.asarray(run.wait)
    assert np.mean(waits <= budget) >= 0.95
    sized = math.ceil(servers_for(40.0, 5.0, budget, 0.95) / 4)  # 12 slots: 3 replicas
    # Not met by throwing replicas at it: on average within one and a half of the sizing
    # (noise in the rate estimate and replicas still starting cost the rest).
    assert run.replica_seconds / run.horizon < sized + 1.5
    # Sizing for the median instead leaves many more requests waiting too long.
    loose = ShoalPolicy(slots=4, wait_budget_s=budget, service_time_s=0.2, cold_start_s=5.0,
                        quantile=0.5)
    worse = simulate(requests, Bounded(loose), concurrency=4, cold_start_s=5.0)
    assert np.mean(np.asarray(worse.wait) <= budget) < np.mean(waits <= budget)


def shoal(**overrides: float) -> ShoalPolicy:
    settings = {"slots": 4, "wait_budget_s": 0.5, "service_time_s": 0.2, "cold_start_s": 5.0}
    return ShoalPolicy(**(settings | overrides))  # type: ignore[arg-type]


def test_scale_down_waits_one_cold_start() -> None:
    driver = Driver(shoal(), replicas=1)
    busy = driver.run(30, rps=100).replicas
    assert busy > 2
    start = driver.now
    driver.run(20, rps=0)
    # The 30 s rate still remembers the burst; once it is gone, the hold keeps
    # the count one cold start longer.
    after = [(t, d.replicas) for t, d in driver.decisions if t > start]
    assert after[0][1] == busy
    assert after[-1][1] < busy


def test_a_bursty_service_keeps_one_replica_warm_until_the_long_window_is_quiet() -> None:
    driver = Driver(shoal(), replicas=1)
    driver.run(10, rps=50)  # a burst: a cold resume would make ~250 requests miss
    driver.run(300, rps=0)
    assert driver.decisions[-1][1].replicas == 1
    assert "kept warm" in driver.decisions[-1][1].reason
    driver.run(320, rps=0)  # nothing for the whole 600 s window
    assert driver.decisions[-1][1].replicas == 0


def test_a_trickle_within_the_miss_budget_goes_to_zero_after_one_hold() -> None:
    driver = Driver(shoal(quantile=0.95), replicas=1)
    driver.run(600, rps=1)  # 600 requests: 30 may miss; a cold resume misses ~5
    last = driver.now
    driver.run(60, rps=0)
    # Sized to zero once the 30 s rate is empty; then one hold (a cold start, 5 s).
    zero_at = next(t for t, d in driver.decisions if t > last and d.replicas == 0)
    assert last + 30 + 5 - 2 <= zero_at <= last + 30 + 5 + 2


def test_bounds_clamp_and_activate() -> None:
    bounded = Bounded(KpaPolicy(), min_replicas=2, max_replicas=3)
    state = bounded.initial_state()
    flood = ScalingContext(2.0, 2, 2, 0, (MetricSample(2.0, 2.0, 10_000.0, 0),))
    assert bounded.decide(flood, state)[0].replicas == 3
    idle = ScalingContext(2.0, 2, 2, 0, ())
    assert bounded.decide(idle, state)[0].replicas == 2
    at_zero = Bounded(Fixed(0))
    held = ScalingContext(5.0, 0, 0, 4, ())
    assert at_zero.decide(held, at_zero.initial_state())[0].replicas == 1


def test_scale_down_delay_holds_the_largest_recent_count() -> None:
    wrapper = Bounded(Fixed(5), scale_down_delay_s=30.0)
    state = wrapper.initial_state()
    _, state = wrapper.decide(ScalingContext(0.0, 5, 5), state)
    lower = Bounded(Fixed(1), scale_down_delay_s=30.0)
    decision, state = lower.decide(ScalingContext(10.0, 5, 5), state)
    assert decision.replicas == 5
    decision, _ = lower.decide(ScalingContext(40.0, 5, 5), state)
    assert decision.replicas == 1


def test_scale_up_delay_ignores_a_short_spike() -> None:
    low, high = Bounded(Fixed(1), scale_up_delay_s=10.0), Bounded(Fixed(4), scale_up_delay_s=10.0)
    state = low.initial_state()
    _, state = low.decide(ScalingContext(0.0, 1, 1), state)
    assert high.decide(ScalingContext(4.0, 1, 1), state)[0].replicas == 1
    counts = []
    for now in (4.0, 8.0, 12.0, 14.0):
        decision, state = high.decide(ScalingContext(now, 1, 1), state)
        counts.append(decision.replicas)
    assert counts == [1, 1, 1, 4]  # 4 only once it has been asked for throughout 10 s


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_replicas"):
        Bounded(Fixed(1), min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="min_replicas"):
        Bounded(Fixed(1), min_replicas=-1)


class Fixed:
    """A policy that always asks for the same count (for the wrapper's tests)."""

    tick_seconds = 2.0
    name = "fixed"

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def initial_state(self) -> None:
        return None

    def decide(self, context: ScalingContext, state: None) -> tuple[ScaleDecision, None]:
        return ScaleDecision(self.replicas, "fixed"), None
