"""Built-in node scorers: Kubernetes defaults and the FGD paper's baselines.

``least-allocated`` and ``most-allocated`` follow kube-scheduler's
NodeResourcesFit strategies over CPU, memory and GPU.  ``best-fit``,
``dot-product``, ``gpu-packing``, ``gpu-clustering`` and ``random`` follow the
baselines of "Beware of Fragmentation" (USENIX ATC'23), including their
integer arithmetic, so that the paper's comparison can be reproduced.
"""

from __future__ import annotations

import numpy as np

from shoal.domain.cluster import ClusterState, IntArray
from shoal.domain.nodes import NVLINK, RACK
from shoal.domain.resources import MILLI
from shoal.domain.workload import PodShape
from shoal.policy.placement.base import (
    FloatArray,
    Nodes,
    ScorerContext,
    best_fit_gpus,
    register_scorer,
)

# The paper's scorers normalise by a reference node of 128 cores and 8 GPUs.
_REF_CPU = 128_000
_REF_GPU = 8 * MILLI


class BestFitGpus:
    """Mixin: the default GPU choice inside a node.

    It lives here, not in ``base``, because ``base`` may be compiled
    (docs/benchmarks.md, "Compiled scheduling core"), and a compiled class cannot be
    subclassed by interpreted ones such as a user's scorer."""

    def pick_gpus(self, state: ClusterState, pod: PodShape, node: int) -> tuple[int, ...]:
        return best_fit_gpus(state, pod, node)


def _size(state: ClusterState, nodes: Nodes) -> int:
    return len(state) if isinstance(nodes, slice) else len(nodes)


def _gpu_left(state: ClusterState, nodes: Nodes) -> IntArray:
    left: IntArray = state.gpu_left[nodes]
    return left


class LeastAllocated(BestFitGpus):
    """Spread: prefer nodes with the most free CPU, memory and GPU after placement."""

    name = "least-allocated"

    def __init__(self, context: ScorerContext) -> None:
        del context

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        return _free_share_after(state, pod, nodes)


class MostAllocated(BestFitGpus):
    """Bin-pack: prefer nodes with the least free CPU, memory and GPU after placement."""

    name = "most-allocated"

    def __init__(self, context: ScorerContext) -> None:
        del context

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        return -_free_share_after(state, pod, nodes)


def _free_share_after(state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
    """Mean over CPU, memory and (where present) GPU of the free share after placement."""
    share: FloatArray = state.free_share[nodes]
    if isinstance(nodes, slice) and state.uniform:
        # One node shape: the pod takes the same share everywhere.
        return share - float(
            state.dims_inv[0]
            * (pod.cpu * state.cpu_inv[0] + pod.memory * state.mem_inv[0]
               + pod.gpu_total_milli * state.gpu_inv[0])
        )
    taken = pod.cpu * state.cpu_inv[nodes]
    taken += pod.memory * state.mem_inv[nodes]
    if pod.gpu_count:
        taken += pod.gpu_total_milli * state.gpu_inv[nodes]
    taken *= state.dims_inv[nodes]
    return share - taken


class BestFit(BestFitGpus):
    """The node left with the least CPU and GPU after placement (paper baseline)."""

    name = "best-fit"
    # Normalised over the feasible nodes only, so it must not see all nodes.
    score_all_nodes = False

    def __init__(self, context: ScorerContext) -> None:
        del context

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        left = 0.5 * (state.cpu_free[nodes] - pod.cpu) / _REF_CPU + 0.5 * (
            _gpu_left(state, nodes) - pod.gpu_total_milli
        ) / _REF_GPU
        raw = np.trunc((1.0 - left) * 100).astype(np.int64)
        lo, hi = raw.min(), raw.max()
        if hi == lo:
            return np.zeros(_size(state, nodes))
        normalised: FloatArray = ((raw - lo) * 100 // (hi - lo)).astype(np.float64)
        return normalised


class DotProduct(BestFitGpus):
    """Align the pod with the node's free vector; smaller dot product wins (paper)."""

    name = "dot-product"

    def __init__(self, context: ScorerContext) -> None:
        del context

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        cpu_left = state.cpu_free[nodes]
        dot = (
            (cpu_left / _REF_CPU) * (pod.cpu / _REF_CPU)
            + (_gpu_left(state, nodes) / _REF_GPU) * (pod.gpu_total_milli / _REF_GPU)
        ) / 2
        score = np.trunc(100 * (1 - dot))
        return np.where(cpu_left < pod.cpu, 0.0, score)


class GpuPacking(BestFitGpus):
    """Prefer partly used GPUs, then partly used nodes, then empty nodes (paper)."""

    name = "gpu-packing"

    def __init__(self, context: ScorerContext) -> None:
        del context

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        if pod.gpu_count == 0:
            return np.zeros(_size(state, nodes))
        free = state.gpu_free[nodes]
        count = state.gpu_count[nodes]
        whole = state.whole_free[nodes]
        all_free = whole == count
        scores = np.maximum(33 - whole, whole).astype(np.float64)
        partial = ~all_free
        if pod.gpu_milli >= MILLI:
            # Whole GPUs always come from fully free GPUs.
            scores[partial] = np.maximum(50 - pod.gpu_count, 33)
            return scores
        rows = np.flatnonzero(partial)
        if len(rows):
            sub = free[rows]
            fitting = np.where(sub >= pod.gpu_milli, sub, MILLI + 1)
            chosen = fitting.min(axis=1)
            uses_full = chosen == MILLI
            shared_score = np.maximum(100 - (chosen * 100 // MILLI) // 10, 50)
            scores[rows] = np.where(uses_full, 49, shared_score)
        return scores


class GpuClustering(BestFitGpus):
    """Keep pods of one kind (shared, 1-GPU, 2-GPU, ...) together on nodes (paper)."""

    name = "gpu-clustering"

    def __init__(self, context: ScorerContext) -> None:
        del context

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        if pod.gpu_count == 0:
            return np.zeros(_size(state, nodes))
        base = 25 * (_REF_GPU - _gpu_left(state, nodes)) // _REF_GPU
        kinds = state.kinds[nodes] > 0
        kind = 0 if pod.gpu_milli < MILLI else min(pod.gpu_count, kinds.shape[1] - 1)
        has_kind = kinds[:, kind]
        n_kinds = kinds.sum(axis=1)
        bonus = np.where(
            has_kind & (n_kinds == 1),
            75,
            np.where(has_kind, 50, np.where(n_kinds == 0, 25, 0)),
        )
        return (base + bonus).astype(np.float64)


class RandomScorer:
    """A uniformly random feasible node and GPU (paper baseline)."""

    name = "random"

    def __init__(self, context: ScorerContext) -> None:
        self.rng = np.random.default_rng(context.seed)

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        # Independent uniform scores make the best feasible node a uniform pick.
        scores: FloatArray = self.rng.random(_size(state, nodes))
        return scores

    def pick_gpus(self, state: ClusterState, pod: PodShape, node: int) -> tuple[int, ...]:
        if pod.gpu_count == 0:
            return ()
        slots = np.flatnonzero(state.gpu_free[node] >= pod.gpu_milli)
        if pod.gpu_milli >= MILLI:
            return tuple(int(g) for g in slots[: pod.gpu_count])
        return (int(slots[self.rng.integers(len(slots))]),)


for _scorer in (
    LeastAllocated,
    MostAllocated,
    BestFit,
    DotProduct,
    GpuPacking,
    GpuClustering,
    RandomScorer,
):
    register_scorer(_scorer.name, _scorer)


class TopologyPacking(BestFitGpus):
    """Bin-pack nodes and keep whole NVLink domains (else racks) free for big gangs.

    A node scores higher the fuller it and its topology domain will be, so
    small jobs fill domains that are already in use and large gangs (which
    ``affinity.pack`` keeps inside one domain) find empty ones.
    """

    name = "topology"

    def __init__(self, context: ScorerContext) -> None:
        del context
        self._codes: tuple[int, IntArray] | None = None

    def _domains(self, state: ClusterState) -> IntArray:
        if self._codes is None or self._codes[0] != id(state.cpu_cap):
            for key in (NVLINK, RACK):
                values = state.label_values(key)
                if len(set(values) - {None}) > 1:
                    break
            table = {v: i for i, v in enumerate(sorted({v for v in values if v is not None}))}
            codes = np.array(
                [len(table) if v is None else table[v] for v in values], dtype=np.int64
            )
            self._codes = (id(state.cpu_cap), codes)
        return self._codes[1]

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        codes = self._domains(state)
        capacity = np.bincount(codes, weights=state.gpu_count * MILLI)
        free = np.bincount(codes, weights=np.where(state.up, state.gpu_left, 0))
        domain_free = np.divide(free, capacity, out=np.ones_like(free), where=capacity > 0)
        score: FloatArray = -_free_share_after(state, pod, nodes) - domain_free[codes[nodes]]
        return score


register_scorer(TopologyPacking.name, TopologyPacking)
