"""Finding a pod's process by the id in its environment, after a control-plane crash."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from shoal.runtime.local import discover
from shoal.runtime.local.discover import find_pod, stdin_name


def _proc(root: Path, pid: int, parent: int, ticks: int, uid: str | None) -> None:
    folder = root / str(pid)
    folder.mkdir()
    env = [b"PATH=/bin"] + ([f"SHOAL_POD_UID={uid}".encode()] if uid else [])
    (folder / "environ").write_bytes(b"\0".join(env) + b"\0")
    # A command name with a space and a parenthesis, as a pod may choose.
    (folder / "stat").write_text(f"{pid} (sh) x) S {parent} {pid} {pid} 0 -1 4194560 "
                                 f"1 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0\n")


def test_the_pod_is_its_first_process_not_a_child_with_a_lower_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PIDs wrapped: the pod's shell (30000) forked children that got low PIDs, each
    # with the pod's id; another pod and a process without an id are beside it.
    _proc(tmp_path, 30000, 1, 500, "pod-a")
    for n in range(20):
        _proc(tmp_path, 100 + n, 30000, 900 + n, "pod-a")
        _proc(tmp_path, 200 + n, 100 + n, 950 + n, "pod-a")
    _proc(tmp_path, 50, 1, 100, "pod-b")
    _proc(tmp_path, 60, 1, 50, None)
    monkeypatch.setattr(discover, "_PROC", tmp_path)
    assert find_pod("pod-a") == (30000, 500)
    assert find_pod("pod-b") == (50, 100)
    assert find_pod("pod-c") is None


def test_an_orphan_outlives_its_pod_and_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pod's first process ended; two of its children were handed to init.
    _proc(tmp_path, 10, 1, 700, "pod-a")
    _proc(tmp_path, 20, 1, 650, "pod-a")
    _proc(tmp_path, 30, 20, 800, "pod-a")
    monkeypatch.setattr(discover, "_PROC", tmp_path)
    assert find_pod("pod-a") == (20, 650)


def test_a_real_process_tree_is_found_by_its_first_process() -> None:
    uid = f"discover-{os.getpid()}"
    tree = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60 & sleep 60 & echo ready; read line"], start_new_session=True,
        env={"PATH": os.defpath, "SHOAL_POD_UID": uid}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        # Popen returns while the shell may still be inside its execve (an empty
        # environment, the case the next test covers): look once it runs.
        assert tree.stdout is not None and tree.stdout.readline() == b"ready\n"
        found = find_pod(uid)
        assert found is not None and found[0] == tree.pid
        assert find_pod(f"{uid}-other") is None
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.communicate(timeout=30)  # closes its stdin


def test_a_process_in_the_middle_of_an_exec_is_found_by_its_stdin() -> None:
    # An execve shows an empty environment for a moment; the pod's first process still
    # holds the in-memory file it reads its environment from, named after the pod.
    uid = f"discover-stdin-{os.getpid()}"
    script = os.memfd_create(stdin_name(uid))
    os.write(script, b"data")
    os.lseek(script, 0, os.SEEK_SET)
    tree = subprocess.Popen(["/bin/sh", "-c", "sleep 60"], start_new_session=True,
                            env={"PATH": os.defpath}, stdin=script)
    os.close(script)
    try:
        found = find_pod(uid)
        assert found is not None and found[0] == tree.pid
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait(timeout=30)
