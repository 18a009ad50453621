"""``shoal server stop`` signals only the recorded Shoal server, never a group or everyone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal.cli import server


@pytest.mark.parametrize("pid", [-1, 0, 1, True, "123", None, 2**40])
def test_a_bogus_recorded_pid_signals_nobody(tmp_path: Path, pid: object,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": pid}))
    sent: list[tuple[int, int]] = []

    def record(target: int, sig: int) -> None:
        sent.append((target, sig))
        if target == 2**40:
            raise ProcessLookupError

    monkeypatch.setattr(server.os, "kill", record)
    server.stop(tmp_path)
    assert [s for s in sent if s[1] != 0] == [], "no signal but the liveness probe"
    assert all(target > 1 for target, _ in sent)
    assert not (tmp_path / "server.json").exists()


def test_a_recorded_pid_that_is_not_shoal_is_left_alone(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "server.json").write_text(json.dumps({"url": "x", "pid": os.getppid()}))
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(server.os, "kill", lambda target, sig: sent.append((target, sig)))
    monkeypatch.setattr(server, "_is_shoal", lambda pid: False)
    server.stop(tmp_path)
    assert [s for s in sent if s[1] != 0] == []
