"""What the CSV trace loader did to a trace: rows dropped, folded, cut or split, and why.

The loader takes traces "as they come" (repeated job names, missing
durations, jobs wider than a node); whatever it changed under the trace
options is counted here, so that ``shoal sim`` can say it on stderr instead
of silently replaying a different workload than the file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TraceReport:
    """Counts of what the loader changed, with the options that made it do so."""

    path: Path
    rows: int
    """Data rows read (blank lines are not rows)."""
    jobs: int
    """Jobs returned."""
    missing_duration: str = "error"
    dropped_without_duration: int = 0
    """Jobs dropped because they had no duration (``missingDuration: drop``)."""
    run_until_end: int = 0
    """Jobs without a duration kept to run until the replay ends (``runUntilEnd``)."""
    duplicates: str = "error"
    duplicate_rows: int = 0
    """Rows whose job name an earlier row already had: merged into that job or discarded."""
    limit: int | None = None
    beyond_limit: int = 0
    """Jobs left out by ``limit`` (the latest submitted ones)."""
    split: int = 0
    """Jobs with a worker wider than a node, turned into a gang of node-sized workers."""
    split_at: int | None = None
    """GPUs of the largest node, the width a worker was split to fit (None: no split)."""

    def warnings(self) -> list[str]:
        """One line per kind of change, for the user to read; empty when the trace was taken as is."""
        name = self.path.name
        lines = []
        if self.duplicate_rows:
            how = {
                "first": "kept the first row of each name",
                "last": "kept the last row of each name",
                "merge": "merged the rows of each name into one job",
            }.get(self.duplicates, self.duplicates)
            lines.append(
                f"{name}: {_count(self.duplicate_rows, 'row')} with the job name of an earlier "
                f"row: {how} (duplicates: {self.duplicates})"
            )
        if self.dropped_without_duration:
            lines.append(
                f"{name}: {_count(self.dropped_without_duration, 'job')} without a duration "
                "dropped (missingDuration: drop)"
            )
        if self.run_until_end:
            lines.append(
                f"{name}: {_count(self.run_until_end, 'job')} without a duration, kept to run "
                "until the end of the replay (missingDuration: runUntilEnd)"
            )
        if self.beyond_limit:
            lines.append(
                f"{name}: kept the first {self.jobs} jobs by submit time, left out "
                f"{self.beyond_limit} (limit: {self.limit})"
            )
        if self.split:
            lines.append(
                f"{name}: {_count(self.split, 'job')} wider than a node "
                f"({self.split_at} GPUs) split into gangs of node-sized workers"
            )
        return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
