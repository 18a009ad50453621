"""Knative KPA as a pure policy: windows, panic mode, rate limits, scale to zero.

Time is a number passed in (a fake clock): a test drives minutes of traffic
through the policy without waiting.
"""

from __future__ import annotations

from typing import Any

from shoal.policy.autoscaling import (
    Autoscaler,
    KpaPolicy,
    MetricSample,
    ScaleDecision,
    ScalingContext,
)
from shoal.testing import FakeClock


class Driver:
    """Feeds a policy 1 s samples and decides every tick; replicas become ready at once."""

    def __init__(self, policy: Any, replicas: int = 1) -> None:
        self.policy, self.state = policy, policy.initial_state()
        self.now, self.replicas = 0.0, replicas
        self.decisions: list[tuple[float, ScaleDecision]] = []

    def run(self, seconds: float, concurrency: float = 0.0, rps: int = 0) -> ScaleDecision:
        tick = self.policy.tick_seconds
        decision = ScaleDecision(self.replicas, "")
        for _ in range(round(seconds / tick)):
            samples = tuple(
                MetricSample(self.now + k + 1, 1.0, concurrency, rps) for k in range(round(tick))
            )
            self.now += tick
            context = ScalingContext(self.now, self.replicas, self.replicas, 0, samples)
            decision, self.state = self.policy.decide(context, self.state)
            self.replicas = decision.replicas
            self.decisions.append((self.now, decision))
        return decision


def test_the_default_target_is_70_percent_of_the_concurrency() -> None:
    assert KpaPolicy().target_value == 70.0  # unlimited: 100 x 0.7
    assert KpaPolicy(container_concurrency=10).target_value == 7.0
    assert KpaPolicy(metric="rps").target_value == 140.0
    assert KpaPolicy().panic_window_s == 6.0


def test_steady_load_gets_ceil_of_average_over_target() -> None:
    driver = Driver(KpaPolicy(container_concurrency=10), replicas=3)
    decision = driver.run(120, concurrency=21.0)  # 21 / 7 = 3 exactly
    assert decision.replicas == 3
    assert not decision.panic
    assert driver.run(120, concurrency=21.5).replicas == 4


def test_a_burst_enters_panic_and_panic_never_scales_down() -> None:
    driver = Driver(KpaPolicy(container_concurrency=10), replicas=1)
    driver.run(60, concurrency=5.0)
    burst = driver.run(6, concurrency=60.0)  # 6 s average 60 / 7 -> 9 >= 2 x 1 ready
    assert burst.panic
    assert burst.replicas == 9
    calm = driver.run(30, concurrency=1.0)
    assert calm.panic and calm.replicas == 9  # in panic: never down
    driver.run(60, concurrency=1.0)
    # The condition last held at t = 62 (1 ready replica; from then on 9 are ready):
    # panic ends once a stable window (60 s) has passed without it.
    left = next(t for t, d in driver.decisions if t > 62 and not d.panic)
    assert 62 + 60 < left <= 62 + 60 + 2
    in_panic = [d.replicas for t, d in driver.decisions if 62 <= t < left]
    assert in_panic[:3] == [4, 6, 9]  # ceil(6 s average / 7) while the burst fills the window
    assert in_panic == sorted(in_panic) and in_panic[-1] == 9  # never down in panic
    assert driver.decisions[-1][1].replicas < 9  # out of panic it scales down again


def test_scale_down_is_limited_to_half_the_ready_replicas_per_decision() -> None:
    driver = Driver(KpaPolicy(container_concurrency=10), replicas=10)
    # The load is gone: the formula wants 0, the rate limit allows floor(ready / 2).
    assert [driver.run(2).replicas for _ in range(3)] == [5, 2, 1]


def test_a_slowly_falling_average_scales_down_step_by_step() -> None:
    driver = Driver(KpaPolicy(container_concurrency=10), replicas=10)
    driver.run(60, concurrency=70.0)
    counts = [driver.run(2).replicas for _ in range(30)]
    assert counts == sorted(counts, reverse=True)  # never back up without load
    assert counts[0] == 10 and counts[-1] == 1  # the 60 s average falls slowly


def test_zero_replicas_only_after_the_stable_window_and_the_grace_period() -> None:
    driver = Driver(KpaPolicy(container_concurrency=10), replicas=1)
    driver.run(30, concurrency=1.0)
    last_busy = driver.now
    driver.run(120, concurrency=0.0)
    zero_at = next(t for t, d in driver.decisions if d.replicas == 0)
    assert last_busy + 60 + 30 <= zero_at <= last_busy + 60 + 30 + 2
    held = [d for t, d in driver.decisions if last_busy + 60 < t < zero_at]
    assert held and all(d.replicas == 1 for d in held)


def test_requests_held_at_zero_wake_the_service() -> None:
    policy = KpaPolicy(container_concurrency=10)
    context = ScalingContext(now=500.0, desired=0, ready=0, in_flight=3)
    decision, _ = policy.decide(context, policy.initial_state())
    assert decision.replicas == 1
    big = KpaPolicy(container_concurrency=10, activation_scale=3)
    assert big.decide(context, big.initial_state())[0].replicas == 3


def test_the_policy_is_pure() -> None:
    policy = KpaPolicy()
    state = policy.initial_state()
    context = ScalingContext(2.0, 1, 1, 0, (MetricSample(2.0, 2.0, 500.0, 10),))
    first = policy.decide(context, state)
    assert policy.decide(context, state) == first  # same input, same output
    assert state == policy.initial_state()  # the old state is untouched


def test_the_autoscaler_reads_time_from_the_clock_port() -> None:
    clock = FakeClock(start=1000.0)
    autoscaler = Autoscaler(KpaPolicy(container_concurrency=10), clock)
    busy = (MetricSample(1000.0, 1.0, 1.0, 1),)
    assert autoscaler.decide(desired=1, ready=1, samples=busy).replicas == 1
    clock.advance(60.0 + 1.0)  # the stable window has emptied: the grace period starts
    assert autoscaler.decide(desired=1, ready=1).replicas == 1
    clock.advance(29.0)
    assert autoscaler.decide(desired=1, ready=1).replicas == 1
    clock.advance(2.0)  # 30 s of grace are over
    assert autoscaler.decide(desired=1, ready=1).replicas == 0
