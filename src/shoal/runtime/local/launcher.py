"""The embedded runtime's pods port: pods of jobs as local processes.

Everything the control core must not know lives here: the pod's command,
environment and folders, the gang's rendezvous address and port, sandbox
network namespaces, and the handle (pid, start time, cgroup) that finds a
pod again after a control-plane restart.

Handles are JSON text, opaque to the control core.  A pod saved as
``starting`` without a handle (the plane died between recording the intent
and starting it) is looked up by the unique id in its environment.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import shoal
from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.domain.job import TrainingJob
from shoal.domain.names import job_name
from shoal.domain.replica import MODEL_ANNOTATION, is_replica
from shoal.runtime.local import sandbox
from shoal.runtime.local.discover import find_pod
from shoal.runtime.local.listen import socket_path
from shoal.runtime.local.logs import LogLimits, rotate_if_full
from shoal.runtime.local.podspec import PodHandle, PodSpec
from shoal.runtime.local.process import LocalProcesses
from shoal.runtime.local.users import PodUsers

DEFAULT_COMMAND = ["sleep", "infinity"]
DEFAULT_PIDS_LIMIT = 1024
"""Processes and threads a pod may have when its job does not say (``spec.pidsLimit``)."""
_LOST = PodStatus("lost", None, "the pod's process is gone (control plane restart)")


class LocalPods:
    """Implements ``control.ports.Pods`` with :class:`LocalProcesses`."""

    def __init__(
        self,
        processes: LocalProcesses,
        state_dir: Path,
        tenant_isolation: Callable[[str], str],
        find: Callable[[str], tuple[int, int] | None] = find_pod,
        users: PodUsers | None = None,
        log_limits: LogLimits | None = None,
    ) -> None:
        self.processes = processes
        self.state_dir = state_dir
        self.isolation_of = tenant_isolation
        self.users = users or PodUsers("self", lambda tenant: 0)
        self.log_limits = log_limits or LogLimits()
        self._log_checked: dict[str, float] = {}  # pod uid -> when its log size was looked at
        self.find = find
        self.handles: dict[str, PodHandle] = {}  # pod uid -> live handle
        self._ports: dict[tuple[str, int], int] = {}  # (job, attempt) -> rendezvous port

    # -- folders ----------------------------------------------------------------------

    # Everything of a job lives under jobs/<tenant>/<job>/ (``job`` is the job's
    # key, see shoal.domain.names), which sandboxes hide from other jobs (only the
    # pod's own folders are mounted back).
    def job_dir(self, job: str) -> Path:
        return self.state_dir / "jobs" / job

    def checkpoint_dir(self, job: str) -> Path:
        return self.job_dir(job) / "checkpoints"

    def log_path(self, job: str, index: int) -> Path:
        return self.job_dir(job) / "logs" / f"pod-{index}.log"

    # -- the port ---------------------------------------------------------------------

    def start(self, job: JobRow, pod: PodRecord) -> str:
        if self.users.mode == "tenant":
            # Passable, not listable: a pod must not learn its neighbours' job names.
            for folder in (self.job_dir(job.name).parent, self.job_dir(job.name)):
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o711)
        handle = self.processes.start(self.spec(job, pod))
        self.handles[pod.uid] = handle
        return _encode(handle)

    def observe(self, job: JobRow, pod: PodRecord) -> PodStatus:
        handle = self.handles.get(pod.uid) or self._adopt(job, pod)
        if handle is None:
            if pod.handle:
                return _LOST
            # Recorded as starting, and no process carries its id.
            return self.processes.never_watched(self.spec(job, pod, rendezvous_port=0))
        self.handles[pod.uid] = handle
        status = self.processes.poll(handle)
        if status.state == "running":
            self._rotate_log(job, pod)
        return status

    def stop(self, job: JobRow, pod: PodRecord, grace_seconds: float) -> None:
        handle = self.handles.get(pod.uid) or self._adopt(job, pod)
        if handle is not None:
            self.processes.terminate(handle, grace_seconds)

    def kill(self, job: JobRow, pod: PodRecord) -> None:
        handle = self.handles.get(pod.uid) or self._adopt(job, pod)
        if handle is not None:
            self.processes.kill(handle)

    def release(self, job: JobRow, pods: Sequence[PodRecord]) -> None:
        for pod in pods:
            handle = self.handles.pop(pod.uid, None)
            if handle is not None:
                self.processes.forget(handle)
            self._log_checked.pop(pod.uid, None)
        self._ports.pop((job.name, job.attempts), None)
        (self.job_dir(job.name) / f".rendezvous-{job.attempts}").unlink(missing_ok=True)
        if sandbox.network_exists(job.name):
            sandbox.delete_network(job.name)

    # -- helpers ------------------------------------------------------------------------

    def _adopt(self, job: JobRow, pod: PodRecord) -> PodHandle | None:
        """Find a pod this process did not start (a restart, or a crash mid-start)."""
        found = _decode(pod.handle)
        spec = self.spec(job, pod, rendezvous_port=0)
        if found is None:
            located = self.find(pod.uid) or self.processes.first_member(spec)
            if located is None:
                return None
            found = (located[0], located[1], None)
        pid, ticks, cgroup = found
        cgroup = cgroup or self.processes.cgroup_of(spec)
        handle = self.processes.adopt(pid, ticks, spec, cgroup)
        # One that ended while nobody watched may have left its exit code behind.
        return handle if handle is not None else PodHandle(pid, ticks, cgroup, spec)

    def _rotate_log(self, job: JobRow, pod: PodRecord) -> None:
        now = time.monotonic()
        if now - self._log_checked.get(pod.uid, -1.0) >= 1.0:  # a stat per pod per second
            self._log_checked[pod.uid] = now
            rotate_if_full(self.log_path(job.name, pod.index), self.log_limits)

    def _port(self, job: JobRow) -> int:
        """The attempt's rendezvous port, kept in the job's folder: a control plane that
        restarts mid-start gives the gang's remaining pods the port the others have."""
        key = (job.name, job.attempts)
        if key not in self._ports:
            record = self.job_dir(job.name) / f".rendezvous-{job.attempts}"
            try:
                self._ports[key] = int(record.read_text())
            except (OSError, ValueError):
                self._ports[key] = _free_port()
                record.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(str(self._ports[key]))
        return self._ports[key]

    def _model_source(self, job: JobRow, manifest: TrainingJob) -> dict[str, tuple[Path, ...]]:
        """What a replica reads (only Shoal sets the annotation: ``app.checks``): the
        checkpoint folder of one of its tenant's jobs, or else a file named in its
        service, shown as a program is (never a path in the state folder)."""
        # The replica server is Shoal's own code: shown too where it lives in a hidden
        # place (a source checkout under /tmp, installed in editable mode).
        server = Path(shoal.__file__).resolve().parent
        source = manifest.metadata.annotations.get(MODEL_ANNOTATION)
        if not source:
            return {"readable": (server,)}
        path = Path(source)
        if path.name == "checkpoints" and path.parent.parent == self.state_dir / "jobs" / job.tenant:
            return {"readable": (server,), "shared": (path,)}
        return {"readable": (server, path)}

    def spec(self, job: JobRow, pod: PodRecord, rendezvous_port: int | None = None) -> PodSpec:
        """The process that runs ``pod``: command, environment, folders, limits, isolation."""
        manifest = TrainingJob.model_validate(job.manifest)
        world = sum(p.count for p in manifest.spec.pod_sets)
        port = self._port(job) if rendezvous_port is None else rendezvous_port
        checkpoint_dir = Path(job.checkpoint_dir) if job.checkpoint_dir else \
            self.checkpoint_dir(job.name)
        env = {
            "RANK": str(pod.index), "WORLD_SIZE": str(world), "LOCAL_RANK": str(pod.index),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "SHOAL_JOB": job_name(job.name), "SHOAL_TENANT": job.tenant,
            "SHOAL_ATTEMPT": str(job.attempts), "SHOAL_POD_UID": pod.uid,
            "SHOAL_CHECKPOINT_DIR": str(checkpoint_dir),
        }
        shape = _pod_resources(manifest, pod.index)
        gpu = shape.gpu
        isolation = self.isolation_of(job.tenant)
        network = job.name if world > 1 and isolation == "sandbox" else None
        if network is not None and not sandbox.network_exists(network):
            # One network namespace per gang, so its workers can rendezvous.
            sandbox.create_network(network)
        fraction = gpu.fraction if gpu is not None and gpu.fraction is not None else None
        log = self.log_path(job.name, pod.index)
        workdir = (Path(manifest.spec.working_dir) if manifest.spec.working_dir
                   else self.job_dir(job.name) / f"pod-{pod.index}")
        # Only the folders Shoal made are handed to the pod's user, never a host folder.
        own = tuple(p for p in (workdir, checkpoint_dir) if p.is_relative_to(self.job_dir(job.name)))
        replica = is_replica(job.manifest)
        return PodSpec(
            job=job_name(job.name),
            tenant=job.tenant,
            index=pod.index,
            command=list(manifest.spec.command or DEFAULT_COMMAND),
            workdir=workdir,
            log_path=log,
            env={**manifest.spec.env, **env},
            cpu_milli=shape.cpu,
            memory_mib=shape.memory,
            pids_limit=manifest.spec.pids_limit or DEFAULT_PIDS_LIMIT,
            gpus=pod.gpus,
            gpu_fraction=fraction if fraction is not None and fraction < 1 else None,
            gpu_memory_mib=gpu.memory if gpu is not None else 0,
            isolation="sandbox" if isolation == "sandbox" else "process",
            network=network,
            writable=(checkpoint_dir,),
            exit_file=log.with_suffix(f".{pod.uid}.exit"),
            user=self.users.of(job.tenant),
            own=own,
            # An inference replica serves on a socket the plane binds (runtime.local.listen).
            listen=socket_path(self.state_dir, job.name) if replica else None,
            **(self._model_source(job, manifest) if replica else {}),
        )


def _encode(handle: PodHandle) -> str:
    return json.dumps({"pid": handle.pid, "start_ticks": handle.start_ticks,
                       "cgroup": handle.cgroup})


def _decode(handle: str | None) -> tuple[int, int, str | None] | None:
    """``(pid, start ticks, cgroup)``; None for a missing or unreadable handle.

    An unreadable one (hand-edited, or from another Shoal) falls back to
    finding the pod by its uid, rather than failing the job.
    """
    if not handle:
        return None
    try:
        data: Any = json.loads(handle)
        cgroup = data.get("cgroup")
        return int(data["pid"]), int(data["start_ticks"]), cgroup if isinstance(cgroup, str) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _free_port() -> int:
    # The rendezvous port of a gang; picked per attempt on loopback.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pod_resources(job: TrainingJob, index: int) -> Any:
    seen = 0
    for pod_set in job.spec.pod_sets:
        if index < seen + pod_set.count:
            return pod_set.resources
        seen += pod_set.count
    raise IndexError(index)
