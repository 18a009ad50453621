"""Replicas of inference services on this machine: jobs the control loop admits, places and runs.

``control.services.Replicas`` for the embedded runtime.  Each replica is a
job of one pod (``<service>-r<N>-<i>``, labelled ``shoal.dev/service`` and
``shoal.dev/revision``), so it is admitted against its tenant's quota,
placed, preempted and counted like any pod, and a replica that cannot get
room waits as Pending with the admission's reason.  Its command runs the
replica server (``python -m shoal.serving.replica``) with the interpreter
of the control plane; the launcher hands it a listening Unix socket
(``runtime.local.listen``), which is the replica's endpoint.

A replica tells how its model loaded in ``ready.json`` in its working folder
(a folder its tenant may write to: read without following links, at most
64 KiB).  A replica whose model failed to load ends Failed with that error;
one that crashed for another reason is deleted and made again.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from shoal.control.records import FINAL_PHASES, JobRow
from shoal.control.services import ReplicaStatus, ServiceRecord
from shoal.domain.names import job_name
from shoal.domain.replica import REVISION_LABEL, SERVICE_LABEL, replica_job
from shoal.domain.service import replica_args
from shoal.errors import NotFoundError
from shoal.runtime.local.listen import socket_path
from shoal.runtime.local.store import SqliteStore

__all__ = ["READY_FILE", "LocalReplicas"]

READY_FILE = "ready.json"
REFUSED_RETRY_S = 30.0
"""How long a replica the admission refused waits before it is asked for again."""
_READY_MAX = 64 * 1024


def _labels(job: JobRow) -> dict[str, str]:
    labels = (job.manifest.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def _index(job: JobRow) -> int:
    return int(job.name.rsplit("-", 1)[1])


class LocalReplicas:
    def __init__(self, store: SqliteStore, state_dir: Path, job_dir: Any, now: Any,
                 python: str = sys.executable) -> None:
        self.store, self.state_dir, self.python = store, state_dir, python
        self.job_dir = job_dir
        self.now = now

    # -- where things are -----------------------------------------------------------

    def socket_path(self, job: str) -> Path:
        return socket_path(self.state_dir, job)

    def _ready(self, job: JobRow) -> dict[str, Any] | None:
        path = self.job_dir(job.name) / "pod-0" / READY_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, _READY_MAX)
        finally:
            os.close(fd)
        try:
            found = json.loads(data)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    @staticmethod
    def _refused(job: JobRow) -> bool:
        """It failed without ever running: the admission found it inadmissible."""
        return job.phase == "Failed" and job.attempts == 0 and not job.deleted

    # -- the port ---------------------------------------------------------------------

    def replicas(self, record: ServiceRecord) -> list[JobRow]:
        key = record.row.name
        return [job for job in self.store.list_jobs(tenant=record.row.tenant)
                if _labels(job).get(SERVICE_LABEL) == job_name(key)]

    def _source(self, record: ServiceRecord) -> tuple[str, str] | None:
        """Why replicas cannot start yet: ("pending"|"failed", reason), or None."""
        source = record.spec.model.from_
        if source is None:
            return None
        key = f"{record.row.tenant}/{source.training_job}"
        try:
            job = self.store.get_job(key)
        except NotFoundError:
            return "pending", f"waiting for TrainingJob {source.training_job} (not found)"
        if job.phase == "Succeeded":
            return None
        if job.phase in FINAL_PHASES:
            return "failed", f"TrainingJob {source.training_job} ended {job.phase}: no model"
        return "pending", f"waiting for TrainingJob {source.training_job} to succeed"

    def observe(self, record: ServiceRecord) -> list[ReplicaStatus]:
        blocked = self._source(record)
        if blocked is not None:
            state, why = blocked
            return [ReplicaStatus(f"{r.name}-model", r.name, state,  # type: ignore[arg-type]
                                  message=why, load_failed=state == "failed")
                    for r in record.row.revisions if r.phase == "Loading"]
        found = []
        for job in self.replicas(record):
            revision = f"{record.row.tenant}/{_labels(job).get(REVISION_LABEL, '')}"
            if job.deleted:
                continue
            name = job.name
            if job.phase == "Pending":
                found.append(ReplicaStatus(name, revision, "pending", message=job.reason))
            elif job.phase == "Running":
                ready = self._ready(job)
                if ready is not None and ready.get("ready") is True:
                    found.append(ReplicaStatus(name, revision, "ready",
                                               endpoint=str(self.socket_path(name))))
                else:
                    found.append(ReplicaStatus(name, revision, "starting"))
            elif self._refused(job):
                # The admission refused it (more than the quota could ever hold): it waits
                # as pending with that reason, and is tried again now and then.
                found.append(ReplicaStatus(name, revision, "pending", message=job.reason))
            elif job.phase == "Failed":
                ready = self._ready(job)
                error = ready.get("error") if ready is not None else None
                found.append(ReplicaStatus(
                    name, revision, "failed", load_failed=isinstance(error, str),
                    message=str(error)[:1024] if error is not None else job.reason))
            elif job.phase not in FINAL_PHASES:
                found.append(ReplicaStatus(name, revision, "starting"))
        return found

    def scale(self, record: ServiceRecord, revision: str, count: int) -> None:
        """Make ``count`` replicas of ``revision`` (``<tenant>/<service>-r<N>``)."""
        short = job_name(revision)
        mine = [job for job in self.replicas(record)
                if _labels(job).get(REVISION_LABEL) == short]
        live: dict[int, JobRow] = {}
        for job in mine:
            if job.deleted:
                continue
            crashed = job.phase in FINAL_PHASES and not (
                job.phase == "Failed" and (self._ready(job) or {}).get("error"))
            if self._refused(job):
                finished = job.finish_time if job.finish_time is not None else self.now()
                crashed = self.now() - finished >= REFUSED_RETRY_S
            if crashed or _index(job) >= count:
                self.store.request_delete(job.name)
                continue
            live[_index(job)] = job
        # A name is free once its job is gone, or deleted and ended (creating it again
        # retires the old row).
        taken = {_index(job) for job in mine
                 if not (job.deleted and job.phase in FINAL_PHASES)}
        if count and self._source(record) is not None:
            return  # its model does not exist yet
        for index in range(count):
            if index not in live and index not in taken:
                self._create(record, short, index)

    def _create(self, record: ServiceRecord, revision: str, index: int) -> None:
        spec, tenant = record.spec, record.row.tenant
        key = f"{tenant}/{revision}-{index}"
        # A replica made again under a freed name must not read its predecessor's answer.
        (self.job_dir(key) / "pod-0" / READY_FILE).unlink(missing_ok=True)
        service = job_name(record.row.name)
        args = replica_args(service, spec, self.model_path(record), ready_file=READY_FILE,
                            listen_fd="env")
        # On the protocol a revision is the model's version (".../versions/digits-r2"),
        # so a request may name the revision it wants through the router.
        args[args.index("--version") + 1] = revision
        command = [self.python, "-m", "shoal.serving.replica", *args]
        manifest = replica_job(service, revision, index, spec, command, self.model_source(record))
        self.store.create_job(key, tenant, manifest, self.now(),
                              str(self.job_dir(key) / "checkpoints"))

    def model_source(self, record: ServiceRecord) -> str | None:
        """What a sandboxed replica is shown read-only: the model file, or the whole
        checkpoint folder of the TrainingJob that wrote it (``MODEL_ANNOTATION``)."""
        model = record.spec.model
        if model.from_ is None:
            return model.path
        return self.store.get_job(f"{record.row.tenant}/{model.from_.training_job}").checkpoint_dir

    def model_path(self, record: ServiceRecord) -> str | None:
        """The model file: ``model.path``, or what the TrainingJob wrote to its checkpoints."""
        model = record.spec.model
        if model.from_ is None:
            return model.path
        job = self.store.get_job(f"{record.row.tenant}/{model.from_.training_job}")
        return str(Path(job.checkpoint_dir) / model.from_.path)
