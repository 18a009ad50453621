"""The control core's traffic port over this plane's routers (``serving.routers``).

``route`` starts a service's router on first use and gives it the split and
the ready replicas (Unix sockets, ``unix:PATH``); ``load`` turns the
router's counters into the autoscaler's samples, 1 s buckets of the mean
in-flight requests and the arrivals, as the serving simulator makes them
(read at every pass of the loop); ``window``
gives the canary analysis its requests, server errors and p95 over the
window.  Wired by ``api.launch``: the runtime may not import the serving
shell, nor the serving shell the control core.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.control.load_samples import LoadSamples
from shoal.control.services import RevisionLoad, ServiceReconciler, ServiceRecord
from shoal.domain.names import job_name
from shoal.policy.rollout import RevisionWindow
from shoal.serving.router import RevisionRoute
from shoal.serving.routers import ServiceRouters

__all__ = ["AutoscalerMetrics", "RouterTraffic"]

class RouterTraffic:
    def __init__(self, host: ServiceRouters) -> None:
        self.host = host
        self._seen: dict[tuple[str, str], LoadSamples] = {}

    def route(self, record: ServiceRecord, split: Mapping[str, int],
              endpoints: Mapping[str, Sequence[str]], activating: Sequence[str],
              now: float) -> None:
        key = record.row.name
        name = job_name(key)
        self.host.ensure(key, name, record.row.tenant)
        revisions = sorted(set(split) | set(endpoints))
        self.host.update(key, [
            RevisionRoute(name=job_name(revision), weight=split.get(revision, 0),
                          replicas=tuple(f"unix:{path}" for path in endpoints.get(revision, ())),
                          model=name)
            for revision in revisions
        ])
        stats = self.host.stats(key, 60.0)
        for revision in revisions:
            snapshot = stats.get(job_name(revision))
            if snapshot is None:
                continue
            seen = self._seen.setdefault((key, revision), LoadSamples())
            seen.observe(now, snapshot.in_flight, snapshot.arrivals)
            seen.totals.append((now, snapshot.completed, snapshot.errors))

    def close(self, service: str) -> None:
        self.host.remove(service)
        for key in [k for k in self._seen if k[0] == service]:
            del self._seen[key]

    def load(self, service: str, revision: str, now: float) -> RevisionLoad:
        """The 1 s samples closed since the last call, and the requests in flight now."""
        snapshot = self.host.stats(service, 60.0).get(job_name(revision))
        if snapshot is None:
            return RevisionLoad()
        seen = self._seen.setdefault((service, revision), LoadSamples())
        seen.observe(now, snapshot.in_flight, snapshot.arrivals)
        samples, seen.closed = tuple(seen.closed), []
        return RevisionLoad(samples=samples, in_flight=snapshot.in_flight)

    def window(self, service: str, revision: str, now: float, seconds: float) -> RevisionWindow:
        snapshot = self.host.stats(service, seconds).get(job_name(revision))
        if snapshot is None:
            return RevisionWindow(0, 0, None)
        seen = self._seen.get((service, revision))
        start = (0.0, 0, 0)
        if seen is not None:
            for entry in seen.totals:
                if entry[0] <= now - seconds:
                    start = entry
        return RevisionWindow(requests=snapshot.completed - start[1],
                              errors=snapshot.errors - start[2], p95_s=snapshot.latency_p95_s)



class AutoscalerMetrics(Collector):
    """The autoscalers' last decisions, for ``/metrics``: replicas asked, and panic mode."""

    def __init__(self, services: ServiceReconciler) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        asked = GaugeMetricFamily("shoal_autoscaler_desired_replicas",
                                  "Replicas the autoscaler last asked for a revision",
                                  labels=["tenant", "service", "revision"])
        panic = GaugeMetricFamily("shoal_autoscaler_panic",
                                  "1 while the revision's autoscaler is in panic mode (KPA)",
                                  labels=["tenant", "service", "revision"])
        for service, revision, replicas, panicking in self.services.decisions():
            labels = [service.partition("/")[0], job_name(service), job_name(revision)]
            asked.add_metric(labels, replicas)
            panic.add_metric(labels, 1.0 if panicking else 0.0)
        yield asked
        yield panic
