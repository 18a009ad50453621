"""Kubernetes quantities: written from Shoal's integers, compared by value.

The API server rewrites quantities into its canonical form (``2000m`` is
stored as ``2``, ``4096Mi`` as ``4Gi``, ``1000`` as ``1k``), so objects are
compared by what their quantities are worth (``value``), never by text.
Pure.
"""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE])?)$")


def value(text: str | int | float) -> Decimal:
    """What a quantity is worth (``"1500m"`` -> 1.5); ValueError for a malformed one."""
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, exponent, suffix = match.groups()
    if exponent:
        return Decimal(number + exponent)
    return Decimal(number) * _SUFFIX[suffix or ""]


def cpu(milli: int) -> str:
    """Millicores as people write them: 2000 -> ``"2"``, 1500 -> ``"1500m"``."""
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory(mib: int) -> str:
    """MiB in the largest binary unit that keeps it whole: 4096 -> ``"4Gi"``."""
    for unit, size in (("Ti", 1 << 20), ("Gi", 1 << 10)):
        if mib and mib % size == 0:
            return f"{mib // size}{unit}"
    return f"{mib}Mi"


def count(number: int) -> str:
    return str(number)
