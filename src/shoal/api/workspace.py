"""The embedded runtime's ``Workspace``: a job's files under ``<state>/jobs/<job>/``.

Checks made before a job is accepted (command, working folder, checkpoint
folder) look at this machine and create nothing, so a rejected apply leaves
no trace; the control loop creates the folders when the pods start.
(Belongs to the embedded runtime; kept here until it moves there.)
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shoal.domain.job import TrainingJob
from shoal.domain.names import job_key
from shoal.errors import InputError

Reachable = Callable[[Path, bool], bool]
"""Whether an unprivileged pod user could reach a path (``True``: in a sandbox)."""


class LocalWorkspace:
    """Paths come from the runtime (``checkpoints``, ``logs``); everything of a
    job lives under ``<state>/jobs/<tenant>/<job>/`` (``job`` arguments are keys)."""

    def __init__(self, state_dir: Path, checkpoints: Callable[[str], Path],
                 logs: Callable[[str, int], Path], reachable: Reachable | None = None) -> None:
        self.state_dir = state_dir
        self._checkpoints = checkpoints
        self._logs = logs
        leftover = state_dir / "trash"  # folders a crash left half deleted
        if leftover.is_dir():
            threading.Thread(target=shutil.rmtree, args=(leftover,),
                             kwargs={"ignore_errors": True}, daemon=True).start()
        # Pods run as unprivileged users: the host is checked as one of them sees
        # it, so that a tenant cannot probe root's files through apply's errors.
        self.reachable = reachable

    def job_dir(self, job: str) -> Path:
        return self.state_dir / "jobs" / job

    def checkpoint_dir(self, job: str) -> str:
        return str(self._checkpoints(job))

    def log_path(self, job: str, pod: int) -> Path:
        return self._logs(job, pod)

    def check(self, job: TrainingJob, tenant: Mapping[str, Any]) -> None:
        check_host(job, tenant, self.state_dir, self.reachable)
        name = job.metadata.name
        _check_creatable(name, Path(self.checkpoint_dir(job_key(job.spec.tenant, name))))

    def forget(self, job: str) -> None:
        """Put the job's folder out of the way at once; delete it in the background.

        Called inside the store's write transaction: the folder is the tenant's
        to fill (a million files, say), so removing it there would stall every
        other writer. A rename is one step whatever the folder holds.
        """
        folder = self.job_dir(job)
        if not folder.exists():
            return
        trash = self.state_dir / "trash"
        trash.mkdir(mode=0o700, exist_ok=True)
        aside = trash / uuid.uuid4().hex
        folder.rename(aside)
        threading.Thread(target=shutil.rmtree, args=(aside,), kwargs={"ignore_errors": True},
                         name="shoal-forget", daemon=True).start()

    def read_log(self, job: str, pod: int, offset: int = 0,
                 limit: int = 1024 * 1024) -> tuple[bytes, int]:
        """At most ``limit`` bytes from ``offset``: never the whole file at once.

        A log shorter than ``offset`` was rotated (copied aside and truncated,
        see ``runtime/local/logs.py``): it is read again from its start.
        """
        if offset < 0 or limit < 1:
            return b"", offset
        try:
            fd = os.open(self.log_path(job, pod), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return b"", offset
        with os.fdopen(fd, "rb") as handle:
            if offset > os.fstat(fd).st_size:
                offset = 0
            handle.seek(offset)
            return handle.read(limit), offset


def check_host(job: TrainingJob, tenant: Mapping[str, Any], state_dir: Path | None,
               reachable: Reachable | None = None) -> None:
    """The job's working folder and command exist on this machine (and, with
    ``reachable``, an unprivileged pod user may enter and run them: one answer
    either way)."""
    name, spec = job.metadata.name, job.spec
    sandboxed = tenant.get("isolation") == "sandbox"
    if spec.working_dir:
        folder = Path(spec.working_dir)
        if reachable is not None and not reachable(folder, False):
            raise InputError(f"TrainingJob {name}: workingDir {folder} does not exist or is "
                             "not a folder the tenant's pods may enter")
        _check_working_dir(name, folder, state_dir, spec.tenant, tenant)
    if spec.command:
        base = Path(spec.working_dir) if spec.working_dir else state_dir or Path.cwd()
        program = spec.command[0]
        if reachable is not None and os.sep in program:
            path = Path(program) if Path(program).is_absolute() else base / program
            if not reachable(path, sandboxed):
                raise InputError(f"TrainingJob {name}: command {program!r} does not exist or "
                                 "is not a program the tenant's pods may run")
        _check_command(name, program, base)


def _check_working_dir(
    name: str, folder: Path, state_dir: Path | None, tenant_name: str,
    tenant: Mapping[str, Any],
) -> None:
    if not folder.is_dir():
        raise InputError(f"TrainingJob {name}: workingDir {folder} is not a directory")
    if state_dir is not None and folder.resolve().is_relative_to(state_dir.resolve()):
        raise InputError(
            f"TrainingJob {name}: workingDir {folder} is inside the control plane's state folder"
        )
    if tenant.get("isolation") == "sandbox":
        # A sandbox mounts its working folder writable: a host folder would be
        # exposed to the pod.
        raise InputError(
            f"TrainingJob {name}: tenant {tenant_name} runs sandboxed pods, which work "
            "in a private folder; remove workingDir and use absolute paths to read-only code"
        )


def _check_command(name: str, program: str, workdir: Path) -> None:
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else workdir / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InputError(
                f"TrainingJob {name}: command {program!r} does not exist or is not executable"
            )
    elif shutil.which(program) is None:
        raise InputError(f"TrainingJob {name}: command {program!r} was not found on PATH")


def _check_creatable(name: str, directory: Path) -> None:
    """The folder exists and is writable, or could be created: without creating it."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = f"{probe} is not writable"
    if problem is not None:
        raise InputError(
            f"TrainingJob {name}: checkpoint directory {directory} is not writable ({problem})"
        )
