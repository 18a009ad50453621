"""One service's autoscaler: a policy, its state between decisions, and a clock port.

The policies are pure; something has to keep their state from one decision
to the next and read the time.  ``Autoscaler`` does that and nothing else,
so the live control plane (with the wall clock) and the serving simulator
(with its virtual clock) run the same code: only the clock differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from shoal.policy.autoscaling.base import (
    AutoscalingPolicy,
    MetricSample,
    ScaleDecision,
    ScalingContext,
)

S = TypeVar("S")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock (any origin)."""
        ...


class Autoscaler(Generic[S]):
    """Calls ``policy`` with the clock's time and keeps the state it returns."""

    def __init__(self, policy: AutoscalingPolicy[S], clock: Clock) -> None:
        self.policy, self.clock = policy, clock
        self.state = policy.initial_state()
        self.last: ScaleDecision | None = None

    def decide(
        self,
        *,
        desired: int,
        ready: int,
        in_flight: int = 0,
        samples: Sequence[MetricSample] = (),
        service_time_s: float | None = None,
    ) -> ScaleDecision:
        context = ScalingContext(
            now=self.clock.now(),
            desired=desired,
            ready=ready,
            in_flight=in_flight,
            samples=tuple(samples),
            service_time_s=service_time_s,
        )
        self.last, self.state = self.policy.decide(context, self.state)
        return self.last
