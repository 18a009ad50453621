"""examples/workloads/ddp_digits.py run for real: two gloo ranks on 127.0.0.1.

Covers the contract a preemptible Shoal workload must keep: it trains to a good
accuracy, a crash (SIGKILL of every rank) loses only the steps since the last
checkpoint and the next attempt resumes from it, and SIGTERM saves and exits 143
within the grace period.
"""

from __future__ import annotations

import json
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

torch = pytest.importorskip(
    "torch", reason="needs PyTorch, a CPU build is enough: pip install -e '.[torch]'"
)
pytest.importorskip("sklearn", reason="needs scikit-learn: pip install '.[sklearn]'")

pytestmark = pytest.mark.slow

SCRIPT = "ddp_digits.py"
STEPS = 600
EVERY = 50
# Long enough that the first checkpoint (step 50) comes well before the end:
# the kill below lands mid-run, with hundreds of steps still to go.
ARGS = [f"--steps={STEPS}", f"--checkpoint-every={EVERY}", "--lr=0.05"]
WORLD_SIZE = 2
MIN_ACCURACY = 0.90
BAND = 0.03
# What the runtime would give a pod between SIGTERM and SIGKILL. A step takes
# milliseconds, so this is loose even on a busy 2-core machine.
GRACE_S = 15.0


def checkpoint_step(directory: Path) -> int:
    state = torch.load(directory / "ckpt.pt", map_location="cpu", weights_only=True)
    return int(state["step"])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Final:
    """One uninterrupted run, shared by the tests that compare against it."""
    directory = tmp_path_factory.mktemp("ddp-baseline")
    launcher = Launcher()
    try:
        pods = launcher.gang(SCRIPT, ARGS, directory, world_size=WORLD_SIZE)
        finish_all(pods)
    finally:
        launcher.close()
    final = parse_final(pods[0])
    result = json.loads((directory / "result.json").read_text())
    assert result["accuracy"] == pytest.approx(final.accuracy, abs=1e-4)
    assert result["world_size"] == WORLD_SIZE
    assert checkpoint_step(directory) == STEPS
    return final


def test_uninterrupted_run_reaches_high_accuracy(baseline: Final) -> None:
    assert baseline.steps == STEPS
    assert baseline.resumed_from == 0
    assert baseline.accuracy >= MIN_ACCURACY


def test_sigkill_mid_run_resumes_from_last_checkpoint(
    baseline: Final, launcher: Launcher, tmp_path: Path
) -> None:
    pods = launcher.gang(SCRIPT, ARGS, tmp_path, world_size=WORLD_SIZE)
    printed = int(pods[0].wait_for(CHECKPOINT_LINE)[1])
    still_running = [pod.proc.poll() is None for pod in pods]
    for pod in pods:
        pod.signal(signal.SIGKILL)  # a crash: no handler runs, nothing is saved
    for pod in pods:
        assert pod.finish() == -signal.SIGKILL
    assert all(still_running), "the run finished before the kill: make it longer"

    # Rank 0 may have written another checkpoint between printing and dying;
    # whatever is on disk is what the next attempt must resume from.
    saved = checkpoint_step(tmp_path)
    assert printed <= saved < STEPS
    assert not (tmp_path / "result.json").exists()

    resumed = launcher.gang(SCRIPT, ARGS, tmp_path, world_size=WORLD_SIZE, attempt=2)
    finish_all(resumed)
    final = parse_final(resumed[0])
    assert f"resumed step={saved} attempt=2" in resumed[0].lines
    assert final.resumed_from == saved > 0
    assert final.steps == STEPS
    assert final.accuracy >= MIN_ACCURACY
    assert abs(final.accuracy - baseline.accuracy) <= BAND
    assert json.loads((tmp_path / "result.json").read_text())["attempt"] == 2


@pytest.mark.parametrize("signalled", ["all-ranks", "rank-1-only"])
def test_sigterm_checkpoints_and_exits_143(
    signalled: str, launcher: Launcher, tmp_path: Path
) -> None:
    """The runtime signals every pod; a SIGTERM reaching one rank must stop them all."""
    pods = launcher.gang(SCRIPT, ARGS, tmp_path, world_size=WORLD_SIZE)
    printed = int(pods[0].wait_for(CHECKPOINT_LINE)[1])
    targets = pods if signalled == "all-ranks" else pods[1:]
    for pod in targets:
        pod.signal(signal.SIGTERM)
    for pod in pods:
        code = pod.finish(timeout=GRACE_S)
        assert code == 143, f"{pod.name} exited {code}:\n{pod.output}"

    stopped_at = int(pods[0].wait_for(PREEMPTED_LINE, timeout=1)[1])
    assert printed <= stopped_at < STEPS, "SIGTERM should stop the run early"
    assert checkpoint_step(tmp_path) == stopped_at
    assert not (tmp_path / "result.json").exists()


def test_single_rank_runs(launcher: Launcher, tmp_path: Path) -> None:
    """WORLD_SIZE=1 (a one-pod job, or a laptop) uses the same code path."""
    (pod,) = launcher.gang(SCRIPT, ["--steps=200", "--checkpoint-every=100"], tmp_path)
    finish_all([pod])
    final = parse_final(pod)
    assert (final.steps, final.resumed_from) == (200, 0)
    assert final.accuracy >= MIN_ACCURACY
    assert json.loads((tmp_path / "result.json").read_text())["world_size"] == 1
