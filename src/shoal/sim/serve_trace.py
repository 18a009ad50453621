"""Request-arrival traces for serve mode: one CSV row per request.

The logical columns are ``arrivalTime`` (seconds, or a timestamp such as the
Azure LLM trace's ``2023-11-16 18:17:03.9799600``), and optionally
``inputTokens`` and ``outputTokens``, which drive the service-time model.
``columns`` maps them to the file's header names, as for job traces; a
numeric ``arrivalTime`` is in seconds unless ``units.arrivalTime`` says
otherwise.  Errors name the file, the line, the column and what was
expected (``csvvalues``), and are ``TraceError`` (exit 2).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.domain.simulation import SERVE_COLUMNS, ServiceTimeSpec, TraceSpec
from shoal.errors import TraceError
from shoal.sim.serve import Requests
from shoal.sim.traces.csvvalues import Columns, Row, TimeParser

if TYPE_CHECKING:
    from _csv import Reader

_TIME_UNITS = {"seconds": 1.0, "milliseconds": 0.001, "minutes": 60.0, "hours": 3600.0}


@dataclass(frozen=True, slots=True)
class ServeTrace:
    """Requests sorted by arrival, times from the first arrival."""

    arrival: list[float]
    input_tokens: list[int]
    output_tokens: list[int]

    def requests(self, model: ServiceTimeSpec) -> Requests:
        """The trace with each request's service time under ``model``."""
        first = [
            model.fixed_seconds + model.per_input_token_seconds * tokens
            for tokens in self.input_tokens
        ]
        service = [
            head + model.per_output_token_seconds * tokens
            for head, tokens in zip(first, self.output_tokens, strict=True)
        ]
        return Requests(self.arrival, service, first)


def load_serve_trace(path: Path, trace: TraceSpec) -> ServeTrace:
    """Read a request trace the way a Simulation manifest's ``spec.trace`` describes it."""
    mapping = trace.columns.as_mapping() if trace.columns else {}
    units = trace.units.as_mapping() if trace.units else {}
    scale = _TIME_UNITS[units.get("arrivalTime", "seconds")]
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader, [])]
            if not any(header):
                raise TraceError(f"{path}: empty file, expected a header row of column names")
            columns = _resolve(path, header, mapping, units)
            rows = _read(path, reader, columns, trace.time_format, scale)
    except FileNotFoundError:
        raise TraceError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a folder, expected a CSV file") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise TraceError(f"{path}: malformed CSV: {exc}") from exc
    if not rows:
        raise TraceError(f"{path}: no requests: the file has a header and no data rows")
    rows.sort(key=lambda row: row[0])
    if trace.limit is not None:
        rows = rows[: trace.limit]
    start = rows[0][0]
    return ServeTrace(
        [at - start for at, _, _ in rows], [i for _, i, _ in rows], [o for _, _, o in rows]
    )


def _resolve(
    path: Path, header: list[str], mapping: Mapping[str, str], units: Mapping[str, str]
) -> Columns:
    missing = [f"{key}={name!r}" for key, name in mapping.items() if name not in header]
    if missing:
        raise TraceError(
            f"{path}: mapped column(s) not in the header: {', '.join(missing)}; "
            f"the header has: {', '.join(header)}"
        )
    index = {}
    for logical in SERVE_COLUMNS:
        name = mapping.get(logical, logical)
        if name in header:
            index[logical] = (header.index(name), name)
    if "arrivalTime" not in index:
        raise TraceError(
            f"{path}: no column for arrivalTime; map it (trace.columns.arrivalTime) to one of: "
            f"{', '.join(header)}"
        )
    noted = {key: unit for key, unit in units.items() if unit != "seconds"}
    return Columns(index, noted)


def _read(
    path: Path, reader: Reader, columns: Columns, time_format: str, scale: float
) -> list[tuple[float, int, int]]:
    clock = TimeParser(time_format)
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        row = Row(path, reader.line_num, cells, columns)
        at = clock.parse(row.field("arrivalTime"))
        numeric = time_format == "seconds" or (time_format == "auto" and _is_number(row))
        rows.append((
            at * scale if numeric else at,
            row.integer("inputTokens", default=0),
            row.integer("outputTokens", default=0),
        ))
    return rows


def _is_number(row: Row) -> bool:
    try:
        float(row.text("arrivalTime"))
    except ValueError:
        return False
    return True
