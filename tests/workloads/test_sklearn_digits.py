"""examples/workloads/sklearn_digits.py run for real, as one pod.

Same contract as the DDP workload: good accuracy, a SIGKILL loses only the steps
since the last checkpoint and the next attempt resumes from it, SIGTERM saves
and exits 143 within the grace period, and a restart after success does not
retrain.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from tests.workloads.harness import (
    CHECKPOINT_LINE,
    PREEMPTED_LINE,
    Final,
    Launcher,
    finish_all,
    parse_final,
)

joblib = pytest.importorskip("joblib", reason="needs scikit-learn: pip install '.[sklearn]'")
pytest.importorskip("sklearn", reason="needs scikit-learn: pip install '.[sklearn]'")

SCRIPT = "sklearn_digits.py"
EPOCHS = 100
EVERY = 10
# The first checkpoint comes after 10 of 100 epochs (~10 ms each), so a kill
# on that line lands mid-run.
ARGS = [f"--epochs={EPOCHS}", f"--checkpoint-every={EVERY}", "--lr=0.003"]
MIN_ACCURACY = 0.90
BAND = 0.03
GRACE_S = 15.0


def checkpoint_step(directory: Path) -> int:
    return int(joblib.load(directory / "ckpt.joblib")["step"])


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run; its checkpoint directory is reused (copied) by later tests."""
    return tmp_path_factory.mktemp("sklearn-baseline")


@pytest.fixture(scope="module")
def baseline(baseline_dir: Path) -> Final:
    directory = baseline_dir
    launcher = Launcher()
    try:
        (pod,) = launcher.gang(SCRIPT, ARGS, directory)
        finish_all([pod])
    finally:
        launcher.close()
    final = parse_final(pod)
    result = json.loads((directory / "result.json").read_text())
    assert result["accuracy"] == pytest.approx(final.accuracy, abs=1e-4)
    assert checkpoint_step(directory) == EPOCHS
    return final


def test_uninterrupted_run_reaches_high_accuracy(baseline: Final) -> None:
    assert baseline.steps == EPOCHS
    assert baseline.resumed_from == 0
    assert baseline.accuracy >= MIN_ACCURACY


def test_sigkill_mid_run_resumes_from_last_checkpoint(
    baseline: Final, launcher: Launcher, tmp_path: Path
) -> None:
    (pod,) = launcher.gang(SCRIPT, ARGS, tmp_path)
    printed = int(pod.wait_for(CHECKPOINT_LINE)[1])
    still_running = pod.proc.poll() is None
    pod.signal(signal.SIGKILL)
    assert pod.finish() == -signal.SIGKILL
    assert still_running, "the run finished before the kill: make it longer"

    saved = checkpoint_step(tmp_path)
    assert printed <= saved < EPOCHS
    assert not (tmp_path / "result.json").exists()

    (resumed,) = launcher.gang(SCRIPT, ARGS, tmp_path, attempt=2)
    finish_all([resumed])
    final = parse_final(resumed)
    assert final.resumed_from == saved > 0
    assert final.steps == EPOCHS
    assert final.accuracy >= MIN_ACCURACY
    assert abs(final.accuracy - baseline.accuracy) <= BAND
    # Stronger than the band: the data order is a function of (seed, epoch) and
    # the estimator is restored whole, so the resumed run replays exactly.
    assert final.accuracy == baseline.accuracy


def test_sigterm_checkpoints_and_exits_143(launcher: Launcher, tmp_path: Path) -> None:
    (pod,) = launcher.gang(SCRIPT, ARGS, tmp_path)
    printed = int(pod.wait_for(CHECKPOINT_LINE)[1])
    pod.signal(signal.SIGTERM)
    code = pod.finish(timeout=GRACE_S)
    assert code == 143, pod.output

    stopped_at = int(pod.wait_for(PREEMPTED_LINE, timeout=1)[1])
    assert printed <= stopped_at < EPOCHS, "SIGTERM should stop the run early"
    assert checkpoint_step(tmp_path) == stopped_at
    assert not (tmp_path / "result.json").exists()


def test_restart_after_success_does_not_retrain(
    baseline: Final, baseline_dir: Path, launcher: Launcher, tmp_path: Path
) -> None:
    # The baseline's directory holds a finished run; a copy keeps the fixture intact.
    directory = shutil.copytree(baseline_dir, tmp_path / "done")
    (again,) = launcher.gang(SCRIPT, ARGS, directory, attempt=2)
    finish_all([again])
    final = parse_final(again)
    assert final.resumed_from == final.steps == EPOCHS
    assert not any(CHECKPOINT_LINE.match(line) for line in again.lines)
    assert final.accuracy == baseline.accuracy
