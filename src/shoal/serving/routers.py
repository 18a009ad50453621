"""The routers of a control plane: one per service, on one ``RouterHost`` loop.

The control loop (a thread of its own) drives them through ``ensure``,
``update``, ``stats`` and ``remove``, which are safe from any thread.  All
routers share one Prometheus registry (``registry``), which the control
plane's ``/metrics`` includes.  A service's router listens on
``127.0.0.1`` on a port of its own, chosen when it starts (so a restarted
control plane gives the service a new URL: ``shoal get services -o json``
says which).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from shoal.serving.router import (
    RevisionRoute,
    Router,
    RouterHost,
    RouterLimits,
    RouterMetrics,
    StatsSnapshot,
    Verifier,
)

__all__ = ["ServiceRouters"]


class ServiceRouters:
    def __init__(self, verifier: Verifier, host: str = "127.0.0.1",
                 limits: RouterLimits | None = None) -> None:
        self.verifier, self.host, self.limits = verifier, host, limits
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RouterMetrics(self.registry)
        self._routers: dict[str, Router] = {}
        self._lock = threading.Lock()
        self._loop = RouterHost()

    def ensure(self, key: str, service: str, tenant: str) -> str:
        """The router of service ``key`` (started now if it has none); returns its URL."""
        with self._lock:
            router = self._routers.get(key)
            if router is None:
                router = Router(service, tenant, self.verifier, host=self.host,
                                limits=self.limits, metrics=self.metrics)
                self._loop.start(router)
                self._routers[key] = router
            return router.url

    def url(self, key: str) -> str | None:
        router = self._routers.get(key)
        return None if router is None else router.url

    def live(self, key: str, window_s: float = 60.0) -> dict[str, Any]:
        """The service's URL and the p95 latency of its answers over ``window_s`` (the
        slowest revision's: what the service's worst-served callers see)."""
        router = self._routers.get(key)
        if router is None:
            return {}
        p95 = [s.latency_p95_s for s in router.stats(window_s).values()
               if s.latency_p95_s is not None]
        return {"url": router.url, "p95_s": max(p95) if p95 else None}

    def update(self, key: str, revisions: Sequence[RevisionRoute]) -> None:
        router = self._routers.get(key)
        if router is not None:
            router.update(revisions)

    def stats(self, key: str, window_s: float) -> dict[str, StatsSnapshot]:
        router = self._routers.get(key)
        return {} if router is None else router.stats(window_s)

    def remove(self, key: str) -> None:
        with self._lock:
            router = self._routers.pop(key, None)
        if router is not None:
            self._loop.stop(router)

    def close(self) -> None:
        for key in list(self._routers):
            self.remove(key)
        self._loop.close()
