"""Pod lifecycle: start, watch, preempt, retry and finish the pods of jobs.

The controller decides *what* should run; this module makes it so and
records what happened, always through fenced store updates.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.control import cluster_view as view
from shoal.control.ports import Clock, Pods, Store
from shoal.control.records import JobRow, PodHandle, PodStatus
from shoal.domain.job import TrainingJob
from shoal.errors import ShoalError

if TYPE_CHECKING:
    from shoal.control.controller import ControlConfig

_DONE = ("succeeded", "failed", "oom_killed", "signalled", "lost")


class Lifecycle:
    def __init__(
        self,
        store: Store,
        pods: Pods,
        clock: Clock,
        config: ControlConfig,
        pod_spec: Callable[..., Any],
        find_pod: Callable[[str], tuple[int, int] | None],
    ) -> None:
        self.store, self.pods, self.clock, self.config = store, pods, clock, config
        self.pod_spec, self.find_pod = pod_spec, find_pod
        self.handles: dict[str, Any] = {}  # pod uid -> runtime handle

    # -- starting ---------------------------------------------------------------

    def start(self, row: JobRow, placed: list[dict[str, Any]]) -> None:
        now = self.clock.now()
        for pod in placed:
            pod["started_at"] = now
        # First write: intent, with the pod ids.  A crash after it leaves
        # "starting" pods that observe() finds by id: never started twice.
        row = self.store.update_job(
            row.name, row.version, phase="Running", pods=placed, attempts=row.attempts + 1,
            start_time=row.start_time if row.start_time is not None else now,
            reason="", next_attempt_at=None,
        )
        job = TrainingJob.model_validate(row.manifest)
        port = _free_port()
        started: list[Any] = []
        try:
            for pod in placed:
                spec = self._spec(row, job, pod, len(placed), port)
                handle = self.pods.start(spec)
                self.handles[pod["uid"]] = handle
                started.append(handle)
                pod.update(pid=handle.pid, start_ticks=handle.start_ticks, cgroup=handle.cgroup,
                           state="running")
        except ShoalError as exc:
            # Bad input (a missing command) or a runtime that cannot start it
            # (no sandbox, no cgroup): stop what did start and fail the job.
            for handle in started:
                self.pods.kill(handle)
            self.finish(self.store.get_job(row.name), "Failed", str(exc))
            return
        row = self.store.update_job(row.name, row.version, pods=placed)
        self._event("admitted", row, attempt=row.attempts,
                    nodes=sorted({str(p["node"]) for p in placed}))

    def _spec(self, row: JobRow, job: TrainingJob, pod: dict[str, Any], world: int,
              port: int) -> Any:
        checkpoint_dir = Path(row.checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "RANK": str(pod["index"]), "WORLD_SIZE": str(world), "LOCAL_RANK": str(pod["index"]),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "SHOAL_JOB": row.name, "SHOAL_TENANT": row.tenant,
            "SHOAL_ATTEMPT": str(row.attempts), "SHOAL_POD_UID": str(pod["uid"]),
            "SHOAL_CHECKPOINT_DIR": str(checkpoint_dir),
        }
        return self.pod_spec(row=row, job=job, pod=pod, env=env, checkpoint_dir=checkpoint_dir)

    # -- watching -----------------------------------------------------------------

    def observe(self) -> bool:
        changed = False
        for row in self.store.list_jobs(phases=("Pending", "Running", "Preempting")):
            try:
                if row.phase == "Pending":
                    if row.deleted:
                        self.finish(row, "Cancelled", "deleted")
                        changed = True
                    continue
                changed |= self._observe_running(row)
            except ShoalError as exc:
                if exc.code != "conflict":
                    raise
                changed = True  # changed meanwhile (e.g. deleted): look again next pass
        return changed

    def _observe_running(self, row: JobRow) -> bool:
        job = TrainingJob.model_validate(row.manifest)
        states = [pod.get("state") for pod in row.pods]
        statuses = {pod["uid"]: self._status(row, job, pod) for pod in row.pods}
        alive = [uid for uid, status in statuses.items() if status.state == "running"]
        now = self.clock.now()
        if row.deleted or row.phase == "Preempting":
            if alive:
                return self._stop_pods(row, alive, now)
            if row.deleted:
                self.finish(row, "Cancelled", "deleted")
            else:
                self._requeue(row, now)
            return True
        if any(p.get("state") != before for p, before in zip(row.pods, states, strict=True)):
            # Record finished pods at once: a gang member that already exited
            # must not be polled (or adopted) again after a restart.
            row = self.store.update_job(row.name, row.version, pods=row.pods)
        failed = [s for s in statuses.values() if s.state in _DONE and s.state != "succeeded"]
        if failed:
            for uid in alive:
                self.pods.kill(self.handles[uid])
            self._retry_or_fail(row, job, failed[0].message or failed[0].state, now)
            return True
        if not alive:
            self.finish(row, "Succeeded", "")
            return True
        return False

    def _status(self, row: JobRow, job: TrainingJob, pod: dict[str, Any]) -> PodStatus:
        uid = pod["uid"]
        if pod.get("state") in _DONE:
            return PodStatus(pod["state"], pod.get("exit_code"), pod.get("message", ""))
        handle = self.handles.get(uid)
        if handle is None:
            handle = self._adopt(row, job, pod)
            if handle is None:
                return PodStatus("lost", None, "the pod's process is gone (control plane restart)")
            self.handles[uid] = handle
        status = self.pods.poll(handle)
        if status.state != "running":
            pod.update(state=status.state, exit_code=status.exit_code, message=status.message)
        return status

    def _adopt(self, row: JobRow, job: TrainingJob, pod: dict[str, Any]) -> Any:
        pid, ticks = pod.get("pid"), pod.get("start_ticks")
        if pid is None:
            found = self.find_pod(str(pod["uid"]))
            if found is None:
                return None
            pid, ticks = found
        spec = self._spec(row, job, pod, len(row.pods), 0)
        handle = self.pods.adopt(int(pid), int(ticks or 0), spec, pod.get("cgroup"))
        if handle is None:
            # It ended while nobody watched; the runtime may still know how
            # (the local runtime records exit codes in a file).
            handle = PodHandle(int(pid), int(ticks or 0), pod.get("cgroup"), spec)
        return handle

    # -- stopping -----------------------------------------------------------------

    def preempt(self, row: JobRow, reason: str, preemptor: str) -> None:
        deadline = self.clock.now() + self.config.grace_seconds
        # The preemptor is recorded on the victim's pods (not in the reason,
        # which the victim's tenant reads): it waits until they are gone.
        pods = [dict(p, deadline=deadline, preemptor=preemptor) for p in row.pods]
        row = self.store.update_job(row.name, row.version, phase="Preempting", pods=pods,
                                    reason=reason)
        for pod in pods:
            handle = self.handles.get(pod["uid"])
            if handle is not None:
                self.pods.terminate(handle, self.config.grace_seconds)
        self._event("preempted", row, reason=reason)

    def _stop_pods(self, row: JobRow, alive: list[str], now: float) -> bool:
        deadline = min((p.get("deadline") or now for p in row.pods), default=now)
        if "deadline" not in row.pods[0]:
            pods = [dict(p, deadline=now + self.config.grace_seconds) for p in row.pods]
            self.store.update_job(row.name, row.version, pods=pods)
            for uid in alive:
                self.pods.terminate(self.handles[uid], self.config.grace_seconds)
            return True
        if now >= deadline:
            for uid in alive:
                self.pods.kill(self.handles[uid])
        return False

    def _requeue(self, row: JobRow, now: float) -> None:
        start = view.attempt_start(row)
        saved = view.last_checkpoint(row.checkpoint_dir, start)
        lost = now - (saved if saved is not None else start)
        self._forget(row)
        row = self.store.update_job(
            row.name, row.version, phase="Pending", pods=[], preemptions=row.preemptions + 1,
            lost_seconds=row.lost_seconds + lost, next_attempt_at=now,
        )
        self._event("requeued", row, lost_seconds=round(lost, 3))

    def _retry_or_fail(self, row: JobRow, job: TrainingJob, why: str, now: float) -> None:
        # Attempts ended by preemption are not failures: they use no retries.
        failures = row.attempts - row.preemptions
        if failures > job.spec.max_retries:
            self.finish(row, "Failed", why)
            return
        delay = min(self.config.backoff_seconds * 2 ** (failures - 1),
                    self.config.backoff_max_seconds)
        self._forget(row)
        row = self.store.update_job(row.name, row.version, phase="Pending", pods=[],
                                    reason=f"retrying after: {why}", next_attempt_at=now + delay)
        self._event("retrying", row, reason=why, delay_seconds=delay)

    def finish(self, row: JobRow, phase: str, reason: str) -> None:
        self._forget(row)
        row = self.store.update_job(row.name, row.version, phase=phase, reason=reason,
                                    finish_time=self.clock.now())
        self._event(phase.lower(), row, reason=reason)

    def _forget(self, row: JobRow) -> None:
        """Drop the handles of an attempt that is over, so they do not pile up."""
        for pod in row.pods:
            self.handles.pop(str(pod.get("uid")), None)

    def _event(self, kind: str, row: JobRow, **data: Any) -> None:
        self.store.append_event(self.clock.now(), kind, row.name, row.tenant, data)


def _free_port() -> int:
    # The rendezvous port of a gang; picked per attempt on loopback.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
