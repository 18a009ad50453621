"""The application's wiring point: the ports a runtime plugs in, in one object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.app.ports import Clock, StateStore, Workspace


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class App:
    """What every use case needs: the store, the job files, the clock.

    ``wake`` pokes the control loop after a change so that it reacts at once
    instead of at its next tick.
    """

    store: StateStore
    workspace: Workspace
    clock: Clock
    wake: Callable[[], None] = field(default=_nothing)
