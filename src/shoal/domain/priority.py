"""Priority classes: names users write, integers the scheduler compares."""

from __future__ import annotations

BUILTIN_CLASSES: dict[str, int] = {
    "low": 0,
    "normal": 100,
    "high": 1000,
    "critical": 10000,
}


def resolve(priority: int | str) -> int:
    """An integer priority, or the value of a built-in class name."""
    if isinstance(priority, int):
        return priority
    try:
        return BUILTIN_CLASSES[priority]
    except KeyError:
        known = ", ".join(BUILTIN_CLASSES)
        raise ValueError(f"unknown priority class {priority!r}; expected one of {known}") from None
