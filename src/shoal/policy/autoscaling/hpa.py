"""The Kubernetes Horizontal Pod Autoscaler (autoscaling/v2) with its defaults, as a pure policy.

Follows kubernetes ``pkg/controller/podautoscaler/replica_calculator.go`` and
``horizontal.go`` (see ``../shared/docs/REFERENCE.md``, "Autoscaling"):

- every 15 s (``--horizontal-pod-autoscaler-sync-period``) the metric, an
  average per ready pod, is compared with its target:
  ``ratio = metric / target``; no change when ``|ratio - 1| <= 0.1``
  (``--horizontal-pod-autoscaler-tolerance``); otherwise
  ``desired = ceil(ready x ratio)``.  When scaling up with pods that are not
  ready yet, those count as using nothing, and the scale-up is dropped if
  that puts the ratio back within tolerance;
- scale-down stabilisation: the recommendation is the largest one of the
  last 300 s (``behavior.scaleDown.stabilizationWindowSeconds``), so a burst
  keeps its replicas five minutes;
- default scale-up policies: at most +100 % or +4 pods per 15 s, whichever
  allows more (``selectPolicy: Max``); scale-down policy: 100 % per 15 s;
- the HPA never scales to zero: ``minReplicas`` is at least 1 (0 is only
  allowed behind the alpha ``HPAScaleToZero`` feature gate, and then only for
  object or external metrics), so this policy never asks for fewer than 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shoal.policy.autoscaling.base import (
    MetricSample,
    ScaleDecision,
    ScalingContext,
    average,
    trim,
)

SYNC_PERIOD_S = 15.0
TOLERANCE = 0.1
SCALE_DOWN_STABILIZATION_S = 300.0
SCALE_UP_PERCENT = 100.0
SCALE_UP_PODS = 4
SCALE_DOWN_PERCENT = 100.0
POLICY_PERIOD_S = 15.0
MIN_REPLICAS = 1


@dataclass(frozen=True, slots=True)
class HpaState:
    window: tuple[MetricSample, ...] = ()
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, recommendation) over the stabilisation window."""
    changes: tuple[tuple[float, int], ...] = ()
    """(time, replicas added or removed) within the policy period, for the rate limits."""


@dataclass(frozen=True, slots=True)
class HpaPolicy:
    """HPA v2 on an average-per-pod metric (in-flight requests by default)."""

    target: float
    """The metric's target average per pod (``target.averageValue``)."""
    tolerance: float = TOLERANCE
    scale_down_stabilization_s: float = SCALE_DOWN_STABILIZATION_S
    scale_up_percent: float = SCALE_UP_PERCENT
    scale_up_pods: int = SCALE_UP_PODS
    scale_down_percent: float = SCALE_DOWN_PERCENT
    policy_period_s: float = POLICY_PERIOD_S
    metric: str = "concurrency"
    metric_window_s: float = SYNC_PERIOD_S
    """The metric the HPA reads averages the last sync period."""
    tick_seconds: float = SYNC_PERIOD_S
    name: str = field(default="hpa")

    def initial_state(self) -> HpaState:
        return HpaState()

    def decide(self, context: ScalingContext, state: HpaState) -> tuple[ScaleDecision, HpaState]:
        now = context.now
        window = trim(state.window, context.samples, now, self.metric_window_s)
        current = max(context.desired, MIN_REPLICAS)
        total = average(window, now, self.metric_window_s, self.metric) if window else 0.0
        raw, reason = self._recommend(total, context, current)
        cutoff = now - self.scale_down_stabilization_s
        recs = (*tuple(r for r in state.recommendations if r[0] > cutoff), (now, raw))
        stabilized = max(r for _, r in recs) if raw < current else raw
        if stabilized != raw:
            reason += f"; held at {stabilized} by the 300 s scale-down stabilisation"
        changes = tuple(c for c in state.changes if c[0] > now - self.policy_period_s)
        desired = max(MIN_REPLICAS, self._rate_limited(stabilized, current, changes))
        if desired != stabilized:
            reason += f"; rate-limited to {desired}"
        if desired != current:
            changes += ((now, desired - current),)
        return ScaleDecision(desired, reason), HpaState(window, recs, changes)

    def _recommend(self, total: float, context: ScalingContext, current: int) -> tuple[int, str]:
        ready = context.ready
        if ready <= 0:
            return current, "no ready pods report the metric"
        ratio = total / (ready * self.target)
        reason = f"ratio {ratio:.2f} of target {self.target:g}"
        if abs(ratio - 1.0) <= self.tolerance:
            return current, reason + " (within tolerance)"
        unready = max(0, current - ready)
        if ratio > 1.0 and unready:
            # Pods still starting count as using nothing (replica_calculator.go).
            ratio = total / ((ready + unready) * self.target)
            if ratio <= 1.0 + self.tolerance:
                return current, reason + " (pods still starting absorb it)"
            return math.ceil(ratio * (ready + unready)), reason
        return max(MIN_REPLICAS, math.ceil(ratio * ready)), reason

    def _rate_limited(self, wanted: int, current: int, changes: tuple[tuple[float, int], ...]) -> int:
        added = sum(delta for _, delta in changes if delta > 0)
        removed = -sum(delta for _, delta in changes if delta < 0)
        if wanted > current:
            start = current - added  # replicas at the start of the period
            limit = max(
                math.ceil(start * (1 + self.scale_up_percent / 100)), start + self.scale_up_pods
            )
            return min(wanted, max(limit, current))
        if wanted < current:
            start = current + removed
            floor = math.ceil(start * (1 - self.scale_down_percent / 100))
            return max(wanted, min(floor, current))
        return wanted
