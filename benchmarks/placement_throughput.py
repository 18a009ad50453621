"""Placement throughput on a synthetic 10,000-node, 80,000-GPU cluster.

Usage: python benchmarks/placement_throughput.py [--nodes 10000] [--pods 20000]
       [--policies least-allocated,best-fit,fgd]

Pods are a seeded mix like the openb trace (fractional, 1, 2, 4 and 8 GPUs,
some CPU-only); each is filtered and scored over all nodes and bound.  Prints
placements per CPU-second per policy (one process pinned to one core); CPU
time, because on a shared machine wall time mostly measures the neighbours.
``seconds`` is the wall time of the same loop.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from shoal.domain.cluster import ClusterState
from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.workload import PodShape
from shoal.policy.placement import (
    ScorerContext,
    make_scorer,
    node_ranks,
    place_pod,
    typical_pods,
)


def synthetic_pods(count: int, seed: int) -> list[PodShape]:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(6, size=count, p=[0.10, 0.35, 0.40, 0.07, 0.05, 0.03])
    pods = []
    for kind in kinds:
        cpu = int(rng.choice([2000, 4000, 8000, 16000]))
        mem = cpu * 4
        if kind == 0:
            pods.append(PodShape(cpu=cpu, memory=mem))
        elif kind == 1:
            milli = int(rng.choice([250, 300, 500, 700]))
            pods.append(PodShape(cpu=cpu, memory=mem, gpu_count=1, gpu_milli=milli))
        else:
            gpus = {2: 1, 3: 2, 4: 4, 5: 8}[int(kind)]
            pods.append(PodShape(cpu=cpu, memory=mem, gpu_count=gpus, gpu_milli=1000))
    return pods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--pods", type=int, default=20_000)
    parser.add_argument("--policies", default="least-allocated,most-allocated,best-fit,fgd")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    spec = NodePoolSpec(count=args.nodes, cpu=128, memory="1024Gi",
                        gpus=GpuSpec(model="A100", count=8, memory="80Gi"))
    nodes = expand_pool("gpu", spec)
    pods = synthetic_pods(args.pods, args.seed)
    results = []
    for policy in args.policies.split(","):
        state = ClusterState(nodes)
        scorer = make_scorer(policy, ScorerContext(typical_pods(pods), args.seed))
        ranks = node_ranks(len(state), args.seed)
        placed = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for pod in pods:
            binding = place_pod(state, pod, scorer, ranks)
            if binding is not None:
                state.bind(binding)
                placed += 1
        cpu = time.process_time() - cpu_started
        elapsed = time.perf_counter() - started
        results.append({
            "policy": policy, "nodes": args.nodes, "gpus": int(state.gpu_count.sum()),
            "pods": len(pods), "placed": placed, "seconds": round(elapsed, 3),
            "cpu_seconds": round(cpu, 3), "placements_per_s": round(len(pods) / cpu, 1),
        })
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
