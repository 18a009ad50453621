"""SIGKILL the control plane at chosen points of the start sequence, restart it, and check
that every pod ran exactly once, the job's story is whole, and nothing leaked.

The plane runs in a child process whose ``subprocess.Popen`` (the spawn of a pod)
is wrapped to SIGKILL the child at the chosen point:

- ``before-spawn``: the job is saved Running with its pods ``starting`` and
  the pod's cgroup exists, but no process was started;
- ``after-spawn``: the pod runs, its pid was never recorded (and it may end
  before the plane is back);
- ``mid-gang``: the first of two gang members runs, the second was never
  started.

A restarted plane (in this process) must adopt or start each pod so that each
runs once, with one ``admitted`` event, and leave no cgroup or process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shoal.runtime.local.cgroups import MOUNT
from shoal.runtime.local.discover import find_pod
from shoal.runtime.local.plane import EmbeddedPlane

TENANT = {"quota": {"cpu": {"nominal": 8}, "memory": {"nominal": "8Gi"}}}
NODE = {"count": 1, "cpu": 8, "memory": "16Gi"}

# The child: a control plane that dies at the chosen point of its first starts.
CHILD = r"""
import json, os, signal, subprocess, sys
from pathlib import Path
from shoal.runtime.local import process
from shoal.runtime.local.plane import EmbeddedPlane

state, point, kills_after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
manifest = json.loads(sys.argv[4])
real, spawned = subprocess.Popen, []

def popen(*args, **kwargs):
    if point == "before-spawn":
        os.kill(os.getpid(), signal.SIGKILL)
    child = real(*args, **kwargs)
    spawned.append(child.pid)
    if len(spawned) == kills_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return child

process.subprocess.Popen = popen
plane = EmbeddedPlane(state)
plane.store.put_node("local", json.loads(sys.argv[5]))
plane.store.put_tenant("team-a", json.loads(sys.argv[6]))
name = manifest["metadata"]["name"]
plane.store.create_job(name, "team-a", manifest, 0.0, str(plane.checkpoint_dir(name)))
for _ in range(100):
    plane.step()
sys.exit(3)  # never reached the point
"""


def _manifest(name: str, pods: int, script: str) -> dict[str, object]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"tenant": "team-a", "gang": True,
                 "podSets": [{"count": pods, "resources": {"cpu": "100m", "memory": "64Mi"}}],
                 "command": ["/bin/sh", "-c", script]},
    }


def _crash(state: Path, point: str, kills_after: int, manifest: dict[str, object]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(state), point, str(kills_after), json.dumps(manifest),
         json.dumps(NODE), json.dumps(TENANT)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def _until(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline, tick = time.monotonic() + timeout, threading.Event()
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        tick.wait(0.02)


def _leftover_cgroups(job: str) -> list[Path]:
    return [p for p in MOUNT.glob("*/shoal/*") if f"-{job}-" in p.name] + \
        [p for p in MOUNT.glob("shoal/*") if f"-{job}-" in p.name]


@pytest.mark.parametrize(("point", "pods", "kills_after", "ends_first"), [
    ("before-spawn", 1, 0, False),
    ("after-spawn", 1, 1, False),
    ("after-spawn", 1, 1, True),
    ("mid-gang", 2, 1, False),
])
def test_a_plane_killed_while_starting_pods_runs_each_pod_once(
    tmp_path: Path, point: str, pods: int, kills_after: int, ends_first: bool,
) -> None:
    go = tmp_path / "go"
    wait = "" if ends_first else f'while [ ! -e {go} ]; do sleep 0.05; done'
    script = f'echo "start $SHOAL_POD_UID $MASTER_PORT"; {wait}'
    name = f"crash-{point}-{int(ends_first)}"
    _crash(tmp_path / "state", point, kills_after, _manifest(name, pods, script))

    plane = EmbeddedPlane(tmp_path / "state")
    try:
        row = plane.store.get_job(name)
        assert row.phase == "Running" and all(p.handle is None for p in row.pods)
        uids = [p.uid for p in row.pods]
        if ends_first:  # the pod ended while no control plane was up
            _until(lambda: find_pod(uids[0]) is None)
        plane.step()
        plane.step()
        go.touch()
        _until(lambda: plane.step() is not None and plane.store.get_job(name).phase
               not in ("Running", "Stopping"))
        row = plane.store.get_job(name)
        assert (row.phase, row.attempts, row.failures) == ("Succeeded", 1, 0), row.reason
        logs = [plane.log_path(name, i).read_text().splitlines() for i in range(pods)]
        starts = [[line for line in log if line.startswith("start ")] for log in logs]
        assert [len(s) for s in starts] == [1] * pods, f"each pod started once: {logs}"
        assert [s[0].split()[1] for s in starts] == uids, "the recorded pods, no others"
        assert len({s[0].split()[2] for s in starts}) == 1, "one rendezvous port for the gang"
        kinds = [e["kind"] for e in plane.store.events(job=name)]
        assert kinds.count("admitted") == 1 and kinds[-1] == "succeeded", kinds
        assert all(find_pod(uid) is None for uid in uids), "no pod process left"
        assert _leftover_cgroups(name) == [], "no cgroup left"
    finally:
        plane.stop()
        for pid in _pods_of(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _pods_of(tmp_path: Path) -> list[int]:
    """Processes still running a command of this test (cleanup on failure only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) > 1:
            try:
                if str(tmp_path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
