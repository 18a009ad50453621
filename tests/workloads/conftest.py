"""Fixtures for the workload tests: a launcher that never leaves processes behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.workloads.harness import Launcher


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    launch = Launcher()
    try:
        yield launch
    finally:
        # A failed assertion must not leave ranks running (or blocked in a
        # collective) behind the test session.
        launch.close()
