"""Kubernetes-style quantities: ``cpu: 4`` or ``"500m"``; ``memory: 16Gi``.

CPU is kept in millicores and memory in MiB, as integers, so that resource
arithmetic is exact.  A bare number for memory means MiB.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_CPU = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m?)\s*$")
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")
_MIB_PER_UNIT = {
    None: 1.0,
    "Ki": 1 / 1024,
    "Mi": 1.0,
    "Gi": 1024.0,
    "Ti": 1024.0 * 1024,
    "K": 1000 / 2**20,
    "M": 1e6 / 2**20,
    "G": 1e9 / 2**20,
    "T": 1e12 / 2**20,
}


def parse_cpu_milli(value: object) -> int:
    """``4`` -> 4000, ``"0.5"`` -> 500, ``"250m"`` -> 250."""
    if isinstance(value, bool):
        raise ValueError("expected a CPU quantity such as 4, 0.5 or '500m'")
    if isinstance(value, int | float):
        text = repr(float(value))
    elif isinstance(value, str):
        text = value
    else:
        raise ValueError("expected a CPU quantity such as 4, 0.5 or '500m'")
    match = _CPU.match(text)
    if text.strip().startswith("-"):
        raise ValueError(f"must not be negative, got {value!r}")
    if match is None:
        raise ValueError(f"expected a CPU quantity such as 4, 0.5 or '500m', got {value!r}")
    number, milli = float(match.group(1)), match.group(2)
    return round(number if milli else number * 1000)


def parse_memory_mib(value: object) -> int:
    """``"16Gi"`` -> 16384, ``512`` -> 512 (MiB), ``"1G"`` -> 954."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a memory quantity such as '16Gi', '512Mi' or a number of MiB")
    match = _MEM.match(str(value))
    if str(value).strip().startswith("-"):
        raise ValueError(f"must not be negative, got {value!r}")
    if match is None:
        raise ValueError(
            f"expected a memory quantity such as '16Gi', '512Mi' or a number of MiB, got {value!r}"
        )
    return round(float(match.group(1)) * _MIB_PER_UNIT[match.group(2)])


def cpu_text(milli: int) -> str:
    return f"{milli}m"


def memory_text(mib: int) -> str:
    return f"{mib}Mi"


# JSON dumps write quantities back in a form that parses to the same value,
# so a stored manifest round-trips exactly.
CpuMilli = Annotated[
    int, BeforeValidator(parse_cpu_milli), PlainSerializer(cpu_text, when_used="json")
]
MemoryMiB = Annotated[
    int, BeforeValidator(parse_memory_mib), PlainSerializer(memory_text, when_used="json")
]
