"""Distributed data-parallel training of a small MLP on scikit-learn's digits, on CPU.

A real, preemptible Shoal workload: every pod runs this script and the runtime
tells it who it is through the environment.

Environment (set by the Shoal runtime for every pod):

    RANK, WORLD_SIZE, LOCAL_RANK   this process's place in the gang
    MASTER_ADDR, MASTER_PORT       rendezvous for torch.distributed (gloo)
    SHOAL_CHECKPOINT_DIR           writable, survives preemption; the next attempt
                                   gets the same path
    SHOAL_JOB, SHOAL_ATTEMPT       job name and attempt number (1, 2, ...)

Without RANK/WORLD_SIZE it runs as a single process (``WORLD_SIZE=1``), so
``python examples/workloads/ddp_digits.py --checkpoint-dir /tmp/ck`` works on a
laptop.

Checkpoints. Rank 0 writes ``$SHOAL_CHECKPOINT_DIR/ckpt.pt`` every
``--checkpoint-every`` steps (model, optimizer, step, torch RNG state, config),
atomically: a temporary file in the same directory, fsync, then ``os.replace``,
so a crash mid-write leaves the previous checkpoint intact. After each write it
prints ``checkpoint step=K``. On start every rank loads the checkpoint if present
and resumes from its step; the batch for step ``s`` is a pure function of
``(seed, s)`` (sampler epoch and offset), so a resumed run sees exactly the data
an uninterrupted run would have seen.

Preemption (SIGTERM). The handler only sets a flag: the current step finishes,
then all ranks agree to stop (the flag is all-reduced with MAX every step, so a
SIGTERM that reaches only one rank stops them all at the same step), rank 0
writes a checkpoint, prints ``PREEMPTED step=K``, and every rank exits 143 well
within the grace period (a step takes milliseconds). 143 (128 + SIGTERM) is the
conventional "stopped by SIGTERM" status: the work is saved but not done, so a
runtime that takes exit 0 for "done" (Shoal and Kubernetes both do) starts
another attempt that resumes from the checkpoint. A SIGKILL loses only the steps since the last
checkpoint. (A SIGTERM that lands while the interpreter is still importing
torch, before the handler is installed, ends the process at once: no step has
run, so nothing is lost.)

At the end rank 0 evaluates on the held-out test split, writes a final
checkpoint and ``result.json`` to the checkpoint directory and prints
``FINAL accuracy=0.xxxx steps=N resumed_from=M``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

CHECKPOINT = "ckpt.pt"
PREEMPTED_EXIT = 143  # 128 + SIGTERM: saved, not done
RESULT = "result.json"

_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    """SIGTERM handler: only set a flag; the training loop stops at a step boundary.

    Doing real work (I/O, collectives) inside a signal handler could interrupt a
    half-done step or a gloo collective; a flag is always safe.
    """
    global _stop_requested
    _stop_requested = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="total optimizer steps")
    parser.add_argument(
        "--checkpoint-every", type=int, default=50, help="steps between checkpoints"
    )
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--hidden", type=int, default=64, help="hidden layer width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("SHOAL_CHECKPOINT_DIR"),
        help="defaults to $SHOAL_CHECKPOINT_DIR",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds a collective may wait for a peer; a dead peer then fails this rank "
        "instead of hanging it for gloo's default 30 minutes",
    )
    args = parser.parse_args(argv)
    if not args.checkpoint_dir:
        parser.error("set SHOAL_CHECKPOINT_DIR or pass --checkpoint-dir")
    if args.steps < 0 or args.checkpoint_every < 1 or args.batch_size < 1:
        parser.error("--steps must be >= 0, --checkpoint-every and --batch-size >= 1")
    return args


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits (1797 8x8 images, ships with scikit-learn): a fixed, stratified 75/25 split.

    The split uses a fixed seed so every rank and every attempt agree on it.
    Pixels are 0..16; dividing by 16 is enough normalisation for an MLP.
    """
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )

    def features(x: Any) -> torch.Tensor:
        return torch.tensor(x / 16.0, dtype=torch.float32)

    def labels(y: Any) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.long)

    return features(x_train), labels(y_train), features(x_test), labels(y_test)


def build_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def batch_indices(sampler: DistributedSampler[Any], step: int, batch_size: int) -> list[int]:
    """This rank's batch for global step ``step``, a pure function of (seed, step).

    An epoch is ``len(sampler) // batch_size`` steps (the ragged tail is dropped
    so every rank does the same number of steps); the sampler's per-epoch
    shuffle is keyed on ``seed + epoch``. No iterator state to checkpoint.
    """
    per_epoch = max(1, len(sampler) // batch_size)
    epoch, offset = divmod(step, per_epoch)
    sampler.set_epoch(epoch)
    order = list(iter(sampler))
    return order[offset * batch_size : (offset + 1) * batch_size]



def write_progress(directory: Path, step: int) -> None:
    """Tell Shoal which step the checkpoint holds (``shoal-progress.json``), atomically."""
    tmp = directory / f".shoal-progress.tmp.{os.getpid()}"
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, directory / "shoal-progress.json")

def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
) -> None:
    """Write the checkpoint atomically: temp file in the same directory, fsync, rename.

    ``os.replace`` within one filesystem is atomic, so a reader (the next attempt)
    sees either the old checkpoint or the new one, never a torn file.
    """
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "config": config,
        "attempt": os.environ.get("SHOAL_ATTEMPT", "1"),
    }
    target = directory / CHECKPOINT
    tmp = directory / f".{CHECKPOINT}.tmp.{os.getpid()}"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    write_progress(directory, step)
    _fsync_dir(directory)
    print(f"checkpoint step={step}", flush=True)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry), not just the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    # weights_only: the file holds only tensors and plain containers, and refusing
    # arbitrary pickles means a tampered checkpoint cannot run code.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_distributed(timeout: float) -> tuple[int, int]:
    """Join the gang. Defaults allow a plain single-process run outside Shoal."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group(
        backend="gloo",
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout),
    )
    return rank, world_size


def shutdown() -> None:
    """Leave the gang cleanly, after the caller dropped its DDP wrapper.

    DDP's reducer holds gloo work objects: freeing them (the collect) while the
    process group is still alive, then destroying the group explicitly, keeps
    their C++ threads from being torn down during interpreter finalization.
    """
    gc.collect()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Install the handler before the (possibly slow) rendezvous, so an early
    # SIGTERM is not the default "die immediately".
    signal.signal(signal.SIGTERM, _request_stop)
    # One thread per rank: ranks share the machine's cores, and oversubscribing
    # them with intra-op threads makes everything slower.
    torch.set_num_threads(1)
    started = time.monotonic()

    rank, world_size = init_distributed(args.timeout)
    checkpoint_dir = Path(args.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "lr": args.lr,
        "momentum": args.momentum,
        "batch_size": args.batch_size,
        "hidden": args.hidden,
        "seed": args.seed,
    }

    x_train, y_train, x_test, y_test = load_data(args.seed)
    # Same seed on every rank: identical initial weights (DDP would broadcast
    # rank 0's anyway, but this keeps single-process runs reproducible too).
    torch.manual_seed(args.seed)
    model = build_model(args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    start_step = 0
    checkpoint = load_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        if checkpoint.get("config") != config:
            print(
                f"rank {rank}: warning: checkpoint config {checkpoint.get('config')} "
                f"differs from {config}; resuming anyway",
                file=sys.stderr,
                flush=True,
            )
        # Load before wrapping in DDP: the DDP constructor then broadcasts these
        # (identical) weights, and every rank restores its own optimizer state.
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        # Nothing in this model draws random numbers after initialisation (the data
        # order comes from the step), but a model with dropout would: restoring
        # the generator keeps such a variant's resume exact too.
        torch.set_rng_state(checkpoint["torch_rng"])
        start_step = int(checkpoint["step"])
        if rank == 0:
            print(
                f"resumed step={start_step} attempt={os.environ.get('SHOAL_ATTEMPT', '1')}",
                flush=True,
            )

    ddp_model = DistributedDataParallel(model)
    sampler: DistributedSampler[Any] = DistributedSampler(
        TensorDataset(x_train, y_train),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=args.seed,
    )
    loss_fn = nn.CrossEntropyLoss()

    step = start_step
    last_saved = start_step if checkpoint is not None else -1
    preempted = False
    while step < args.steps:
        # Agree on stopping before starting a step: MAX over ranks, so one
        # signalled rank is enough and all ranks stop at the same step (a rank
        # leaving alone would leave the others blocked in the next all-reduce).
        stop = torch.tensor([1 if _stop_requested else 0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            preempted = True
            break

        index = batch_indices(sampler, step, args.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(ddp_model(x_train[index]), y_train[index])
        loss.backward()  # DDP all-reduces (averages) the gradients here
        optimizer.step()
        step += 1

        if rank == 0 and step % args.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, model, optimizer, step, config)
            last_saved = step

    if preempted:
        if rank == 0:
            if last_saved != step:
                save_checkpoint(checkpoint_dir, model, optimizer, step, config)
            print(f"PREEMPTED step={step} after {time.monotonic() - started:.1f}s", flush=True)
        # Every rank exits together: rank 0 must finish writing before the
        # others disappear, or a runtime that watches the gang could tear it down.
        dist.barrier()
        del ddp_model  # see shutdown()
        shutdown()
        return PREEMPTED_EXIT

    if rank == 0:
        if last_saved != step:
            # A completed run leaves a checkpoint at the final step, so a restart
            # after success goes straight to evaluation instead of retraining.
            save_checkpoint(checkpoint_dir, model, optimizer, step, config)
        model.eval()
        with torch.no_grad():
            predicted = model(x_test).argmax(dim=1)
        accuracy = (predicted == y_test).float().mean().item()
        write_json_atomically(
            checkpoint_dir / RESULT,
            {
                "job": os.environ.get("SHOAL_JOB"),
                "attempt": int(os.environ.get("SHOAL_ATTEMPT", "1")),
                "world_size": world_size,
                "accuracy": accuracy,
                "steps": step,
                "resumed_from": start_step,
                "test_samples": len(y_test),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        print(f"FINAL accuracy={accuracy:.4f} steps={step} resumed_from={start_step}", flush=True)
    dist.barrier()
    del ddp_model  # see shutdown()
    shutdown()
    return 0


if __name__ == "__main__":
    code = main()
    # Skip interpreter finalization: gloo's C++ threads racing it can abort the
    # process ("terminate called without an active exception", SIGABRT) after
    # all the work is done, turning a clean preemption into a failed pod. Every
    # file this script writes is already fsynced and closed; flush the logs and
    # leave. (On an exception main() does not return, so the traceback and
    # exit status 1 are unaffected.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
