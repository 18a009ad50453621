"""Find a pod's process by the unique id it carries.

Used after a control-plane crash between "pod marked starting" and "pid
recorded": the process may or may not exist, and only what it carries can
tell.  Returns ``(pid, start_ticks)`` so the pod can be adopted, never
started a second time.

A pod's processes carry its id in their environment, but a process in the
middle of ``execve`` shows an empty one (the kernel sets the new image's
environment last), and the first process of a pod execs two or three times
before it runs the command.  Until the last of those it also reads its
environment script from an in-memory file named after the pod (its stdin),
which it got at ``fork``: either mark identifies it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")


def stdin_name(uid: str) -> str:
    """The name of the in-memory file a pod's first process reads its environment from."""
    return f"shoal-pod-{uid}"


def find_pod(uid: str) -> tuple[int, int] | None:
    """The pod's first process: of those that carry ``uid``, the one whose parent does not.

    Every process of the pod inherits the id (its shell's short-lived ``sleep``
    children too), and PIDs wrap around (``pid_max`` may be 32768), so neither the
    first match nor the lowest PID is the pod: adopting a child that ends in a
    moment would lose the pod.
    """
    needle = f"SHOAL_POD_UID={uid}".encode()
    stdin = f"/memfd:{stdin_name(uid)} (deleted)"
    found: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, start ticks)
    with os.scandir(_PROC) as entries:
        for entry in entries:
            if entry.name.isdigit() and _carries(entry.name, needle, stdin):
                stat = _stat(entry.name)
                if stat is not None:
                    found[int(entry.name)] = stat
    return _first(found)


def first_of(pids: Iterable[int]) -> tuple[int, int] | None:
    """The first process among ``pids`` (a pod's cgroup members), as :func:`find_pod` picks."""
    found = {pid: stat for pid in pids if (stat := _stat(str(pid))) is not None}
    return _first(found)


def _carries(pid: str, needle: bytes, stdin: str) -> bool:
    try:
        if needle in (_PROC / pid / "environ").read_bytes().split(b"\0"):
            return True
        return os.readlink(_PROC / pid / "fd" / "0") == stdin
    except OSError:
        return False  # gone meanwhile, or not ours to read


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, start ticks) of a live process, or None."""
    try:
        stat = (_PROC / pid / "stat").read_text()
    except OSError:
        return None
    # Fields 3 (state), 4 (parent) and 22 (start time) follow the parenthesised command name.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _first(found: dict[int, tuple[int, int]]) -> tuple[int, int] | None:
    roots = [(ticks, pid) for pid, (parent, ticks) in found.items() if parent not in found]
    if not roots:
        return None
    ticks, pid = min(roots)  # a descendant whose parent ended meanwhile is younger
    return pid, ticks
