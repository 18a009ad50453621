"""The autoscaling policy interface: a pure function of a context and its own state.

Every autoscaler in Shoal (Knative's KPA, Kubernetes' HPA v2, Shoal's own)
is ``policy.decide(context, state) -> (decision, new_state)``: no clock, no
I/O, no mutation.  The caller (the live control plane, or the serving
simulator on its virtual clock) reads the time from its clock port, gathers
the metric samples since the last decision, calls the policy and applies the
decision.  That is what lets the very same code decide live and simulated,
and lets a test drive a policy through minutes of traffic in microseconds.

Metrics come as per-interval samples (``MetricSample``): the time-averaged
number of requests in the system (queued plus in service) and the number of
arrivals over the interval, the two things Knative's queue-proxy and the
router can both report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class MetricSample:
    """What the service saw over ``[end - seconds, end)``."""

    end: float
    seconds: float
    concurrency: float
    """Requests in the system (queued + in service), averaged over the interval."""
    arrivals: int
    """Requests that arrived in the interval."""

    @property
    def rps(self) -> float:
        return self.arrivals / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ScalingContext:
    """What a policy may know when it decides; ``now`` comes from the caller's clock."""

    now: float
    """Seconds on the caller's clock (monotonic; any origin)."""
    desired: int
    """The replica count last decided (the deployment's spec.replicas)."""
    ready: int
    """Replicas that are up and serving."""
    in_flight: int = 0
    """Requests in the system right now, including those held at zero replicas."""
    samples: tuple[MetricSample, ...] = ()
    """Metric samples that ended since the previous decision, oldest first."""
    service_time_s: float | None = None
    """Mean service time of recent requests, when the caller measures it."""


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """How many replicas the policy wants, and why (for events and metrics)."""

    replicas: int
    reason: str
    panic: bool = False


class AutoscalingPolicy(Protocol, Generic[S]):
    """A policy: a name, a decision period and ``decide``; its state is a frozen value."""

    @property
    def name(self) -> str: ...

    @property
    def tick_seconds(self) -> float:
        """Seconds between decisions."""
        ...

    def initial_state(self) -> S: ...

    def decide(self, context: ScalingContext, state: S) -> tuple[ScaleDecision, S]: ...


def trim(
    window: tuple[MetricSample, ...], new: Sequence[MetricSample], now: float, seconds: float
) -> tuple[MetricSample, ...]:
    """``window`` plus ``new``, keeping the samples that end within the last ``seconds``."""
    merged = window + tuple(new)
    start = now - seconds
    for index, sample in enumerate(merged):
        if sample.end > start:
            return merged[index:]
    return ()


def average(window: Sequence[MetricSample], now: float, seconds: float, metric: str) -> float:
    """The time-weighted mean of ``metric`` over the part of ``window`` in the last ``seconds``.

    Like Knative's windowed buckets, a window that is not yet full is averaged
    over the time it covers, so a fresh revision is not under-counted.
    """
    start = now - seconds
    covered = total = 0.0
    for sample in reversed(window):  # newest first: stop at the window's start
        if sample.end <= start:
            break
        begin = max(sample.end - sample.seconds, start)
        span = min(sample.end, now) - begin
        if span <= 0:
            continue
        covered += span
        value = sample.concurrency if metric == "concurrency" else sample.rps
        total += value * span
    return total / covered if covered > 0 else 0.0


def ceil_ratio(value: float, target: float) -> int:
    """``ceil(value / target)``, robust to float noise (5.6 / 0.7 is 8, not 9)."""
    return math.ceil(round(value / target, 9))
