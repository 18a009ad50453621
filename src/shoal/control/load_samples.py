"""A revision's load as the autoscaler reads it: 1 s samples from a router's counters.

A runtime reads a router's figures at each pass of its loop (in-flight
requests now, and how many arrived so far) and keeps them here, turned into
the samples the simulator makes (``sim.serve``): in-flight requests are held
constant between two reads, and the arrivals seen at a read count in the
bucket it falls in.  The embedded plane reads its routers in-process, the
Kubernetes runtime scrapes its routers' ``/metrics``; both then decide alike.
Pure.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from shoal.policy.autoscaling.base import MetricSample

__all__ = ["LoadSamples"]

_HISTORY = 4096
_SAMPLE_S = 1.0
_KEPT_SAMPLES = 600


@dataclass
class LoadSamples:
    """One revision's figures between the autoscaler's calls, in 1 s buckets as the
    simulator keeps them (``sim.serve``): in-flight requests are held constant between
    two passes, and the arrivals seen at a pass count in the bucket the pass falls in."""

    last_at: float | None = None
    in_flight: int = 0
    arrivals: int = 0
    bucket_end: float = 0.0
    area: float = 0.0
    bucket_arrivals: int = 0
    closed: list[MetricSample] = field(default_factory=list)
    totals: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    """(time, answered, server errors) at each pass, to count a window's requests."""

    def observe(self, now: float, in_flight: int, arrivals: int) -> None:
        if self.last_at is None:
            self.last_at, self.bucket_end = now, math.floor(now) + _SAMPLE_S
            self.in_flight, self.arrivals = in_flight, arrivals
            return
        while self.bucket_end <= now:
            self.area += self.in_flight * (self.bucket_end - self.last_at)
            self.closed.append(MetricSample(self.bucket_end, _SAMPLE_S, self.area / _SAMPLE_S,
                                            self.bucket_arrivals))
            self.last_at, self.area, self.bucket_arrivals = self.bucket_end, 0.0, 0
            self.bucket_end += _SAMPLE_S
        self.area += self.in_flight * (now - self.last_at)
        self.bucket_arrivals += arrivals - self.arrivals
        self.last_at, self.in_flight, self.arrivals = now, in_flight, arrivals
        del self.closed[:-_KEPT_SAMPLES]  # nobody asked for a long while: keep the newest

    def take(self) -> tuple[MetricSample, ...]:
        """The samples closed since the last take."""
        samples, self.closed = tuple(self.closed), []
        return samples

    def since(self, now: float, seconds: float) -> tuple[int, int]:
        """(answered, server errors) over the last ``seconds``, from the kept totals."""
        start = (0.0, 0, 0)
        last = (now, 0, 0)
        for entry in self.totals:
            if entry[0] <= now - seconds:
                start = entry
            last = entry
        return last[1] - start[1], last[2] - start[2]
