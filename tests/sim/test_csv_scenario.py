"""The CSV trace options in a Simulation manifest: schema, scenario planning and CLI warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from shoal.domain.manifest import parse_manifests
from shoal.domain.simulation import SERVE_COLUMNS, TraceColumns, TraceSpec, TraceUnits
from shoal.errors import InputError, ManifestError
from shoal.sim.scenario_manifest import plan_from_simulation
from shoal.sim.traces.csvtrace import DUPLICATES, LOGICAL_COLUMNS, MISSING_DURATION
from shoal.sim.traces.csvvalues import UNITS

ROOT = Path(__file__).resolve().parents[2]

MANIFEST = """\
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {{name: wide}}
spec:
  cluster:
    nodePools: [{{name: a, count: 4, cpu: 64, memory: 256Gi, gpus: {{model: A100, count: 4}}}}]
  trace:
    path: jobs.csv
    format: {format}
{trace}
  mode: {mode}
{replay}
  policies: [best-fit]
"""
JOBS = (
    "name,submitTime,duration,plan_gpu,cpu,tenant\n"
    "big,0,100,800,8,t\n"
    "small,5,,50,1,t\n"
    "big,9,100,800,8,t\n"
)


def manifest(
    tmp_path: Path,
    trace: str = "",
    mode: str = "fill",
    replay: str = "",
    fmt: str = "csv",
) -> Path:
    (tmp_path / "jobs.csv").write_text(JOBS)
    path = tmp_path / "sim.yaml"
    path.write_text(MANIFEST.format(format=fmt, trace=trace, mode=mode, replay=replay))
    return path


OPTIONS = """\
    columns: {gpus: plan_gpu}
    units: {gpus: percent}
    missingDuration: runUntilEnd
    duplicates: first"""


def test_the_schema_lists_what_the_loader_takes() -> None:
    # Serve mode's request columns are read by sim.serve_trace (tests/sim/test_serve_*).
    aliases = tuple(
        field.alias for field in TraceColumns.model_fields.values()
        if field.alias not in SERVE_COLUMNS
    )
    assert aliases == LOGICAL_COLUMNS
    fields = TraceSpec.model_fields
    assert get_args(fields["missing_duration"].annotation) == MISSING_DURATION
    assert get_args(fields["duplicates"].annotation) == DUPLICATES
    units = {
        field.alias: get_args(get_args(field.annotation)[0])
        for field in TraceUnits.model_fields.values()
        if field.alias not in SERVE_COLUMNS
    }
    assert units == {column: tuple(names) for column, names in UNITS.items()}


def test_plan_splits_by_the_largest_node_and_warns(tmp_path: Path) -> None:
    heard: list[str] = []
    plan = plan_from_simulation(manifest(tmp_path, OPTIONS), warn=heard.append)
    shapes = {w.name: (len(w.pods), w.pods[0].gpu_count) for w in plan.workloads}
    assert shapes == {"big": (2, 4), "small": (1, 1)}
    assert heard == [
        "jobs.csv: 1 row with the job name of an earlier row: kept the first row of each name "
        "(duplicates: first)",
        "jobs.csv: 1 job without a duration, kept to run until the end of the replay "
        "(missingDuration: runUntilEnd)",
        "jobs.csv: 1 job wider than a node (4 GPUs) split into gangs of node-sized workers",
    ]


def test_split_off_keeps_the_job_as_written(tmp_path: Path) -> None:
    plan = plan_from_simulation(manifest(tmp_path, OPTIONS + "\n    split: 'off'"))
    big = next(w for w in plan.workloads if w.name == "big")
    assert (len(big.pods), big.pods[0].gpu_count) == (1, 8)


def test_run_until_end_needs_a_replay_horizon(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        plan_from_simulation(manifest(tmp_path, OPTIONS, mode="replay"))
    assert str(info.value) == (
        f"{tmp_path / 'sim.yaml'}: spec.replay.horizonSeconds: 1 job(s) of the trace run until "
        "the end of the replay (missingDuration: runUntilEnd); give the replay an end"
    )
    plan = plan_from_simulation(
        manifest(tmp_path, OPTIONS, mode="replay", replay="  replay: {horizonSeconds: 600}")
    )
    small = next(w for w in plan.workloads if w.name == "small")
    assert small.duration == 1200.0  # outlasts the horizon: still running when the replay stops


def test_the_default_rejects_a_missing_duration(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"jobs.csv:3: column duration: expected a duration"):
        plan_from_simulation(manifest(tmp_path, "    columns: {gpus: plan_gpu}"))


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        (
            "    units: {gpus: pct}",
            "sim.yaml:10: spec.trace.units.gpus: expected 'count' or 'percent', got 'pct'",
        ),
        (
            "    units: {gpu: percent}",
            "sim.yaml:10: spec.trace.units.gpu: unknown field 'gpu'; did you mean 'gpus'?",
        ),
        (
            "    missingDuration: zero",
            "sim.yaml:10: spec.trace.missingDuration: expected 'error', 'runUntilEnd' or 'drop', "
            "got 'zero'",
        ),
        (
            "    duplicates: sum",
            "sim.yaml:10: spec.trace.duplicates: expected 'error', 'first', 'last' or 'merge', "
            "got 'sum'",
        ),
    ],
)
def test_bad_options_name_the_field(tmp_path: Path, trace: str, expected: str) -> None:
    text = MANIFEST.format(format="csv", trace=trace, mode="fill", replay="")
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, "sim.yaml")
    assert str(info.value) == expected


@pytest.mark.parametrize(
    "option",
    ["units: {gpus: percent}", "missingDuration: drop", "duplicates: merge", "split: 'off'"],
)
def test_csv_options_are_refused_for_openb(option: str) -> None:
    text = MANIFEST.format(format="openb", trace=f"    {option}", mode="fill", replay="")
    key = option.split(":")[0]
    with pytest.raises(ManifestError, match=f"spec.trace.{key}: {key} is for csv traces"):
        parse_manifests(text, "sim.yaml")


def test_cli_prints_the_report_as_warnings(tmp_path: Path) -> None:
    path = manifest(tmp_path, OPTIONS, mode="replay", replay="  replay: {horizonSeconds: 600}")
    result = subprocess.run(
        [sys.executable, "-m", "shoal", "sim", str(path), "--output", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "warning: jobs.csv: 1 job wider than a node (4 GPUs) split into gangs" in result.stderr
    assert "warning: jobs.csv: 1 row with the job name of an earlier row" in result.stderr
    assert "Traceback" not in result.stderr
