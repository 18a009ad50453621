"""What a service's router pods measured, read from their ``/metrics`` for the autoscaler.

As Knative's autoscaler scrapes its pods, the operator reads each router pod
of a service (label ``shoal.dev/router``, Running, with an IP) at
``http://<pod IP>:9090/metrics`` once per pass, and sums over the pods, per
revision:

* requests in flight (``shoal_service_requests_in_flight``, activator waits
  included) and answered (``shoal_service_requests_total``, by status), so
  that arrivals are answered + in flight;
* answers with a 5xx status, and the latency histogram
  (``shoal_service_request_duration_seconds``), for the canary analysis.

``control.load_samples.LoadSamples`` turns the reads into the autoscaler's
1 s samples, as in the embedded runtime.  A router that cannot be read (not
up yet, an answer too large, a timeout) counts as none for that pass; its
counters restart with its pod, which shows as fewer requests than before and
is read as a restart (the samples then start again from its new figures).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shoal.control.load_samples import LoadSamples
from shoal.control.services import RevisionLoad
from shoal.policy.rollout import RevisionWindow
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.serving_objects import METRICS_PORT, ROUTER_LABEL

__all__ = ["RouterLoad", "pod_address"]

log = logging.getLogger("shoal.operator")

MAX_METRICS_BYTES = 4 << 20
"""A router's /metrics is a few KiB per revision; more is not read."""
TIMEOUT_S = 1.0


def pod_address(pod: Body) -> str | None:
    """Where a router pod serves its metrics: its IP, once it runs."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{METRICS_PORT}"


@dataclass
class _Figures:
    in_flight: float = 0.0
    answered: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    """Cumulative count of answers at or under each bound (seconds), as Prometheus keeps them."""


@dataclass
class _History:
    """One revision's reads: the samples, and the histogram at each pass for windows."""

    samples: LoadSamples = field(default_factory=LoadSamples)
    histograms: deque[tuple[float, dict[float, float]]] = field(
        default_factory=lambda: deque(maxlen=4096))
    answered: float = 0.0


class RouterLoad:
    """Reads the routers of the services it is asked about, once per service and pass."""

    def __init__(self, kube: Kube, address: Callable[[Body], str | None] = pod_address,
                 client: httpx.Client | None = None) -> None:
        self.kube, self.address = kube, address
        self.client = client or httpx.Client(timeout=TIMEOUT_S)
        self._read: dict[str, tuple[float, dict[str, _Figures]]] = {}
        self._history: dict[tuple[str, str], _History] = {}

    def load(self, namespace: str, service: str, revision: str, now: float) -> RevisionLoad:
        figures = self._figures(namespace, service, now).get(revision)
        if figures is None:
            return RevisionLoad()
        history = self._seen(namespace, service, revision, figures)
        in_flight = int(figures.in_flight)
        history.samples.observe(now, in_flight, int(figures.answered) + in_flight)
        history.samples.totals.append((now, int(figures.answered), int(figures.errors)))
        history.histograms.append((now, dict(figures.buckets)))
        return RevisionLoad(samples=history.samples.take(), in_flight=in_flight)

    def window(self, namespace: str, service: str, revision: str, now: float,
               seconds: float) -> RevisionWindow:
        history = self._history.get((f"{namespace}/{service}", revision))
        if history is None:
            return RevisionWindow(0, 0, None)
        requests, errors = history.samples.since(now, seconds)
        start: dict[float, float] = {}
        last: dict[float, float] = {}
        for at, buckets in history.histograms:
            if at <= now - seconds:
                start = buckets
            last = buckets
        counts = {bound: last[bound] - start.get(bound, 0.0) for bound in last}
        return RevisionWindow(requests=requests, errors=errors, p95_s=_quantile(counts, 0.95))

    def forget(self, namespace: str, service: str) -> None:
        key = f"{namespace}/{service}"
        self._read.pop(key, None)
        for seen in [k for k in self._history if k[0] == key]:
            del self._history[seen]

    def _seen(self, namespace: str, service: str, revision: str,
              figures: _Figures) -> _History:
        key = (f"{namespace}/{service}", revision)
        history = self._history.get(key)
        if history is None or figures.answered < history.answered:
            # First read, or the router restarted (its counters too): start afresh.
            history = self._history[key] = _History()
        history.answered = figures.answered
        return history

    def _figures(self, namespace: str, service: str, now: float) -> dict[str, _Figures]:
        key = f"{namespace}/{service}"
        seen = self._read.get(key)
        if seen is not None and seen[0] == now:
            return seen[1]
        total: dict[str, _Figures] = {}
        for pod in self.kube.list("Pod", namespace, labels=f"{ROUTER_LABEL}={service}"):
            address = self.address(pod)
            if address is None:
                continue
            text = self._scrape(address)
            if text is not None:
                _add(total, text, service)
        self._read[key] = (now, total)
        return total

    def _scrape(self, address: str) -> str | None:
        try:
            with self.client.stream("GET", f"http://{address}/metrics") as answer:
                if answer.status_code != 200:
                    return None
                body = b""
                for chunk in answer.iter_bytes():
                    body += chunk
                    if len(body) > MAX_METRICS_BYTES:
                        log.warning("router %s: /metrics is over %d bytes; not read",
                                    address, MAX_METRICS_BYTES)
                        return None
        except httpx.HTTPError as exc:
            log.debug("router %s: /metrics not read: %s", address, exc)
            return None
        return body.decode("utf-8", "replace")


def _add(total: dict[str, _Figures], text: str, service: str) -> None:
    """Add one router's figures for ``service`` to ``total``, by revision."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") != service or "revision" not in labels:
                continue
            figures = total.setdefault(labels["revision"], _Figures())
            if sample.name == "shoal_service_requests_in_flight":
                figures.in_flight += sample.value
            elif sample.name == "shoal_service_requests_total":
                figures.answered += sample.value
                if labels.get("code", "").startswith("5"):
                    figures.errors += sample.value
            elif sample.name == "shoal_service_request_duration_seconds_bucket":
                bound = math.inf if labels.get("le") == "+Inf" else float(labels.get("le", "inf"))
                figures.buckets[bound] = figures.buckets.get(bound, 0.0) + sample.value


def _quantile(counts: dict[float, float], q: float) -> float | None:
    """The bucket bound under which ``q`` of the answers fall (None: no answer)."""
    if not counts:
        return None
    bounds = sorted(counts)
    total = counts[bounds[-1]]
    if total <= 0:
        return None
    for bound in bounds:
        if counts[bound] >= q * total:
            return None if math.isinf(bound) else bound
    return None
