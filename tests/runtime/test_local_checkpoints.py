"""The embedded runtime's checkpoints port on a tenant-written (hostile) folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from shoal.control.records import JobRow
from shoal.runtime.local.checkpoints import LocalCheckpoints

NOW = 1_000_000.0


def job(folder: Path, phase: str = "Preempting") -> JobRow:
    return JobRow(name="j", tenant="t", manifest={}, phase=phase, version=1,
                  checkpoint_dir=str(folder))


def touch(path: Path, mtime: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime), follow_symlinks=False)
    return path


def test_the_newest_file_at_any_depth_and_the_step_the_job_reported(tmp_path: Path) -> None:
    touch(tmp_path / "ckpt.pt", NOW - 100)
    touch(tmp_path / "epoch-3" / "model.safetensors", NOW - 50)
    touch(tmp_path / ".ckpt.pt.tmp.123", NOW - 1)  # a writer's temporary: not yet saved
    touch(tmp_path / "shoal-progress.json", NOW - 1, json.dumps({"step": 300}))
    found = LocalCheckpoints(clock=lambda: NOW).latest(job(tmp_path))
    assert found is not None and (found.time, found.step) == (NOW - 50, 300)


def test_links_future_times_and_odd_progress_files_are_ignored(tmp_path: Path) -> None:
    outside = touch(tmp_path.parent / f"{tmp_path.name}-host" / "newer", NOW - 1)
    folder = tmp_path / "ck"
    touch(folder / "ckpt.pt", NOW - 100)
    (folder / "link").symlink_to(outside)  # planted: must not count, nor be followed
    (folder / "dir-link").symlink_to(outside.parent, target_is_directory=True)
    touch(folder / "from-the-future", NOW + 3600)  # would make lost work vanish
    os.mkfifo(folder / "shoal-progress.json")  # must not block the control plane
    found = LocalCheckpoints(clock=lambda: NOW).latest(job(folder))
    assert found is not None and (found.time, found.step) == (NOW - 100, None)
    os.unlink(folder / "shoal-progress.json")
    (folder / "shoal-progress.json").symlink_to(outside)
    found = LocalCheckpoints(clock=lambda: NOW).latest(job(folder))
    assert found is not None and found.step is None


def test_no_folder_or_no_file_means_no_checkpoint(tmp_path: Path) -> None:
    checkpoints = LocalCheckpoints(clock=lambda: NOW)
    assert checkpoints.latest(job(tmp_path / "missing")) is None
    assert checkpoints.latest(job(tmp_path)) is None


def test_a_running_jobs_folder_is_looked_at_once_a_second_a_stopping_ones_every_time(
        tmp_path: Path) -> None:
    clock = [NOW]
    checkpoints = LocalCheckpoints(clock=lambda: clock[0])
    assert checkpoints.latest(job(tmp_path, "Running")) is None
    touch(tmp_path / "ckpt.pt", NOW - 1)
    assert checkpoints.latest(job(tmp_path, "Running")) is None, "cached within the second"
    assert checkpoints.latest(job(tmp_path, "Preempting")) is not None, "SIGTERM's save counts"
    touch(tmp_path / "later.pt", NOW)
    clock[0] += 1.0
    found = checkpoints.latest(job(tmp_path, "Running"))
    assert found is not None and found.time == NOW


def test_a_progress_file_that_would_recurse_forever_is_no_step(tmp_path: Path) -> None:
    touch(tmp_path / "model.ckpt", NOW - 10)
    touch(tmp_path / "shoal-progress.json", NOW - 10, "[" * 4096)  # 4 KiB, as read
    found = LocalCheckpoints(clock=lambda: NOW).latest(job(tmp_path))
    assert found is not None and (found.time, found.step) == (NOW - 10, None)
