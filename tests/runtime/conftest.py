"""Fixtures for the local pod launcher: real processes, cleaned up after each test.

Synchronisation never sleeps: tests wait on a pod's exit through pidfds
(``LocalProcesses.wait_any``) and on its progress through FIFOs that the pod
writes to (:class:`Fifo`), always with a deadline.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.runtime.local.process import LocalProcesses, PodHandle, PodSpec, PodStatus
from shoal.runtime.local.procfs import start_ticks, wait_exits

TIMEOUT_S = 20.0


class Fifo:
    """A named pipe between a test and its pods, held open read-write by the test.

    Holding both ends means that a pod opening it never blocks and that the
    test never sees end-of-file, so lines can be awaited with ``select``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._buffer = b""

    def line(self, timeout_s: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(remaining, 0))
            if not ready:
                pytest.fail(f"no line on {self.path.name} within {timeout_s}s")
            self._buffer += os.read(self._fd, 4096)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def send(self, text: str) -> None:
        os.write(self._fd, (text + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


class TrackedProcesses(LocalProcesses):
    """LocalProcesses that remembers its pods so that the fixture can stop them all."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started: list[PodHandle] = []

    def start(self, spec: PodSpec) -> PodHandle:
        handle = super().start(spec)
        self.started.append(handle)
        return handle

    def finish(self, handle: PodHandle, timeout_s: float = TIMEOUT_S) -> PodStatus:
        """The pod's final status, waiting for its exit (pidfd) up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (status := self.poll(handle)).state == "running":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"pod {handle.spec.job}-{handle.spec.index} still running")
            self.wait_any([handle], remaining)
        return status


@pytest.fixture
def jobs_root(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def pods(jobs_root: Path) -> Iterator[TrackedProcesses]:
    """A launcher with its own root cgroup, emptied and removed after the test."""
    warnings: list[str] = []
    launcher = TrackedProcesses(
        root_cgroup=f"shoal-test-{os.getpid()}", warn=warnings.append, jobs_root=jobs_root
    )
    yield launcher
    for handle in launcher.started:
        launcher.kill(handle)
    for handle in launcher.started:
        launcher.finish(handle)
        # Stragglers killed with the pod may still be exiting: wait for them, then let
        # poll() retry the removal of their cgroup.
        for pid in launcher.cgroups.pids(handle.cgroup) if handle.cgroup else ():
            wait_exits([(pid, start_ticks(pid) or 0)], TIMEOUT_S)
        launcher.poll(handle)
    assert launcher.cgroups.remove_root(), "a test left processes in its cgroups"


@pytest.fixture
def finish(pods: TrackedProcesses) -> Callable[..., PodStatus]:
    """``finish(handle, timeout_s=20)``: the pod's final status, waiting for its exit."""
    return pods.finish


@pytest.fixture
def spec(tmp_path: Path, jobs_root: Path) -> Callable[..., PodSpec]:
    """Build a PodSpec: ``spec(argv, job=..., tenant=..., index=..., **fields)``."""

    def build(command: list[str], job: str = "job", tenant: str = "team-a", index: int = 0,
              env: dict[str, str] | None = None, **fields: Any) -> PodSpec:
        fields.setdefault("workdir", jobs_root / tenant / job / str(index))
        fields.setdefault("log_path", tmp_path / "logs" / f"{job}-{index}.log")
        return PodSpec(job=job, tenant=tenant, index=index, command=command, env=env or {}, **fields)

    return build


@pytest.fixture
def sandboxed(spec: Callable[..., PodSpec]) -> Callable[..., PodSpec]:
    """Like ``spec``, for a pod with ``isolation="sandbox"``."""

    def build(command: list[str], **fields: Any) -> PodSpec:
        return spec(command, isolation="sandbox", **fields)

    return build


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Callable[[Path], Fifo]]:
    """Make FIFOs (e.g. in a pod's workdir); all closed after the test."""
    made: list[Fifo] = []

    def make(path: Path) -> Fifo:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.append(Fifo(path))
        return made[-1]

    yield make
    for each in made:
        each.close()


# Reports that it runs, then ends as the test says: an exit code, or SIGKILL.
_END_AS_TOLD = """
import os, sys
open(sys.argv[1], "w").write("ready\\n")
told = open(sys.argv[2]).readline().strip()
if told == "kill":
    os.kill(os.getpid(), 9)
sys.exit(int(told))
"""


@pytest.fixture
def end_as_told() -> str:
    """A pod program: writes "ready" to argv[1], then exits as argv[2] (a FIFO) says."""
    return _END_AS_TOLD
