"""Canary analysis: whether a new revision is promoted, rolled back or watched longer.

A pure function of what the router measured for the stable and the canary
revision over the last analysis window, the thresholds the service set and
how long the canary has looked healthy.  The caller (the service reconciler,
live or simulated) keeps ``CanaryState`` between calls and writes each
verdict other than ``watch`` as an event, with ``evidence``.

Rules, in order:

1. Too little canary traffic in the window (``min_requests``): keep watching;
   never judge on a handful of requests.
2. **Errors**: roll back when the canary's error rate exceeds the stable
   revision's by more than ``max_error_rate_increase`` (absolute, e.g. 0.01 =
   one point), and the difference is not explained by chance: the canary's
   error count must exceed what the stable rate (plus the allowed increase)
   predicts by more than two standard deviations of a binomial count.  With
   too little stable traffic to compare against, the canary's own error rate
   is held against ``max_error_rate_increase`` alone.
3. **Latency**: roll back when the canary's p95 exceeds ``max_p95_ratio``
   times the stable p95 and by more than ``min_p95_increase_s`` (sub-millisecond
   differences between two tiny latencies are noise, not a regression).
4. Otherwise the canary is healthy for this window; once it has been healthy
   for ``promote_after_s`` in a row (every window in between judged, none
   short of traffic resetting the count), it is promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = ["CanaryState", "RevisionWindow", "RolloutThresholds", "Verdict", "judge"]


@dataclass(frozen=True, slots=True)
class RevisionWindow:
    """What the router saw of one revision over the analysis window."""

    requests: int
    errors: int
    """Responses that were the server's fault (5xx, timeouts): a client's 4xx is not one."""
    p95_s: float | None
    """The 95th percentile latency of its successful requests; None with none."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class RolloutThresholds:
    max_error_rate_increase: float = 0.01
    max_p95_ratio: float = 1.5
    min_p95_increase_s: float = 0.005
    min_requests: int = 20
    promote_after_s: float = 300.0


@dataclass(frozen=True, slots=True)
class CanaryState:
    """Kept by the caller between judgements of one rollout."""

    healthy_since: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["watch", "promote", "rollback"]
    reason: str
    state: CanaryState
    evidence: dict[str, float | int | None] = field(default_factory=dict)


def _evidence(stable: RevisionWindow, canary: RevisionWindow) -> dict[str, float | int | None]:
    return {
        "stable_requests": stable.requests,
        "stable_errors": stable.errors,
        "stable_error_rate": round(stable.error_rate, 6),
        "stable_p95_s": stable.p95_s,
        "canary_requests": canary.requests,
        "canary_errors": canary.errors,
        "canary_error_rate": round(canary.error_rate, 6),
        "canary_p95_s": canary.p95_s,
    }


def _too_many_errors(stable: RevisionWindow, canary: RevisionWindow,
                     limits: RolloutThresholds) -> bool:
    if stable.requests >= limits.min_requests:
        allowed = min(1.0, stable.error_rate + limits.max_error_rate_increase)
    else:
        allowed = limits.max_error_rate_increase
    if canary.error_rate <= allowed:
        return False
    expected = canary.requests * allowed
    spread = math.sqrt(max(canary.requests * allowed * (1.0 - allowed), 1.0))
    return canary.errors > expected + 2.0 * spread


def _slower(stable: RevisionWindow, canary: RevisionWindow, limits: RolloutThresholds) -> bool:
    if stable.p95_s is None or canary.p95_s is None or stable.requests < limits.min_requests:
        return False
    return (canary.p95_s > limits.max_p95_ratio * stable.p95_s
            and canary.p95_s - stable.p95_s > limits.min_p95_increase_s)


def judge(stable: RevisionWindow, canary: RevisionWindow, limits: RolloutThresholds,
          state: CanaryState, now: float) -> Verdict:
    """The verdict on the canary after one analysis window ending at ``now``."""
    evidence = _evidence(stable, canary)
    if canary.requests < limits.min_requests:
        return Verdict("watch", f"canary served {canary.requests} requests in the window, "
                       f"fewer than the {limits.min_requests} needed to judge it",
                       replace(state, healthy_since=None), evidence)
    if _too_many_errors(stable, canary, limits):
        return Verdict(
            "rollback",
            f"canary error rate {canary.error_rate:.2%} vs stable {stable.error_rate:.2%} "
            f"(allowed increase {limits.max_error_rate_increase:.2%})",
            CanaryState(), evidence)
    if _slower(stable, canary, limits):
        assert stable.p95_s is not None and canary.p95_s is not None
        return Verdict(
            "rollback",
            f"canary p95 latency {canary.p95_s * 1000:.1f} ms vs stable "
            f"{stable.p95_s * 1000:.1f} ms (allowed ratio {limits.max_p95_ratio:g})",
            CanaryState(), evidence)
    since = state.healthy_since if state.healthy_since is not None else now
    healthy = CanaryState(healthy_since=since)
    if now - since >= limits.promote_after_s:
        return Verdict("promote", f"canary healthy for {now - since:.0f} s", healthy, evidence)
    return Verdict("watch", f"canary healthy for {now - since:.0f} s of "
                   f"{limits.promote_after_s:.0f}", healthy, evidence)
