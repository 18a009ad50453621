"""The control loop on a cluster: the control core's passes, woken by watches.

``KubeControl`` wires the control core (``control.controller.Controller``,
the same state machine and admission cycle as the embedded and simulated
runtimes) to the Kubernetes ports: TrainingJobs are the store, Nodes the
inventory, Pods the pods.  ``run`` watches TrainingJobs, Tenants, Nodes and
Shoal's Pods; every event wakes the loop, which passes until nothing
changes, then sleeps until the next event or the next deadline it knows of
(a grace period ending, a retry's backoff).  An idle cluster costs the watch
streams and nothing else: no polling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shoal.control.controller import ControlConfig, Controller
from shoal.control.ports import Clock
from shoal.control.records import ACTIVE_PHASES, Checkpoint, JobRow
from shoal.errors import ShoalError
from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL
from shoal.runtime.kubernetes.inventory import KubeInventory
from shoal.runtime.kubernetes.pods import KubePods
from shoal.runtime.kubernetes.store import KubeStore

__all__ = ["KubeControl", "WallClock"]

log = logging.getLogger("shoal.operator")

WATCHED: tuple[tuple[str, str], ...] = (
    ("TrainingJob", ""),
    ("Tenant", ""),
    ("Node", ""),
    ("Pod", JOB_LABEL),
)
"""Kinds whose changes can change a decision, with the label their objects must carry."""
WATCH_TIMEOUT_S = 300.0
_MAX_PASSES = 1000
"""Passes in a row before the loop takes a breath (a pass that keeps changing is a bug)."""


class WallClock:
    def now(self) -> float:
        return time.time()


class _NoCheckpoints:
    """What a job saved is not visible to the operator yet: each attempt starts fresh."""

    def latest(self, job: JobRow) -> Checkpoint | None:
        return None


class KubeControl:
    """The control core over one cluster.

    ``clock``: the control clock (the wall clock unless a test drives time
    itself, calling ``settle`` at the moments it chooses instead of ``run``).
    """

    def __init__(self, kube: Kube, config: ControlConfig | None = None,
                 grace_seconds: float = 30.0, clock: Clock | None = None) -> None:
        self.kube = kube
        self.clock: Clock = clock or WallClock()
        self.store = KubeStore(kube)
        self.pods = KubePods(kube, self.store, grace_seconds)
        self.controller = Controller(
            self.store, KubeInventory(kube), self.pods, _NoCheckpoints(), self.clock,
            config or ControlConfig(),
        )
        self.wake = threading.Event()
        self.error: Exception | None = None

    def settle(self) -> float | None:
        """Pass until nothing changes; returns when the next known deadline is due."""
        for _ in range(_MAX_PASSES):
            if not self.controller.step():
                break
        self.store.finish_deleted()
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

        ``watch``: watch the ``WATCHED`` kinds itself; False when the caller
        sets ``wake`` on their events (the operator's kopf handlers do).
        """
        if watch:
            for kind, label in WATCHED:
                threading.Thread(target=self._watch, args=(kind, label, stop),
                                 name=f"watch-{kind}", daemon=True).start()
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
            wait = None if due is None else max(0.0, due - self.clock.now()) + 0.05
            self.wake.wait(wait)
        self.wake.set()

    def _watch(self, kind: str, label: str, stop: threading.Event) -> None:
        """List, then watch from the list's resourceVersion; wake the loop on every event."""
        since = ""
        while not stop.is_set():
            try:
                if not since:
                    listing = self.kube.listing(kind, labels=label)
                    since = str(listing.get("metadata", {}).get("resourceVersion", ""))
                    self.wake.set()
                for kind_of, obj in self.kube.watch(kind, since=since, timeout_s=WATCH_TIMEOUT_S,
                                                    labels=label):
                    if stop.is_set():
                        return
                    if kind_of == "ERROR":
                        since = ""  # 410 Gone: too old, list again
                        break
                    since = str(obj.get("metadata", {}).get("resourceVersion", since))
                    self.wake.set()
            except ShoalError:
                since = ""
                stop.wait(1.0)
