"""What the embedded runtime needs to start one pod as a local process, and its handle.

Only ``runtime/local`` knows these: the control core sees pods as
``PodRecord``s with an opaque handle (see ``launcher.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shoal.runtime.local.users import PodUser


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
    user: PodUser | None = None
    """Who the command runs as; None: the control plane's own user."""
    own: tuple[Path, ...] = field(default_factory=tuple)
    """The folders Shoal made for this pod (workdir, checkpoints): handed to ``user``."""
    readable: tuple[Path, ...] = field(default_factory=tuple)
    """Host paths the pod reads besides its program (a replica's model): a sandbox shows
    them read-only (``sandbox.sandbox_argv``)."""
    shared: tuple[Path, ...] = field(default_factory=tuple)
    """Folders Shoal made for another job of the same tenant that the pod reads (the
    checkpoint folder its model is in): a sandbox binds them read-only."""
    listen: Path | None = None
    """A Unix socket the control plane binds for the pod to serve on (``runtime.local.listen``)."""


@dataclass(frozen=True)
class PodHandle:
    pid: int
    start_ticks: int
    cgroup: str | None
    spec: PodSpec
