"""Serve mode of ``shoal sim``: the engine, the manifest, the CLI and the Azure code trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.domain.manifest import parse_manifests
from shoal.errors import ManifestError
from shoal.policy.autoscaling import (
    HpaPolicy,
    KpaPolicy,
    ScaleDecision,
    ScalingContext,
    ShoalPolicy,
)
from shoal.sim.serve import Requests, simulate
from shoal.sim.serve_plan import build_policy, plan_from_serve, read_simulation, run_serve_plan
from shoal.sim.serve_report import render_serve_html

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "serving" / "azure-code-sim.yaml"
METRICS = {"slo_attainment", "latency_p50_s", "latency_p99_s", "cold_starts", "replica_seconds"}

MANIFEST = """\
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {{name: small}}
spec:
  mode: serve
  trace:
    path: requests.csv
    format: csv
    columns: {{arrivalTime: t, inputTokens: prompt}}
{trace}
  serve:
    serviceTime: {{fixedSeconds: 0.1, perInputTokenSeconds: 0.001}}
    concurrency: 2
    coldStartSeconds: 3
    slo: {{latencySeconds: 1.5, percentile: 95}}
{serve}
  policies: [{policies}]
"""
REQUESTS = "t,prompt\n" + "".join(f"{i * 0.25},{100 + i % 7}\n" for i in range(400))


class Fixed:
    tick_seconds = 2.0
    name = "fixed"

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def initial_state(self) -> None:
        return None

    def decide(self, context: ScalingContext, state: None) -> tuple[ScaleDecision, None]:
        return ScaleDecision(self.replicas, "fixed"), None


def write(tmp_path: Path, trace: str = "", serve: str = "", policies: str = "kpa, hpa, shoal",
          requests: str = REQUESTS) -> Path:
    (tmp_path / "requests.csv").write_text(requests)
    path = tmp_path / "sim.yaml"
    path.write_text(MANIFEST.format(trace=trace, serve=serve, policies=policies))
    return path


def shoal_sim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "sim", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )


# -- the engine ------------------------------------------------------------------


def test_a_full_replica_queues_requests_first_in_first_out() -> None:
    requests = Requests([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    run = simulate(requests, Fixed(1), concurrency=1, cold_start_s=10.0)
    assert run.latency == [1.0, 2.0, 3.0]
    assert run.wait == [0.0, 1.0, 2.0]
    assert run.first_token == [0.5, 1.5, 2.5]
    assert run.cold_starts == 0
    assert run.replica_seconds == pytest.approx(3.0)


def test_scale_from_zero_waits_for_the_cold_start() -> None:
    requests = Requests([0.0, 20.0], [1.0, 1.0], [1.0, 1.0])
    run = simulate(requests, Fixed(1), concurrency=1, cold_start_s=4.0, initial_replicas=0)
    assert run.latency == [5.0, 1.0]  # the first request waited for the replica to start
    assert run.cold_starts == 1
    assert run.replica_seconds == pytest.approx(21.0)  # counted from the order, start included


def test_least_outstanding_dispatch_spreads_requests() -> None:
    requests = Requests([0.0, 0.0, 0.0, 0.0], [1.0] * 4, [1.0] * 4)
    run = simulate(requests, Fixed(2), concurrency=2, cold_start_s=1.0, initial_replicas=2)
    assert run.latency == [1.0] * 4  # two replicas x two slots: nobody waits


# -- the manifest and its errors ------------------------------------------------------


def test_a_small_trace_runs_every_policy(tmp_path: Path) -> None:
    path = write(tmp_path)
    plan = plan_from_serve(path, read_simulation(path))
    report = run_serve_plan(plan)
    assert [r["policy"] for r in report["results"]] == ["kpa", "hpa", "shoal"]
    for result in report["results"]:
        assert result["metrics"]["requests"] == 400
        assert 0.0 <= result["metrics"]["slo_attainment"] <= 1.0
    assert report["load"]["rps"][0] == pytest.approx(4.0)


def test_the_simulator_calls_the_autoscaling_package(tmp_path: Path, monkeypatch: Any) -> None:
    path = write(tmp_path)
    plan = plan_from_serve(path, read_simulation(path))
    for name, cls in (("kpa", KpaPolicy), ("hpa", HpaPolicy), ("shoal", ShoalPolicy)):
        assert type(build_policy(name, plan).policy) is cls  # type: ignore[attr-defined]
    calls: list[float] = []
    original = KpaPolicy.decide

    def counting(self: KpaPolicy, context: ScalingContext, state: Any) -> Any:
        calls.append(context.now)
        return original(self, context, state)

    monkeypatch.setattr(KpaPolicy, "decide", counting)
    report = run_serve_plan(plan_from_serve(path, read_simulation(path), ["kpa"]))
    assert len(calls) == report["results"][0]["metrics"]["decisions"] > 10


@pytest.mark.parametrize(
    ("trace", "serve", "policies", "expected"),
    [
        ("", "", "kpa, knative", "unknown autoscaling policy 'knative'"),
        ("    units: {arrivalTime: parsecs}", "", "kpa", "spec.trace.units.arrivalTime"),
        ("", "    replicaz: 3", "kpa", "spec.serve.replicaz"),
        ("    columns: {arrivalTime: when, inputTokens: prompt}", "", "kpa",
         "arrivalTime='when'"),
        ("    duplicates: first", "", "kpa", "duplicates is for job traces"),
        ("", "    slo: {latencySeconds: 0.1}", "shoal", "cannot be met"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path, trace: str, serve: str, policies: str, expected: str
) -> None:
    manifest = MANIFEST.format(trace=trace, serve="{serve}", policies=policies)
    if "columns:" in trace:
        manifest = manifest.replace("    columns: {arrivalTime: t, inputTokens: prompt}\n", "")
    if serve.strip().startswith("slo:"):
        manifest = manifest.replace("    slo: {latencySeconds: 1.5, percentile: 95}\n", "")
    (tmp_path / "requests.csv").write_text(REQUESTS)
    path = tmp_path / "sim.yaml"
    path.write_text(manifest.replace("{serve}", serve))
    done = shoal_sim(path, "-o", "json")
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_cell_names_the_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, requests="t,prompt\n0,10\nsoon,12\n")
    done = shoal_sim(path)
    assert done.returncode == 2
    assert "requests.csv:3: column t (arrivalTime)" in done.stderr


def test_a_job_column_is_refused_in_serve_mode(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace("inputTokens: prompt", "inputTokens: prompt, gpus: g"))
    done = shoal_sim(path)
    assert done.returncode == 2
    assert "gpus is a job column" in done.stderr


def test_a_per_token_term_needs_its_column(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace(", inputTokens: prompt", ""))
    done = shoal_sim(path)
    assert done.returncode == 2
    assert "spec.trace.columns.inputTokens" in done.stderr


# -- the Azure LLM code trace, whole ------------------------------------------------------


@pytest.fixture(scope="module")
def azure_report(azure_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    html = tmp_path_factory.mktemp("serve") / "report.html"
    done = shoal_sim(EXAMPLE, "-o", "json", "--html", html)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    report["html"] = html.read_text()
    return report


def test_the_json_shape_is_stable(azure_report: dict[str, Any]) -> None:
    results = azure_report["results"]
    assert [r["policy"] for r in results] == ["kpa", "hpa", "shoal"]
    for result in results:
        assert {"policy", "mode", "wall_time_s", "metrics"} <= set(result)
        assert result["mode"] == "serve"
        assert set(result["metrics"]) >= METRICS
        assert isinstance(result["metrics"]["cold_starts"], int)
        assert result["metrics"]["requests"] == 8819  # every request of the trace


def test_shoal_meets_the_slo_with_a_fifth_fewer_replica_seconds(
    azure_report: dict[str, Any],
) -> None:
    by = {r["policy"]: r["metrics"] for r in azure_report["results"]}
    assert by["shoal"]["slo_attainment"] >= 0.99
    for other in ("kpa", "hpa"):
        assert by["shoal"]["replica_seconds"] <= 0.8 * by[other]["replica_seconds"]
    assert by["kpa"]["panic_decisions"] > 0  # the bursts do put KPA in panic
    assert by["kpa"]["cold_starts"] > by["hpa"]["cold_starts"]  # KPA goes to zero, HPA not


def test_the_html_report_plots_replicas_against_load(azure_report: dict[str, Any]) -> None:
    page = azure_report["html"]
    assert page.count("<svg") == 3
    for name in ("kpa: replicas", "hpa: replicas", "shoal: replicas", "load (replicas busy)"):
        assert name in page
    assert "<td>shoal</td>" in page
    assert render_serve_html({"results": []}, "empty").count("<svg") == 0


def test_default_column_names_units_and_limit(tmp_path: Path) -> None:
    (tmp_path / "requests.csv").write_text(
        "arrivalTime\n" + "".join(f"{1000 + i * 500}\n" for i in range(10))
    )
    path = tmp_path / "sim.yaml"
    path.write_text(
        MANIFEST.format(
            trace="    units: {arrivalTime: milliseconds}\n    limit: 6",
            serve="",
            policies="shoal",
        )
        .replace("    columns: {arrivalTime: t, inputTokens: prompt}\n", "")
        .replace(", perInputTokenSeconds: 0.001", "")
    )
    plan = plan_from_serve(path, read_simulation(path))
    assert list(plan.requests.arrival) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert list(plan.requests.service) == [0.1] * 6


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("  serve:\n", "  unused:\n"), "spec.serve: mode serve needs a serve section"),
        (("mode: serve", "mode: replay"), "spec.serve: serve settings given, but mode is replay"),
        (("format: csv", "format: openb"), "spec.trace.format: serve mode reads a csv"),
        (("  mode: serve\n", "  mode: serve\n  cluster: {nodePools: [{name: a, count: 1, cpu: 1, "
          "memory: 1Gi}]}\n"), "spec.cluster: cluster is not used in serve mode"),
        (("fixedSeconds: 0.1, perInputTokenSeconds: 0.001", "fixedSeconds: 0"),
         "a request must take some time"),
    ],
)
def test_the_manifest_checks_serve_mode(edit: tuple[str, str], expected: str) -> None:
    text = MANIFEST.format(trace="", serve="", policies="kpa").replace(*edit)
    if edit[0] == "  serve:\n":  # drop the whole serve section
        text = "\n".join(line for line in text.splitlines()
                         if not line.startswith(("  unused:", "    serviceTime", "    concurrency",
                                                 "    coldStart", "    slo")))
    if edit[1] in ("mode: replay", "format: openb"):
        text = text.replace("    columns: {arrivalTime: t, inputTokens: prompt}\n", "")
    with pytest.raises(ManifestError, match=expected.replace(".", r"\.")):
        parse_manifests(text, source="sim.yaml")


def test_a_serve_column_is_refused_in_a_job_replay() -> None:
    text = MANIFEST.format(trace="", serve="", policies="kpa")
    text = text.replace("mode: serve", "mode: replay").split("  serve:\n")[0]
    text += "  policies: [best-fit]\n  cluster: {nodePools: [{name: a, count: 1, cpu: 1, memory: 1Gi}]}\n"
    with pytest.raises(ManifestError, match="arrivalTime is for serve mode"):
        parse_manifests(text, source="sim.yaml")
