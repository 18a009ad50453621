"""Single-process scikit-learn training on the digits data set, preemptible.

A linear classifier (``SGDClassifier`` with log loss) is trained by
``partial_fit``, one call per step, each step one pass (epoch) over a freshly
shuffled training split, so the run can stop and resume at any step boundary.
(A whole epoch per call rather than small batches: each ``partial_fit`` call
costs milliseconds of fixed overhead, which would dominate 32-sample batches.)

Environment (set by the Shoal runtime):

    SHOAL_CHECKPOINT_DIR   writable, survives preemption; the next attempt gets
                           the same path (``--checkpoint-dir`` overrides it)
    SHOAL_JOB, SHOAL_ATTEMPT

Checkpoints. Every ``--checkpoint-every`` steps the script pickles (joblib) the
estimator, the fitted scaler, the step and the config to
``$SHOAL_CHECKPOINT_DIR/ckpt.joblib``, atomically (temp file in the same
directory, fsync, ``os.replace``), then prints ``checkpoint step=K``. On start it
loads the checkpoint if present and resumes from that step. The batch for step
``s`` (the epoch's shuffle) is a pure function of ``(seed, s)``, so a resumed run
trains on exactly the data order an uninterrupted run would have used.

Preemption (SIGTERM). The handler only sets a flag; the current step finishes,
a checkpoint is written, ``PREEMPTED step=K`` is printed and the process exits
143 (128 + SIGTERM: the work is saved but not done, so the runtime starts
another attempt), well within any grace period (a step takes about 10 ms). A SIGKILL
loses only the steps since the last checkpoint.

At the end it evaluates on the held-out test split, writes ``result.json`` to the
checkpoint directory and prints ``FINAL accuracy=0.xxxx steps=N resumed_from=M``.

Checkpoints are pickles: only load ones this job wrote (the directory is the
job's own).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

CHECKPOINT = "ckpt.joblib"
PREEMPTED_EXIT = 143  # 128 + SIGTERM: saved, not done
RESULT = "result.json"
CLASSES = np.arange(10)

_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    """SIGTERM handler: only set a flag; the loop stops at the next step boundary."""
    global _stop_requested
    _stop_requested = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        "--epochs",
        dest="steps",
        type=int,
        default=100,
        help="total steps, each one partial_fit pass over the training split",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=10, help="steps between checkpoints"
    )
    parser.add_argument("--alpha", type=float, default=1e-4, help="L2 regularisation strength")
    parser.add_argument("--lr", type=float, default=0.003, help="constant learning rate (eta0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("SHOAL_CHECKPOINT_DIR"),
        help="defaults to $SHOAL_CHECKPOINT_DIR",
    )
    args = parser.parse_args(argv)
    if not args.checkpoint_dir:
        parser.error("set SHOAL_CHECKPOINT_DIR or pass --checkpoint-dir")
    if args.steps < 0 or args.checkpoint_every < 1:
        parser.error("--steps must be >= 0 and --checkpoint-every >= 1")
    return args


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same fixed, stratified 75/25 split as ddp_digits.py, so accuracies compare."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return x_train, x_test, y_train, y_test


def epoch_order(n: int, step: int, seed: int) -> np.ndarray:
    """The training order for step ``step``: a permutation seeded by ``(seed, step)``.

    Deriving it from the step rather than from a running RNG means there is no
    RNG state to checkpoint and resumption replays exactly the same data order.
    """
    return np.random.default_rng([seed, step]).permutation(n)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry), not just the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def write_progress(directory: Path, step: int) -> None:
    """Tell Shoal which step the checkpoint holds (``shoal-progress.json``), atomically."""
    tmp = directory / f".shoal-progress.tmp.{os.getpid()}"
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, directory / "shoal-progress.json")

def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Temp file in the same directory, fsync, ``os.replace``: never a torn checkpoint."""
    tmp = directory / f".{CHECKPOINT}.tmp.{os.getpid()}"
    with open(tmp, "wb") as handle:
        joblib.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / CHECKPOINT)
    write_progress(directory, state['step'])
    _fsync_dir(directory)
    print(f"checkpoint step={state['step']}", flush=True)


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    state: dict[str, Any] = joblib.load(path)
    return state


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _request_stop)
    started = time.monotonic()
    checkpoint_dir = Path(args.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "alpha": args.alpha,
        "lr": args.lr,
        "seed": args.seed,
    }

    x_train, x_test, y_train, y_test = load_data(args.seed)
    # Fitted once on the training split only (no test leakage); deterministic,
    # but checkpointed anyway so a resumed run never depends on refitting.
    scaler = StandardScaler().fit(x_train)
    model = SGDClassifier(
        loss="log_loss",
        alpha=args.alpha,
        learning_rate="constant",
        eta0=args.lr,
        random_state=args.seed,
    )

    start_step = 0
    state = load_checkpoint(checkpoint_dir)
    if state is not None:
        if state.get("config") != config:
            print(
                f"warning: checkpoint config {state.get('config')} differs from {config}; "
                "resuming anyway",
                file=sys.stderr,
                flush=True,
            )
        model, scaler, start_step = state["model"], state["scaler"], int(state["step"])
        print(
            f"resumed step={start_step} attempt={os.environ.get('SHOAL_ATTEMPT', '1')}", flush=True
        )
    x_train_scaled = scaler.transform(x_train)

    def snapshot(step: int) -> dict[str, Any]:
        return {"step": step, "model": model, "scaler": scaler, "config": config}

    step = start_step
    last_saved = start_step if state is not None else -1
    while step < args.steps:
        if _stop_requested:
            if last_saved != step:
                save_checkpoint(checkpoint_dir, snapshot(step))
            print(f"PREEMPTED step={step} after {time.monotonic() - started:.1f}s", flush=True)
            return PREEMPTED_EXIT
        index = epoch_order(len(x_train), step, args.seed)
        # ``classes`` is required on the first call and harmless afterwards.
        model.partial_fit(x_train_scaled[index], y_train[index], classes=CLASSES)
        step += 1
        if step % args.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, snapshot(step))
            last_saved = step

    if last_saved != step:
        # A completed run leaves a checkpoint at the final step, so a restart
        # after success goes straight to evaluation instead of retraining.
        save_checkpoint(checkpoint_dir, snapshot(step))
    # With --steps 0 nothing was fitted, and an unfitted estimator cannot predict.
    accuracy = float(model.score(scaler.transform(x_test), y_test)) if step else 0.0
    result = {
        "job": os.environ.get("SHOAL_JOB"),
        "attempt": int(os.environ.get("SHOAL_ATTEMPT", "1")),
        "accuracy": accuracy,
        "steps": step,
        "resumed_from": start_step,
        "test_samples": len(y_test),
        "seconds": round(time.monotonic() - started, 3),
    }
    tmp = checkpoint_dir / f".{RESULT}.tmp.{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, checkpoint_dir / RESULT)
    print(f"FINAL accuracy={accuracy:.4f} steps={step} resumed_from={start_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
