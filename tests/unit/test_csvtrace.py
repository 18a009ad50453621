"""The generic CSV job-trace loader: formats, mapping, times and error messages."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shoal.domain.manifest import load_manifest_file
from shoal.domain.resources import MILLI
from shoal.domain.simulation import SERVE_COLUMNS, Simulation, TraceColumns
from shoal.errors import TraceError
from shoal.sim.traces.csvtrace import (
    LOGICAL_COLUMNS,
    CsvOptions,
    load_jobs,
    load_trace,
    options_from_spec,
)

CANONICAL = """\
name,submitTime,duration,gpus,workers,cpu,memory,tenant,priority,gpuModel,checkpointInterval
b,20,100,2,4,8,65536,vision,high,A100|H100,600
a,10,50,0.5,1,2,8192,nlp,5,,
c,10,30,0,1,1,1024,,,,
"""


def write(tmp_path: Path, text: str, name: str = "jobs.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_canonical_names_need_no_mapping(tmp_path: Path) -> None:
    jobs = load_jobs(write(tmp_path, CANONICAL))
    # Sorted by submit time, ties keep file order; times start at 0.
    assert [job.name for job in jobs] == ["a", "c", "b"]
    assert [job.submit_time for job in jobs] == [0.0, 0.0, 10.0]
    a, c, b = jobs
    assert a.pods[0].gpu_count == 1 and a.pods[0].gpu_milli == 500
    assert a.priority == 5 and a.tenant == "nlp" and a.duration == 50.0
    assert len(b.pods) == 4 and b.gang
    assert b.pods[0].gpu_count == 2 and b.pods[0].gpu_milli == MILLI
    assert b.pods[0].cpu == 8000 and b.pods[0].memory == 65536
    assert b.pods[0].models == ("A100", "H100")
    assert b.priority == 1000 and b.checkpoint_interval == 600.0
    assert c.pods[0].gpu_count == 0 and c.duration == 30.0
    assert c.tenant == "default" and c.priority == 100  # 'normal'


def test_gzip_is_read_like_plain(tmp_path: Path) -> None:
    plain = load_jobs(write(tmp_path, CANONICAL))
    packed = tmp_path / "jobs.csv.gz"
    packed.write_bytes(gzip.compress(CANONICAL.encode()))
    assert load_jobs(packed) == plain
    # Detected by content, not by name.
    renamed = tmp_path / "jobs.data"
    renamed.write_bytes(gzip.compress(CANONICAL.encode()))
    assert load_jobs(renamed) == plain


def test_mapping_renames_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "team,submitted_at,runtime_s,gpu_count\nml,5,60,1\nml,3.5,30,8\n",
    )
    columns = {"submitTime": "submitted_at", "duration": "runtime_s", "gpus": "gpu_count"}
    jobs = load_jobs(path, {**columns, "tenant": "team"})
    assert [(job.submit_time, job.duration, job.gpu_milli) for job in jobs] == [
        (0.0, 30.0, 8000),
        (1.5, 60.0, 1000),
    ]
    assert {job.tenant for job in jobs} == {"ml"}
    assert [job.name for job in jobs] == ["job-000001", "job-000000"]


def test_gpu_milli_column(tmp_path: Path) -> None:
    path = write(tmp_path, "submitTime,duration,gpuMilli\n0,1,250\n1,1,0\n2,1,1000\n")
    shapes = [(job.pods[0].gpu_count, job.pods[0].gpu_milli) for job in load_jobs(path)]
    assert shapes == [(1, 250), (0, 0), (1, 1000)]


def test_timestamps_are_seconds_after_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "submitTime,gpus,duration\n"
        "2023-11-16 18:17:04.0319600,1,5\n"
        "2023-11-16 18:17:03.9799600,1,5\n"
        "2023-11-16T18:18:03.97996,1,5\n",
    )
    times = [job.submit_time for job in load_jobs(path)]
    assert times == pytest.approx([0.0, 0.052, 60.0])
    assert load_jobs(path, time_format="timestamp") == load_jobs(path)


def test_seconds_format_rejects_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path, "submitTime,gpus,duration\n2023-11-16 18:17:04,1,5\n")
    with pytest.raises(TraceError, match=r"jobs.csv:2: column submitTime: expected seconds"):
        load_jobs(path, time_format="seconds")


def test_limit_keeps_the_first_jobs_by_submit_time(tmp_path: Path) -> None:
    # The file lists b (20 s) first; the first two jobs by submit time are a and c.
    trace = load_trace(write(tmp_path, CANONICAL), CsvOptions(limit=2))
    assert [job.name for job in trace.jobs] == ["a", "c"]
    assert (trace.report.rows, trace.report.jobs, trace.report.beyond_limit) == (3, 2, 1)


def test_missing_mapped_column_lists_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "t,gpu_count\n0,1\n")
    with pytest.raises(TraceError) as info:
        load_jobs(path, {"submitTime": "submitted_at", "gpus": "gpu_count"})
    message = str(info.value)
    assert str(path) in message
    assert "submitTime='submitted_at'" in message
    assert "the header has: t, gpu_count" in message


def test_unmapped_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "t,cpu\n0,1\n")
    expected = r"no column for submitTime, gpus \(or gpusPerWorker, or gpuMilli\)"
    with pytest.raises(TraceError, match=expected):
        load_jobs(path)


def test_unknown_logical_column(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"unknown logical column.*submit_time"):
        load_jobs(write(tmp_path, CANONICAL), {"submit_time": "submitTime"})


def test_non_numeric_value_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "at,n,duration\n0,1,9\n5,two,9\n")
    with pytest.raises(TraceError) as info:
        load_jobs(path, {"submitTime": "at", "gpus": "n"})
    assert str(info.value) == f"{path}:3: column n (gpus): expected a number >= 0, got 'two'"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("0,1.5", "column gpus: expected a whole number of GPUs, or a share of one GPU below 1"),
        ("0,-1", "column gpus: expected a number >= 0, got '-1'"),
        ("0,1,workers=0", "column workers: expected a whole number >= 1, got '0'"),
        ("0,1,priority=urgent", "column priority: expected an integer or one of low"),
        ("x,1", "column submitTime: expected a timestamp such as"),
        (",1", "column submitTime: expected a submit time, got ''"),
    ],
)
def test_bad_cells(tmp_path: Path, row: str, expected: str) -> None:
    header, cells = ["submitTime", "gpus", "duration"], [*row.split(",")[:2], "60"]
    cells += row.split(",")[2:]
    for extra in [cell for cell in cells if "=" in cell]:
        header.append(extra.split("=")[0])
        cells[cells.index(extra)] = extra.split("=")[1]
    path = write(tmp_path, ",".join(header) + "\n" + ",".join(cells) + "\n")
    with pytest.raises(TraceError, match=f"{path.name}:2: {expected}".replace("(", r"\(")):
        load_jobs(path)


def test_fraction_is_for_one_gpu(tmp_path: Path) -> None:
    path = write(tmp_path, "submitTime,gpus,gpuMilli,duration\n0,2,500,1\n")
    with pytest.raises(TraceError, match="share of a GPU is for one GPU only"):
        load_jobs(path)


def test_blank_lines_are_skipped_and_bom_dropped(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_bytes(b"\xef\xbb\xbfsubmitTime,gpus,duration\n0,1,1\n\n3,1,1\n")
    assert [job.submit_time for job in load_jobs(path)] == [0.0, 3.0]


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.csv: file not found"):
        load_jobs(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="empty file"):
        load_jobs(write(tmp_path, ""))


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv.gz"
    path.write_bytes(gzip.compress(CANONICAL.encode())[:40])
    with pytest.raises(TraceError, match="cannot read"):
        load_jobs(path)


def test_manifest_columns_match_the_loader() -> None:
    # Serve mode's request columns are read by sim.serve_trace, not by this loader.
    job_columns = tuple(field.alias for field in TraceColumns.model_fields.values()
                        if field.alias not in SERVE_COLUMNS)
    assert job_columns == LOGICAL_COLUMNS


def test_simulation_manifest_drives_the_loader(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write(
        tmp_path / "data",
        "team,at,n,hours\nml,2023-01-01T00:00:10Z,1,1\nml,2023-01-01T00:00:00Z,2,0.5\n",
    )
    manifest = tmp_path / "sim.yaml"
    manifest.write_text(
        """\
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {name: replay-ml}
spec:
  cluster:
    nodePools: [{name: a100, count: 2, cpu: 64, memory: 512Gi, gpus: {model: A100, count: 8}}]
  trace:
    path: data/jobs.csv
    format: csv
    columns: {submitTime: at, gpus: n, tenant: team, duration: hours}
    units: {duration: hours}
    timeFormat: timestamp
  mode: replay
  policies: [fgd]
"""
    )
    [sim] = load_manifest_file(manifest)
    assert isinstance(sim, Simulation)
    trace = sim.spec.trace
    jobs = load_trace(sim.trace_path(manifest.parent), options_from_spec(trace)).jobs
    assert [(job.submit_time, job.gpu_milli, job.tenant, job.duration) for job in jobs] == [
        (0.0, 2000, "ml", 1800.0),
        (10.0, 1000, "ml", 3600.0),
    ]
