"""The embedded control plane: SQLite state, local processes, the system clock.

``EmbeddedPlane`` plugs the local adapters into the runtime-neutral
``Controller`` and runs the loop in a background thread that wakes on a
short tick or when poked (a new job, a deletion), so reaction time does not
depend on the tick.  Tests may pass their own clock and drive ``step()``
themselves instead of starting the thread.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from shoal.control.controller import ControlConfig, Controller
from shoal.control.machine import RetryPolicy
from shoal.control.ports import Clock
from shoal.control.services import ServiceReconciler, Traffic
from shoal.errors import InputError, ShoalError
from shoal.policy.autoscaling.for_service import policy_for
from shoal.runtime.local import memory
from shoal.runtime.local.checkpoints import LocalCheckpoints
from shoal.runtime.local.inventory import PoolInventory
from shoal.runtime.local.launcher import LocalPods
from shoal.runtime.local.logs import LogLimits
from shoal.runtime.local.process import LocalProcesses
from shoal.runtime.local.replicas import LocalReplicas
from shoal.runtime.local.store import SqliteStore, StoreError
from shoal.runtime.local.users import DEFAULT_UID_BASE, UID_RANGE, PodUsers, resolve_mode

LOCK_FILE = "plane.lock"
TRIM_EVERY_S = 10.0  # how often the loop hands freed memory back (see memory.py)


class PlaneRunningError(ShoalError):
    """Another control plane already runs on this state folder."""

    code = "plane_running"


def _exclusive(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PlaneRunningError(
            f"another Shoal control plane already runs on {path.parent}",
            hint="use it (shoal get ...), stop it (shoal server stop) or pick another "
            "--state-dir",
        ) from None
    return fd


def _guard(state_dir: Path) -> None:
    """Pods (other users) may pass through the state folder to their own folders, no more.

    The folder and ``jobs/`` are 0711: searchable but not listable, so a pod
    reaches its own folders by path and cannot learn other jobs' names; every
    file in it is the plane's alone (0600). A pod cannot get to its folders
    at all when a folder above the state folder is closed to other users.
    """
    for folder in (state_dir, state_dir / "jobs"):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o711)
    for parent in state_dir.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise StateFolderClosedError(
                f"pods run as their tenants' own users and could not reach their folders in "
                f"{state_dir}: {parent} is closed to other users "
                f"(mode {parent.stat().st_mode & 0o777:04o})",
                hint="pick a state folder other users may pass through (e.g. /var/lib/shoal), "
                "or --pod-user self (pods then run as the plane's user)",
            )


def _private_files(state_dir: Path) -> None:
    # SQLite gives its -wal and -shm files the database's own mode.
    for entry in state_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(0o600)


class StateFolderClosedError(InputError):
    """The state folder lies under a folder the pods' users may not pass through."""

    code = "state_folder_closed"


class SystemClock:
    def now(self) -> float:
        return time.time()


class EmbeddedPlane:
    def __init__(self, state_dir: Path, policy: str = "most-allocated",
                 grace_seconds: float = 10.0, tick_seconds: float = 0.05,
                 clock: Clock | None = None, seed: int = 0, pod_user: str | None = None,
                 pod_uid_base: int = DEFAULT_UID_BASE,
                 log_limits: LogLimits | None = None) -> None:
        self.state_dir = state_dir
        mode = resolve_mode(pod_user)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            if mode == "tenant":
                _guard(state_dir)
        except OSError as exc:
            raise StoreError(f"cannot use {state_dir} as the state folder: "
                             f"{exc.strerror or exc}") from exc
        # One control plane per state folder: two would both start and stop
        # the same jobs' pods.  The kernel drops the lock when the process dies.
        self._lock = _exclusive(state_dir / LOCK_FILE)
        self.store = SqliteStore(state_dir / "state.db")
        if mode == "tenant":
            _private_files(state_dir)
        # Sandboxes hide the whole state folder (database, admin token, every
        # job's files) and mount back only the pod's own folders.
        self.processes = LocalProcesses(jobs_root=state_dir, private_root=mode == "tenant")
        self.users = PodUsers(mode, lambda tenant: self.store.pod_uid(
            tenant, pod_uid_base, UID_RANGE))
        self.pods = LocalPods(self.processes, state_dir, self._isolation, users=self.users,
                              log_limits=log_limits or LogLimits())
        self.clock: Clock = clock or SystemClock()
        config = ControlConfig(policy=policy, seed=seed,
                               retry=RetryPolicy(grace_seconds=grace_seconds))
        self.controller = Controller(
            self.store, PoolInventory(self.store), self.pods, LocalCheckpoints(), self.clock,
            config,
        )
        self.services: ServiceReconciler | None = None
        self.tick = tick_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def serve(self, traffic: Traffic) -> None:
        """Run inference services too, their requests going through ``traffic`` (the routers)."""
        replicas = LocalReplicas(self.store, self.state_dir, self.pods.job_dir, self.clock.now)
        self.services = ServiceReconciler(self.store.service_table, replicas, traffic,
                                          self.clock, policy_for)

    def _isolation(self, tenant: str) -> str:
        return str(self.store.tenants().get(tenant, {}).get("isolation", "process"))

    # Everything of a job lives under jobs/<job>/ (see LocalPods).
    def checkpoint_dir(self, job: str) -> Path:
        return self.pods.checkpoint_dir(job)

    def log_path(self, job: str, index: int) -> Path:
        return self.pods.log_path(job, index)

    # -- the loop -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shoal-control", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop the loop and let another control plane use this state folder."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def step(self) -> bool:
        """One pass of the control loop (for callers that drive it themselves)."""
        busy = self.controller.step()
        if self.services is not None:
            busy = self.services.step() or busy
            for failed in self.services.errors.values():
                raise failed  # the others were served: this one is surfaced
        return busy

    def _loop(self) -> None:
        trimmed = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - trimmed > TRIM_EVERY_S:
                memory.give_back()
                trimmed = time.monotonic()
            try:
                busy = self.step()
                self.error = None
            except Exception as exc:  # surfaced by the API's health check
                self.error = exc
                busy = False
            if not busy:
                self._wake.wait(self.tick)
            self._wake.clear()
