"""A revision's routing state, and the activator that holds requests while
the revision has no ready replica (scaled to zero, or not yet started).

A request that finds no ready replica joins the revision's bounded queue and
awaits a future — no polling — which ``set_replicas`` resolves as soon as a
replica is ready; every such request is reported through ``on_cold`` so the
control plane can scale from zero.  A full queue or a wait past the deadline
is a 503 naming the reason.  Woken requests pick a replica as any other (least
outstanding), in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence

from shoal.errors import UnavailableError
from shoal.serving.router.balancing import Replica, least_outstanding
from shoal.serving.router.metrics import RevisionStats

_log = logging.getLogger(__name__)

ColdCallback = Callable[[str, str], None]
"""``on_cold(service, revision)``: a request waits for a replica of ``revision``."""


class Revision:
    """One revision: its ready replicas, its waiting requests and its figures."""

    def __init__(self, name: str, model: str, stats: RevisionStats) -> None:
        self.name, self.model, self.stats = name, model, stats
        self.replicas: list[Replica] = []
        self._waiters: deque[asyncio.Future[None]] = deque()

    def set_replicas(self, urls: Sequence[str]) -> None:
        """The ready replicas now (their counts of outstanding requests are kept);
        wakes every waiting request once there is one."""
        known = {replica.url: replica for replica in self.replicas}
        self.replicas = [known.get(url.rstrip("/")) or Replica(url) for url in urls]
        if self.replicas:
            self.wake()

    def wake(self) -> None:
        """Release every waiting request (to pick a replica, or look again)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def pick(self, rng: random.Random, exclude: Replica | None = None) -> Replica | None:
        return least_outstanding(self.replicas, rng, exclude)

    async def wait_ready(self, queue_limit: int, service: str, on_cold: ColdCallback | None) -> None:
        """Wait (within the caller's deadline) until ``set_replicas`` or ``wake``."""
        if len(self._waiters) >= queue_limit:
            raise UnavailableError(
                f"revision '{self.name}' of service '{service}' has no ready replica and "
                f"{len(self._waiters)} requests already wait for one (the activator's "
                "queue is full)", retry_after_s=1.0)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.stats.hold()
        try:
            if on_cold is not None:
                try:
                    on_cold(service, self.name)
                except Exception:  # the control plane's fault: the request still waits
                    _log.exception("on_cold(%r, %r) failed", service, self.name)
            await waiter
        finally:
            self.stats.release()
            if waiter.cancelled() or not waiter.done():  # timed out, or the caller left
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
