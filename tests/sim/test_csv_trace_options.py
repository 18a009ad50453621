"""CSV traces taken as they come: limit by submit time, wide jobs split, missing
durations, units, end times, repeated names, and the report of what changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shoal.domain.workload import PodShape
from shoal.errors import TraceError
from shoal.sim.traces.csvjobs import split_worker
from shoal.sim.traces.csvtrace import CsvOptions, CsvTrace, load_trace


def trace(
    tmp_path: Path,
    text: str,
    split_at: int | None = None,
    horizon: float | None = None,
    **options: Any,
) -> CsvTrace:
    path = tmp_path / "jobs.csv"
    path.write_text(text)
    return load_trace(path, CsvOptions(**options), split_at=split_at, horizon=horizon)


def failure(tmp_path: Path, text: str, **options: Any) -> str:
    with pytest.raises(TraceError) as info:
        trace(tmp_path, text, **options)
    return str(info.value)


# -- limit ----------------------------------------------------------------------


def test_limit_reads_the_whole_file_and_keeps_the_earliest_jobs(tmp_path: Path) -> None:
    text = "name,submitTime,duration,gpus\nlate,300,1,1\nfirst,100,1,1\ntie,200,1,1\nnext,200,1,1\n"
    loaded = trace(tmp_path, text, limit=3)
    assert [job.name for job in loaded.jobs] == ["first", "tie", "next"]
    assert [job.submit_time for job in loaded.jobs] == [0.0, 100.0, 100.0]
    assert loaded.report.beyond_limit == 1
    assert loaded.report.warnings() == [
        "jobs.csv: kept the first 3 jobs by submit time, left out 1 (limit: 3)"
    ]


# -- jobs wider than a node -------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "parts"),
    [(24, (3, 8)), (12, (2, 6)), (10, (2, 5)), (16, (2, 8)), (13, (13, 1)), (8, (1, 8))],
)
def test_split_worker_rule(gpus: int, parts: tuple[int, int]) -> None:
    pods = split_worker(PodShape(cpu=3000, memory=1001, gpu_count=gpus, gpu_milli=1000), 8)
    assert (len(pods), pods[0].gpu_count) == parts
    assert len(set(pods)) == 1  # equal workers


def test_cpu_and_memory_are_split_evenly_rounding_up() -> None:
    pods = split_worker(PodShape(cpu=3000, memory=1001, gpu_count=24, gpu_milli=1000), 8)
    assert (pods[0].cpu, pods[0].memory) == (1000, 334)


def test_wide_jobs_become_gangs_of_node_sized_workers(tmp_path: Path) -> None:
    text = (
        "name,submitTime,duration,gpus,cpu,memory,workers\n"
        "big,0,10,24,48,96,1\n"
        "odd,1,10,12,12,12,1\n"
        "two,2,10,16,8,8,2\n"
        "fits,3,10,8,8,8,1\n"
        "share,4,10,0.5,1,1,1\n"
    )
    loaded = trace(tmp_path, text, split_at=8)
    shapes = {job.name: (len(job.pods), job.pods[0].gpu_count) for job in loaded.jobs}
    assert shapes == {"big": (3, 8), "odd": (2, 6), "two": (4, 8), "fits": (1, 8), "share": (1, 1)}
    big = loaded.jobs[0]
    assert big.gang and (big.pods[0].cpu, big.pods[0].memory) == (16_000, 32)
    assert big.gpu_milli == 24_000  # nothing lost
    assert (loaded.report.split, loaded.report.split_at) == (3, 8)
    assert loaded.report.warnings() == [
        "jobs.csv: 3 jobs wider than a node (8 GPUs) split into gangs of node-sized workers"
    ]


def test_no_split_without_a_node_size_or_when_off(tmp_path: Path) -> None:
    text = "submitTime,duration,gpus\n0,10,24\n"
    assert len(trace(tmp_path, text).jobs[0].pods) == 1
    off = trace(tmp_path, text, split_at=8, split=False)
    assert len(off.jobs[0].pods) == 1 and off.report.split == 0 and off.report.warnings() == []


def test_explicit_workers_and_gpus_per_worker(tmp_path: Path) -> None:
    text = "name,submitTime,duration,workers,gpusPerWorker,gpus\nj,0,10,4,2,8\nk,1,10,2,0.5,\n"
    jobs = trace(tmp_path, text, split_at=8).jobs
    assert [(len(job.pods), job.pods[0].gpu_count, job.pods[0].gpu_milli) for job in jobs] == [
        (4, 2, 1000),
        (2, 1, 500),
    ]


def test_gpus_must_be_the_total_of_the_workers(tmp_path: Path) -> None:
    text = "submitTime,duration,workers,gpusPerWorker,total\n0,10,2,4,8\n5,10,2,4,6\n"
    message = failure(tmp_path, text, columns={"gpus": "total"})
    assert message == (
        f"{tmp_path / 'jobs.csv'}:3: column total (gpus): expected the job's total GPUs, "
        "workers x gpusPerWorker = 2 x 4 = 8, got '6'"
    )


# -- missing durations ---------------------------------------------------------------


def test_an_empty_duration_is_an_error_naming_line_and_column(tmp_path: Path) -> None:
    text = "submitTime,runtime,gpus\n0,5,1\n3,,1\n"
    message = failure(tmp_path, text, columns={"duration": "runtime"})
    assert message.startswith(
        f"{tmp_path / 'jobs.csv'}:3: column runtime (duration): expected a duration; "
        "set missingDuration: runUntilEnd or drop"
    )
    assert message.endswith("got ''")


def test_no_duration_column_is_an_error(tmp_path: Path) -> None:
    message = failure(tmp_path, "submitTime,gpus\n0,1\n")
    assert "no column for duration (or endTime)" in message
    assert "map it to one of: submitTime, gpus" in message
    assert "missingDuration" in message


def test_drop_leaves_out_jobs_without_a_duration(tmp_path: Path) -> None:
    text = "name,submitTime,duration,gpus\nx,0,,1\ny,5,10,1\nz,7,,1\n"
    loaded = trace(tmp_path, text, missing_duration="drop")
    assert [(job.name, job.submit_time) for job in loaded.jobs] == [("y", 0.0)]
    assert loaded.report.dropped_without_duration == 2
    assert loaded.report.warnings() == [
        "jobs.csv: 2 jobs without a duration dropped (missingDuration: drop)"
    ]


def test_run_until_end(tmp_path: Path) -> None:
    text = "name,submitTime,duration,gpus\nx,0,,1\ny,5,10,1\n"
    loaded = trace(tmp_path, text, missing_duration="runUntilEnd")
    assert [job.duration for job in loaded.jobs] == [None, 10.0]
    assert loaded.report.run_until_end == 1
    assert "1 job without a duration, kept to run until the end" in loaded.report.warnings()[0]
    # With the replay's horizon the job outlasts it (the engine reads None as 0 s).
    bounded = trace(tmp_path, text, missing_duration="runUntilEnd", horizon=3600)
    assert [job.duration for job in bounded.jobs] == [7200.0, 10.0]
    # Without a duration column at all, every job runs until the end.
    all_open = trace(tmp_path, "submitTime,gpus\n0,1\n", missing_duration="runUntilEnd")
    assert all_open.jobs[0].duration is None


# -- units ---------------------------------------------------------------------------


def test_gpu_percent(tmp_path: Path) -> None:
    text = "submitTime,duration,plan_gpu\n0,1,50\n1,1,800\n2,1,100\n3,1,12.5\n4,1,\n"
    jobs = trace(tmp_path, text, columns={"gpus": "plan_gpu"}, units={"gpus": "percent"}).jobs
    assert [(job.pods[0].gpu_count, job.pods[0].gpu_milli) for job in jobs] == [
        (1, 500),
        (8, 1000),
        (1, 1000),
        (1, 125),
        (0, 0),
    ]


def test_gpu_percent_that_is_not_whole_gpus(tmp_path: Path) -> None:
    message = failure(
        tmp_path,
        "submitTime,duration,plan_gpu\n0,1,150\n",
        columns={"gpus": "plan_gpu"},
        units={"gpus": "percent"},
    )
    assert message == (
        f"{tmp_path / 'jobs.csv'}:2: column plan_gpu (gpus, in percent): expected a whole number "
        "of GPUs, or a share of one GPU below 1 (100 = one GPU), got '150'"
    )


@pytest.mark.parametrize(
    ("units", "cpu", "memory"),
    [
        ({}, 2000, 4),
        ({"cpu": "millicores", "memory": "GiB"}, 2, 4096),
        ({"cpu": "percent", "memory": "GB"}, 20, 3815),  # 4e9 bytes = 3814.7 MiB
        ({"cpu": "cores", "memory": "MB"}, 2000, 4),  # 4e6 bytes = 3.8 MiB
    ],
)
def test_cpu_and_memory_units(tmp_path: Path, units: dict[str, str], cpu: int, memory: int) -> None:
    job = trace(tmp_path, "submitTime,duration,gpus,cpu,memory\n0,1,1,2,4\n", units=units).jobs[0]
    assert (job.pods[0].cpu, job.pods[0].memory) == (cpu, memory)


def test_duration_units(tmp_path: Path) -> None:
    text = "submitTime,duration,gpus,checkpointInterval\n0,90,1,2\n"
    job = trace(tmp_path, text, units={"duration": "minutes", "checkpointInterval": "hours"}).jobs[
        0
    ]
    assert (job.duration, job.checkpoint_interval) == (5400.0, 7200.0)


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ({"gpus": "pct"}, "units: gpus 'pct': expected one of count, percent"),
        ({"tenant": "x"}, "units: column 'tenant' takes no unit"),
    ],
)
def test_bad_units(tmp_path: Path, units: dict[str, str], expected: str) -> None:
    assert expected in failure(tmp_path, "submitTime,duration,gpus\n0,1,1\n", units=units)


# -- end times -----------------------------------------------------------------------


def test_end_time_gives_the_duration(tmp_path: Path) -> None:
    text = (
        "name,submitTime,startTime,endTime,duration,gpus\n"
        "a,2024-01-01T00:00:00Z,2024-01-01T00:10:00Z,2024-01-01T01:10:00Z,,1\n"
        "b,2024-01-01T00:05:00Z,,2024-01-01T00:35:00Z,,1\n"
        "c,2024-01-01T00:06:00Z,,2024-01-01T00:35:00Z,60,1\n"
    )
    jobs = trace(tmp_path, text).jobs
    # a: end - start; b: end - submit (no start); c: the duration column wins.
    assert [(job.name, job.duration) for job in jobs] == [("a", 3600.0), ("b", 1800.0), ("c", 60.0)]


def test_end_before_start_names_the_row(tmp_path: Path) -> None:
    text = "submitTime,started,finished,gpus\n0,10,50,1\n0,100,40,1\n"
    message = failure(tmp_path, text, columns={"startTime": "started", "endTime": "finished"})
    assert message == (
        f"{tmp_path / 'jobs.csv'}:3: column finished (endTime): expected a time at or after "
        "started (startTime) '100', got '40'"
    )


def test_empty_end_time_is_a_missing_duration(tmp_path: Path) -> None:
    message = failure(tmp_path, "submitTime,endTime,gpus\n0,5,1\n1,,1\n")
    assert message.startswith(f"{tmp_path / 'jobs.csv'}:3: column endTime: expected an end time")


# -- repeated job names ----------------------------------------------------------------

REPEATED = (
    "name,submitTime,duration,gpus,tenant\nx,10,100,1,a\ny,0,5,1,a\nx,50,100,2,b\nx,20,10,1,c\n"
)


def test_repeated_names_are_an_error_naming_the_rows(tmp_path: Path) -> None:
    message = failure(tmp_path, REPEATED)
    assert message == (
        f"{tmp_path / 'jobs.csv'}:4: column name: job 'x' is on several rows: "
        "jobs.csv:2, jobs.csv:4, jobs.csv:5; set duplicates: first, last or merge to accept "
        "repeated names"
    )


def test_duplicates_first_and_last(tmp_path: Path) -> None:
    first = trace(tmp_path, REPEATED, duplicates="first")
    assert [(j.name, j.tenant, j.submit_time) for j in first.jobs] == [
        ("y", "a", 0),
        ("x", "a", 10),
    ]
    assert first.report.duplicate_rows == 2
    assert first.report.warnings() == [
        "jobs.csv: 2 rows with the job name of an earlier row: kept the first row of each name "
        "(duplicates: first)"
    ]
    last = trace(tmp_path, REPEATED, duplicates="last")
    assert [(j.name, j.tenant, j.submit_time) for j in last.jobs] == [("y", "a", 0), ("x", "c", 20)]


def test_duplicates_merge(tmp_path: Path) -> None:
    merged = trace(tmp_path, REPEATED, duplicates="merge")
    y, x = merged.jobs
    assert y.name == "y" and len(y.pods) == 1
    # Submitted with its earliest row, ending with its latest (50 + 100), all workers.
    assert (x.submit_time, x.duration, x.tenant) == (10.0, 140.0, "a")
    assert [pod.gpu_count for pod in x.pods] == [1, 2, 1] and x.gang
    assert merged.report.duplicate_rows == 2


def test_merge_with_a_row_without_duration_runs_until_end(tmp_path: Path) -> None:
    text = "name,submitTime,duration,gpus\nx,0,10,1\nx,5,,1\n"
    merged = trace(tmp_path, text, duplicates="merge", missing_duration="runUntilEnd")
    assert merged.jobs[0].duration is None and merged.report.run_until_end == 1


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"missing_duration": "skip"},
            "missingDuration 'skip': expected one of error, runUntilEnd",
        ),
        ({"duplicates": "sum"}, "duplicates 'sum': expected one of error, first, last, merge"),
        ({"limit": 0}, "limit 0: expected a number of jobs >= 1"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, object], expected: str) -> None:
    assert expected in failure(tmp_path, "submitTime,duration,gpus\n0,1,1\n", **options)


def test_a_clean_trace_reports_nothing(tmp_path: Path) -> None:
    loaded = trace(tmp_path, "submitTime,duration,gpus\n0,1,1\n1,1,2\n", split_at=8)
    assert (loaded.report.rows, loaded.report.jobs) == (2, 2)
    assert loaded.report.warnings() == []
