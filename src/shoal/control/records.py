"""Typed, immutable records shared by the control core and its adapters.

A job is a ``JobRow``: its manifest, its phase, its pods (``PodRecord``) and a
version token for fenced writes.  Transitions never change a record in place;
they return a new one (``dataclasses.replace``), which the runtime stores.

Pods carry an opaque ``handle``: whatever the runtime needs to find the pod
again after a restart (a pid and start time on this machine, a pod name on
Kubernetes, nothing in simulation).  The control core stores it and hands it
back; it never reads it.

They live here, below the runtimes, so that every store and pod runtime can
produce them and the control loop can read them without either side
importing the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shoal.domain.phases import ACTIVE_PHASES, FINAL_PHASES, HOLDING_PHASES, PHASES

__all__ = [
    "ACTIVE_PHASES", "FINAL_PHASES", "HOLDING_PHASES", "PHASES", "Checkpoint", "JobRow",
    "PodRecord", "PodStatus", "Principal",
]

PodState = Literal[
    "starting", "running", "succeeded", "failed", "oom_killed", "signalled", "lost"
]
DONE_STATES: tuple[PodState, ...] = ("succeeded", "failed", "oom_killed", "signalled", "lost")
_STATES = ("starting", "running", *DONE_STATES)


@dataclass(frozen=True, slots=True)
class PodRecord:
    """One pod of one attempt: where it was placed and how it stands."""

    index: int
    node: str
    gpus: tuple[int, ...]
    uid: str
    started_at: float
    state: PodState = "starting"
    handle: str | None = None
    """Opaque to the control core: the runtime's way to find the pod again."""
    exit_code: int | None = None
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in DONE_STATES

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "node": self.node, "gpus": list(self.gpus), "uid": self.uid,
            "started_at": self.started_at, "state": self.state, "handle": self.handle,
            "exit_code": self.exit_code, "message": self.message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodRecord:
        handle = data.get("handle")
        if handle is None and data.get("pid") is not None:
            # Written before handles were opaque: the embedded runtime's fields.
            handle = json.dumps({"pid": data["pid"], "start_ticks": data.get("start_ticks", 0),
                                 "cgroup": data.get("cgroup")})
        state = data.get("state", "starting")
        return cls(
            index=int(data["index"]), node=str(data["node"]),
            gpus=tuple(int(g) for g in data.get("gpus", ())), uid=str(data["uid"]),
            started_at=float(data.get("started_at") or 0.0),
            state=state if state in _STATES else "starting",
            handle=handle, exit_code=data.get("exit_code"),
            message=str(data.get("message", "")),
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The newest progress a job saved: when (runtime clock) and, if it says, at which step."""

    time: float
    step: int | None = None


StopCause = Literal["", "preempted", "failed", "deleted", "disrupted"]


@dataclass(frozen=True)
class JobRow:
    """A job as stored: its manifest, its phase and its pods, with a version token."""

    name: str
    tenant: str
    manifest: Mapping[str, Any]
    phase: str
    version: int
    attempts: int = 0
    preemptions: int = 0
    lost_seconds: float = 0.0
    submit_time: float = 0.0
    start_time: float | None = None
    finish_time: float | None = None
    reason: str = ""
    pods: tuple[PodRecord, ...] = ()
    checkpoint_dir: str = ""
    next_attempt_at: float | None = None
    deleted: bool = False
    stop_cause: StopCause = ""
    """Why the pods of a Preempting/Stopping job are being stopped."""
    stop_deadline: float | None = None
    """When still-running pods of a stopping job are killed (SIGTERM was sent before)."""
    preemptor: str = ""
    """The job a Preempting job makes room for (kept off the reason, which its tenant reads)."""
    preemptor_attempts: int | None = None
    """The preemptor's ``attempts`` when it evicted this job: the eviction nominates it
    only until it starts again (None: not known, from a record older than this field)."""
    checkpoint_time: float | None = None
    checkpoint_step: int | None = None
    resumed_from: int | None = None
    """The checkpoint step the current attempt resumed from (None: started fresh or unknown)."""
    failures: int = 0
    """Attempts that ended in failure (preemptions and disruptions are not failures)."""
    ran_seconds: float = 0.0
    """Wall-clock seconds the job's ended attempts ran (what LAS ordering calls service)."""
    queued_at: float | None = None
    """When the job last went back to waiting after an attempt (None: it never ran)."""

    def evolve(self, **changes: Any) -> JobRow:
        """A copy with ``changes``: ``dataclasses.replace`` without its cost.

        Transitions make several copies of every job; the simulator makes
        millions.  Unknown field names are still refused.
        """
        unknown = changes.keys() - _JOB_FIELDS
        if unknown:
            raise TypeError(f"JobRow has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(JobRow)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return new

    @property
    def attempt_start(self) -> float:
        """When the current (or last) attempt started."""
        starts = [p.started_at for p in self.pods]
        if starts:
            return min(starts)
        return self.start_time if self.start_time is not None else self.submit_time


_JOB_FIELDS = frozenset(JobRow.__dataclass_fields__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin, or a tenant's member."""

    role: Literal["admin", "tenant"]
    tenant: str | None
    name: str


@dataclass(frozen=True)
class PodStatus:
    """What the runtime sees of one pod.

    ``absent``: the runtime can prove the pod never started (the control
    plane died between recording the start and making it), so it may be
    started now without running twice.  ``starting``: this process started
    it in the background and it is not running yet: nothing to record.

    ``handle``: the pod's handle when the runtime learned a better one after
    ``start`` returned (a Kubernetes pod's name, known once it is bound);
    None keeps the recorded one.
    """

    state: Literal["starting", "running", "succeeded", "failed", "oom_killed", "signalled",
                   "lost", "absent"]
    exit_code: int | None
    message: str
    handle: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """An event written in the same transaction as the job record it comes with."""

    time: float
    kind: str
    data: Mapping[str, Any]
