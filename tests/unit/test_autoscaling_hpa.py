"""Kubernetes HPA v2 as a pure policy: tolerance, stabilisation, rate limits, min 1."""

from __future__ import annotations

from shoal.policy.autoscaling import HpaPolicy, MetricSample, ScalingContext
from tests.unit.test_autoscaling_kpa import Driver


def decide_once(policy: HpaPolicy, ready: int, total: float, desired: int | None = None) -> int:
    samples = tuple(MetricSample(k + 1.0, 1.0, total, 0) for k in range(15))
    context = ScalingContext(15.0, desired or ready, ready, 0, samples)
    return policy.decide(context, policy.initial_state())[0].replicas


def test_within_the_tolerance_band_nothing_changes() -> None:
    policy = HpaPolicy(target=10.0)
    assert decide_once(policy, ready=4, total=4 * 10.9) == 4  # ratio 1.09
    assert decide_once(policy, ready=4, total=4 * 9.1) == 4  # ratio 0.91
    assert decide_once(policy, ready=4, total=4 * 11.5) == 5  # ceil(4 x 1.15)
    assert decide_once(policy, ready=4, total=4 * 20.0) == 8


def test_pods_still_starting_count_as_idle_when_scaling_up() -> None:
    policy = HpaPolicy(target=10.0)
    # 5 ready at ratio 1.5, 5 more starting: (75 / 10 pods) / 10 = 0.75 -> no scale-up.
    assert decide_once(policy, ready=5, total=75.0, desired=10) == 10


def test_scale_up_is_limited_to_double_or_plus_four_per_period() -> None:
    driver = Driver(HpaPolicy(target=10.0), replicas=1)
    counts = [driver.run(15, concurrency=200.0).replicas for _ in range(4)]
    # max(2 x 1, 1 + 4) = 5, then max(10, 9) = 10, then 20 (= ceil(200 / 10)).
    assert counts == [5, 10, 20, 20]


def test_scale_down_keeps_the_largest_recommendation_of_300_seconds() -> None:
    driver = Driver(HpaPolicy(target=10.0), replicas=10)
    driver.run(60, concurrency=100.0)
    start = driver.now
    driver.run(400, concurrency=20.0)  # wants 2
    held = [d.replicas for t, d in driver.decisions if start < t < start + 300]
    after = [d.replicas for t, d in driver.decisions if t > start + 300 + 15]
    assert held and set(held) == {10}
    assert after and set(after) == {2}


def test_never_below_one_replica() -> None:
    driver = Driver(HpaPolicy(target=10.0, scale_down_stabilization_s=0.0), replicas=3)
    assert driver.run(60, concurrency=0.0).replicas == 1
    assert driver.run(600, concurrency=0.0).replicas == 1


def test_decides_every_15_seconds() -> None:
    assert HpaPolicy(target=1.0).tick_seconds == 15.0
