"""Pod limits through cgroups: memory (OOM kill), PIDs (fork bomb), CPU quota.

The tests on the real hierarchy need root and writable cgroups; they skip with
the reason otherwise. The v2 file formats are checked on a fake hierarchy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.runtime.local import process
from shoal.runtime.local.cgroups import Cgroups, Limits
from shoal.runtime.local.process import LocalProcesses, PodSpec, PodStatus

PY = sys.executable
Spec = Callable[..., PodSpec]
Finish = Callable[..., PodStatus]

FORK_BOMB = """
import json, os
read, write = os.pipe()
started = refused = 0
for _ in range(50):
    try:
        pid = os.fork()
    except BlockingIOError:   # EAGAIN: pids.max reached
        refused += 1
        continue
    if pid == 0:
        os.close(write)
        os.read(read, 1)      # hold the PID until the parent closes the pipe
        os._exit(0)
    started += 1
os.close(write)
for _ in range(started):
    os.wait()
print(json.dumps({"started": started, "refused": refused}))
"""


@pytest.fixture
def limited(pods: LocalProcesses) -> LocalProcesses:
    if not pods.cgroups.available:
        pytest.skip(f"cgroups unavailable here: {pods.cgroups.problem}")
    return pods


def test_memory_limit_reports_oom_killed(limited: LocalProcesses, spec: Spec,
                                         finish: Finish) -> None:
    grab = "data = b'x' * (300 * 1024 * 1024); print('survived')"
    handle = limited.start(spec([PY, "-c", grab], memory_mib=64))
    assert finish(handle) == PodStatus("oom_killed", 137, "OOMKilled: memory limit 64Mi")


def test_pids_limit_stops_a_fork_bomb(limited: LocalProcesses, spec: Spec, finish: Finish) -> None:
    if "pids" not in limited.cgroups.controllers:
        pytest.skip("no pids controller")
    pod = spec([PY, "-c", FORK_BOMB], pids_limit=10)
    assert finish(limited.start(pod)).state == "succeeded"
    counts = json.loads(pod.log_path.read_text())
    assert counts["started"] <= 9, "the pod's own process counts against pids.max"
    assert counts["refused"] == 50 - counts["started"]


def test_limits_are_written(limited: LocalProcesses, spec: Spec, finish: Finish,
                            fifo: Callable) -> None:
    wait = "import signal, sys; open(sys.argv[1], 'w').write('ready\\n'); signal.pause()"
    pod = spec([PY, "-c", wait, "ready"], cpu_milli=1500, memory_mib=256, pids_limit=32)
    ready = fifo(pod.workdir / "ready")
    handle = limited.start(pod)
    assert ready.line() == "ready"
    assert handle.cgroup is not None and handle.cgroup.endswith("-job-0")
    groups = limited.cgroups
    if groups.version == 1:
        cpu = groups.path(handle.cgroup, "cpu")
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "150000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
        memory = groups.path(handle.cgroup, "memory") / "memory.limit_in_bytes"
        assert memory.read_text().strip() == str(256 * 1024 * 1024)
    else:
        cpu_max = groups.path(handle.cgroup, "cpu") / "cpu.max"
        assert cpu_max.read_text().split() == ["150000", "100000"]
    assert (groups.path(handle.cgroup, "pids") / "pids.max").read_text().strip() == "32"
    assert groups.pids(handle.cgroup) == {handle.pid}, "the pod runs inside its cgroup"

    limited.kill(handle)
    assert finish(handle).state == "signalled"
    assert not groups.path(handle.cgroup, "memory").exists(), "the cgroup is removed"


def test_without_cgroups_pods_run_unlimited_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: Spec
) -> None:
    monkeypatch.setattr(process, "Cgroups", lambda root: Cgroups(root, mount=tmp_path / "none"))
    warnings: list[str] = []
    pods = LocalProcesses(warn=warnings.append)
    handles = [pods.start(spec(["true"], index=i, memory_mib=64)) for i in range(2)]
    for handle in handles:
        while pods.poll(handle).state == "running":
            pods.wait_any([handle], 20)
        assert pods.poll(handle).state == "succeeded" and handle.cgroup is None
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "limits are not enforced" in warnings[0]


def test_cgroup_v2_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    groups = Cgroups("shoal", mount=tmp_path)
    assert groups.version == 2 and groups.problem is None
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    procs = groups.create("shoal/job-0", Limits(cpu_milli=250, memory_mib=512, pids=8))
    pod = tmp_path / "shoal" / "job-0"
    assert procs == [pod / "cgroup.procs"]
    assert (pod / "cpu.max").read_text() == "25000 100000"
    assert (pod / "memory.max").read_text() == str(512 * 1024 * 1024)
    assert (pod / "pids.max").read_text() == "8"
    assert groups.oom_kills("shoal/job-0") == 0
    (pod / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert groups.oom_kills("shoal/job-0") == 1
