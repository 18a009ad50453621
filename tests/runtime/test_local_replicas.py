"""What the plane reads of a replica's folder (a folder its tenant writes): never through a
link the tenant planted, never more than 64 KiB, and only a regular file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from shoal.control.records import JobRow
from shoal.runtime.local.replicas import READY_FILE, LocalReplicas


def replicas(tmp_path: Path) -> LocalReplicas:
    return LocalReplicas(store=None, state_dir=tmp_path,  # type: ignore[arg-type]
                         job_dir=lambda key: tmp_path / "jobs" / key, now=lambda: 0.0)


def job(name: str = "team-a/svc-r1-0") -> JobRow:
    return JobRow(name=name, tenant="team-a", manifest={}, phase="Running", version=1)


def ready_path(tmp_path: Path) -> Path:
    folder = tmp_path / "jobs" / "team-a" / "svc-r1-0" / "pod-0"
    folder.mkdir(parents=True)
    return folder / READY_FILE


def test_a_ready_file_is_read(tmp_path: Path) -> None:
    ready_path(tmp_path).write_text(json.dumps({"ready": True}))
    assert replicas(tmp_path)._ready(job()) == {"ready": True}


def test_a_link_planted_in_its_place_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secret.json"
    elsewhere.write_text(json.dumps({"ready": True, "error": "the plane's secret"}))
    os.symlink(elsewhere, ready_path(tmp_path))
    assert replicas(tmp_path)._ready(job()) is None


def test_a_huge_or_odd_ready_file_is_ignored(tmp_path: Path) -> None:
    path = ready_path(tmp_path)
    path.write_text('{"ready": true, "pad": "' + "x" * (1 << 20) + '"}')
    assert replicas(tmp_path)._ready(job()) is None, "only the first 64 KiB are read"
    path.unlink()
    os.mkfifo(path)  # a FIFO would block a plain open: not a regular file, not read
    assert replicas(tmp_path)._ready(job()) is None
    path.unlink()
    path.write_text("[1, 2]")
    assert replicas(tmp_path)._ready(job()) is None
