"""Ports: what the control loop needs from the world, as protocols.

Adapters live in ``shoal.runtime``: a SQLite store and local processes for
the embedded runtime, the Kubernetes API for the operator, virtual ones for
the simulator.  The control loop only ever talks to these.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (or since the start of a simulation)."""
        ...


class JobRowLike(Protocol):
    name: str
    tenant: str
    manifest: dict[str, Any]
    phase: str
    version: int
    attempts: int
    preemptions: int
    lost_seconds: float
    submit_time: float
    start_time: float | None
    finish_time: float | None
    reason: str
    pods: list[dict[str, Any]]
    checkpoint_dir: str
    next_attempt_at: float | None
    deleted: bool


class Store(Protocol):
    def tenants(self) -> dict[str, dict[str, Any]]: ...
    def nodes(self) -> dict[str, dict[str, Any]]: ...
    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> list[Any]: ...
    def get_job(self, name: str) -> Any: ...
    def update_job(self, name: str, expected_version: int, **changes: Any) -> Any: ...
    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int: ...


class Pods(Protocol):
    """Starts, watches and stops the processes (or containers) of pods."""

    def start(self, spec: Any) -> Any: ...
    def poll(self, handle: Any) -> Any: ...
    def terminate(self, handle: Any, grace_s: float) -> None: ...
    def kill(self, handle: Any) -> None: ...
    def adopt(self, pid: int, start_ticks: int, spec: Any, cgroup: str | None) -> Any: ...


class PodFactory(Protocol):
    """Builds the runtime's pod description for one pod of a job."""

    def __call__(
        self,
        job: Any,
        index: int,
        node: str,
        gpus: tuple[int, ...],
        env: Mapping[str, str],
        checkpoint_dir: Path,
    ) -> Any: ...
