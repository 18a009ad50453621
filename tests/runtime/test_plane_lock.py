"""One control plane per state folder: a second one is refused until the first stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.runtime.local.plane import EmbeddedPlane, PlaneRunningError


def test_a_second_plane_on_the_same_state_is_refused(tmp_path: Path) -> None:
    first = EmbeddedPlane(tmp_path / "state")
    with pytest.raises(PlaneRunningError, match="already runs on"):
        EmbeddedPlane(tmp_path / "state")
    # Another process is refused too, with one line and exit 1.
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "server", "--port", "0", "--state-dir",
         str(tmp_path / "state")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "already runs on" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    first.stop()
    second = EmbeddedPlane(tmp_path / "state")  # free again
    second.stop()
    first.store.close()
    second.store.close()
