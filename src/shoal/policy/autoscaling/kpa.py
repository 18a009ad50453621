"""Knative's Pod Autoscaler (KPA), formula for formula, as a pure policy.

Follows knative/serving ``pkg/autoscaler/scaling/autoscaler.go`` (``Scale``)
and the defaults of its ``config-autoscaler`` ConfigMap (see
``../shared/docs/REFERENCE.md``, "Autoscaling"):

- the metric (in-flight requests, or requests/s) is averaged over a 60 s
  stable window and a 6 s panic window (``panic-window-percentage`` 10 %);
- target per replica = container concurrency x 0.7
  (``container-concurrency-target-percentage``; 100 x 0.7 = 70 when the
  concurrency is unlimited; 200 x 0.7 rps for the rps metric);
- desired = ceil(average / target), clamped to
  [floor(ready / max-scale-down-rate 2), ceil(ready x max-scale-up-rate 1000)],
  with ``ready`` taken as at least 1;
- panic starts when panic-window desired / ready >= 2.0
  (``panic-threshold-percentage`` 200); in panic the larger of the two
  desired counts is used and the count never goes down; panic ends once a
  whole stable window has passed without the panic condition;
- decisions every 2 s (``tick-interval``);
- at zero desired, the last replica goes only after
  ``scale-to-zero-grace-period`` 30 s: with the 60 s stable window, a
  revision reaches zero 90 s after its last request;
- ``activation-scale`` (default 1): the least count when scaling from zero.

What is left out: the activator's excess-burst-capacity bookkeeping (it only
decides whether the activator stays in the request path) and the
``scale-down-delay`` (0 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from shoal.policy.autoscaling.base import (
    MetricSample,
    ScaleDecision,
    ScalingContext,
    average,
    ceil_ratio,
    trim,
)

STABLE_WINDOW_S = 60.0
PANIC_WINDOW_PERCENTAGE = 10.0
PANIC_THRESHOLD = 2.0
TARGET_UTILIZATION = 0.7
CONTAINER_CONCURRENCY_TARGET_DEFAULT = 100.0
RPS_TARGET_DEFAULT = 200.0
MAX_SCALE_UP_RATE = 1000.0
MAX_SCALE_DOWN_RATE = 2.0
TICK_S = 2.0
SCALE_TO_ZERO_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class KpaState:
    window: tuple[MetricSample, ...] = ()
    panic_since: float | None = None
    """When the panic condition last held (Knative's ``panicTime``); None: not panicking."""
    max_panic_pods: int = 0
    zero_since: float | None = None
    """When the decider first wanted zero replicas, for the grace period."""


@dataclass(frozen=True, slots=True)
class KpaPolicy:
    """Knative KPA with its defaults; ``container_concurrency`` 0 means unlimited."""

    container_concurrency: int = 0
    metric: Literal["concurrency", "rps"] = "concurrency"
    target: float | None = None
    """Per-replica target before utilisation; unset: the concurrency (or Knative's default)."""
    target_utilization: float = TARGET_UTILIZATION
    stable_window_s: float = STABLE_WINDOW_S
    panic_window_percentage: float = PANIC_WINDOW_PERCENTAGE
    panic_threshold: float = PANIC_THRESHOLD
    max_scale_up_rate: float = MAX_SCALE_UP_RATE
    max_scale_down_rate: float = MAX_SCALE_DOWN_RATE
    scale_to_zero_grace_s: float = SCALE_TO_ZERO_GRACE_S
    activation_scale: int = 1
    tick_seconds: float = TICK_S
    name: str = field(default="kpa")

    @property
    def target_value(self) -> float:
        """The per-replica target the formulas divide by (70 by default)."""
        if self.target is not None:
            base = self.target
        elif self.metric == "rps":
            base = RPS_TARGET_DEFAULT
        else:
            base = float(self.container_concurrency) or CONTAINER_CONCURRENCY_TARGET_DEFAULT
        return base * self.target_utilization

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100

    def initial_state(self) -> KpaState:
        return KpaState()

    def decide(self, context: ScalingContext, state: KpaState) -> tuple[ScaleDecision, KpaState]:
        now = context.now
        window = trim(state.window, context.samples, now, self.stable_window_s)
        stable = average(window, now, self.stable_window_s, self.metric)
        panic_value = average(window, now, self.panic_window_s, self.metric)
        if not window and context.in_flight > 0:
            panic_value = stable = float(context.in_flight)  # the activator's poke at zero
        ready = max(1.0, float(context.ready))
        max_up = math.ceil(self.max_scale_up_rate * ready)
        max_down = math.floor(ready / self.max_scale_down_rate)
        dspc = ceil_ratio(stable, self.target_value)
        dppc = ceil_ratio(panic_value, self.target_value)
        stable_pods = min(max(dspc, max_down), max_up)
        panic_pods = min(max(dppc, max_down), max_up)
        if self.activation_scale > 1:
            if dspc > 0:
                stable_pods = max(stable_pods, self.activation_scale)
            if dppc > 0:
                panic_pods = max(panic_pods, self.activation_scale)
        over = dppc / ready >= self.panic_threshold
        panic_since, max_panic = state.panic_since, state.max_panic_pods
        if over:
            panic_since = now  # enter panic, or extend it while the surge lasts
        elif panic_since is not None and panic_since + self.stable_window_s < now:
            panic_since, max_panic = None, 0  # the surge has reached the stable window
        desired, reason = stable_pods, f"stable average {stable:.2f}"
        if panic_since is not None:
            # Never scale down in panic; provision for the larger of the two windows.
            desired = max(desired, panic_pods, max_panic)
            max_panic = desired
            reason = f"panic: 6 s average {panic_value:.2f}"
        desired, zero_since = self._grace(desired, context, now, state.zero_since)
        if zero_since is not None and desired > 0:
            reason = "idle: waiting out the scale-to-zero grace period"
        new_state = KpaState(window, panic_since, max_panic, zero_since)
        return ScaleDecision(desired, reason, panic=panic_since is not None), new_state

    def _grace(
        self, desired: int, context: ScalingContext, now: float, zero_since: float | None
    ) -> tuple[int, float | None]:
        """Hold the last replica for the grace period before going to zero."""
        if desired > 0:
            return desired, None
        if context.in_flight > 0:
            return max(1, self.activation_scale), None  # requests held at zero: wake up
        since = now if zero_since is None else zero_since
        if context.desired > 0 and now - since < self.scale_to_zero_grace_s:
            return 1, since
        return 0, since
