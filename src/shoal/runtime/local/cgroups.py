"""Per-pod Linux cgroups: CPU quota, memory limit, PID limit and OOM detection.

One cgroup per pod, ``<root>/<job>-<index>`` (``root`` defaults to ``shoal``):

- cgroup v1 (one hierarchy per controller, ``/sys/fs/cgroup/{cpu,memory,pids}``):
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes`` when swap accounting exists, so that a pod
  cannot swap its way past its limit) and ``pids.max``; OOM kills are counted in
  ``memory.oom_control`` (``oom_kill``), ``memory.failcnt`` on older kernels.
- cgroup v2 (unified, ``/sys/fs/cgroup/cgroup.controllers`` exists): ``cpu.max``,
  ``memory.max`` (``memory.swap.max`` = 0) and ``pids.max``; OOM kills are
  counted in ``memory.events`` (``oom_kill``).

Support is detected once; when cgroups cannot be written (not root, read-only
mount, controllers missing) :attr:`Cgroups.problem` says why in one line and the
runtime runs pods without limits rather than refusing to run them.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory", "pids")
CFS_PERIOD_US = 100_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Writes its own PID into the cgroup.procs files given after a count, then execs the
# command: the limits hold from the command's first instruction, and the PID stays.
_JOIN = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; n=$((n - 1)); shift; done; exec "$@"'


@dataclass(frozen=True)
class Limits:
    """What a pod may use; 0 means no limit."""

    cpu_milli: int = 0
    memory_mib: int = 0
    pids: int = 0


def cgroup_name(root: str, job: str, index: int) -> str:
    """The pod's cgroup path relative to each hierarchy (unsafe characters become ``_``)."""
    return f"{root}/{_UNSAFE.sub('_', job)}-{index}"


def join_then_exec(procs: list[Path], argv: list[str]) -> list[str]:
    """``argv`` wrapped so that the process joins ``procs`` (cgroup.procs files) first."""
    return ["/bin/sh", "-c", _JOIN, "shoal-pod", str(len(procs)), *map(str, procs), *argv]


class Cgroups:
    """Creates, inspects and removes pod cgroups under one root, for v1 or v2."""

    def __init__(self, root: str = "shoal", mount: Path = MOUNT) -> None:
        self.root = root
        self.mount = mount
        self.version: int | None = None
        self.problem: str | None = None
        self._dirs: dict[str, Path] = {}  # controller -> hierarchy directory
        self._detect()

    @property
    def available(self) -> bool:
        return self.version is not None

    @property
    def controllers(self) -> frozenset[str]:
        """The controllers whose limits can be enforced."""
        return frozenset(self._dirs)

    def _detect(self) -> None:
        try:
            if (self.mount / "cgroup.controllers").is_file():
                self._detect_v2()
            else:
                self._detect_v1()
        except OSError as exc:  # EACCES when not root, EROFS in many containers
            self.version, self._dirs = None, {}
            self.problem = f"cannot write cgroups under {self.mount}: {exc.strerror or exc}"

    def _detect_v1(self) -> None:
        found = {c: self.mount / c for c in CONTROLLERS if (self.mount / c / "tasks").is_file()}
        if not found:
            self.problem = f"no cgroup v1 cpu, memory or pids hierarchy under {self.mount}"
            return
        for path in found.values():
            (path / self.root).mkdir(exist_ok=True)
        missing = sorted(set(CONTROLLERS) - set(found))
        if missing:
            self.problem = f"cgroup controllers missing: {', '.join(missing)}"
        self.version, self._dirs = 1, found

    def _detect_v2(self) -> None:
        offered = set((self.mount / "cgroup.controllers").read_text().split())
        wanted = [c for c in CONTROLLERS if c in offered]
        (self.mount / self.root).mkdir(exist_ok=True)
        # v2 only lets a child use a controller that every ancestor delegates.
        enable = " ".join(f"+{c}" for c in wanted)
        for parent in (self.mount, self.mount / self.root):
            if enable:
                (parent / "cgroup.subtree_control").write_text(enable)
        missing = sorted(set(CONTROLLERS) - set(wanted))
        if missing:
            self.problem = f"cgroup controllers missing: {', '.join(missing)}"
        self.version, self._dirs = 2, {c: self.mount for c in wanted}

    def _paths(self, cgroup: str) -> list[Path]:
        """One directory per hierarchy (v2 has a single one)."""
        return sorted({base / cgroup for base in self._dirs.values()})

    def path(self, cgroup: str, controller: str) -> Path:
        """The directory holding ``controller``'s files for ``cgroup``."""
        return self._dirs[controller] / cgroup

    def create(self, cgroup: str, limits: Limits) -> list[Path]:
        """Create ``cgroup`` afresh with ``limits``; return the ``cgroup.procs`` files to join.

        A leftover empty cgroup of the same name is recreated so that its OOM
        counters start from zero; one that still holds processes is an error.
        """
        if self.pids(cgroup):
            raise FileExistsError(f"cgroup {cgroup} still holds processes")
        self.remove(cgroup)
        for path in self._paths(cgroup):
            path.mkdir()
        self._write_limits(cgroup, limits)
        return [path / "cgroup.procs" for path in self._paths(cgroup)]

    def _write_limits(self, cgroup: str, limits: Limits) -> None:
        v1 = self.version == 1
        if limits.cpu_milli and "cpu" in self._dirs:
            quota = limits.cpu_milli * CFS_PERIOD_US // 1000
            cpu = self.path(cgroup, "cpu")
            if v1:
                _write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
                _write(cpu / "cpu.cfs_quota_us", quota)
            else:
                _write(cpu / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        if limits.memory_mib and "memory" in self._dirs:
            mem, size = self.path(cgroup, "memory"), limits.memory_mib * 1024 * 1024
            _write(mem / ("memory.limit_in_bytes" if v1 else "memory.max"), size)
            # Swap accounting is optional; where it exists, swap counts against the limit.
            swap = mem / ("memory.memsw.limit_in_bytes" if v1 else "memory.swap.max")
            if swap.exists():
                with contextlib.suppress(OSError):
                    _write(swap, size if v1 else 0)
        if limits.pids and "pids" in self._dirs:
            _write(self.path(cgroup, "pids") / "pids.max", limits.pids)

    def pids(self, cgroup: str) -> set[int]:
        """Live processes in ``cgroup`` (exited ones leave it at once, even unreaped)."""
        found: set[int] = set()
        for path in self._paths(cgroup):
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return found

    def oom_kills(self, cgroup: str) -> int:
        """How many processes the kernel OOM-killed in ``cgroup`` (0 when unknown)."""
        if "memory" not in self._dirs:
            return 0
        mem = self.path(cgroup, "memory")
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            fields = dict(line.split() for line in (mem / name).read_text().splitlines())
            if "oom_kill" in fields:
                return int(fields["oom_kill"])
            # Kernels before 4.13 do not count kills; hitting the limit is the best hint.
            return int((mem / "memory.failcnt").read_text()) if self.version == 1 else 0
        except (OSError, ValueError):
            return 0

    def hide_root(self) -> None:
        """Let other users pass through the root cgroup but not list it (0711).

        Its children are named after tenants and jobs; a pod reads its own
        cgroup's name in /proc/self/cgroup and needs nothing else.
        """
        for base in set(self._dirs.values()):
            with contextlib.suppress(OSError):
                (base / self.root).chmod(0o711)

    def remove_root(self) -> bool:
        """Remove the (empty) root cgroup itself, e.g. after tests; False while in use."""
        return self.remove(self.root) if self.available else True

    def remove(self, cgroup: str) -> bool:
        """Remove ``cgroup`` from every hierarchy; False while processes remain in it."""
        done = True
        for path in self._paths(cgroup):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # EBUSY: killed processes have not finished exiting yet
                done = False
        return done


def _write(path: Path, value: object) -> None:
    # Control files want one write(2) of the whole value; no buffering, no newline games.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # as the shell's ">" does
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
