"""Records exchanged between the control loop and its adapters (store, pods).

They live here, below the runtimes, so that the SQLite store and the local
process launcher can produce them and the control loop can read them without
either side importing the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PHASES = ("Pending", "Running", "Preempting", "Succeeded", "Failed", "Cancelled")
ACTIVE_PHASES = ("Pending", "Running", "Preempting")
FINAL_PHASES = ("Succeeded", "Failed", "Cancelled")


@dataclass(frozen=True)
class JobRow:
    """A job as stored: its manifest, its phase and its pods, with a version token."""

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


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin, or a tenant's member."""

    role: Literal["admin", "tenant"]
    tenant: str | None
    name: str


@dataclass(frozen=True)
class PodSpec:
    """Everything needed to start one pod as a local process."""

    job: str
    tenant: str
    index: int
    command: list[str]
    workdir: Path
    log_path: Path
    env: Mapping[str, str]
    cpu_milli: int = 0
    memory_mib: int = 0
    pids_limit: int = 0
    gpus: tuple[int, ...] = ()
    gpu_fraction: float | None = None
    gpu_memory_mib: int = 0
    isolation: Literal["process", "sandbox"] = "process"
    network: str | None = None
    writable: tuple[Path, ...] = field(default_factory=tuple)
    exit_file: Path | None = None
    """Where the pod's exit code is written, so it is known even after a restart."""


@dataclass(frozen=True)
class PodHandle:
    pid: int
    start_ticks: int
    cgroup: str | None
    spec: PodSpec


@dataclass(frozen=True)
class PodStatus:
    state: Literal["running", "succeeded", "failed", "oom_killed", "signalled", "lost"]
    exit_code: int | None
    message: str
