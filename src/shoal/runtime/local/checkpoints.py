"""The embedded runtime's checkpoints port: what a job saved in its checkpoint folder.

A job's checkpoint time is the newest modification time of any file in its
``$SHOAL_CHECKPOINT_DIR`` (at any depth: many frameworks save a checkpoint as
a folder).  A job may also say which step it saved by writing
``shoal-progress.json`` there, ``{"step": N}``; the report then says from
which step each attempt resumed.

The folder is the tenant's: anything in it may be hostile.  The walk never
follows a symbolic link (``lstat``; links are skipped), is bounded in depth
and in entries (read lazily, so a huge folder costs no more than the bound),
ignores times in the future (a file cannot make lost work vanish by claiming
to be newer than now), and the progress file is opened with ``O_NOFOLLOW``
and read up to a few KiB.  A running job's folder is looked at most once a
second; a stopping job's at every pass, so the checkpoint written on SIGTERM
counts.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from shoal.control.records import Checkpoint, JobRow

PROGRESS_FILE = "shoal-progress.json"
_MAX_DEPTH = 8
_MAX_ENTRIES = 10_000
_MAX_PROGRESS_BYTES = 4096
_CLOCK_SKEW_S = 5.0
_RUNNING_EVERY_S = 1.0


class LocalCheckpoints:
    """Implements ``control.ports.Checkpoints`` on the job's checkpoint folder."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[float, Checkpoint | None]] = {}

    def latest(self, job: JobRow) -> Checkpoint | None:
        if not job.checkpoint_dir:
            return None
        now = self.clock()
        cached = self._seen.get(job.checkpoint_dir)
        if job.phase == "Running" and cached is not None and now - cached[0] < _RUNNING_EVERY_S:
            return cached[1]
        folder = Path(job.checkpoint_dir)
        newest = _newest_mtime(folder, now + _CLOCK_SKEW_S)
        found = None if newest is None else Checkpoint(time=newest, step=_progress_step(folder))
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[job.checkpoint_dir] = (now, found)
        return found


def _newest_mtime(folder: Path, latest: float) -> float | None:
    """The newest regular file's mtime up to ``latest``, within the walk's bounds."""
    newest: float | None = None
    seen = 0
    stack: list[tuple[Path, int]] = [(folder, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue  # gone or unreadable meanwhile
        with entries:
            for entry in entries:
                seen += 1
                if seen > _MAX_ENTRIES:
                    return newest
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if depth + 1 < _MAX_DEPTH:
                        stack.append((Path(entry.path), depth + 1))
                elif (stat.S_ISREG(info.st_mode) and not entry.name.startswith(".")
                      and entry.name != PROGRESS_FILE and info.st_mtime <= latest):
                    # Dot files are a writer's temporaries, not yet a checkpoint.
                    newest = info.st_mtime if newest is None else max(newest, info.st_mtime)
    return newest


def _progress_step(folder: Path) -> int | None:
    try:
        fd = os.open(folder / PROGRESS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _MAX_PROGRESS_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        step = json.loads(raw).get("step")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return None  # the tenant wrote it: anything odd (4 KiB of "[") is no step
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None
