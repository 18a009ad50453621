"""Sandboxed pods (bubblewrap): own PIDs, read-only host, hidden tenants, gang networks.

Skipped without bwrap or root (network namespaces need CAP_SYS_ADMIN). Every
pod reports what it saw as JSON on its log; the tests read it after the exit.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.runtime.local.process import LocalProcesses, PodSpec, PodStatus
from shoal.runtime.local.procfs import group_members, start_ticks, wait_exits
from shoal.runtime.local.sandbox import bwrap_path, create_network, delete_network, netns_name

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or os.geteuid() != 0,
    reason="sandbox tests need bubblewrap (apt-get install -y bubblewrap) and root",
)
PY = sys.executable
Spec = Callable[..., PodSpec]
Finish = Callable[..., PodStatus]
PORT = 7077  # free in any fresh network namespace


@pytest.fixture
def network() -> Iterator[Callable[[], str]]:
    """Make gang networks with unique names; all deleted after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(f"test-{uuid.uuid4().hex[:8]}")
        create_network(made[-1])
        return made[-1]

    yield make
    for name in made:
        delete_network(name)
        assert not Path("/run/netns", netns_name(name)).exists()


def report(pod: PodSpec) -> Any:
    return json.loads(pod.log_path.read_text().splitlines()[-1])


def test_the_pod_sees_only_its_own_processes(pods: LocalProcesses, sandboxed: Spec,
                                             finish: Finish) -> None:
    code = "import os, json; print(json.dumps([os.getpid(), [p for p in os.listdir('/proc') if p.isdigit()]]))"
    pod = sandboxed([PY, "-c", code])
    assert finish(pods.start(pod)) == PodStatus("succeeded", 0, "exited with code 0")
    me, visible = report(pod)
    assert me in (1, 2)
    assert sorted(map(int, visible)) == [1, 2], "bwrap's init and the command, nothing else"


def test_the_host_is_read_only_and_tmp_private(pods: LocalProcesses, sandboxed: Spec,
                                               finish: Finish, tmp_path: Path) -> None:
    marker = Path("/tmp") / f"shoal-host-{uuid.uuid4().hex}"
    marker.write_text("host")
    checkpoints = tmp_path / "checkpoints" / "job"
    code = f"""
import json, os
def attempt(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except OSError as exc:
        return exc.__class__.__name__
print(json.dumps({{
    "etc": attempt("/etc/shoal-sandbox-test"),
    "workdir": attempt("out.txt"),
    "checkpoint": attempt("{checkpoints}/step-1"),
    "host_tmp_visible": os.path.exists("{marker}"),
    "tmp": attempt("/tmp/private"),
    "cgroups": os.listdir("/sys/fs/cgroup") if os.path.isdir("/sys/fs/cgroup") else [],
}}))
"""
    pod = sandboxed([PY, "-c", code], writable=(checkpoints,))
    try:
        assert finish(pods.start(pod)).state == "succeeded"
        seen = report(pod)
    finally:
        marker.unlink()
    assert seen["etc"] == "OSError" and not Path("/etc/shoal-sandbox-test").exists()
    assert seen["workdir"] == "written" and (pod.workdir / "out.txt").exists()
    assert seen["checkpoint"] == "written" and (checkpoints / "step-1").exists()
    assert seen["host_tmp_visible"] is False
    assert seen["tmp"] == "written" and not Path("/tmp/private").exists()
    assert seen["cgroups"] == [], "the cgroup tree (every tenant's pod names) is hidden"


def test_tenants_cannot_see_each_other(pods: LocalProcesses, spec: Spec, sandboxed: Spec,
                                       finish: Finish, fifo: Callable) -> None:
    wait = "import signal, sys; open(sys.argv[1], 'w').write('ready\\n'); signal.pause()"
    a = spec([PY, "-c", wait, "ready"], tenant="team-a", job="secret-job")
    ready = fifo(a.workdir / "ready")
    (a.workdir / "weights.txt").write_text("team a's secret")
    a_handle = pods.start(a)
    assert ready.line() == "ready"

    code = f"""
import json, os
seen = {{"pids": os.listdir("/proc")}}
try:
    seen["read"] = open("{a.workdir / 'weights.txt'}").read()
except OSError as exc:
    seen["read"] = exc.__class__.__name__
try:
    os.kill({a_handle.pid}, 0)
    seen["signal"] = "delivered"
except OSError as exc:
    seen["signal"] = exc.__class__.__name__
seen["jobs_root"] = sorted(os.listdir("{pods.jobs_root}"))
print(json.dumps(seen))
"""
    b = sandboxed([PY, "-c", code], tenant="team-b", job="curious")
    assert finish(pods.start(b)).state == "succeeded"
    seen = report(b)
    assert str(a_handle.pid) not in seen["pids"]
    assert seen["read"] == "FileNotFoundError"
    assert seen["signal"] == "ProcessLookupError"
    assert seen["jobs_root"] == ["team-b"], "only the pod's own workdir is bound back"
    assert pods.poll(a_handle).state == "running"


def test_a_gang_shares_loopback_and_nobody_else_does(
    pods: LocalProcesses, sandboxed: Spec, finish: Finish, fifo: Callable,
    network: Callable[[], str],
) -> None:
    gang, other_gang = network(), network()
    server_code = f"""
import socket, sys
server = socket.create_server(("127.0.0.1", {PORT}))
open(sys.argv[1], "w").write("listening\\n")
conn, _ = server.accept()
print(conn.recv(100).decode())
"""
    client_code = f"""
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {PORT}), timeout=10).sendall(sys.argv[1].encode())
    print("connected")
except OSError as exc:
    print(exc.__class__.__name__)
"""
    server = sandboxed([PY, "-c", server_code, "listening"], job="gang", network=gang)
    listening = fifo(server.workdir / "listening")
    server_handle = pods.start(server)
    assert listening.line() == "listening"

    outsiders = [
        sandboxed([PY, "-c", client_code, "x"], job="other", network=other_gang),
        sandboxed([PY, "-c", client_code, "x"], job="alone"),  # network None: its own
    ]
    for outsider in outsiders:
        assert finish(pods.start(outsider)).state == "succeeded"
        assert outsider.log_path.read_text().strip() == "ConnectionRefusedError"

    member = sandboxed([PY, "-c", client_code, "hello rank 0"], job="gang", index=1, network=gang)
    assert finish(pods.start(member)).state == "succeeded"
    assert member.log_path.read_text().strip() == "connected"
    assert finish(server_handle).state == "succeeded"
    assert server.log_path.read_text().strip() == "hello rank 0"


@pytest.mark.parametrize("recorded", [False, True], ids=["plain", "exit-recorded"])
def test_terminate_waits_for_the_sandboxed_command(pods: LocalProcesses, sandboxed: Spec,
                                                   finish: Finish, fifo: Callable,
                                                   tmp_path: Path, recorded: bool) -> None:
    # Blocks SIGTERM and sigwaits for it (no pause() race), reports it, then waits
    # for the test's go-ahead before exiting 0: a slow, clean shutdown.
    code = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
events = open(sys.argv[1], "w", buffering=1)
events.write("ready\\n")
signal.sigwait({signal.SIGTERM})
events.write("terminating\\n")
open(sys.argv[2]).readline()
"""
    exit_file = tmp_path / "logs" / "pod.exit" if recorded else None
    pod = sandboxed([PY, "-c", code, "events", "go"], exit_file=exit_file)
    events, go = fifo(pod.workdir / "events"), fifo(pod.workdir / "go")
    handle = pods.start(pod)
    assert events.line() == "ready"
    pods.terminate(handle, grace_s=30)
    assert events.line() == "terminating"
    assert pods.poll(handle).state == "running", "still shutting down: not gone yet"
    go.send("go")
    assert finish(handle) == PodStatus("succeeded", 0, "exited with code 0")
    if exit_file is not None:
        assert exit_file.read_text() == "0\n"




@pytest.mark.parametrize(
    ("told", "expected", "gang"),
    [
        ("3", PodStatus("failed", 3, "exited with code 3"), False),
        ("0", PodStatus("succeeded", 0, "exited with code 0"), False),
        ("kill", PodStatus("signalled", 137, "killed by signal SIGKILL"), False),
        ("3", PodStatus("failed", 3, "exited with code 3"), True),
    ],
    ids=["failed", "succeeded", "signalled", "failed-in-a-gang-network"],
)
def test_a_pod_that_ends_while_no_control_plane_runs(
    pods: LocalProcesses, sandboxed: Spec, finish: Finish, fifo: Callable,
    network: Callable[[], str], tmp_path: Path, told: str, expected: PodStatus, gang: bool,
    end_as_told: str,
) -> None:
    exit_file = tmp_path / "logs" / "pod.exit"
    pod = sandboxed([PY, "-c", end_as_told, "ready", "told"], exit_file=exit_file,
                    network=network() if gang else None)
    ready, tell = fifo(pod.workdir / "ready"), fifo(pod.workdir / "told")
    handle = pods.start(pod)
    assert ready.line() == "ready"

    # A restarted control plane knows the pod only by what it recorded.
    restarted = LocalProcesses(root_cgroup=pods.cgroups.root, jobs_root=pods.jobs_root)
    adopted = restarted.adopt(handle.pid, handle.start_ticks, pod, handle.cgroup)
    assert adopted is not None
    assert restarted.poll(adopted).state == "running"
    tell.send(told)
    assert restarted.wait_any([adopted], 20) == [adopted]
    assert restarted.poll(adopted) == expected, "not lost: the exit code was recorded"
    assert exit_file.read_text() == f"{expected.exit_code}\n"
    assert finish(handle) == expected, "its first parent sees the same"


def test_kill_ends_the_whole_sandbox(pods: LocalProcesses, sandboxed: Spec, finish: Finish,
                                     fifo: Callable) -> None:
    code = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write("ready\\n")
signal.pause()
"""
    pod = sandboxed([PY, "-c", code, "ready"])
    ready = fifo(pod.workdir / "ready")
    handle = pods.start(pod)
    assert ready.line() == "ready"
    pods.terminate(handle, grace_s=0.1)
    assert pods.wait_any([handle], 0.2) == []
    pods.kill(handle)
    assert finish(handle).state == "signalled"
    # bwrap's init and the command got SIGKILL too; wait (pidfds) for them to die.
    for pid in group_members(handle.pid):
        assert wait_exits([(pid, start_ticks(pid) or 0)], 20) == [0], "nothing of the pod is left"


def test_oom_inside_the_sandbox(pods: LocalProcesses, sandboxed: Spec, finish: Finish) -> None:
    if "memory" not in pods.cgroups.controllers:
        pytest.skip(f"no memory cgroup here: {pods.cgroups.problem}")
    pod = sandboxed([PY, "-c", "data = b'x' * (300 * 1024 * 1024)"], memory_mib=64)
    assert finish(pods.start(pod)) == PodStatus("oom_killed", 137, "OOMKilled: memory limit 64Mi")
