"""Fill mode: the FGD paper's experiment.

The pods of a trace are shuffled with a seed, then extended by seeded
sampling (with replacement) until their GPU requests reach ``target`` times
the cluster's GPU capacity.  They arrive in that order, never leave, and each
is placed or fails.  The curve records, after every arrival, the arrived GPU
request and the allocated GPUs, both as shares of cluster GPU capacity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shoal.domain.cluster import ClusterState
from shoal.domain.nodes import Node
from shoal.domain.workload import PodShape
from shoal.policy.placement import ScorerContext, make_scorer, node_ranks, place_pod, typical_pods
from shoal.policy.placement.filters import model_mask


@dataclass(frozen=True)
class FillRun:
    policy: str
    seed: int
    arrived: np.ndarray
    allocated: np.ndarray
    failed: int
    placed: int
    wall_time_s: float

    def allocated_at(self, arrived_fraction: float) -> float:
        """Mean allocation over arrivals whose arrived share rounds to ``arrived_fraction``.

        The paper's analysis buckets events by arrived load in whole percent;
        this is the same measure.
        """
        bucket = np.round(self.arrived * 100) == round(arrived_fraction * 100)
        if not bucket.any():
            nearest = int(np.argmin(np.abs(self.arrived - arrived_fraction)))
            return float(self.allocated[nearest])
        return float(self.allocated[bucket].mean())


def inflate(shapes: Sequence[PodShape], capacity_milli: int, target: float, seed: int) -> list[PodShape]:
    """Shuffle, then sample with replacement until requests reach ``target`` x capacity."""
    rng = np.random.default_rng(seed)
    order = [shapes[i] for i in rng.permutation(len(shapes))]
    goal = target * capacity_milli
    total = sum(shape.gpu_total_milli for shape in order)
    if total > goal:
        while order and total > goal:
            total -= order.pop(int(rng.integers(len(order)))).gpu_total_milli
        return order
    while True:
        clone = shapes[int(rng.integers(len(shapes)))]
        if total + clone.gpu_total_milli > goal:
            return order
        total += clone.gpu_total_milli
        order.append(clone)


def run_fill(
    nodes: Sequence[Node],
    shapes: Sequence[PodShape],
    policy: str,
    seed: int,
    target: float = 1.3,
    progress: Callable[[int], None] | None = None,
) -> FillRun:
    started = time.perf_counter()
    state = ClusterState(nodes)
    arrivals = inflate(shapes, state.total_gpu_milli, target, seed)
    context = ScorerContext(typical_pods=typical_pods(shapes), seed=seed)
    scorer = make_scorer(policy, context)
    ranks = node_ranks(len(state), seed)
    capacity = float(state.total_gpu_milli)
    requested = np.array([pod.gpu_total_milli for pod in arrivals], dtype=np.int64)
    placed = np.zeros(len(arrivals), dtype=np.bool_)
    allowed_by_models: dict[tuple[str, ...], np.ndarray] = {}
    for i, pod in enumerate(arrivals):
        allowed = None
        if pod.models:
            allowed = allowed_by_models.get(pod.models)
            if allowed is None:
                allowed = allowed_by_models[pod.models] = model_mask(state, pod.models)
        binding = place_pod(state, pod, scorer, ranks, allowed)
        if binding is not None:
            state.bind(binding)
            placed[i] = True
        if progress is not None and i % 256 == 0:
            progress(i)
    # Running sums of whole milli, each divided once: the same floats as
    # dividing the running totals after every arrival.
    arrived = np.cumsum(requested) / capacity
    allocated = np.cumsum(np.where(placed, requested, 0)) / capacity
    failed = len(arrivals) - int(placed.sum())
    return FillRun(
        policy=policy,
        seed=seed,
        arrived=arrived,
        allocated=allocated,
        failed=failed,
        placed=len(arrivals) - failed,
        wall_time_s=time.perf_counter() - started,
    )
