"""Ports: what the control core needs from the world, as protocols.

Adapters live in ``shoal.runtime``: a SQLite store, local processes and a
NodePool inventory for the embedded runtime; virtual ones for the simulator;
the Kubernetes API for the operator.  Fakes of every port are in
``shoal.testing``.  The control core never sees a pid, a cgroup, a port
number or a folder: pods are opaque handles, checkpoints are times and steps.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence, Set
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.control.records import Checkpoint, EventRecord, JobRow, PodRecord, PodStatus
from shoal.domain.nodes import Node


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (or since the start of a simulation)."""
        ...


@dataclass(frozen=True)
class NodeSet:
    """The schedulable nodes, with a key that changes whenever any node's content does."""

    key: str
    nodes: tuple[Node, ...]


class Inventory(Protocol):
    """Where nodes come from: NodePools, Kubernetes Node objects, virtual nodes."""

    def nodes(self) -> NodeSet: ...


class Store(Protocol):
    """Durable job state; every job write is fenced by the version it read."""

    def tenants(self) -> dict[str, dict[str, Any]]: ...
    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> list[JobRow]: ...
    def get_job(self, name: str) -> JobRow: ...
    def save_job(self, job: JobRow, events: Sequence[EventRecord] = ()) -> JobRow:
        """Write every mutable field of ``job`` if the stored version is still ``job.version``.

        ``events`` (about this job) are written in the same transaction: a
        transition and its events are recorded together or not at all.
        Returns the record with its new version; ``ConflictError`` when another
        writer got there first (nothing written).
        """
        ...

    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int: ...


class Pods(Protocol):
    """Starts, watches and stops the pods of jobs (processes, Kubernetes pods, virtual)."""

    def start(self, job: JobRow, pod: PodRecord) -> str | None:
        """Start ``pod`` of the job's current attempt; returns its opaque handle.

        None: the start goes on in the background and ``observe`` finds the
        pod by its id until then (reporting ``starting``), with its handle once
        it has one, so there is nothing to record yet.  Raises an
        ``InputError`` when the pod can never start as specified.
        """
        ...

    def observe(self, job: JobRow, pod: PodRecord) -> PodStatus:
        """How the pod stands now; finds it again from ``pod.handle`` after a restart."""
        ...

    def stop(self, job: JobRow, pod: PodRecord, grace_seconds: float) -> None:
        """Ask the pod to stop (SIGTERM); the controller kills it at the deadline."""
        ...

    def kill(self, job: JobRow, pod: PodRecord) -> None: ...

    def release(self, job: JobRow, pods: Sequence[PodRecord]) -> None:
        """The attempt is over and ``pods`` are gone: free what was kept for them."""
        ...


class PodChanges(Protocol):
    """What a pods port may also tell: which pods could be seen otherwise than before.

    Optional (a port without it has every active job observed on every
    pass).  With it, and a checkpoints port whose answer follows from the
    record and the pods (``Checkpoints.follows_pods``), the controller skips
    a running job whose record is the very object it observed last time,
    with nothing to do then, and none of whose pods changed since.
    """

    def changed_pods(self, mark: object) -> tuple[Set[str] | None, object]:
        """Ids of the pods whose ``observe`` may answer otherwise than before the call
        that returned ``mark`` (None at first), and the mark for the next call; None
        instead of ids when any pod may have changed."""
        ...


class Checkpoints(Protocol):
    """What a job saved: the newest checkpoint's time and, when the job says, its step.

    A port may set ``follows_pods = True``: ``latest`` then answers the same
    for the same record as long as the job's pods are unchanged (what
    ``PodChanges`` tells).
    """

    def latest(self, job: JobRow) -> Checkpoint | None: ...


FanOut = Callable[[Sequence[Callable[[], bool]]], list[bool]]
"""Runs the work of a pass on different jobs, returning each one's result in order.

The work items never touch the same job, so a runtime whose writes wait on a
network (the API server) may run them side by side; ``serially`` is the
default, and what the embedded runtime and the simulator use.
"""


def serially(work: Sequence[Callable[[], bool]]) -> list[bool]:
    return [item() for item in work]
