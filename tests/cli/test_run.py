"""``shoal run`` as a user runs it: event-driven arrivals, exit codes, Ctrl-C, where state is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

CLUSTER = """\
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: local}
spec: {count: 1, cpu: 2, memory: 2Gi, gpus: {model: virtual, count: 2}}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team}
spec: {quota: {cpu: {nominal: 2}, memory: {nominal: 2Gi}, gpus: {virtual: {nominal: 2}}}}
"""


def job(name: str, code: str, annotations: dict[str, str] | None = None) -> str:
    meta = {"name": name, **({"annotations": annotations} if annotations else {})}
    return "---\n" + json.dumps({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob", "metadata": meta,
        "spec": {"tenant": "team", "maxRetries": 0,
                 "podSets": [{"count": 1, "resources": {"cpu": "100m", "memory": "128Mi",
                                                          "gpu": 1}}],
                 "command": [sys.executable, "-c", code]},
    }) + "\n"


def run(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "shoal", "run", str(path), "--state-dir", str(tmp_path / "state"),
         "--grace", "2", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )


def test_a_job_submitted_on_an_event_arrives_after_it(tmp_path: Path) -> None:
    text = CLUSTER + job("first", "pass") + job(
        "second", "pass", {"shoal.dev/submit-when": "first succeeded"})
    done = run(tmp_path, text, "-o", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    order = [(e["event"], e["job"]) for e in report["events"]
             if (e["event"], e["job"]) in (("succeeded", "first"), ("submitted", "second"))]
    assert order == [("succeeded", "first"), ("submitted", "second")]
    assert report["state_dir"] == str(tmp_path / "state")


def test_a_failed_job_makes_the_run_fail_after_the_report(tmp_path: Path) -> None:
    done = run(tmp_path, CLUSTER + job("ok", "pass") + job("broken", "raise SystemExit(3)"))
    assert done.returncode == 1
    assert "RESUMED FROM" in done.stdout and "broken" in done.stdout, "the report is printed"
    assert "1 job(s) did not succeed: broken (Failed: exited with code 3)" in done.stderr


def test_bad_arrival_annotations_are_located_input_errors(tmp_path: Path) -> None:
    cases = {
        "nobody succeeded": "'nobody' is not another TrainingJob",
        "first whenever": "expected '<job> <condition>'",
    }
    for when, message in cases.items():
        text = CLUSTER + job("first", "pass") + job("second", "pass",
                                                    {"shoal.dev/submit-when": when})
        done = run(tmp_path, text)
        assert done.returncode == 2, done.stderr
        assert "TrainingJob second: metadata.annotations.shoal.dev/submit-when" in done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
    loop = CLUSTER + job("a", "pass", {"shoal.dev/submit-when": "b running"}) + job(
        "b", "pass", {"shoal.dev/submit-when": "a running"})
    done = run(tmp_path, loop)
    assert done.returncode == 2 and "waits in a circle: a -> b -> a" in done.stderr


def test_an_event_that_can_no_longer_happen_fails_the_run(tmp_path: Path) -> None:
    text = CLUSTER + job("first", "raise SystemExit(1)") + job(
        "second", "pass", {"shoal.dev/submit-when": "first succeeded"})
    done = run(tmp_path, text)
    assert done.returncode == 1
    assert "second waits for first to be succeeded, but first ended Failed" in done.stderr


def test_ctrl_c_stops_the_jobs_and_exits_130(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    code = (f"import os, pathlib, time; pathlib.Path({str(marker)!r}).write_text(str(os.getpid()));"
            " time.sleep(600)")
    path = tmp_path / "scenario.yaml"
    path.write_text(CLUSTER + job("forever", code))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "run", str(path), "--state-dir", str(tmp_path / "state"),
         "--grace", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    tick = threading.Event()
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job never started"
        tick.wait(0.05)
    pod = int(marker.read_text())
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: stopping the scenario's jobs" in stderr
    assert "Traceback" not in stderr
    try:
        os.kill(pod, 0)
        alive = not Path(f"/proc/{pod}/stat").read_text().split(") ")[1].startswith("Z")
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive, "the scenario's pod was stopped"


def test_the_last_job_to_arrive_on_an_event_runs_and_is_reported(tmp_path: Path) -> None:
    text = CLUSTER + job("a", "pass") + job("b", "pass", {"shoal.dev/submit-when": "a finished"})
    done = run(tmp_path, text, "-o", "json")
    assert done.returncode == 0, done.stderr
    phases = {j["name"]: j["phase"] for j in json.loads(done.stdout)["jobs"]}
    assert phases == {"a": "Succeeded", "b": "Succeeded"}


def test_the_report_names_the_runs_folder_and_rm_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(CLUSTER + job("only", "pass"))
    # Runs make their folders in the temporary directory: one of the test's
    # own, so that other runs on the machine (another suite, say) cannot
    # add folders while it counts them.
    temp = tmp_path / "tmp"
    temp.mkdir()

    def folders() -> set[Path]:
        return set(temp.glob("shoal-run-scenario-*"))

    def shoal_run(*extra: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "shoal", "run", str(path), "-o", "json",
                               *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              check=False, env={**os.environ, "TMPDIR": str(temp)})
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    kept = Path(shoal_run()["state_dir"])
    assert folders() == {kept}
    assert len(list(kept.glob("jobs/*/only/logs/pod-0.log"))) == 1
    assert shoal_run("--rm")["state_dir"] is None
    assert folders() == {kept}, "--rm leaves no folder behind"
