"""The routers of a control plane: one per service, on one ``RouterHost`` loop.

The control loop (a thread of its own) drives them through ``ensure``,
``update``, ``stats`` and ``remove``, which are safe from any thread.  All
routers share one Prometheus registry (``registry``), which the control
plane's ``/metrics`` includes.  A service's router listens on
``127.0.0.1`` on a port of its own, chosen when it first starts and kept in
the ``ports`` file, so that a restarted control plane serves it at the same
URL (unless another program took the port meanwhile: it then moves, and
``shoal get services -o json`` says where).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from shoal.errors import UnavailableError
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

log = logging.getLogger("shoal.serving")


class ServiceRouters:
    def __init__(self, verifier: Verifier, host: str = "127.0.0.1",
                 limits: RouterLimits | None = None, ports: Path | None = None) -> None:
        self.verifier, self.host, self.limits = verifier, host, limits
        # Each service's port, kept in the control plane's state folder, so that a
        # service keeps its URL when the plane restarts (while the port is free).
        self._ports_file = ports
        self._ports = _read_ports(ports)
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
                router = self._start(key, service, tenant, self._ports.get(key, 0))
                if router.port != self._ports.get(key):
                    self._ports[key] = router.port
                    self._save_ports()
                self._routers[key] = router
            return router.url

    def _start(self, key: str, service: str, tenant: str, port: int) -> Router:
        """A router on ``port``, or on any free one when that is taken meanwhile."""
        router = Router(service, tenant, self.verifier, host=self.host, port=port,
                        limits=self.limits, metrics=self.metrics)
        try:
            self._loop.start(router)
        except UnavailableError:
            if not port:
                raise
            log.warning("service %s: port %d is taken; its router moves to another", key, port)
            return self._start(key, service, tenant, 0)
        return router

    def _save_ports(self) -> None:
        if self._ports_file is None:
            return
        text = json.dumps(self._ports, sort_keys=True)
        fresh = self._ports_file.with_suffix(".tmp")
        fresh.unlink(missing_ok=True)
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(fresh, self._ports_file)

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
            if self._ports.pop(key, None) is not None:
                self._save_ports()
        if router is not None:
            self._loop.stop(router)

    def close(self) -> None:
        """Stop every router; their ports stay remembered for the next start."""
        with self._lock:
            routers, self._routers = list(self._routers.values()), {}
        for router in routers:
            self._loop.stop(router)
        self._loop.close()


_PORTS_MAX_BYTES = 1 << 20


def _read_ports(path: Path | None) -> dict[str, int]:
    """The remembered ports; none when the file is missing, not a regular file or unreadable."""
    if path is None:
        return {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return {}
        data = handle.read(_PORTS_MAX_BYTES + 1)
    try:
        ports = json.loads(data) if len(data) <= _PORTS_MAX_BYTES else {}
    except ValueError:
        return {}
    if not isinstance(ports, dict):
        return {}
    return {k: v for k, v in ports.items()
            if isinstance(k, str) and isinstance(v, int) and 0 < v < 65536}
