"""Generic CSV job traces: one row per job, columns mapped to Shoal's logical fields.

A trace maps *logical* columns (``submitTime``, ``gpus``, ...) to its own header
names; a logical column that is not mapped is still used when the header has a
column of exactly that name, so a file written with the canonical names needs
no mapping.  Plain and gzipped files are read alike (gzip is recognised by its
magic bytes, not its name).  See docs/trace-format.md for every column.

Submit times become seconds after the earliest submit, so every trace starts at
0 whatever its clock; jobs come back sorted by submit time (ties keep file order).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO

from shoal.domain.workload import PodShape, Workload
from shoal.errors import TraceError
from shoal.sim.traces.csvvalues import Field, Row, TimeParser, parse_gpus, parse_priority

LOGICAL_COLUMNS = (
    "name",
    "submitTime",
    "duration",
    "gpus",
    "gpuMilli",
    "workers",
    "cpu",
    "memory",
    "tenant",
    "priority",
    "gpuModel",
    "checkpointInterval",
)
DEFAULT_TENANT = "default"
_GZIP_MAGIC = b"\x1f\x8b"


def load_jobs(
    path: Path,
    columns: Mapping[str, str] | None = None,
    time_format: str = "auto",
    limit: int | None = None,
) -> list[Workload]:
    """The jobs of a CSV trace, sorted by submit time; ``limit`` keeps the first N rows."""
    if time_format not in ("auto", "seconds", "timestamp"):
        raise TraceError(f"time format {time_format!r}: expected auto, seconds or timestamp")
    jobs: list[Workload] = []
    times: list[float] = []
    clock = TimeParser(time_format)
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = _header(path, reader)
        index = _resolve(path, header, columns or {})
        try:
            for row_number, cells in enumerate(_data_rows(reader, limit)):
                row = Row(path, reader.line_num, cells, index)
                times.append(clock.parse(row.field("submitTime")))
                jobs.append(_job(row, row_number))
        except csv.Error as exc:
            raise TraceError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from exc
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
            raise TraceError(f"{path}: cannot read: {exc}") from exc
    start = min(times, default=0.0)
    # Workloads are frozen: the relative submit time is known only after the last row.
    timed = [replace(job, submit_time=at - start) for job, at in zip(jobs, times, strict=True)]
    return sorted(timed, key=lambda job: job.submit_time)


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


def _resolve(
    path: Path, header: list[str], columns: Mapping[str, str]
) -> dict[str, tuple[int, str]]:
    """Logical column -> (index in the header, the header's name for it)."""
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
    if "gpus" not in index and "gpuMilli" not in index:
        needed.append("gpus (or gpuMilli)")
    if needed:
        raise TraceError(
            f"{path}: no column for {', '.join(needed)}; map it to one of: {', '.join(header)}"
        )
    return index


def _data_rows(reader: Iterator[list[str]], limit: int | None) -> Iterator[list[str]]:
    """Rows with any content, at most ``limit`` of them."""
    count = 0
    for cells in reader:
        if limit is not None and count >= limit:
            return
        if any(cell.strip() for cell in cells):
            count += 1
            yield cells


def _job(row: Row, row_number: int) -> Workload:
    count, milli = parse_gpus(row)
    workers = row.integer("workers", default=1, minimum=1)
    shape = PodShape(
        cpu=round((row.number("cpu") or 0.0) * 1000),  # cores -> millicores
        memory=round(row.number("memory") or 0.0),
        gpu_count=count,
        gpu_milli=milli,
        models=_models(row.field("gpuModel")) if count else (),
    )
    checkpoint = row.number("checkpointInterval", positive=True)
    return Workload(
        name=row.text("name") or f"job-{row_number:06d}",
        tenant=row.text("tenant") or DEFAULT_TENANT,
        pods=(shape,) * workers,
        priority=parse_priority(row),
        duration=row.number("duration"),
        checkpoint_interval=checkpoint,
    )


def _models(field: Field) -> tuple[str, ...]:
    return tuple(model.strip() for model in field.text.split("|") if model.strip())
