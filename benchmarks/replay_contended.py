"""Contended replay: more work offered than the cluster has, with preemption on.

Usage: python benchmarks/replay_contended.py [--nodes 1000] [--jobs 10000]
       [--load 1.2] [--tenants 8] [--policy most-allocated] [--seed 42]
       [--profile FILE]

Load: ``--jobs`` jobs of the mix in ``workload_mix.py`` (GPU shares, 1-4
GPUs, 2 x 8 and 4 x 8 GPU gangs, priorities 0/100/1000, checkpoints every
10 minutes): enough to fill the ``--nodes`` 8-GPU nodes arrive at once, the
rest at ``--load`` times their GPU capacity, so the queue grows for the whole
arrival window and drains after it.
Tenants share one cohort with equal nominal quotas; each may preempt its own
lower-priority jobs, reclaim lent quota from any borrower, and preempt
lower-priority jobs of others while borrowing.  The run goes on until every
job has finished.

Prints one JSON line: CPU seconds of the replay (process time, one thread),
events handled and events per CPU-second, peak RSS, and what shows that it
contended: mean GPU allocation while jobs arrive and overall, the largest
queue, preemptions and the mean queueing delay; and ``decisions``, a digest
of every job's start, end, attempts and lost work (equal digests: the same
decisions).  ``compiled`` says whether the scheduling core was the compiled
build (``SHOAL_COMPILE=1 pip install .``).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shoal.policy.admission as admission_module
from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.tenant import BorrowWithinCohort, PreemptionPolicy
from shoal.sim.replay import ReplayEngine
from shoal.sim.results import entitlements, replay_result
from shoal.sim.scenario import equal_tenants
from workload_mix import synthetic_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--load", type=float, default=1.2)
    parser.add_argument("--policy", default="most-allocated")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--queueing", default="fifo",
                        help="every tenant's queueing policy inside the tenant")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the replay here")
    args = parser.parse_args()
    nodes = expand_pool("gpu", NodePoolSpec(count=args.nodes, cpu=128, memory="1024Gi",
                                            gpus=GpuSpec(model="A100", count=8)))
    jobs = synthetic_jobs(args.jobs, args.tenants, 8 * args.nodes, args.seed, args.load)
    policy = PreemptionPolicy(borrow_within_cohort=BorrowWithinCohort.LOWER_PRIORITY)
    tenants = {
        name: dataclasses.replace(quota, preemption=policy, queueing=args.queueing)
        if args.queueing != "fifo" else dataclasses.replace(quota, preemption=policy)
        for name, quota in equal_tenants(sorted({j.tenant for j in jobs}), nodes).items()
    }
    engine = ReplayEngine(nodes, tenants, jobs, args.policy, args.seed)
    peak_queue = 0

    def progress(_: int) -> None:
        nonlocal peak_queue
        peak_queue = max(peak_queue, len(engine.pending))

    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    run = engine.run(progress)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = replay_result([run], entitlements(tenants, 8000 * args.nodes))
    metrics = result["metrics"]
    last_arrival = max(j.submit_time for j in jobs)
    events = engine.handled
    print(json.dumps({
        "nodes": args.nodes, "jobs": args.jobs, "tenants": args.tenants, "load": args.load,
        "policy": args.policy, "queueing": args.queueing,
        # SHOAL_COMPILE=1 builds (docs/benchmarks.md, "Compiled scheduling core")
        "compiled": not (admission_module.__file__ or "").endswith(".py"),
        "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "events": events,
        "events_per_cpu_s": round(events / cpu), "cycles": engine.cycles,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "gpu_allocation_arriving": round(run.timeline.mean_share_until(last_arrival), 4),
        "gpu_allocation_mean": round(metrics["gpu_allocation_mean"], 4),
        "peak_queue": peak_queue, "preemptions": metrics["preemptions"],
        "jobs_completed": metrics["jobs_completed"],
        "queue_delay_mean_s": round(metrics["queue_delay_mean_s"], 1),
        "jct_mean_s": round(metrics["jct_mean_s"], 1),
        "decisions": decisions_digest(run.jobs),
    }))


def decisions_digest(records: dict[str, Any]) -> str:
    """A digest of every job's first start, end, attempts and lost work: equal
    digests mean the same decisions (to compare two versions of the engine)."""
    digest = hashlib.sha256()
    for name in sorted(records):
        r = records[name]
        digest.update(f"{name}|{r.first_start}|{r.finish}|{r.row.attempts}|"
                      f"{r.lost_gpu_seconds:.6f}\n".encode())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    main()
