"""The embedded runtime's checkpoints port: what a job saved in its checkpoint folder.

A job's checkpoint time is the newest modification time of any file in its
``$SHOAL_CHECKPOINT_DIR`` (at any depth: many frameworks save a checkpoint as
a folder).  A job may also say which step it saved by writing
``shoal-progress.json`` there, ``{"step": N}``; the report then says from
which step each attempt resumed.

The folder is the tenant's: anything in it may be hostile.  The walk never
follows a symbolic link (``lstat``; links are skipped), is bounded in depth
and in entries, and the progress file is opened with ``O_NOFOLLOW`` and read
up to a few KiB.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from shoal.control.records import Checkpoint, JobRow

PROGRESS_FILE = "shoal-progress.json"
_MAX_DEPTH = 8
_MAX_ENTRIES = 10_000
_MAX_PROGRESS_BYTES = 4096


class LocalCheckpoints:
    """Implements ``control.ports.Checkpoints`` on the job's checkpoint folder."""

    def latest(self, job: JobRow) -> Checkpoint | None:
        if not job.checkpoint_dir:
            return None
        folder = Path(job.checkpoint_dir)
        newest = _newest_mtime(folder)
        if newest is None:
            return None
        return Checkpoint(time=newest, step=_progress_step(folder))


def _newest_mtime(folder: Path) -> float | None:
    newest: float | None = None
    seen = 0
    stack: list[tuple[Path, int]] = [(folder, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # gone or unreadable meanwhile
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
            elif stat.S_ISREG(info.st_mode) and not entry.name.startswith(".") \
                    and entry.name != PROGRESS_FILE:
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
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None
