"""Mean JCT of Shoal's tenant orderings on public fixed-size workloads (Pollux OSDI'21).

Usage: python benchmarks/queueing_jct.py [--orders fifo,las,srtf] [--workloads 1-8]
       [--restart-seconds 30]

Load: the eight 160-job workloads of the Pollux artifact (``benchmarks/data``,
see its README for where they come from and how each job's service time was
recovered), each replayed on 16 nodes of 4 GPUs, one tenant that owns the
cluster, every job of a fixed GPU count (1 to 48 GPUs, as many 1-GPU pods in
a gang, so that any free GPUs will do, as the artifact's Tiresias places
them).  Jobs checkpoint every second, so a preempted job keeps its progress
as in the artifact; ``--restart-seconds`` adds the artifact's 30 s start-up
delay to every job's service time (once: the artifact pays it again on every
restart, which this leaves out).

The published Tiresias mean over the eight workloads is 4,038 s
(``results-jobload/tiresias-1.0/summary.json`` of the artifact: 2D-LAS, two
queues split at 16 GPU-hours, no starvation guard).  Prints one JSON line per
ordering: mean JCT per workload, their mean, and the gap to 4,038 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.workload import PodShape, Workload
from shoal.policy.quota import TenantQuota
from shoal.sim.replay import run_replay

DATA = Path(__file__).resolve().parent / "data"
PUBLISHED_TIRESIAS_MEAN_S = 4038.18203125
GPU = PodShape(cpu=1000, memory=1024, gpu_count=1, gpu_milli=1000)


def load(number: int, restart: float) -> list[Workload]:
    with (DATA / f"pollux_osdi21_workload-{number}.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return [
        Workload(
            name=row["name"], tenant="lab", pods=(GPU,) * int(row["gpus"]),
            submit_time=float(row["submit_time"]),
            duration=float(row["duration"]) + restart, checkpoint_interval=1.0,
        )
        for row in rows
    ]


def mean_jct(jobs: list[Workload], order: str) -> float:
    nodes = expand_pool("gpu", NodePoolSpec(count=16, cpu=64, memory="256Gi",
                                            gpus=GpuSpec(model="V100", count=4)))
    tenant = TenantQuota.equal_share(
        "lab", None, {"cpu": 16 * 64000, "memory": 16 * 262144, "gpu/V100": 64000})
    tenant = TenantQuota(
        name="lab", nominal=tenant.nominal, borrowing_limit=tenant.borrowing_limit,
        lending_limit=tenant.lending_limit, job_order=order,
        las_thresholds=(16 * 3600.0,),
    )
    run = run_replay(nodes, {"lab": tenant}, jobs, "most-allocated", 42)
    done = [r.finish - r.workload.submit_time for r in run.jobs.values() if r.finish is not None]
    assert len(done) == len(jobs), "every job must finish"
    return sum(done) / len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", default="fifo,las,srtf")
    parser.add_argument("--workloads", default="1-8")
    parser.add_argument("--restart-seconds", type=float, default=0.0)
    args = parser.parse_args()
    first, _, last = args.workloads.partition("-")
    numbers = range(int(first), int(last or first) + 1)
    for order in args.orders.split(","):
        cpu = time.process_time()
        per = {n: round(mean_jct(load(n, args.restart_seconds), order), 1) for n in numbers}
        mean = sum(per.values()) / len(per)
        print(json.dumps({
            "order": order, "restart_s": args.restart_seconds, "jct_mean_s": round(mean, 1),
            "vs_published_tiresias": round(mean / PUBLISHED_TIRESIAS_MEAN_S - 1, 4),
            "per_workload": per, "cpu_s": round(time.process_time() - cpu, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
