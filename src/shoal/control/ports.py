"""Ports: what the control loop needs from the world, as protocols.

Adapters live in ``shoal.runtime``: a SQLite store and local processes for
the embedded runtime, the Kubernetes API for the operator, virtual ones for
the simulator.  The control loop only ever talks to these.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from shoal.control.records import JobRow, PodHandle, PodSpec, PodStatus


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (or since the start of a simulation)."""
        ...


class Store(Protocol):
    """Durable state; every job update is fenced by the version it read."""

    def tenants(self) -> dict[str, dict[str, Any]]: ...
    def nodes(self) -> dict[str, dict[str, Any]]: ...
    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> list[JobRow]: ...
    def get_job(self, name: str) -> JobRow: ...
    def update_job(self, name: str, expected_version: int, **changes: Any) -> JobRow: ...
    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int: ...


class Pods(Protocol):
    """Starts, watches and stops the processes (or containers) of pods."""

    def start(self, spec: PodSpec) -> PodHandle: ...
    def poll(self, handle: PodHandle) -> PodStatus: ...
    def terminate(self, handle: PodHandle, grace_s: float) -> None: ...
    def kill(self, handle: PodHandle) -> None: ...
    def adopt(
        self, pid: int, start_ticks: int, spec: PodSpec, cgroup: str | None
    ) -> PodHandle | None: ...
