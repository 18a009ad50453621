"""kubectl-style verbs against the background control plane the first command starts."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from tests.cli.conftest import Shell
from tests.control.conftest import CLUSTER, job, wait_for

QUICK = ["python", "-c", "print('done')"]
SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]
STARTED = "started a background control plane"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def phases(sh: Shell) -> dict[str, str]:
    result = sh("get", "jobs", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {j["name"]: j["phase"] for j in json.loads(result.stdout)}


def test_queued_jobs_advance_between_commands(sh: Shell, tmp_path: Path) -> None:
    first = sh("apply", "-f", str(write(tmp_path, "c.yaml", CLUSTER)))
    assert first.returncode == 0, first.stderr
    assert STARTED in first.stderr and "tenant/team-a created" in first.stdout
    second = sh("apply", "-f", str(write(tmp_path, "j.yaml", job("quick", "team-a", QUICK))))
    assert second.returncode == 0 and STARTED not in second.stderr
    # No command runs now: only the background server can finish the job.
    wait_for(lambda: phases(sh).get("quick") == "Succeeded")
    assert sh("logs", "quick").stdout.strip() == "done"
    again = sh("apply", "-f", str(tmp_path / "c.yaml"))
    assert "tenant/team-a unchanged" in again.stdout


def test_a_missing_pod_names_the_valid_ones(sh: Shell, tmp_path: Path) -> None:
    sh("apply", "-f", str(write(tmp_path, "c.yaml", CLUSTER + "---\n" + job("one", "team-a", QUICK))))
    result = sh("logs", "one", "--pod", "5")
    assert result.returncode == 2
    assert "no pod 5 (pods: 0)" in result.stderr


def test_apply_a_folder_all_or_nothing(sh: Shell, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    write(folder, "1-cluster.yaml", CLUSTER)
    write(folder, "2-job.yml", job("nowhere", "team-z", QUICK))
    write(folder, "notes.txt", "not a manifest")
    result = sh("apply", "-f", str(folder))
    assert result.returncode == 2 and "team-z" in result.stderr
    assert json.loads(sh("get", "tenants", "-o", "json").stdout) == []
    good = tmp_path / "good"
    write(good, "1-cluster.yaml", CLUSTER)
    write(good, "2-job.yaml", job("fine", "team-a", SLEEPER))
    result = sh("apply", "-f", str(good))
    assert result.returncode == 0, result.stderr
    assert "trainingjob/fine created" in result.stdout


def test_get_describe_and_delete(sh: Shell, tmp_path: Path) -> None:
    text = CLUSTER + "---\n" + job("a1", "team-a", SLEEPER, gpus=3)
    sh("apply", "-f", str(write(tmp_path, "all.yaml", text)))
    wait_for(lambda: phases(sh) == {"a1": "Running"})
    sh("apply", "-f", str(write(tmp_path, "a2.yaml", job("a2", "team-a", SLEEPER, gpus=2))))
    wait_for(lambda: phases(sh) == {"a1": "Running", "a2": "Pending"})
    tenants = sh("get", "tenants")
    assert tenants.returncode == 0, tenants.stderr
    header, *rows = tenants.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "COHORT"] and "BORROWED" in header
    team_a = next(r for r in rows if r.startswith("team-a"))
    assert "gpu/virtual=3" in team_a and "gpu/virtual=1" in team_a  # usage, borrowed
    described = sh("describe", "job", "a1")
    assert "podSet worker: count=1" in described.stdout and "gpu=3" in described.stdout
    assert "submitted" in described.stdout and "sigwait" in described.stdout
    assert "a1" in sh("get", "jobs", "a1").stdout
    assert sh("get", "jobs", "zzz").returncode == 2
    assert "Pending" in sh("get", "jobs", "-o", "wide").stdout
    deleted = sh("delete", "job", "--all")
    assert deleted.returncode == 0
    assert "job/a1 deleted" in deleted.stdout and "job/a2 deleted" in deleted.stdout
    wait_for(lambda: set(phases(sh).values()) <= {"Cancelled"})


def test_concurrent_first_commands_share_one_server(sh: Shell) -> None:
    commands = [sh.popen("get", "jobs") for _ in range(3)]
    outputs = [c.communicate(timeout=120) for c in commands]
    assert all(c.returncode == 0 for c in commands), outputs
    assert sum(STARTED in err for _, err in outputs) == 1


def test_server_stop(sh: Shell) -> None:
    assert sh("get", "jobs").returncode == 0
    pid = sh.server_pid()
    assert pid is not None
    result = sh("server", "stop")
    assert result.returncode == 0 and f"pid {pid}" in result.stdout
    assert sh.server_pid() is None
    assert "no control plane is running" in sh("server", "stop").stdout


def test_server_on_a_busy_port_fails_and_records_nothing(sh: Shell) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = sh("server", "--port", str(port))
    assert result.returncode == 1
    assert "in use" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (sh.home / "server.json").exists()


def test_ctrl_c_on_watch_says_the_jobs_keep_running(sh: Shell) -> None:
    watcher = sh.popen("get", "jobs", "--watch")
    assert watcher.stdout is not None
    assert "No jobs." in watcher.stdout.readline()  # the first listing is out: it is watching
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 130
    assert "the jobs keep running" in err and "Traceback" not in err


def test_odd_names_and_state_folders_get_one_clear_line(sh: Shell, tmp_path: Path) -> None:
    sh("apply", "-f", str(write(tmp_path, "c.yaml", CLUSTER + "---\n" + job("a", "team-a", QUICK))))
    found = sh("describe", "job", "a?b")  # must not read job "a"
    assert found.returncode == 2 and "job 'a?b' not found" in found.stderr
    assert sh("delete", "job", "a?b").returncode == 2
    assert "a" in phases(sh), "nothing deleted"
    file_home = tmp_path / "not-a-folder"
    file_home.write_text("x")
    odd = Shell(file_home)
    result = odd("get", "jobs")
    assert result.returncode == 2 and "cannot use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_malformed_server_record_is_treated_as_stale(sh: Shell) -> None:
    sh.home.mkdir(parents=True, exist_ok=True)
    (sh.home / "server.json").write_text('{"url": "http://[::1", "pid": -1}')
    result = sh("get", "jobs")
    assert result.returncode == 0, result.stderr
    assert STARTED in result.stderr
