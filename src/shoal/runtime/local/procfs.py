"""What ``/proc`` says about a process: state, parent, process group and start time.

The start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot)
together with the PID names one process for the machine's uptime: a PID that
the kernel reuses for another process comes with a different start time. The
runtime records it at launch and checks it before it adopts or signals a pod.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the runtime needs."""

    pid: int
    state: str  # R, S, D, Z (exited, not yet reaped), X, ...
    ppid: int
    pgid: int
    start_ticks: int

    @property
    def exited(self) -> bool:
        return self.state in ("Z", "X")


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when no process has that PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after its last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``, or None when the process is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def in_group(pid: int, pgid: int) -> bool:
    """Whether ``pid`` is a live member of process group ``pgid``."""
    stat = read_stat(pid)
    return stat is not None and stat.pgid == pgid and not stat.exited


def group_members(pgid: int) -> set[int]:
    """Live processes of process group ``pgid`` (a scan of /proc: fine for one pod's signal)."""
    members = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(ValueError, IndexError):
                stat = read_stat(int(name))
                if stat is not None and stat.pgid == pgid and not stat.exited:
                    members.add(stat.pid)
    return members


def children(parent: int, candidates: set[int]) -> set[int]:
    """Those of ``candidates`` that are live children of ``parent``."""
    found = set()
    for pid in candidates:
        stat = read_stat(pid)
        if stat is not None and stat.ppid == parent and not stat.exited:
            found.add(pid)
    return found


def wait_exits(processes: Sequence[tuple[int, int]], timeout_s: float | None) -> list[int]:
    """Block until one of ``(pid, start_ticks)`` has exited or ``timeout_s`` passed.

    Returns the positions of the exited ones. A pidfd becomes readable at the
    exit itself, so nothing polls on a timer; opening one pins the process, so
    the start time read after it cannot belong to a successor with a reused PID.
    """
    ended, fds = [], {}
    try:
        for position, (pid, ticks) in enumerate(processes):
            try:
                fds[os.pidfd_open(pid)] = position
            except ProcessLookupError:
                ended.append(position)
                continue
            stat = read_stat(pid)
            if stat is None or stat.start_ticks != ticks or stat.exited:
                ended.append(position)
        if ended or not fds:
            return ended
        with selectors.DefaultSelector() as selector:
            for fd in fds:
                selector.register(fd, selectors.EVENT_READ)
            return sorted(fds[key.fd] for key, _ in selector.select(timeout_s))
    finally:
        for fd in fds:
            os.close(fd)
