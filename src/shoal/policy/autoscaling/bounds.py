"""Bounds, delays and stabilisation around any autoscaling policy.

``Bounded(policy, ...)`` is itself a policy: it calls the inner one and then
applies, in order,

- a scale-down delay: the count goes down only to the largest count the
  inner policy asked for within the last ``scale_down_delay_s``;
- a scale-up delay: the count goes up only to the smallest count asked for
  within the last ``scale_up_delay_s`` (a spike shorter than that is ignored);
- activation: with requests held and no replica, at least one;
- bounds: ``min_replicas <= count <= max_replicas``.

So a user's ``minReplicas``/``maxReplicas`` and delays mean the same thing
whichever policy decides, and the policies themselves stay unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from shoal.policy.autoscaling.base import AutoscalingPolicy, ScaleDecision, ScalingContext

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class BoundedState(Generic[S]):
    inner: S
    history: tuple[tuple[float, int], ...] = ()
    """(time, the inner policy's count) within the longer of the two delays, led by the
    count in effect at that window's start."""


@dataclass(frozen=True, slots=True)
class Bounded(Generic[S]):
    policy: AutoscalingPolicy[S]
    min_replicas: int = 0
    max_replicas: int | None = None
    scale_up_delay_s: float = 0.0
    scale_down_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise ValueError("max_replicas must be >= max(1, min_replicas)")

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def tick_seconds(self) -> float:
        return self.policy.tick_seconds

    def initial_state(self) -> BoundedState[S]:
        return BoundedState(self.policy.initial_state())

    def decide(
        self, context: ScalingContext, state: BoundedState[S]
    ) -> tuple[ScaleDecision, BoundedState[S]]:
        decision, inner = self.policy.decide(context, state.inner)
        now, asked = context.now, decision.replicas
        keep = max(self.scale_up_delay_s, self.scale_down_delay_s)
        history = _trim((*state.history, (now, asked)), now - keep)
        count, notes = asked, []
        current = context.desired
        if count < current and self.scale_down_delay_s > 0:
            recent = _since(history, now - self.scale_down_delay_s)
            count = min(current, max(n for _, n in recent))
        if count > current and self.scale_up_delay_s > 0:
            recent = _since(history, now - self.scale_up_delay_s)
            covered = recent[0][0] <= now - self.scale_up_delay_s
            count = max(current, min(n for _, n in recent)) if covered else current
        if count == 0 and context.in_flight > 0:
            count = 1
            notes.append("activated: requests are waiting")
        upper = self.max_replicas if self.max_replicas is not None else count
        bounded = min(max(count, self.min_replicas), upper)
        if bounded != asked:
            notes.append(f"{asked} -> {bounded} by bounds and delays")
        reason = "; ".join([decision.reason, *notes])
        result = ScaleDecision(bounded, reason, decision.panic)
        return result, BoundedState(inner, history)


def _since(history: tuple[tuple[float, int], ...], start: float) -> tuple[tuple[float, int], ...]:
    """The counts asked for since ``start``, led by the one in effect at ``start``."""
    for index in range(len(history) - 1, -1, -1):
        if history[index][0] <= start:
            return history[index:]
    return history


def _trim(history: tuple[tuple[float, int], ...], start: float) -> tuple[tuple[float, int], ...]:
    """Forget what no delay window can reach, keeping the count in effect at ``start``."""
    return _since(history, start)
