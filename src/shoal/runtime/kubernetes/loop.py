"""The control loop on a cluster: the control core's passes, woken by watches.

``KubeControl`` wires the control core (``control.controller.Controller``,
the same state machine and admission cycle as the embedded and simulated
runtimes) to the Kubernetes ports: TrainingJobs are the store, Nodes the
inventory, Pods the pods.  ``run`` keeps TrainingJobs, Tenants, Nodes and
Pods in memory by watches (``cache.py``: list once, then watch from the last
resourceVersion) and reads them from there; every change wakes the loop,
which passes until nothing changes, then sleeps until the next change or
the next deadline it knows of (a grace period ending, a retry's backoff).
An idle cluster costs the watch streams and nothing else: no polling, no
list per pass.  Writes go to the API server, fenced by resourceVersion; a
pass whose write met a 409 ends there, and the next one waits a backoff
(0.05 s doubling to 5 s while conflicts go on) instead of spinning.

While ``run`` runs, the pods port works in the background (``pods.py``:
creates and Bindings from pools of threads, each worker's pod bound from
the Pod watch's thread as it appears), the store puts the finalizer on new
jobs side by side and sends Events without waiting, the passes of different
jobs run side by side (``WRITERS`` threads: a status PUT waits on the API
server) and the loop also wakes when a gang's bind timeout is due.

Without ``run`` (a test calling ``settle`` at moments it chooses) nothing
is watched, every read goes to the API server and ``start`` binds before it
returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from shoal.control.controller import ControlConfig, Controller
from shoal.control.ports import Clock, serially
from shoal.control.records import ACTIVE_PHASES
from shoal.errors import ShoalError
from shoal.runtime.kubernetes.cache import Cache, CachedKube, Watched
from shoal.runtime.kubernetes.checkpoints import KubeCheckpoints
from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL, UID_LABEL
from shoal.runtime.kubernetes.inventory import KubeInventory
from shoal.runtime.kubernetes.pods import KubePods
from shoal.runtime.kubernetes.store import KubeStore

__all__ = ["KubeControl", "WallClock"]

log = logging.getLogger("shoal.operator")

WATCHED: tuple[Watched, ...] = (
    Watched("TrainingJob"),
    Watched("Tenant"),
    Watched("Node"),
    Watched("Pod", JOB_LABEL, complement=f"!{JOB_LABEL}", index=UID_LABEL),
    Watched("Pod", f"!{JOB_LABEL}", complement=JOB_LABEL),
)
"""Kinds whose changes can change a decision: Shoal's pods and the others
(which hold room on their nodes: the inventory's foreign usage), apart."""
_CONFLICT_BACKOFF_S = (0.05, 5.0)
WRITERS = 16
"""Jobs whose pass runs at once: each status PUT waits ~30 ms on the API server,
and one after another they held a burst of 10,000 jobs to 7 a second."""
_MAX_PASSES = 1000
"""Passes in a row before the loop takes a breath (a pass that keeps changing is a bug)."""


def _side_by_side(pool: ThreadPoolExecutor, work: Sequence[Callable[[], bool]]) -> list[bool]:
    if len(work) < 2:
        return [item() for item in work]
    return list(pool.map(_call, work))


def _call(work: Callable[[], bool]) -> bool:
    return work()


class WallClock:
    def now(self) -> float:
        return time.time()


class KubeControl:
    """The control core over one cluster.

    ``clock``: the control clock (the wall clock unless a test drives time
    itself, calling ``settle`` at the moments it chooses instead of ``run``).
    """

    def __init__(self, kube: Kube, config: ControlConfig | None = None,
                 grace_seconds: float = 30.0, clock: Clock | None = None) -> None:
        self.kube = kube
        self.clock: Clock = clock or WallClock()
        self.wake = threading.Event()
        self.cache = Cache(kube, WATCHED, on_change=self.wake.set)
        self.view = CachedKube(kube, self.cache)
        """The seam the ports use: reads of watched kinds from the cache once it listed."""
        self.store = KubeStore(self.view)
        self.pods = KubePods(self.view, self.store, grace_seconds)
        self.controller = Controller(
            self.store, KubeInventory(self.view), self.pods,
            KubeCheckpoints(self.view, self.store, self.clock), self.clock,
            config or ControlConfig(),
        )
        self.error: Exception | None = None
        self.passes = 0
        self.conflicted = 0
        """Settles in a row whose writes met a 409."""

    def settle(self) -> float | None:
        """Pass until nothing changes, or a write meets a 409; returns the next deadline."""
        conflicts = self.view.conflicts
        for _ in range(_MAX_PASSES):
            self.passes += 1
            changed = self.controller.step()
            if not changed or self.view.conflicts != conflicts:
                break
        self.store.finish_deleted()
        self.conflicted = self.conflicted + 1 if self.view.conflicts != conflicts else 0
        return self.next_deadline()

    def next_deadline(self) -> float | None:
        due = [
            t for row in self.store.list_jobs(phases=ACTIVE_PHASES)
            for t in (row.stop_deadline, row.next_attempt_at) if t is not None
        ]
        return min(due) if due else None

    def run(self, stop: threading.Event, on_pass: Callable[[], None] | None = None,
            watch: bool = True) -> None:
        """Settle whenever woken, until ``stop`` is set.

        ``watch``: keep the ``WATCHED`` kinds in the cache (and wait until
        they are listed before the first pass); False when the caller sets
        ``wake`` on their events, and every read then goes to the server.
        """
        writers: ThreadPoolExecutor | None = None
        if watch:
            self.cache.start(stop)
            while not stop.is_set() and not self.cache.wait_synced(1.0):
                continue
            self.pods.background(self.wake.set)
            self.cache.listen("Pod", JOB_LABEL, self.pods.appeared)
            self.store.background = ThreadPoolExecutor(4, thread_name_prefix="kube-hold")
            self.store.notes = ThreadPoolExecutor(2, thread_name_prefix="kube-event")
            writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="kube-write")
            self.controller.fan_out = partial(_side_by_side, writers)
        try:
            self._passes(stop, on_pass)
        finally:
            self.controller.fan_out = serially
            for pool in (self.store.background, self.store.notes):
                if pool is not None:
                    pool.shutdown(wait=True)
            self.store.background = self.store.notes = None
            if writers is not None:
                writers.shutdown(wait=True)
            self.pods.foreground()
            self.wake.set()

    def _passes(self, stop: threading.Event, on_pass: Callable[[], None] | None) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                due = self.settle()
                self.error = None
            except ShoalError as exc:  # the API server is away: try again on the next event
                if str(exc) != str(self.error):
                    log.warning("control loop: %s", exc)
                self.error = exc
                due = self.clock.now() + 5.0
            if on_pass is not None:
                on_pass()
            if self.conflicted:
                # Someone else changed what this pass wrote: the cache holds the
                # object as it now is; decide again after a pause, not at once.
                low, high = _CONFLICT_BACKOFF_S
                stop.wait(min(high, low * 2 ** (self.conflicted - 1)))
                continue
            wait = None if due is None else max(0.0, due - self.clock.now()) + 0.05
            binding = self.pods.next_due()  # a gang whose pods may not come in time
            if binding is not None:
                left = max(0.0, binding - self.pods.monotonic()) + 0.05
                wait = left if wait is None else min(wait, left)
            self.wake.wait(wait)
