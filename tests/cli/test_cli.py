"""The shoal command as a user runs it: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.control.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def shoal(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )


def scenario(tmp_path: Path, body: str, jobs: str | None = None) -> Path:
    if jobs is not None:
        (tmp_path / "jobs.csv").write_text(jobs)
    path = tmp_path / "sim.yaml"
    path.write_text(body)
    return path


GOOD = """\
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {name: tiny}
spec:
  cluster:
    nodePools:
      - {name: gpu, count: 2, cpu: 32, memory: 128Gi, gpus: {model: A100, count: 4}}
  tenants:
    - {name: a, cohort: lab, quota: {cpu: {nominal: 32}, memory: {nominal: 128Gi}, gpus: {A100: {nominal: 4}}}}
    - {name: b, cohort: lab, quota: {cpu: {nominal: 32}, memory: {nominal: 128Gi}, gpus: {A100: {nominal: 4}}}}
  trace: {path: jobs.csv, format: csv}
  mode: replay
  policies: [best-fit, fgd]
"""
JOBS = "name,submitTime,duration,gpus,cpu,tenant,priority\n" + "".join(
    f"j{i},{i * 10},{300 + 7 * i},{[1, 0.5, 2][i % 3]},2,{'ab'[i % 2]},normal\n" for i in range(30)
)


def test_replay_json_has_the_stable_fields(tmp_path: Path) -> None:
    result = shoal("sim", str(scenario(tmp_path, GOOD, JOBS)), "--output", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["policy"] for r in report["results"]] == ["best-fit", "fgd"]
    for item in report["results"]:
        assert item["mode"] == "replay" and item["wall_time_s"] >= 0
        metrics = item["metrics"]
        for key in ("jct_mean_s", "jct_p50_s", "jct_p99_s", "queue_delay_mean_s",
                    "gpu_allocation_mean", "fragmentation_mean", "preemptions",
                    "lost_gpu_hours", "per_tenant"):
            assert key in metrics
        assert metrics["jobs_completed"] == 30
        assert 0 <= metrics["fragmentation_mean"] < 1
        assert len(metrics["timeline"]["fragmentation"]) == len(metrics["timeline"]["time_s"])
        assert {t["tenant"] for t in metrics["per_tenant"]} == {"a", "b"}
        for tenant in metrics["per_tenant"]:
            assert set(tenant) >= {"tenant", "entitlement", "share_mean",
                                   "queue_delay_mean_s", "jct_mean_s"}
            assert tenant["entitlement"] == pytest.approx(0.5)


def test_fill_shortcut_on_the_real_trace(openb_dir: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    result = shoal("sim", "--trace", str(openb_dir), "--mode", "fill",
                   "--policy", "best-fit,gpu-packing", "--seeds", "42-43",
                   "--output", "json", "--html", str(html))
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [r["policy"] for r in results] == ["best-fit", "gpu-packing"]
    for item in results:
        metrics = item["metrics"]
        assert item["seeds"] == [42, 43]
        assert len(metrics["fill_curve"]) == 130
        point = metrics["fill_curve"][-1]
        assert set(point) == {"arrived_gpu_fraction", "allocated_gpu_fraction"}
        assert 0.85 < 1 - metrics["unallocated_gpu_fraction_at_full"] < 0.97
    assert "<svg" in html.read_text()


BAD = [
    ("malformed yaml", GOOD.replace("mode: replay", "mode: [replay"), "sim.yaml:"),
    ("unknown field", GOOD.replace("cohort: lab, quota", "cohort: lab, qouta", 1), "qouta"),
    ("negative cpu", GOOD.replace("cpu: 32, memory: 128Gi, gpus", "cpu: -4, memory: 128Gi, gpus"),
     "spec.cluster.nodePools[0].cpu"),
    ("gpu fraction above 1", None, "fraction"),
    ("unknown policy", GOOD.replace("[best-fit, fgd]", "[bestfit]"), "unknown placement policy"),
]


@pytest.mark.parametrize(("case", "body", "needle"), BAD, ids=[c[0] for c in BAD])
def test_bad_scenarios_fail_with_one_clear_line(
    tmp_path: Path, case: str, body: str | None, needle: str
) -> None:
    if body is None:
        path = tmp_path / "job.yaml"
        path.write_text(
            "apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: j}\n"
            "spec:\n  tenant: a\n  podSets:\n    - resources: {gpu: {fraction: 1.5}}\n"
        )
        result = shoal("validate", str(path))
    else:
        result = shoal("sim", str(scenario(tmp_path, body, JOBS)))
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_trace_naming_an_unknown_tenant_is_rejected(tmp_path: Path) -> None:
    result = shoal("sim", str(scenario(tmp_path, GOOD, JOBS.replace(",a,", ",zeta,"))))
    assert result.returncode == 2
    assert "zeta" in result.stderr and "Traceback" not in result.stderr


def test_trace_with_a_missing_column_names_it(tmp_path: Path) -> None:
    jobs = JOBS.replace("submitTime", "submitted")
    result = shoal("sim", str(scenario(tmp_path, GOOD, jobs)))
    assert result.returncode == 2
    assert "submitTime" in result.stderr and "jobs.csv" in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = shoal("--debug", "sim", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_missing_scenario_file(tmp_path: Path) -> None:
    result = shoal("sim", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


# -- the error boundary ---------------------------------------------------------


@pytest.mark.parametrize("args", [("get", "--bogus"), ("nope",), ("logs",)],
                         ids=["unknown option", "unknown command", "missing argument"])
def test_usage_errors_are_one_line_with_exit_2(args: tuple[str, ...]) -> None:
    result = shoal(*args)
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "--help" in result.stderr


def test_version() -> None:
    result = shoal("--version")
    assert result.returncode == 0 and result.stdout.startswith("shoal ")


@pytest.mark.parametrize("verb", ["apply", "validate"])
def test_malformed_yaml_is_a_located_error(tmp_path: Path, verb: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {name: [x\n")
    args = ("apply", "-f", str(path)) if verb == "apply" else ("validate", str(path))
    result = shoal(*args, "--state-dir", str(tmp_path / "home")) if verb == "apply" else shoal(*args)
    assert result.returncode == 2, result.stderr
    assert f"{path}:" in result.stderr and "invalid YAML" in result.stderr
    assert not (tmp_path / "home").exists()  # nothing was started for a bad file


def test_ctrl_c_in_sim_exits_130_with_a_line(tmp_path: Path) -> None:
    rows = "".join(f"j{i},{i},{300 + i % 50},1,2,{'ab'[i % 2]},normal\n" for i in range(300_000))
    path = scenario(tmp_path, GOOD, "name,submitTime,duration,gpus,cpu,tenant,priority\n" + rows)
    process = subprocess.Popen([sys.executable, "-m", "shoal", "sim", str(path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace = str(tmp_path / "jobs.csv")
    try:
        # Interrupt once it is reading the trace (long work under way).
        wait_for(lambda: process.poll() is not None or trace in _open_files(process.pid),
                 timeout=120)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=180)  # generous: CI machines are slow and busy
    finally:
        if process.poll() is None:  # never leave a simulation running behind the test
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def _open_files(pid: int) -> set[str]:
    """What the process has open now (a descriptor may close while it is looked at)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    found = set()
    for fd in fds:
        try:
            found.add(os.path.realpath(f"/proc/{pid}/fd/{fd}", strict=True))
        except OSError:
            continue  # closed meanwhile
    return found


# -- validate runs apply's checks offline ----------------------------------------

TENANT = """\
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: a}
spec: {quota: {cpu: {nominal: 4}, memory: {nominal: 8Gi}, gpus: {A100: {nominal: 4}}}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: gpu}
spec: {count: 1, cpu: 8, memory: 32Gi, gpus: {model: A100, count: 4}}
"""


def training_job(tenant: str = "a", gpus: int = 1, command: str = "python") -> str:
    return f"""\
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: j}}
spec:
  tenant: {tenant}
  podSets: [{{count: 1, resources: {{cpu: 1, memory: 1Gi, gpu: {gpus}}}}}]
  command: [{command}, -c, pass]
"""


@pytest.mark.parametrize(("case", "text", "needle"), [
    ("too big for any node", TENANT + "---\n" + training_job(gpus=8), "cannot run on any node"),
    ("missing command", TENANT + "---\n" + training_job(command="pyhton"), "'pyhton' was not found"),
    ("unknown tenant, strict", training_job(tenant="ghost"), "ghost"),
])
def test_validate_rejects_what_apply_rejects(tmp_path: Path, case: str, text: str,
                                             needle: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    result = shoal("validate", "--strict", str(path))
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    assert needle in result.stderr


def test_validate_notes_what_it_cannot_check(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(training_job(tenant="elsewhere"))
    result = shoal("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert "note:" in result.stderr and "'elsewhere'" in result.stderr and "NodePool" in result.stderr


LAS_SCENARIO = """\
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {name: long-and-short}
spec:
  cluster:
    nodePools:
      - {name: gpu, count: 2, cpu: 32, memory: 128Gi, gpus: {model: A100, count: 4}}
  tenants:
    - name: lab
      quota: {cpu: {nominal: 64}, memory: {nominal: 256Gi}, gpus: {A100: {nominal: 8}}}
      ordering: {thresholdsGpuHours: [1]}
  trace: {path: jobs.csv, format: csv}
  mode: replay
  policies: [best-fit]
  replay: {checkpointIntervalSeconds: 60}
"""
# Two long jobs take both nodes first; ten short ones arrive just after.
LONG_AND_SHORT = "name,submitTime,duration,gpus,cpu,tenant\n" + "".join(
    [f"long{i},{i},20000,4,2,lab\n" for i in range(2)]
    + [f"short{i},{10 + i},300,4,2,lab\n" for i in range(10)]
)


def test_queueing_compares_orderings_side_by_side(tmp_path: Path) -> None:
    path = scenario(tmp_path, LAS_SCENARIO, LONG_AND_SHORT)
    result = shoal("sim", str(path), "--queueing", "fifo,las", "--output", "json")
    assert result.returncode == 0, result.stderr
    fifo, las = json.loads(result.stdout)["results"]
    assert (fifo["queueing"], las["queueing"]) == ("fifo", "las")
    # FIFO: the short jobs wait 20,000 s behind the long ones.  LAS: once the
    # long ones have attained a GPU-hour (15 minutes on 4 GPUs) the short ones
    # preempt them.
    assert fifo["metrics"]["preemptions"] == 0
    assert las["metrics"]["preemptions"] >= 2
    assert las["metrics"]["jct_mean_s"] < fifo["metrics"]["jct_mean_s"] / 2
    assert las["metrics"]["jobs_completed"] == fifo["metrics"]["jobs_completed"] == 12
    table = shoal("sim", str(path), "--queueing", "las")
    assert table.returncode == 0 and "best-fit (las)" in table.stdout


def test_queueing_bad_input_exits_2(tmp_path: Path) -> None:
    path = scenario(tmp_path, LAS_SCENARIO, LONG_AND_SHORT)
    result = shoal("sim", str(path), "--queueing", "fifo,lifo")
    assert result.returncode == 2
    assert "--queueing: unknown ordering 'lifo'; expected fifo, las, srtf" in result.stderr
    fill = shoal("sim", str(path), "--queueing", "las", "--mode", "fill")
    assert fill.returncode == 2 and "fill mode has no queue" in fill.stderr
