"""Pod log rotation: a pod's log may not fill the disk.

A pod writes its log through a file descriptor it holds (opened with
``O_APPEND`` before it started), so the log cannot be renamed under it: it is
rotated by copy and truncate, as logrotate's ``copytruncate`` does. When
``pod-<i>.log`` passes ``max_bytes``, ``pod-<i>.log.<k>`` become
``.<k+1>`` (the oldest beyond ``files`` is dropped), the log is copied to
``pod-<i>.log.1`` and truncated; the pod's next write lands at the new end.
Lines written between the copy and the truncation are lost, as with
logrotate. Sizes are checked at most once a second per pod, so a pod may
overshoot by what it writes in a second.

Every file is opened without following links; the folder is the plane's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class LogLimits:
    """How big a pod's log may grow and how many rotated files are kept."""

    max_bytes: int = 64 << 20
    files: int = 3
    """Rotated files kept beside the live one (``pod-<i>.log.1`` is the newest)."""


def rotate_if_full(path: Path, limits: LogLimits) -> bool:
    """Rotate ``path`` when it is larger than ``limits.max_bytes``; True when it did."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size <= limits.max_bytes:
        return False
    oldest = _numbered(path, limits.files)
    with contextlib.suppress(FileNotFoundError):
        oldest.unlink()
    for k in range(limits.files - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(_numbered(path, k), _numbered(path, k + 1))
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    source = os.open(path, os.O_RDWR | nofollow)
    try:
        target = os.open(_numbered(path, 1), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | nofollow,
                         0o600)
        with os.fdopen(target, "wb") as out, os.fdopen(os.dup(source), "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        os.ftruncate(source, 0)
    finally:
        os.close(source)
    return True


def rotated_files(path: Path, limits: LogLimits) -> list[Path]:
    """The rotated files of ``path`` that exist, newest first."""
    return [p for k in range(1, limits.files + 1) if (p := _numbered(path, k)).exists()]


def _numbered(path: Path, k: int) -> Path:
    return path.with_name(f"{path.name}.{k}")
