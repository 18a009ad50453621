"""Generic CSV job traces: one row per job, columns mapped to Shoal's logical fields.

A trace maps *logical* columns (``submitTime``, ``gpus``, ...) to its own header
names; a logical column that is not mapped is still used when the header has a
column of exactly that name, so a file written with the canonical names needs
no mapping.  Plain and gzipped files are read alike (gzip is recognised by its
magic bytes, not its name).  See docs/trace-format.md for every column.

Loading takes traces as they come, in two passes.  The first reads every row's
name, submit time and duration; the trace options then decide about rows
without a duration (error, drop, run until the end) and rows that repeat a job
name (error, first, last, merge), the jobs are sorted by submit time (ties keep
file order) and ``limit`` keeps the first N.  The second pass builds only the
kept jobs (csvjobs), splitting workers wider than a node.  Submit times become
seconds after the earliest kept submit, so every trace starts at 0 whatever
its clock.  A TraceReport counts what was changed.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shoal.domain.simulation import TraceSpec
from shoal.domain.workload import Workload
from shoal.errors import TraceError
from shoal.sim.traces.csvjobs import DEFAULT_TENANT, build_job
from shoal.sim.traces.csvreport import TraceReport
from shoal.sim.traces.csvvalues import DEFAULT_UNITS, UNITS, Columns, Row, TimeParser

__all__ = [
    "DEFAULT_TENANT",
    "DUPLICATES",
    "LOGICAL_COLUMNS",
    "MISSING_DURATION",
    "CsvOptions",
    "CsvTrace",
    "TraceReport",
    "load_jobs",
    "load_trace",
    "options_from_spec",
]

LOGICAL_COLUMNS = (
    "name",
    "submitTime",
    "duration",
    "startTime",
    "endTime",
    "gpus",
    "gpuMilli",
    "workers",
    "gpusPerWorker",
    "cpu",
    "memory",
    "tenant",
    "priority",
    "gpuModel",
    "checkpointInterval",
)
TIME_FORMATS = ("auto", "seconds", "timestamp")
MISSING_DURATION = ("error", "runUntilEnd", "drop")
DUPLICATES = ("error", "first", "last", "merge")
_GZIP_MAGIC = b"\x1f\x8b"
_NO_DURATION_HINT = "set missingDuration: runUntilEnd or drop to accept jobs without one"
_MAX_LINES_SHOWN = 10


@dataclass(frozen=True, slots=True)
class CsvOptions:
    """How to read a CSV trace; the defaults take a canonically named file strictly."""

    columns: Mapping[str, str] = field(default_factory=dict)
    """Logical column -> the header's name for it."""
    units: Mapping[str, str] = field(default_factory=dict)
    """Logical column -> the unit its cells are written in (csvvalues.UNITS)."""
    time_format: str = "auto"
    limit: int | None = None
    """Keep the first N jobs by submit time."""
    missing_duration: str = "error"
    duplicates: str = "error"
    split: bool = True
    """Split workers wider than the largest node (given to load_trace as ``split_at``)."""


@dataclass(frozen=True, slots=True)
class CsvTrace:
    """The jobs of a trace, sorted by submit time, and what loading changed."""

    jobs: list[Workload]
    report: TraceReport


@dataclass(slots=True)
class _Job:
    """A job as the first pass sees it: its rows, name, absolute submit time and duration."""

    rows: list[Row]
    name: str
    submit: float
    duration: float | None


def options_from_spec(trace: TraceSpec) -> CsvOptions:
    """The loader options that a Simulation manifest's ``spec.trace`` gives."""
    return CsvOptions(
        columns=trace.columns.as_mapping() if trace.columns else {},
        units=trace.units.as_mapping() if trace.units else {},
        time_format=trace.time_format,
        limit=trace.limit,
        missing_duration=trace.missing_duration,
        duplicates=trace.duplicates,
        split=trace.split == "auto",
    )


def load_trace(
    path: Path,
    options: CsvOptions | None = None,
    *,
    split_at: int | None = None,
    horizon: float | None = None,
) -> CsvTrace:
    """The jobs of the CSV trace at ``path`` and a report of what was changed.

    ``split_at``: GPUs of the largest node, when the caller knows the cluster;
    a worker asking for more is split (``options.split``).  ``horizon``: when
    the replay stops; a job that runs until the end (``runUntilEnd``) gets a
    duration of twice the horizon, so it still runs when the replay stops,
    because the replay engine reads a None duration as 0 s.  Without a
    horizon its duration is None.
    """
    options = options or CsvOptions()
    _check_options(path, options)
    found = _first_pass(path, options)
    folded_jobs, folded = _fold(path, found, options.duplicates)
    jobs, dropped, cut = _select(folded_jobs, options)
    start = min((job.submit for job in jobs), default=0.0)
    until_end = 2 * horizon if horizon is not None else None
    width = split_at if options.split else None
    built = [
        build_job(
            job.rows,
            job.name,
            job.submit - start,
            job.duration if job.duration is not None else until_end,
            width,
        )
        for job in jobs
    ]
    report = TraceReport(
        path=path,
        rows=len(found),
        jobs=len(built),
        missing_duration=options.missing_duration,
        dropped_without_duration=dropped,
        run_until_end=sum(1 for job in jobs if job.duration is None),
        duplicates=options.duplicates,
        duplicate_rows=folded,
        limit=options.limit,
        beyond_limit=cut,
        split=sum(1 for _, was_split in built if was_split),
        split_at=width,
    )
    return CsvTrace([job for job, _ in built], report)


def _select(jobs: list[_Job], options: CsvOptions) -> tuple[list[_Job], int, int]:
    """The jobs kept, by submit time; how many were dropped for no duration, and cut by limit."""
    kept = jobs
    if options.missing_duration == "drop":
        kept = [job for job in jobs if job.duration is not None]
    ordered = sorted(kept, key=lambda job: job.submit)  # stable: ties keep file order
    first = ordered[: options.limit] if options.limit is not None else ordered
    return first, len(jobs) - len(kept), len(ordered) - len(first)


def load_jobs(
    path: Path,
    columns: Mapping[str, str] | None = None,
    time_format: str = "auto",
    limit: int | None = None,
) -> list[Workload]:
    """Just the jobs of a CSV trace, read with the default (strict) options otherwise."""
    options = CsvOptions(columns=columns or {}, time_format=time_format, limit=limit)
    return load_trace(path, options).jobs


def _check_options(path: Path, options: CsvOptions) -> None:
    """The manifest schema checks these too; the loader is also called from code."""
    checks = (
        ("timeFormat", options.time_format, TIME_FORMATS),
        ("missingDuration", options.missing_duration, MISSING_DURATION),
        ("duplicates", options.duplicates, DUPLICATES),
    )
    for option, value, allowed in checks:
        if value not in allowed:
            raise TraceError(f"{path}: {option} {value!r}: expected one of {', '.join(allowed)}")
    if options.limit is not None and options.limit < 1:
        raise TraceError(f"{path}: limit {options.limit}: expected a number of jobs >= 1")
    for logical, unit in options.units.items():
        if logical not in UNITS:
            raise TraceError(
                f"{path}: units: column {logical!r} takes no unit; units are for {', '.join(UNITS)}"
            )
        if unit not in UNITS[logical]:
            raise TraceError(
                f"{path}: units: {logical} {unit!r}: expected one of {', '.join(UNITS[logical])}"
            )


def _first_pass(path: Path, options: CsvOptions) -> list[_Job]:
    """One _Job per data row, in file order; a missing duration is an error if asked."""
    found: list[_Job] = []
    clock = TimeParser(options.time_format)
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = _header(path, reader)
        columns = _resolve(path, header, options)
        try:
            for order, cells in enumerate(_data_rows(reader)):
                row = Row(path, reader.line_num, cells, columns)
                job = _Job([row], row.text("name") or f"job-{order:06d}", 0.0, None)
                job.submit = clock.parse(row.field("submitTime"))
                job.duration = _duration(row, clock, job.submit)
                if job.duration is None and options.missing_duration == "error":
                    raise _no_duration(row)
                found.append(job)
        except csv.Error as exc:
            raise TraceError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from exc
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
            raise TraceError(f"{path}: cannot read: {exc}") from exc
    return found


def _duration(row: Row, clock: TimeParser, submit: float) -> float | None:
    """``duration``, else ``endTime`` minus ``startTime`` (or the submit time); None if neither."""
    duration = row.number("duration")
    if duration is not None:
        return duration
    end_field = row.field("endTime")
    if not end_field.text:
        return None
    end = clock.parse(end_field)
    start_field = row.field("startTime")
    start = clock.parse(start_field) if start_field.text else submit
    if end < start:
        since = start_field if start_field.text else row.field("submitTime")
        raise end_field.error(f"a time at or after {since.where} {since.text!r}")
    return end - start


def _no_duration(row: Row) -> TraceError:
    column = "duration" if row.has("duration") or not row.has("endTime") else "endTime"
    what = "a duration" if column == "duration" else "an end time"
    return row.field(column).error(f"{what}; {_NO_DURATION_HINT}")


def _fold(path: Path, found: list[_Job], duplicates: str) -> tuple[list[_Job], int]:
    """One _Job per job name, by the ``duplicates`` option; and how many rows were folded."""
    by_name: dict[str, list[_Job]] = {}
    for job in found:
        by_name.setdefault(job.name, []).append(job)
    repeated = [same for same in by_name.values() if len(same) > 1]
    if not repeated:
        return found, 0
    if duplicates == "error":
        raise _repeated_names(path, repeated)
    folded = len(found) - len(by_name)
    if duplicates == "first":
        return [same[0] for same in by_name.values()], folded
    if duplicates == "last":
        # Listed where the name first appears: the kept row replaces the earlier ones.
        return [same[-1] for same in by_name.values()], folded
    return [_merge(same) for same in by_name.values()], folded


def _merge(same: list[_Job]) -> _Job:
    """The rows of one name as one job: submitted with the earliest, running until the
    latest submit + duration of its rows (None if a row has no duration)."""
    if len(same) == 1:
        return same[0]
    submit = min(job.submit for job in same)
    ends = [job.submit + job.duration for job in same if job.duration is not None]
    duration = max(ends) - submit if len(ends) == len(same) else None
    return _Job([job.rows[0] for job in same], same[0].name, submit, duration)


def _repeated_names(path: Path, repeated: list[list[_Job]]) -> TraceError:
    same = repeated[0]
    places = ", ".join(f"{path.name}:{job.rows[0].line}" for job in same[:_MAX_LINES_SHOWN])
    if len(same) > _MAX_LINES_SHOWN:
        places += f" and {len(same) - _MAX_LINES_SHOWN} more"
    others = f" ({len(repeated) - 1} more names repeat)" if len(repeated) > 1 else ""
    where = same[1].rows[0].field("name").where
    return TraceError(
        f"{path}:{same[1].rows[0].line}: column {where}: job {same[0].name!r} is on "
        f"several rows: {places}{others}; set duplicates: first, last or merge to accept "
        "repeated names"
    )


def _open(path: Path) -> IO[str]:
    try:
        with path.open("rb") as probe:
            magic = probe.read(2)
        # utf-8-sig drops the byte-order mark that spreadsheet exports put first.
        if magic == _GZIP_MAGIC:
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise TraceError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a folder, expected a CSV file") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _header(path: Path, reader: Iterator[list[str]]) -> list[str]:
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise TraceError(f"{path}:1: cannot read the header: {exc}") from exc
    if not header or not any(cell.strip() for cell in header):
        raise TraceError(f"{path}: empty file, expected a header row of column names")
    return [cell.strip() for cell in header]


def _resolve(path: Path, header: list[str], options: CsvOptions) -> Columns:
    """Where each logical column is in ``header``; errors name what is missing."""
    columns = options.columns
    unknown = [key for key in columns if key not in LOGICAL_COLUMNS]
    if unknown:
        raise TraceError(
            f"{path}: unknown logical column(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(LOGICAL_COLUMNS)}"
        )
    missing = [f"{key}={name!r}" for key, name in columns.items() if name not in header]
    if missing:
        raise TraceError(
            f"{path}: mapped column(s) not in the header: {', '.join(missing)}; "
            f"the header has: {', '.join(header)}"
        )
    index = {}
    for logical in LOGICAL_COLUMNS:
        name = columns.get(logical, logical)
        if name in header:
            index[logical] = (header.index(name), name)
    needed = [key for key in ("submitTime",) if key not in index]
    if not {"gpus", "gpuMilli", "gpusPerWorker"} & set(index):
        needed.append("gpus (or gpusPerWorker, or gpuMilli)")
    if needed:
        raise TraceError(
            f"{path}: no column for {', '.join(needed)}; map it to one of: {', '.join(header)}"
        )
    if options.missing_duration == "error" and not {"duration", "endTime"} & set(index):
        raise TraceError(
            f"{path}: no column for duration (or endTime); map it to one of: "
            f"{', '.join(header)}; or {_NO_DURATION_HINT}"
        )
    units = {key: unit for key, unit in options.units.items() if unit != DEFAULT_UNITS[key]}
    return Columns(index, units)


def _data_rows(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    """Rows with any content."""
    return (cells for cells in reader if any(cell.strip() for cell in cells))
