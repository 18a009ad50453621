"""Replay at scale: 100,000 jobs on a 10,000-node synthetic cluster.

Usage: python benchmarks/replay_scale.py [--nodes 10000] [--jobs 100000]
       [--policy least-allocated] [--tenants 8]

Jobs arrive as a seeded Poisson process offering ``--load`` times the
cluster's GPUs (by its own estimate of the mix), with the openb-like mix of
fractional, 1-8 GPU and multi-worker gang jobs, spread over tenants in one
cohort with equal quotas.  Prints wall time, CPU time, peak resident memory,
and how loaded the cluster really was: the mean share of GPUs allocated while
jobs arrive (``gpu_allocation_arriving``) and over the whole run, whose long
tail (the last long jobs on an idle cluster) makes the overall mean small.
This run does not contend (nothing waits long, little is preempted); the
contended case is ``replay_contended.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.workload import PodShape, Workload
from shoal.sim.replay import run_replay
from shoal.sim.results import entitlements, replay_result
from shoal.sim.scenario import equal_tenants


def synthetic_jobs(
    count: int, tenants: int, gpus: int, seed: int, load: float
) -> list[Workload]:
    rng = np.random.default_rng(seed)
    durations = rng.lognormal(mean=7.0, sigma=1.0, size=count)
    mean_gpus = 1.6
    # ``load``: offered GPU demand as a share of the cluster's GPUs.
    rate = load * gpus / (mean_gpus * float(np.mean(durations)))
    arrivals = np.cumsum(rng.exponential(1 / rate, size=count))
    kinds = rng.choice(5, size=count, p=[0.35, 0.45, 0.1, 0.06, 0.04])
    jobs = []
    for i in range(count):
        kind = int(kinds[i])
        if kind == 0:
            pod = PodShape(cpu=4000, memory=16384, gpu_count=1,
                           gpu_milli=int(rng.choice([250, 500])))
            pods: tuple[PodShape, ...] = (pod,)
        elif kind == 1:
            pods = (PodShape(cpu=8000, memory=32768, gpu_count=1, gpu_milli=1000),)
        elif kind == 2:
            pods = (PodShape(cpu=16000, memory=65536, gpu_count=2, gpu_milli=1000),)
        elif kind == 3:
            pods = (PodShape(cpu=32000, memory=131072, gpu_count=4, gpu_milli=1000),)
        else:
            pods = (PodShape(cpu=64000, memory=262144, gpu_count=8, gpu_milli=1000),) * 2
        jobs.append(Workload(
            name=f"job-{i:06d}", tenant=f"team-{i % tenants}", pods=pods,
            priority=int(rng.choice([0, 100, 1000], p=[0.3, 0.6, 0.1])),
            submit_time=float(arrivals[i]), duration=float(durations[i]),
            checkpoint_interval=600.0,
        ))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--policy", default="least-allocated")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--load", type=float, default=0.5)
    args = parser.parse_args()
    nodes = expand_pool("gpu", NodePoolSpec(count=args.nodes, cpu=128, memory="1024Gi",
                                            gpus=GpuSpec(model="A100", count=8)))
    jobs = synthetic_jobs(args.jobs, args.tenants, 8 * args.nodes, args.seed, args.load)
    tenants = equal_tenants(sorted({j.tenant for j in jobs}), nodes)
    started, cpu = time.perf_counter(), time.process_time()
    run = run_replay(nodes, tenants, jobs, args.policy, args.seed)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    result = replay_result([run], entitlements(tenants, 8000 * args.nodes))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = result["metrics"]
    print(json.dumps({
        "nodes": args.nodes, "jobs": args.jobs, "policy": args.policy, "load": args.load,
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(peak_mib),
        "gpu_allocation_arriving": round(
            run.timeline.mean_share_until(max(j.submit_time for j in jobs)), 4),
        "jobs_completed": metrics["jobs_completed"], "preemptions": metrics["preemptions"],
        "gpu_allocation_mean": metrics["gpu_allocation_mean"],
        "queue_delay_mean_s": round(metrics["queue_delay_mean_s"], 1),
    }))


if __name__ == "__main__":
    main()
