"""Cell parsing for CSV job traces: numbers and their units, GPU requests, priorities, times.

Every failure is a TraceError naming the file, the line, the trace's own column
name (and the logical column it was mapped to, and its unit when not the
default), what was expected and what the cell held, so a user can fix the
file or the mapping at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shoal.domain import priority as priorities
from shoal.domain.resources import MILLI
from shoal.errors import TraceError

_EXTRA_DIGITS = re.compile(r"(\.\d{6})\d+")  # .9799600 -> .979960: datetime takes microseconds
TIMESTAMP_EXAMPLE = "'2023-11-16 18:17:03.979960' or ISO 8601"
DEFAULT_PRIORITY = "normal"

_TIME_UNITS = {"seconds": (1, 1), "milliseconds": (1, 1000), "minutes": (60, 1), "hours": (3600, 1)}
_GPU_UNITS = {"count": (1, 1), "percent": (1, 100)}
UNITS: dict[str, dict[str, tuple[int, int]]] = {
    # logical column -> unit -> (numerator, denominator) to Shoal's unit: GPUs,
    # millicores, MiB, seconds.  A ratio of integers, not a float factor, so
    # that 700 percent is exactly 7.0 GPUs and passes the whole-GPU check.
    "gpus": _GPU_UNITS,
    "gpusPerWorker": _GPU_UNITS,
    "cpu": {"cores": (1000, 1), "millicores": (1, 1), "percent": (10, 1)},
    "memory": {"MiB": (1, 1), "GiB": (1024, 1), "MB": (10**6, 2**20), "GB": (10**9, 2**20)},
    "duration": _TIME_UNITS,
    "checkpointInterval": _TIME_UNITS,
}
DEFAULT_UNITS = {column: next(iter(units)) for column, units in UNITS.items()}
"""The unit a column is read in when the trace options name none (the first listed)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One cell, with what is needed to report it."""

    path: Path
    line: int
    logical: str
    column: str
    text: str
    unit: str = ""
    """The column's unit when it is not the default one ("" otherwise)."""

    def error(self, expected: str) -> TraceError:
        return TraceError(
            f"{self.path}:{self.line}: column {self.where}: expected {expected}, got {self.text!r}"
        )

    @property
    def where(self) -> str:
        """``runtime_s (duration)``, ``plan_gpu (gpus, in percent)`` or just ``gpus``."""
        notes = [self.logical] if self.column != self.logical else []
        if self.unit:
            notes.append(f"in {self.unit}")
        return f"{self.column} ({', '.join(notes)})" if notes else self.column


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each logical column is in a trace, and the unit it is written in."""

    index: Mapping[str, tuple[int, str]]
    """Logical column -> (position in the header, the header's name for it)."""
    units: Mapping[str, str]
    """Logical column -> unit, for columns not in their default unit."""

    def __contains__(self, logical: object) -> bool:
        return logical in self.index


class Row:
    """The cells of one data row, addressed by logical column."""

    def __init__(self, path: Path, line: int, cells: list[str], columns: Columns) -> None:
        self.path, self.line = path, line
        self._cells, self._columns = cells, columns

    def has(self, logical: str) -> bool:
        """Whether the trace has a column for ``logical`` (the cell may still be empty)."""
        return logical in self._columns

    def field(self, logical: str) -> Field:
        _, column = self._columns.index.get(logical, (-1, logical))
        unit = self._columns.units.get(logical, "")
        return Field(self.path, self.line, logical, column, self.text(logical), unit)

    def text(self, logical: str) -> str:
        # The hot path of a big trace: a Field is only built to report an error.
        position = self._columns.index.get(logical, _ABSENT)[0]
        return self._cells[position].strip() if 0 <= position < len(self._cells) else ""

    def number(self, logical: str, positive: bool = False) -> float | None:
        """A non-negative number (strictly positive if ``positive``), in Shoal's unit; None if empty.

        The check is on the cell as written, the result converted from the
        column's unit (``UNITS``).
        """
        text = self.text(logical)
        if not text:
            return None
        expected = "a positive number" if positive else "a number >= 0"
        value = _float(text)
        if value is None or value < 0 or (positive and value == 0):
            raise self.field(logical).error(expected)
        unit = self._columns.units.get(logical) or DEFAULT_UNITS.get(logical, "")
        numerator, denominator = UNITS.get(logical, {}).get(unit, (1, 1))
        return value * numerator / denominator

    def integer(self, logical: str, default: int, minimum: int = 0) -> int:
        text = self.text(logical)
        if not text:
            return default
        value = _float(text)
        if value is None or value != int(value) or value < minimum:
            raise self.field(logical).error(f"a whole number >= {minimum}")
        return int(value)


_ABSENT = (-1, "")


def _float(text: str) -> float | None:
    """The finite number ``text`` holds, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_gpus(row: Row, count_column: str = "gpus") -> tuple[int, int]:
    """``(GPUs per worker, milli-GPUs taken on each)`` from ``count_column`` and/or ``gpuMilli``.

    A count below 1 is a share of one GPU; ``gpuMilli`` gives that share in
    thousandths, as the openb trace does.  A share is only ever of one GPU.
    """
    gpus = row.number(count_column)
    milli = row.integer("gpuMilli", default=-1)
    if milli > MILLI:
        raise row.field("gpuMilli").error(f"milli-GPUs of one GPU, 0 to {MILLI}")
    if gpus is None:
        return (1, milli) if milli > 0 else (0, 0)
    if 0 < gpus < 1:
        if milli >= 0:
            raise row.field(count_column).error(
                "a whole number of GPUs when gpuMilli gives the share"
            )
        return 1, max(1, round(gpus * MILLI))
    if gpus != int(gpus):
        field = row.field(count_column)
        hint = " (100 = one GPU)" if field.unit == "percent" else ""
        raise field.error(f"a whole number of GPUs, or a share of one GPU below 1{hint}")
    count = int(gpus)
    if count == 0:
        return 0, 0
    if 0 < milli < MILLI and count > 1:
        raise row.field("gpuMilli").error(
            f"{MILLI} (a share of a GPU is for one GPU only, not {count})"
        )
    return count, milli if milli > 0 else MILLI


def parse_priority(row: Row) -> int:
    """An integer, or a class name (low, normal, high, critical); ``normal`` if empty."""
    text = row.text("priority")
    if not text:
        return priorities.resolve(DEFAULT_PRIORITY)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return priorities.resolve(text.lower())
    except ValueError:
        known = ", ".join(priorities.BUILTIN_CLASSES)
        raise row.field("priority").error(f"an integer or one of {known}") from None


class TimeParser:
    """Times in seconds, or timestamps; ``auto`` decides on the first value.

    One parser reads every time column of a trace (submit, start, end), so
    they are all read alike and their differences are durations.
    """

    def __init__(self, time_format: str) -> None:
        self._format = time_format

    def parse(self, field: Field) -> float:
        if not field.text:
            raise field.error("a submit time" if field.logical == "submitTime" else "a time")
        if self._format == "auto":
            self._format = "seconds" if _is_number(field.text) else "timestamp"
        if self._format == "seconds":
            seconds = _float(field.text)
            if seconds is None:
                raise field.error("seconds (a number); set timeFormat: timestamp for dates")
            return seconds
        return _timestamp(field)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _timestamp(field: Field) -> float:
    try:
        moment = datetime.fromisoformat(_EXTRA_DIGITS.sub(r"\1", field.text))
    except ValueError:
        raise field.error(f"a timestamp such as {TIMESTAMP_EXAMPLE}") from None
    if moment.tzinfo is None:
        # Naive times are taken as UTC, never the local zone: the result must not
        # depend on the machine.  Only differences between submits matter anyway.
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
