"""Cell parsing for CSV job traces: numbers, GPU requests, priorities and submit times.

Every failure is a TraceError naming the file, the line, the trace's own column
name (and the logical column it was mapped to), what was expected and what
the cell held, so a user can fix the file or the mapping at once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shoal.domain import priority as priorities
from shoal.domain.resources import MILLI
from shoal.errors import TraceError

_EXTRA_DIGITS = re.compile(r"(\.\d{6})\d+")  # .9799600 -> .979960: datetime takes microseconds
TIMESTAMP_EXAMPLE = "'2023-11-16 18:17:03.979960' or ISO 8601"
DEFAULT_PRIORITY = "normal"


@dataclass(frozen=True, slots=True)
class Field:
    """One cell, with what is needed to report it."""

    path: Path
    line: int
    logical: str
    column: str
    text: str

    def error(self, expected: str) -> TraceError:
        where = self.column if self.column == self.logical else f"{self.column} ({self.logical})"
        return TraceError(
            f"{self.path}:{self.line}: column {where}: expected {expected}, got {self.text!r}"
        )


class Row:
    """The cells of one data row, addressed by logical column."""

    def __init__(
        self, path: Path, line: int, cells: list[str], index: dict[str, tuple[int, str]]
    ) -> None:
        self._path, self._line, self._cells, self._index = path, line, cells, index

    def field(self, logical: str) -> Field:
        position, column = self._index.get(logical, (-1, logical))
        text = self._cells[position].strip() if 0 <= position < len(self._cells) else ""
        return Field(self._path, self._line, logical, column, text)

    def text(self, logical: str) -> str:
        return self.field(logical).text

    def number(self, logical: str, positive: bool = False) -> float | None:
        """A non-negative number (strictly positive if ``positive``); None if empty."""
        field = self.field(logical)
        if not field.text:
            return None
        expected = "a positive number" if positive else "a number >= 0"
        value = _float(field, expected)
        if value < 0 or (positive and value == 0):
            raise field.error(expected)
        return value

    def integer(self, logical: str, default: int, minimum: int = 0) -> int:
        field = self.field(logical)
        if not field.text:
            return default
        expected = f"a whole number >= {minimum}"
        value = _float(field, expected)
        if value != int(value) or value < minimum:
            raise field.error(expected)
        return int(value)


def _float(field: Field, expected: str) -> float:
    try:
        value = float(field.text)
    except ValueError:
        raise field.error(expected) from None
    if not math.isfinite(value):
        raise field.error(expected)
    return value


def parse_gpus(row: Row) -> tuple[int, int]:
    """``(GPUs per worker, milli-GPUs taken on each)`` from ``gpus`` and/or ``gpuMilli``.

    ``gpus`` below 1 is a share of one GPU; ``gpuMilli`` gives that share in
    thousandths, as the openb trace does.  A share is only ever of one GPU.
    """
    gpus_field, milli_field = row.field("gpus"), row.field("gpuMilli")
    gpus = row.number("gpus")
    milli = row.integer("gpuMilli", default=-1)
    if milli > MILLI:
        raise milli_field.error(f"milli-GPUs of one GPU, 0 to {MILLI}")
    if gpus is None:
        return (1, milli) if milli > 0 else (0, 0)
    if 0 < gpus < 1:
        if milli >= 0:
            raise gpus_field.error("a whole number of GPUs when gpuMilli gives the share")
        return 1, max(1, round(gpus * MILLI))
    if gpus != int(gpus):
        raise gpus_field.error("a whole number of GPUs, or a share of one GPU below 1")
    count = int(gpus)
    if count == 0:
        return 0, 0
    if 0 < milli < MILLI and count > 1:
        raise milli_field.error(f"{MILLI} (a share of a GPU is for one GPU only, not {count})")
    return count, milli if milli > 0 else MILLI


def parse_priority(row: Row) -> int:
    """An integer, or a class name (low, normal, high, critical); ``normal`` if empty."""
    field = row.field("priority")
    if not field.text:
        return priorities.resolve(DEFAULT_PRIORITY)
    try:
        return int(field.text)
    except ValueError:
        pass
    try:
        return priorities.resolve(field.text.lower())
    except ValueError:
        known = ", ".join(priorities.BUILTIN_CLASSES)
        raise field.error(f"an integer or one of {known}") from None


class TimeParser:
    """Submit times in seconds, or timestamps; ``auto`` decides on the first value."""

    def __init__(self, time_format: str) -> None:
        self._format = time_format

    def parse(self, field: Field) -> float:
        if not field.text:
            raise field.error("a submit time")
        if self._format == "auto":
            self._format = "seconds" if _is_number(field.text) else "timestamp"
        if self._format == "seconds":
            return _float(field, "seconds (a number); set timeFormat: timestamp for dates")
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
