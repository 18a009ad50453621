"""Canary analysis (policy.rollout): each rule decides, and none decides on too little traffic."""

from __future__ import annotations

import pytest

from shoal.policy.rollout import CanaryState, RevisionWindow, RolloutThresholds, judge

LIMITS = RolloutThresholds(max_error_rate_increase=0.01, max_p95_ratio=1.5,
                           min_p95_increase_s=0.005, min_requests=20, promote_after_s=300)
STABLE = RevisionWindow(requests=1000, errors=5, p95_s=0.020)


def test_too_little_canary_traffic_is_not_judged_and_resets_the_healthy_streak() -> None:
    verdict = judge(STABLE, RevisionWindow(10, 10, 5.0), LIMITS, CanaryState(100.0), 200.0)
    assert verdict.action == "watch"
    assert "fewer than the 20" in verdict.reason
    assert verdict.state.healthy_since is None


def test_an_error_regression_rolls_back_with_the_evidence() -> None:
    verdict = judge(STABLE, RevisionWindow(200, 20, 0.020), LIMITS, CanaryState(), 60.0)
    assert verdict.action == "rollback"
    assert "error rate 10.00% vs stable 0.50%" in verdict.reason
    assert verdict.evidence["canary_errors"] == 20
    assert verdict.evidence["stable_requests"] == 1000


def test_an_error_or_two_more_than_stable_is_chance_not_a_regression() -> None:
    # 2 errors in 100 is 2 % against an allowed 1.5 %: within two standard deviations.
    verdict = judge(STABLE, RevisionWindow(100, 2, 0.020), LIMITS, CanaryState(), 60.0)
    assert verdict.action == "watch"


def test_without_stable_traffic_the_canary_is_held_to_the_allowed_rate_alone() -> None:
    idle = RevisionWindow(0, 0, None)
    assert judge(idle, RevisionWindow(500, 50, 0.02), LIMITS, CanaryState(), 0.0).action == "rollback"
    assert judge(idle, RevisionWindow(500, 0, 9.0), LIMITS, CanaryState(), 0.0).action == "watch"


def test_a_latency_regression_rolls_back() -> None:
    verdict = judge(STABLE, RevisionWindow(200, 0, 0.050), LIMITS, CanaryState(), 60.0)
    assert verdict.action == "rollback"
    assert "p95 latency 50.0 ms vs stable 20.0 ms" in verdict.reason


@pytest.mark.parametrize("canary_p95", [0.029, 0.0011])
def test_latency_within_the_ratio_or_a_tiny_absolute_difference_is_healthy(canary_p95: float) -> None:
    stable = RevisionWindow(1000, 0, 0.020 if canary_p95 > 0.01 else 0.0004)
    verdict = judge(stable, RevisionWindow(200, 0, canary_p95), LIMITS, CanaryState(), 60.0)
    assert verdict.action == "watch"
    assert verdict.state.healthy_since == 60.0


def test_promotes_after_a_healthy_streak_of_promote_after_s() -> None:
    state = CanaryState()
    actions = []
    for now in range(0, 361, 60):
        verdict = judge(STABLE, RevisionWindow(200, 1, 0.021), LIMITS, state, float(now))
        state = verdict.state
        actions.append(verdict.action)
    assert actions == ["watch"] * 5 + ["promote", "promote"]
    assert state.healthy_since == 0.0
