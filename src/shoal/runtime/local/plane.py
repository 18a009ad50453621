"""The embedded control plane: SQLite state, local processes, the system clock.

``EmbeddedPlane`` wires the adapters to the control loop and runs the loop
in a background thread that wakes on a short tick or when poked (a new job,
a deletion), so reaction time does not depend on the tick.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from shoal.control.controller import ControlConfig, Controller
from shoal.control.records import FINAL_PHASES, JobRow, PodSpec
from shoal.domain.job import TrainingJob
from shoal.errors import ShoalError
from shoal.runtime.local import sandbox
from shoal.runtime.local.discover import find_pod
from shoal.runtime.local.process import LocalProcesses
from shoal.runtime.local.store import SqliteStore

DEFAULT_COMMAND = ["sleep", "infinity"]


class SystemClock:
    def now(self) -> float:
        return time.time()


class EmbeddedPlane:
    def __init__(self, state_dir: Path, policy: str = "most-allocated",
                 grace_seconds: float = 10.0, tick_seconds: float = 0.05) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(state_dir / "state.db")
        # Sandboxes hide the whole state folder (database, admin token, every
        # job's files) and mount back only the pod's own folders.
        self.pods = LocalProcesses(jobs_root=state_dir)
        self.clock = SystemClock()
        config = ControlConfig(state_dir=state_dir, policy=policy, grace_seconds=grace_seconds)
        self.controller = Controller(
            self.store, self.pods, self.clock, config, self.pod_spec, find_pod
        )
        self.tick = tick_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._networks: set[str] = set()  # gang network namespaces this plane created

    # -- pods ---------------------------------------------------------------------

    def pod_spec(self, row: JobRow, job: TrainingJob, pod: dict[str, Any],
                 env: dict[str, str], checkpoint_dir: Path) -> PodSpec:
        index = int(pod["index"])
        shape = _pod_resources(job, index)
        tenant = self.store.tenants().get(row.tenant, {})
        gpu = shape.gpu
        isolation = tenant.get("isolation", "process")
        network = row.name if sum(p.count for p in job.spec.pod_sets) > 1 else None
        if isolation == "sandbox" and network is not None:
            # One network namespace per gang, so its workers can rendezvous.
            if not sandbox.network_exists(network):
                sandbox.create_network(network)
            self._networks.add(network)
        fraction = gpu.fraction if gpu is not None and gpu.fraction is not None else None
        return PodSpec(
            job=row.name,
            tenant=row.tenant,
            index=index,
            command=list(job.spec.command or DEFAULT_COMMAND),
            workdir=(
                Path(job.spec.working_dir)
                if job.spec.working_dir
                else self.state_dir / "jobs" / row.name / f"pod-{index}"
            ),
            log_path=self.log_path(row.name, index),
            env={**job.spec.env, **env},
            cpu_milli=shape.cpu,
            memory_mib=shape.memory,
            gpus=tuple(int(g) for g in pod.get("gpus", ())),
            gpu_fraction=fraction if fraction is not None and fraction < 1 else None,
            gpu_memory_mib=gpu.memory if gpu is not None else 0,
            isolation=isolation,
            network=network if isolation == "sandbox" else None,
            writable=(checkpoint_dir,),
            exit_file=self.log_path(row.name, index).with_suffix(f".{pod['uid']}.exit"),
        )

    # Everything of a job lives under jobs/<job>/, which sandboxes hide from
    # other jobs (only the pod's own folders are mounted back).
    def checkpoint_dir(self, job: str) -> Path:
        return self.state_dir / "jobs" / job / "checkpoints"

    def log_path(self, job: str, index: int) -> Path:
        return self.state_dir / "jobs" / job / "logs" / f"pod-{index}.log"

    # -- the loop -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shoal-control", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def settle(self, max_steps: int = 20) -> None:
        """Run passes until nothing changes (used when no loop thread keeps running)."""
        for _ in range(max_steps):
            if not self.controller.step():
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.controller.step()
                if not busy:
                    self._release_networks()
                self.error = None
            except Exception as exc:  # surfaced by the API's health check
                self.error = exc
                busy = False
            if not busy:
                self._wake.wait(self.tick)
            self._wake.clear()

    def _release_networks(self) -> None:
        """Delete the network namespaces of gangs that no longer run."""
        for network in list(self._networks):
            try:
                phase = self.store.get_job(network).phase
            except ShoalError:
                phase = "Cancelled"
            if phase in FINAL_PHASES or phase == "Pending":
                sandbox.delete_network(network)
                self._networks.discard(network)


def _pod_resources(job: TrainingJob, index: int) -> Any:
    seen = 0
    for pod_set in job.spec.pod_sets:
        if index < seen + pod_set.count:
            return pod_set.resources
        seen += pod_set.count
    raise IndexError(index)
