"""The embedded workspace: a reused name's old folder goes away without holding the store."""

from __future__ import annotations

from pathlib import Path

from shoal.api.workspace import LocalWorkspace
from tests.control.conftest import wait_for


def test_forget_renames_at_once_and_deletes_in_the_background(tmp_path: Path) -> None:
    state = tmp_path / "state"
    workspace = LocalWorkspace(state, lambda job: state / "jobs" / job / "checkpoints",
                               lambda job, pod: state / "jobs" / job / "logs" / f"pod-{pod}.log")
    folder = state / "jobs" / "team-a" / "big" / "checkpoints"
    for i in range(50):
        (folder / f"d{i}").mkdir(parents=True)
        for j in range(20):
            (folder / f"d{i}" / f"f{j}").touch()
    workspace.forget("team-a/big")
    assert not (state / "jobs" / "team-a" / "big").exists(), "gone from its place at once"
    wait_for(lambda: not any((state / "trash").iterdir()))
    workspace.forget("team-a/never-existed")  # nothing to do
