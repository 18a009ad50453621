"""The local pod launcher with process isolation: real processes, real exit codes.

Fixtures (``pods``, ``spec``, ``finish``, ``fifo``) are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.errors import InputError
from shoal.runtime.local.discover import find_pod
from shoal.runtime.local.process import (
    CommandNotFoundError,
    LocalProcesses,
    PodSpec,
    PodStatus,
    WorkdirError,
)
from shoal.runtime.local.procfs import read_stat, start_ticks, wait_exits

PY = sys.executable
Spec = Callable[..., PodSpec]
Finish = Callable[..., PodStatus]

# Tells the test it is ready through the FIFO at argv[1], then waits to be signalled.
# sigwait on a blocked SIGTERM, not a handler and pause(): a signal landing between
# the handler check and pause() would be missed until the next one.
ON_TERM_WRITE_AND_EXIT = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
open(sys.argv[1], "w").write("ready\\n")
signal.sigwait({signal.SIGTERM})
open("terminated", "w").write("clean shutdown")
"""
IGNORE_TERM = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write("ready\\n")
while True:
    signal.pause()
"""


def test_env_cwd_and_log(pods: LocalProcesses, spec: Spec, finish: Finish,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_PLANE_SECRET", "s3cret")
    code = (
        "import os, sys, json; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}));"
        "print('to stderr', file=sys.stderr)"
    )
    pod = spec([PY, "-c", code], env={"RANK": "3", "WORLD_SIZE": "4"}, index=3)
    handle = pods.start(pod)
    assert handle.start_ticks == start_ticks(handle.pid) or read_stat(handle.pid) is None

    assert finish(handle) == PodStatus("succeeded", 0, "exited with code 0")
    out, err = pod.log_path.read_text().splitlines()
    seen = json.loads(out)
    assert seen["cwd"] == str(pod.workdir) and pod.workdir.is_dir()
    env = seen["env"]
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "4" and env["PYTHONUNBUFFERED"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "", "no GPU by accident"
    assert env["SHOAL_TENANT"] == "team-a" and env["SHOAL_JOB"] == "job"
    assert "CONTROL_PLANE_SECRET" not in env, "the control plane's environment must not leak"
    assert err == "to stderr"


def test_log_is_appended(pods: LocalProcesses, spec: Spec, finish: Finish) -> None:
    pod = spec(["echo", "attempt"])
    for _ in range(2):
        assert finish(pods.start(pod)).state == "succeeded"
    assert pod.log_path.read_text() == "attempt\nattempt\n"


def test_command_not_found_is_a_clear_input_error(pods: LocalProcesses, spec: Spec) -> None:
    with pytest.raises(CommandNotFoundError, match="command 'no-such-trainer' not found") as info:
        pods.start(spec(["no-such-trainer", "--epochs", "3"]))
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    with pytest.raises(CommandNotFoundError, match="empty command"):
        pods.start(spec([]))


def test_relative_command_runs_from_the_workdir(pods: LocalProcesses, spec: Spec,
                                                finish: Finish) -> None:
    pod = spec(["./train.sh"])
    pod.workdir.mkdir(parents=True)
    script = pod.workdir / "train.sh"
    script.write_text("#!/bin/sh\necho trained\n")
    script.chmod(0o755)
    assert finish(pods.start(pod)).state == "succeeded"
    assert pod.log_path.read_text() == "trained\n"


def test_workdir_that_cannot_be_created(pods: LocalProcesses, spec: Spec, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    pod = spec(["true"], workdir=tmp_path / "a-file" / "work")
    with pytest.raises(WorkdirError, match="cannot create"):
        pods.start(pod)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("raise SystemExit(3)", PodStatus("failed", 3, "exited with code 3")),
        ("import os; os.kill(os.getpid(), 9)", PodStatus("signalled", 137, "killed by signal SIGKILL")),
        ("pass", PodStatus("succeeded", 0, "exited with code 0")),
    ],
)
def test_exit_codes(pods: LocalProcesses, spec: Spec, finish: Finish,
                    code: str, expected: PodStatus) -> None:
    handle = pods.start(spec([PY, "-c", code]))
    assert finish(handle) == expected
    assert pods.poll(handle) == expected, "polling a finished pod again gives the same status"


def test_terminate_lets_the_pod_shut_down_cleanly(pods: LocalProcesses, spec: Spec,
                                                  finish: Finish, fifo: Callable) -> None:
    pod = spec([PY, "-c", ON_TERM_WRITE_AND_EXIT, "ready"])
    ready = fifo(pod.workdir / "ready")
    handle = pods.start(pod)
    assert ready.line() == "ready"
    pods.terminate(handle, grace_s=30)
    assert finish(handle) == PodStatus("succeeded", 0, "exited with code 0")
    assert (pod.workdir / "terminated").read_text() == "clean shutdown"


def test_a_pod_ignoring_sigterm_needs_kill(pods: LocalProcesses, spec: Spec, finish: Finish,
                                           fifo: Callable) -> None:
    pod = spec([PY, "-c", IGNORE_TERM, "ready"])
    ready = fifo(pod.workdir / "ready")
    handle = pods.start(pod)
    assert ready.line() == "ready"
    pods.terminate(handle, grace_s=0.2)
    # The grace period passes (a bounded wait on the exit, which does not come).
    assert pods.wait_any([handle], 0.2) == []
    assert pods.poll(handle).state == "running"
    pods.kill(handle)
    assert finish(handle) == PodStatus("signalled", 137, "killed by signal SIGKILL")


def test_processes_left_behind_end_with_the_pod(pods: LocalProcesses, spec: Spec,
                                                finish: Finish) -> None:
    code = "import subprocess; p = subprocess.Popen(['sleep', '600']); print(p.pid)"
    pod = spec([PY, "-c", code])
    assert finish(pods.start(pod)).state == "succeeded"
    orphan = read_stat(int(pod.log_path.read_text()))
    # SIGKILLed when the pod ended; wait (pidfd) for it to finish dying.
    assert orphan is None or wait_exits([(orphan.pid, orphan.start_ticks)], 20) == [0]


def test_adopt_after_a_restart(pods: LocalProcesses, spec: Spec, finish: Finish,
                               fifo: Callable) -> None:
    pod = spec([PY, "-c", IGNORE_TERM, "ready"])
    ready = fifo(pod.workdir / "ready")
    handle = pods.start(pod)
    assert ready.line() == "ready"

    restarted = LocalProcesses(root_cgroup=pods.cgroups.root, jobs_root=pods.jobs_root)
    assert restarted.adopt(handle.pid, handle.start_ticks + 1, pod, handle.cgroup) is None
    assert restarted.adopt(2**22 + 7, handle.start_ticks, pod, None) is None
    adopted = restarted.adopt(handle.pid, handle.start_ticks, pod, handle.cgroup)
    assert adopted is not None and adopted.pid == handle.pid
    assert restarted.poll(adopted).state == "running"

    restarted.kill(adopted)  # the restarted plane can stop what it adopted
    assert finish(handle).state == "signalled"  # seen by the original parent
    lost = restarted.poll(adopted)  # not its child: no exit code to read
    assert lost.state == "lost" and lost.exit_code is None


def test_a_pod_whose_pid_was_never_recorded_is_found_by_its_id_and_by_its_cgroup(
    pods: LocalProcesses, spec: Spec, fifo: Callable,
) -> None:
    # The plane died before it recorded the pid: a restarted one finds the pod's first
    # process by the id in its environment, and by its cgroup while an execve hides that.
    uid = f"found-{os.getpid()}"
    pod = spec(["/bin/sh", "-c", f"sleep 60 & sleep 60 & {PY} -c \"$0\" ready; wait",
                IGNORE_TERM], env={"SHOAL_POD_UID": uid})
    ready = fifo(pod.workdir / "ready")
    handle = pods.start(pod)
    assert ready.line() == "ready"
    assert find_pod(uid) == (handle.pid, handle.start_ticks)
    restarted = LocalProcesses(root_cgroup=pods.cgroups.root, jobs_root=pods.jobs_root)
    if not restarted.cgroups.available:
        pytest.skip(f"cgroups: {restarted.cgroups.problem}")
    assert restarted.first_member(pod) == (handle.pid, handle.start_ticks)
    other = spec(["true"], env={"SHOAL_POD_UID": f"{uid}-other"}, job="other")
    assert restarted.first_member(other) is None


@pytest.mark.parametrize(
    ("told", "expected"),
    [
        ("3", PodStatus("failed", 3, "exited with code 3")),
        ("kill", PodStatus("signalled", 137, "killed by signal SIGKILL")),
    ],
)
def test_an_adopted_pod_that_ended_reports_its_recorded_exit(
    pods: LocalProcesses, spec: Spec, finish: Finish, fifo: Callable, tmp_path: Path,
    told: str, expected: PodStatus, end_as_told: str,
) -> None:
    code = end_as_told
    exit_file = tmp_path / "logs" / "pod.exit"
    pod = spec([PY, "-c", code, "ready", "told"], exit_file=exit_file)
    ready, tell = fifo(pod.workdir / "ready"), fifo(pod.workdir / "told")
    handle = pods.start(pod)
    assert ready.line() == "ready"
    restarted = LocalProcesses(root_cgroup=pods.cgroups.root, jobs_root=pods.jobs_root)
    adopted = restarted.adopt(handle.pid, handle.start_ticks, pod, handle.cgroup)
    assert adopted is not None
    tell.send(told)
    assert restarted.wait_any([adopted], 20) == [adopted]
    assert restarted.poll(adopted) == expected
    assert finish(handle) == expected, "the shell that records it reports 128 + n as a signal"


def test_wait_any_returns_the_pod_that_ended(pods: LocalProcesses, spec: Spec, finish: Finish,
                                            fifo: Callable) -> None:
    slow = spec([PY, "-c", IGNORE_TERM, "ready"], job="slow")
    ready = fifo(slow.workdir / "ready")
    slow_handle = pods.start(slow)
    assert ready.line() == "ready"
    quick_handle = pods.start(spec(["true"], job="quick"))
    assert pods.wait_any([slow_handle, quick_handle], 20) == [quick_handle]
    assert finish(quick_handle).state == "succeeded"
    assert pods.poll(slow_handle).state == "running"
    os.killpg(slow_handle.pid, signal.SIGKILL)
    assert finish(slow_handle).state == "signalled"
