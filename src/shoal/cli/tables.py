"""Printing for the kubectl-style verbs: tables that never cut numbers, ages, output formats."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from shoal.errors import InputError

OUTPUTS = ("table", "wide", "json", "yaml")
FREE_TEXT = ("REASON", "MESSAGE", "DETAILS")
SHORT_TEXT = 60
"""Free text is shortened to this many characters outside ``-o wide``."""

out = Console()
# Tables print at their natural width, like kubectl's: a narrow terminal wraps
# the lines rather than Shoal cutting a number or a name.
tables_out = Console(width=100_000)


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise InputError(f"--output: expected one of {', '.join(OUTPUTS)}, got {output!r}")


def emit(data: Any, output: str) -> bool:
    """Print ``data`` as JSON or YAML when asked; False for the table formats."""
    check_output(output)
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
        return True
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return True
    return False


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], wide: bool) -> Table:
    """Columns as wide as their widest cell; free text shortened unless ``wide``."""
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    free = [name in FREE_TEXT for name in columns]
    for name in columns:
        grid.add_column(name, no_wrap=True, overflow="ignore")
    for row in rows:
        grid.add_row(*(_shorten(cell) if is_free and not wide else cell
                       for cell, is_free in zip(row, free, strict=True)))
    return grid


def show(renderable: object) -> None:
    """Print a table (or a line) at its natural width."""
    tables_out.print(renderable, highlight=False)


def _shorten(text: str) -> str:
    return text if len(text) <= SHORT_TEXT else text[: SHORT_TEXT - 1] + "…"


def age(since: float | None, now: float | None = None) -> str:
    """``3m12s`` since ``since`` (Unix time); ``-`` when unknown."""
    if since is None:
        return "-"
    return duration(max(0.0, (now if now is not None else time.time()) - since))


def duration(seconds: float) -> str:
    """Human duration, two units at most: ``45s``, ``3m12s``, ``2h5m``, ``3d4h``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def amount(resource: str, value: int) -> str:
    """A quota amount as users write it: cores, Gi/Mi, GPUs."""
    if resource == "cpu":
        return f"{value / 1000:g}"
    if resource == "memory":
        return f"{value / 1024:g}Gi" if value % 1024 == 0 else f"{value}Mi"
    if resource.startswith("gpu/"):
        return f"{value / 1000:g}"
    return str(value)


def vector(values: dict[str, int], order: Sequence[str] | None = None) -> str:
    keys = list(order) if order is not None else sorted(values)
    return " ".join(f"{k}={amount(k, values.get(k, 0))}" for k in keys) or "-"
