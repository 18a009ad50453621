"""Listening sockets the control plane makes for pods that serve (inference replicas).

A replica does not bind anything itself: the control plane binds a Unix
socket in a folder only it may enter (``<state>/serving``, mode 0700) and
hands the listening descriptor to the pod (``SHOAL_LISTEN_FD``), which
serves on it from inside any sandbox or network namespace.  So the router,
which connects to that path as the control plane, can only ever reach the
socket it made: a tenant cannot plant a link there or bind the name first,
and other local users cannot reach a replica around the router (there is no
TCP port).  The descriptor is moved to 10 or above, clear of the low numbers
the pod's launch scripts use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import stat
from pathlib import Path

from shoal.errors import InternalError

__all__ = ["LISTEN_FD_ENV", "MAX_SOCKET_PATH", "bind_listener", "socket_folder", "socket_path"]

LISTEN_FD_ENV = "SHOAL_LISTEN_FD"
MAX_SOCKET_PATH = 107
"""Linux's limit on a Unix socket's path (108 bytes with the final NUL)."""
_LOWEST_FD = 10


def socket_folder(state_dir: Path) -> Path:
    """``<state>/serving``, made 0700 and checked to be a real folder of ours (no link)."""
    folder = state_dir / "serving"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise InternalError(f"{folder} is not a folder owned by the control plane")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    return folder


def socket_path(state_dir: Path, job: str) -> Path:
    """The socket of the pod of job ``job`` (its key): short whatever the names' length."""
    digest = hashlib.sha256(job.encode()).hexdigest()[:16]
    return socket_folder(state_dir) / f"{digest}.sock"


def bind_listener(path: Path, backlog: int = 1024) -> int:
    """Bind and listen on ``path`` (replacing a stale socket there); returns a descriptor
    >= 10 that is not inherited unless passed explicitly (``pass_fds``)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise InternalError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes",
            hint="use a shorter --state-dir for the control plane",
        )
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
        return fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, _LOWEST_FD)
    finally:
        sock.close()
