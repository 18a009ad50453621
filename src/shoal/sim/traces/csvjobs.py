"""From the rows of one CSV trace job to a Workload: its workers, their shape, and the split.

A row describes ``workers`` identical workers (pods admitted together).  The
GPUs of a worker come from ``gpus``, or from ``gpusPerWorker`` when the trace
has it (then ``gpus``, if given, is the job's total and is checked against
``workers x gpusPerWorker``).  A worker asking for more GPUs than the largest
node has could never be placed; it is split into a gang of equal, node-sized
workers instead (``split_worker``), because traces record what a job asked
for, not how it was laid out on nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from shoal.domain.resources import MILLI
from shoal.domain.workload import PodShape, Workload
from shoal.sim.traces.csvvalues import Row, parse_gpus, parse_priority

DEFAULT_TENANT = "default"


def build_job(
    rows: Sequence[Row],
    name: str,
    submit_time: float,
    duration: float | None,
    split_at: int | None,
) -> tuple[Workload, bool]:
    """The job of ``rows`` (one row, or several merged), and whether a worker was split.

    Tenant, priority and checkpoint interval come from the first row; the
    workers of every row together make the gang.
    """
    first = rows[0]
    workers = tuple(pod for row in rows for pod in _workers(row))
    pods = workers
    if split_at is not None and split_at > 0:
        pods = tuple(part for pod in workers for part in split_worker(pod, split_at))
    job = Workload(
        name=name,
        tenant=first.text("tenant") or DEFAULT_TENANT,
        pods=pods,
        priority=parse_priority(first),
        submit_time=submit_time,
        duration=duration,
        checkpoint_interval=first.number("checkpointInterval", positive=True),
    )
    return job, len(pods) != len(workers)


def split_worker(worker: PodShape, split_at: int) -> tuple[PodShape, ...]:
    """``worker`` as equal parts of at most ``split_at`` GPUs each.

    The number of parts is the smallest that both fits (at least
    ceil(gpus / split_at)) and divides the GPUs evenly, so every part has the
    same whole number of GPUs: 24 GPUs at 8 -> 3 x 8, 12 at 8 -> 2 x 6,
    10 at 8 -> 2 x 5, 13 at 8 -> 13 x 1 (a prime count has no other even split).
    CPU and memory are divided evenly too, rounded up so that the parts ask
    for no less than the whole did.
    """
    gpus = worker.gpu_count
    if gpus <= split_at:
        return (worker,)
    parts = next(n for n in range(-(-gpus // split_at), gpus + 1) if gpus % n == 0)
    part = replace(
        worker,
        gpu_count=gpus // parts,
        cpu=-(-worker.cpu // parts),
        memory=-(-worker.memory // parts),
    )
    return (part,) * parts


def _workers(row: Row) -> tuple[PodShape, ...]:
    per_worker = "gpusPerWorker" if row.has("gpusPerWorker") else "gpus"
    count, milli = parse_gpus(row, per_worker)
    workers = row.integer("workers", default=1, minimum=1)
    if per_worker == "gpusPerWorker":
        _check_total(row, workers, count * milli)
    shape = PodShape(
        cpu=round(row.number("cpu") or 0.0),  # already millicores (csvvalues.UNITS)
        memory=round(row.number("memory") or 0.0),
        gpu_count=count,
        gpu_milli=milli,
        models=_models(row.text("gpuModel")) if count else (),
    )
    return (shape,) * workers


def _check_total(row: Row, workers: int, worker_milli: int) -> None:
    """With ``gpusPerWorker``, a ``gpus`` cell is the job's total and must agree with it."""
    total = row.number("gpus")
    if total is None:
        return
    if round(total * MILLI) != workers * worker_milli:
        per_worker = _gpus(worker_milli)
        expected = _gpus(workers * worker_milli)
        raise row.field("gpus").error(
            f"the job's total GPUs, workers x gpusPerWorker = {workers} x {per_worker} = {expected}"
        )


def _gpus(milli: int) -> str:
    return f"{milli // MILLI}" if milli % MILLI == 0 else f"{milli / MILLI:g}"


def _models(text: str) -> tuple[str, ...]:
    return tuple(model.strip() for model in text.split("|") if model.strip())
