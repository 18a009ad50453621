"""Leader election: one operator acts at a time, over a ``coordination.k8s.io/v1`` Lease.

Several ``shoal operator`` processes (replicas, or the old and new pod of a
rolling update) may run; only the holder of the Lease ``shoal-operator``
installs the CRDs, runs the control loop and kopf's handlers.  The others
wait as standbys.  The rules are client-go's (``tools/leaderelection``):

* A candidate takes the Lease when there is none, when it names no holder
  (released), or when it has not changed for ``leaseDurationSeconds`` *as
  this candidate has seen it* (its own monotonic clock since it last saw the
  Lease's ``resourceVersion`` move: no two machines' clocks are compared).
* Every write is a PUT fenced by the ``resourceVersion`` read, so of two
  candidates taking an expired Lease at once one gets 409 and stays standby.
* The leader renews every ``retry_s``.  When it cannot for ``renew_deadline_s``
  (two thirds of the lease), or finds another holder, it has lost: it stops
  acting before any standby may take over (after a whole lease duration).
* On a clean stop the leader releases the Lease (no holder), so a standby
  takes over at its next try instead of after the lease expires.

The ``kubernetes`` client's own ``leaderelection`` package is not used: it
blocks without a way to stop it, never releases, and works on the client's
global configuration rather than this operator's ``Kube``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from shoal.errors import ConflictError, ShoalError, UnavailableError
from shoal.runtime.kubernetes.client import SERVICE_ACCOUNT, Kube

__all__ = ["LEASE_NAME", "LEASE_SECONDS", "LeaderElector", "default_namespace", "identity",
           "leading", "stopped_by_signals"]

log = logging.getLogger("shoal.operator")

LEASE_NAME = "shoal-operator"
LEASE_SECONDS = 15
"""client-go's default: renewed every 2 s, given up after 10 s without a renewal."""


def identity() -> str:
    """This process among the candidates: its host (a pod's name in a cluster) and pid."""
    return f"{socket.gethostname()}_{os.getpid()}"


def default_namespace(in_cluster: bool, service_account: str = SERVICE_ACCOUNT) -> str:
    """Where the Lease lives: in a cluster, the operator's own namespace; else ``default``."""
    if in_cluster:
        with contextlib.suppress(OSError), open(
                os.path.join(service_account, "namespace"), encoding="utf-8") as file:
            return file.read().strip() or "default"
    return "default"


def _micro_time(seconds: float) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for the Lease ``namespace/name``.

    ``monotonic`` measures expiry and the renew deadline; ``wall`` only
    stamps ``acquireTime`` and ``renewTime`` for people to read.
    """

    def __init__(self, kube: Kube, who: str, *, name: str = LEASE_NAME,
                 namespace: str = "default", lease_s: int = LEASE_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if lease_s < 1:
            raise ValueError(f"a lease lasts at least 1 s, got {lease_s}")
        self.kube, self.identity, self.name, self.namespace = kube, who, name, namespace
        self.lease_s = lease_s
        self.renew_deadline_s = lease_s * 2 / 3
        self.retry_s = lease_s / 7.5
        self.monotonic, self.wall = monotonic, wall
        self.leading = False
        self.lost = False
        self.holder = ""
        """The holder last seen (this candidate's identity while it leads)."""
        self._seen: tuple[str, float] = ("", 0.0)
        """The Lease's resourceVersion last seen, and when (monotonic) it was first seen."""

    # -- one attempt ----------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take or renew the Lease once; True when this candidate holds it afterwards.

        False also when another candidate wrote first (409) or the API server
        did not answer; any other error (no such namespace, forbidden) is raised.
        """
        try:
            lease = self.kube.get("Lease", self.name, self.namespace)
            if lease is None:
                self._write(None, transitions=0, acquired=self.wall())
                return True
            return self._take(lease)
        except ShoalError as exc:
            if not (isinstance(exc, ConflictError) or exc.retryable):
                raise
            log.debug("lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    def _take(self, lease: dict[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        version = str(lease["metadata"].get("resourceVersion", ""))
        now = self.monotonic()
        if version != self._seen[0]:
            self._seen = (version, now)
        self.holder = holder
        duration = int(spec.get("leaseDurationSeconds") or self.lease_s)
        if holder and holder != self.identity and now - self._seen[1] < duration:
            return False  # held, and renewed within a lease duration as seen from here
        mine = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        acquired = spec.get("acquireTime") if mine else self.wall()
        self._write(lease, transitions=transitions, acquired=acquired)
        return True

    def _write(self, lease: dict[str, Any] | None, *, transitions: int,
               acquired: float | str | None, holder: str | None = None) -> None:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity if holder is None else holder,
            "leaseDurationSeconds": self.lease_s if holder is None else 1,
            "acquireTime": acquired if isinstance(acquired, str)
            else _micro_time(acquired or self.wall()),
            "renewTime": _micro_time(self.wall()),
            "leaseTransitions": transitions,
        }
        if not spec["holderIdentity"]:
            del spec["holderIdentity"]  # released: no holder
        if lease is None:
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            written = self.kube.create(body)
        else:
            written = self.kube.replace({**lease, "apiVersion": "coordination.k8s.io/v1",
                                         "kind": "Lease", "spec": spec})
        self._seen = (str(written.get("metadata", {}).get("resourceVersion", "")),
                      self.monotonic())
        self.holder = str(spec.get("holderIdentity", ""))
        self.leading = holder is None

    # -- standby, leading, release ------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Wait as a standby until this candidate leads (True) or ``stop`` is set (False)."""
        said = ""
        while not stop.is_set():
            if self.try_acquire():
                log.info("leading: took the lease %s/%s as %s", self.namespace, self.name,
                         self.identity)
                return True
            if self.holder and self.holder != said:
                said = self.holder
                log.info("standby: the lease %s/%s is held by %s", self.namespace, self.name,
                         self.holder)
            stop.wait(self.retry_s)
        return False

    def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew every ``retry_s`` until ``stop``; ``on_lost()`` once leadership is lost."""
        renewed = self.monotonic()
        while not stop.wait(self.retry_s):
            try:
                if self.try_acquire():
                    renewed = self.monotonic()
                    continue
            except ShoalError as exc:  # e.g. the role changed: counts as a failed renewal
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            taken = bool(self.holder) and self.holder != self.identity
            if taken or self.monotonic() - renewed >= self.renew_deadline_s:
                self.leading, self.lost = False, True
                log.error("lost the lease %s/%s%s: stopping", self.namespace, self.name,
                          f" to {self.holder}" if taken else " (no renewal in time)")
                on_lost()
                return

    def release(self) -> None:
        """Give the Lease up if this candidate still holds it (a clean stop)."""
        if not self.leading:
            return
        try:
            lease = self.kube.get("Lease", self.name, self.namespace)
            spec = (lease or {}).get("spec") or {}
            if lease is not None and spec.get("holderIdentity") == self.identity:
                self._write(lease, transitions=int(spec.get("leaseTransitions") or 0),
                            acquired=self.wall(), holder="")
                log.info("released the lease %s/%s", self.namespace, self.name)
        except ShoalError as exc:  # it expires on its own
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name,
                        exc)
        self.leading = False


@contextlib.contextmanager
def leading(elector: LeaderElector, stop: threading.Event | None) -> Iterator[bool]:
    """Standby until ``elector`` leads, then lead for the block, then release.

    Yields False when stopped while standby (``stop``, or SIGINT/SIGTERM when
    ``stop`` is None), else True.  A lost lease stops the work in the block
    the way a caller would: it sets ``stop``, or without one sends this
    process SIGTERM, on which kopf stops as on ``kill`` (an event kopf waited
    on would hold one of its executor's threads, and kopf could not end on
    a signal before the event was set).  It is then raised as
    ``UnavailableError`` after the block, so the process exits non-zero and
    starts again as a standby.
    """
    waiting = stop if stop is not None else threading.Event()
    with stopped_by_signals(waiting) if stop is None else contextlib.nullcontext():
        acquired = elector.acquire(waiting)
    if not acquired:
        yield False
        return

    def lost() -> None:
        if stop is not None:
            stop.set()
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    halt = threading.Event()
    keeper = threading.Thread(target=elector.keep, args=(halt, lost),
                              name="shoal-lease", daemon=True)
    keeper.start()
    try:
        yield True
    finally:
        halt.set()
        keeper.join(timeout=60)
        elector.release()
    if elector.lost:
        raise UnavailableError(
            f"lost the lease {elector.namespace}/{elector.name}"
            + (f" to {elector.holder}" if elector.holder else "")
            + ": stopped acting, as another operator may now")


@contextlib.contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` for the block (in the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
