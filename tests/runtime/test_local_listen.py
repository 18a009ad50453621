"""Serving pods get a listening socket from the control plane (``runtime.local.listen``).

The pod serves on the descriptor it is handed, as an unprivileged user and
inside a sandbox with its own network namespace; the control plane connects
to the socket in its own 0700 folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.errors import InternalError
from shoal.runtime.local.listen import bind_listener, socket_folder
from shoal.runtime.local.process import LocalProcesses, PodSpec
from shoal.runtime.local.users import PodUser

# Accepts one connection on the handed descriptor and answers with who it is.
SERVE_ONCE = """
import os, socket
fd = int(os.environ["SHOAL_LISTEN_FD"])
server = socket.socket(fileno=fd)
conn, _ = server.accept()
conn.sendall(f"uid={os.getuid()} fd={fd}\\n".encode())
conn.close()
"""


def ask(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(path))
        return client.makefile().readline().strip()


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A short folder other users may pass through (pytest's own is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="shoal-listen-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_socket_folder_is_the_planes_alone(tmp_path: Path) -> None:
    folder = socket_folder(tmp_path)
    info = os.lstat(folder)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    planted = tmp_path / "planted"
    planted.mkdir()
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "other", planted / "serving")
    with pytest.raises(InternalError, match="not a folder owned by the control plane"):
        socket_folder(planted)


def test_a_path_too_long_for_a_unix_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InternalError, match="longer than 107 bytes"):
        bind_listener(tmp_path / ("x" * 120))


def test_a_stale_socket_is_replaced_but_nothing_else_is(tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    os.close(bind_listener(path))
    os.close(bind_listener(path))  # a socket left by an earlier replica: rebound
    other = tmp_path / "file"
    other.write_text("not a socket")
    with pytest.raises(OSError):
        bind_listener(other)
    assert other.read_text() == "not a socket"


@pytest.mark.parametrize("isolation", ["process", "sandbox"])
def test_a_pod_serves_on_the_socket_it_is_handed(
        isolation: str, pods: LocalProcesses, spec: Callable[..., PodSpec], open_folder: Path,
        finish: Callable[..., object]) -> None:
    if isolation == "sandbox" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    if os.geteuid() != 0 or not SYSTEM_PYTHON.exists():
        pytest.skip("needs root (pods as another user) and the system's /usr/bin/python3")
    path = socket_folder(open_folder) / "r1.sock"
    user = PodUser(2_000_000_321, 2_000_000_321)
    workdir = open_folder / "jobs" / "team-a" / "svc" / "0"
    pod = spec([str(SYSTEM_PYTHON), "-c", SERVE_ONCE], isolation=isolation, listen=path,
               user=user, own=(workdir,), workdir=workdir)
    handle = pods.start(pod)
    answer = ask(path)
    uid, fd = answer.split()
    assert uid == "uid=2000000321", "it serves as the tenant's user, not as root"
    assert int(fd.removeprefix("fd=")) >= 10
    assert finish(handle).state == "succeeded"  # type: ignore[attr-defined]
