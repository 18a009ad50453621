"""What the router counts: Prometheus metrics for scraping, and in-process
figures for the autoscaler.

``RouterMetrics`` owns the Prometheus families (in its own registry unless
given one, so the control plane's ``/metrics`` can include it and several
routers — one per service — can share it; the ``service`` and ``revision``
labels tell them apart).  ``RevisionStats`` is what an autoscaler reads
without parsing text: requests in flight and waiting in the activator,
arrivals (a total and a rate over a recent window) and recent latencies for a
p95.  Label children are cached because ``labels()`` costs a dictionary build
and a lock on every call, which the request path should not pay.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
"""Seconds; from a trivial model on loopback to a cold start behind the activator."""
STATS_WINDOW_S = 60
"""How far back the arrival rate and the p95 look (Knative's stable window)."""
MAX_LATENCIES = 4096
"""Recent latencies kept per revision for the p95 (a bounded sample)."""
NO_REVISION = ""
"""The revision label of a request refused before a revision was chosen."""


class RouterMetrics:
    """The Prometheus families of every router sharing ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("service", "revision")
        self.requests = Counter(
            "shoal_service_requests", "Requests answered by a service's router, by HTTP status.",
            (*labels, "code"), registry=self.registry)
        self.duration = Histogram(
            "shoal_service_request_duration_seconds",
            "Time from a request's arrival at the router to its answer (activator wait included).",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "shoal_service_requests_in_flight",
            "Requests routed to a revision and not yet answered (activator waits included).",
            labels, registry=self.registry)
        self.waiting = Gauge(
            "shoal_service_activator_waiting_requests",
            "Requests held by the activator until a replica of their revision is ready.",
            labels, registry=self.registry)
        self.cold = Counter(
            "shoal_service_scale_from_zero_requests",
            "Requests that found their revision without a ready replica (scale from zero).",
            labels, registry=self.registry)


class RevisionStats:
    """One revision's figures for the autoscaler (and its Prometheus children)."""

    def __init__(self, metrics: RouterMetrics, service: str, revision: str) -> None:
        self.in_flight = 0
        self.waiting = 0
        self.arrivals = 0
        self.completed = 0
        self.errors = 0
        """Answers with a 5xx status."""
        self.cold_requests = 0
        self._seconds: deque[list[int]] = deque(maxlen=STATS_WINDOW_S + 1)
        self._latencies: deque[tuple[float, float]] = deque(maxlen=MAX_LATENCIES)
        self._metrics, self._service, self._revision = metrics, service, revision
        self._codes: dict[int, Counter] = {}
        self._duration = metrics.duration.labels(service, revision)
        self._in_flight = metrics.in_flight.labels(service, revision)
        self._waiting = metrics.waiting.labels(service, revision)
        self._cold = metrics.cold.labels(service, revision)

    def arrive(self, now: float) -> None:
        self.arrivals += 1
        self.in_flight += 1
        self._in_flight.inc()
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])

    def finish(self, status: int, seconds: float, now: float) -> None:
        self.in_flight -= 1
        self._in_flight.dec()
        self.completed += 1
        if status >= 500:
            self.errors += 1
        self._latencies.append((now, seconds))
        self._duration.observe(seconds)
        self.count(status)

    def count(self, status: int) -> None:
        child = self._codes.get(status)
        if child is None:
            child = self._codes[status] = self._metrics.requests.labels(
                self._service, self._revision, str(status))
        child.inc()

    def hold(self) -> None:
        self.waiting += 1
        self.cold_requests += 1
        self._waiting.inc()
        self._cold.inc()

    def release(self) -> None:
        self.waiting -= 1
        self._waiting.dec()

    def snapshot(self, now: float, window_s: float = STATS_WINDOW_S) -> StatsSnapshot:
        """The figures over the last ``window_s`` seconds (at most ``STATS_WINDOW_S``)."""
        since = now - window_s
        # Copied first (one C-level step each): another thread may read while the
        # router's loop appends.
        seconds, answered = list(self._seconds), list(self._latencies)
        recent = sum(count for second, count in seconds if second + 1 > since)
        latencies = sorted(s for at, s in answered if at >= since)
        p95 = latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
        return StatsSnapshot(in_flight=self.in_flight, waiting=self.waiting,
                             arrivals=self.arrivals, completed=self.completed,
                             errors=self.errors, cold_requests=self.cold_requests,
                             arrival_rate=recent / window_s, latency_p95_s=p95,
                             latency_samples=len(latencies))


@dataclass(frozen=True)
class StatsSnapshot:
    """A revision's figures at one moment, as the autoscaler reads them."""

    in_flight: int
    """Requests routed to the revision and not yet answered (waiting ones included)."""
    waiting: int
    """Requests the activator holds because the revision has no ready replica."""
    arrivals: int
    """Requests routed to the revision since the router started."""
    completed: int
    errors: int
    """Answers with a 5xx status, since the router started."""
    cold_requests: int
    """Requests that found no ready replica and waited for one."""
    arrival_rate: float
    """Requests per second over the window (whole seconds, so a partial second counts whole)."""
    latency_p95_s: float | None
    """p95 of the latencies of requests answered in the window (None: none answered)."""
    latency_samples: int
