"""Fragmentation Gradient Descent (FGD), from "Beware of Fragmentation" (ATC'23).

A node's *fragmentation* is the GPU capacity that the expected pod mix
cannot use there: for each typical pod ``p`` with frequency ``f_p``, the free
GPU milli that ``p`` could not use (everything, if ``p`` does not fit at all;
otherwise the GPUs with less free than ``p`` needs per GPU), weighted by
``f_p``.  FGD places each pod where fragmentation grows the least, and for a
GPU-sharing pod picks the GPU inside the node the same way.

Speed: only the node a pod lands on changes, so everything FGD computes per
node is cached under the node's state stamp and recomputed only for nodes
whose stamp moved: the fragmentation before, the fragmentation after placing
each pod shape (with the GPU it would use), and the score.  A placement then
costs one pass over all nodes to find those that changed, small evaluations
for them, and one ``argmax`` over an array that folds the integer score and
the tie-break rank together.  Node states recur, so evaluations are mostly
table lookups: what a batch of one node state gives, and per node state and
pod kind the matrix row(s) a bigger batch needs.  Usable GPUs are counted
once per distinct per-GPU request of the pod mix, not once per typical pod.

Same decisions as without the caches, to the last bit: the weighted sum over
the pod mix is one matrix-vector product per batch of node states, and BLAS
rounds a row's sum differently depending on where the row sits in its batch
(OpenBLAS works through rows in blocks of four).  Ties between nodes, the
integer scores of ``fgd`` above all, hinge on those last bits, so every
product is still taken over the same batch as before: the same node states,
in the same order, deduplicated by the same rule.  Only how the batch's
matrix is built changed (exact integers, however obtained).
``tests/unit/test_fgd_golden.py`` pins the resulting decisions.

``fgd`` reproduces the paper's scheduler (scores truncated to integers
0..100 through a sigmoid, ties broken by a fixed node order).  ``fgd-exact``
keeps the exact fragmentation delta and breaks near-ties by packing the
node's free GPU tighter; it is Shoal's recommended variant.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import cast

import numpy as np
import numpy.typing as npt

from shoal.domain.cluster import BoolArray, ClusterState, IntArray
from shoal.domain.resources import MILLI
from shoal.domain.workload import PodShape
from shoal.policy.placement.base import (
    FloatArray,
    Nodes,
    ScorerContext,
    choose,
    register_scorer,
)

_DEDUP_ROWS = 256
# Multiply-adds per matrix product that OpenBLAS computes on one thread.
_BLAS_SINGLE_THREAD = 65_536
# Node states seen (with their fragmentation, or their rows after a pod);
# bounded so a long replay cannot grow them without limit: they are emptied
# when full and refill on demand.  Rows after a pod are counted in matrix
# rows, all pod kinds together (2^17 rows of 35 typical pods: 36 MB).
_SEEN_STATES = 1 << 16
_SEEN_PODS = 1 << 14
_SEEN_AFTER_ROWS = 1 << 17
_BUFFERS = 1 << 16  # elements


def _dedup(rows: IntArray) -> tuple[IntArray, IntArray]:
    """Distinct rows, sorted by their bytes, and per input row the index of its distinct row.

    Clusters are made of few node shapes and node states repeat a lot, so
    evaluating each distinct state once saves most of the work.
    """
    rows = np.ascontiguousarray(rows)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    unique: IntArray = rows[first]
    return unique, inverse.reshape(-1)


# Odd multipliers that spread a row's columns over 64 bits (unsigned: wraps).
_MIX = np.array([0x9E3779B97F4A7C15 + 2 * i for i in range(64)], dtype=np.uint64)


def _mix(columns: int) -> npt.NDArray[np.uint64]:
    return _MIX[:columns] if columns <= len(_MIX) else np.resize(_MIX, columns)


def _dedup_if_halves(rows: IntArray) -> tuple[IntArray, IntArray] | None:
    """``_dedup(rows)`` when it leaves fewer than half of the rows, else None.

    Most batches of changed nodes do not halve, and sorting whole rows as
    bytes is slow: rows are grouped by a 64-bit hash first (different hashes
    are different rows, so too many hashes settle it), the grouping is
    checked against the rows themselves (any collision: the exact sort), and
    only the distinct rows are sorted by their bytes, which gives what
    ``_dedup`` gives.
    """
    rows = np.ascontiguousarray(rows)
    count, width = rows.shape
    hashes = rows.view(np.uint64) @ _mix(width)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    if len(first) >= count // 2:
        return None
    distinct = rows[first]
    inverse = inverse.reshape(-1)
    if not np.array_equal(distinct[inverse], rows):
        unique, inverse = _dedup(rows)
        return (unique, inverse) if len(unique) < count // 2 else None
    order = np.argsort(distinct.view(np.dtype((np.void, width * rows.itemsize))).ravel())
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    ordered: IntArray = distinct[order]
    return ordered, rank[inverse]


def _trials_may_halve(gpu_free: IntArray, cpu_free: IntArray, model_id: IntArray) -> bool:
    """False when deduplicating the candidate states of a shared pod on these nodes
    surely leaves half of them or more.

    A node's candidates (the pod on each of its GPUs) differ from each other,
    and from those of a node with another total, CPU or model, so there are
    at least GPUs x (distinct totals, CPUs and models) distinct candidates;
    distinct hashes of those bound them from below.
    """
    rows, gpus = gpu_free.shape
    key = (
        gpu_free.sum(axis=1).view(np.uint64) * _MIX[0]
        + cpu_free.view(np.uint64) * _MIX[1]
        + model_id.view(np.uint64) * _MIX[2]
    )
    return bool(gpus * len(np.unique(key)) < rows * gpus // 2)


def _take_whole(gpu_free: IntArray, count: int) -> IntArray:
    """The rows with the first ``count`` whole free GPUs taken (what a whole-GPU pod uses)."""
    whole = gpu_free == MILLI
    taken = whole & (whole.cumsum(axis=1) <= count)
    result: IntArray = np.where(taken, 0, gpu_free)
    return result


class Fragmentation:
    """Vectorised fragmentation of many node states against one pod mix."""

    def __init__(self, typical: tuple[tuple[PodShape, float], ...], models: list[str]) -> None:
        shapes = [shape for shape, _ in typical]
        self.freq = np.array([freq for _, freq in typical], dtype=np.float64)
        self.cpu = np.array([s.cpu for s in shapes], dtype=np.int64)
        self.milli = np.array([s.gpu_milli for s in shapes], dtype=np.int64)
        self.count = np.array([s.gpu_count for s in shapes], dtype=np.int64)
        self.cpu_only = self.milli == 0
        # access[t, m]: typical pod t may use GPU model m (last column: no GPU model).
        self.access = np.ones((len(shapes), len(models) + 1), dtype=np.bool_)
        for t, shape in enumerate(shapes):
            if shape.models:
                self.access[t, :] = [model in shape.models for model in models] + [False]
        # A pod mix has few distinct per-GPU requests (a dozen in openb for 35
        # typical pods).  A GPU's *level* is how many of them it can hold; a
        # per-row histogram of levels times ``_holds`` gives, per typical pod,
        # the GPUs (or their free milli) that can hold one of its GPUs.  The
        # sums are of small integers, so they are exact in float64.
        levels = np.unique(self.milli[~self.cpu_only])
        self._levels = levels if len(levels) else np.array([MILLI + 1], dtype=np.int64)
        level_of = np.searchsorted(self._levels, self.milli)
        holds = np.arange(len(self._levels) + 1)[:, None] > level_of[None, :]
        # The last column holds every level: it sums to the row's total.
        self._holds = np.concatenate([holds, np.ones((len(holds), 1), dtype=np.bool_)], axis=1)
        self._holds = self._holds.astype(np.float64)
        self._offsets = np.zeros(0, dtype=np.int64)
        self._ones = np.ones(0)
        # Whether typical pod t fits a node's CPU and GPU model depends only on
        # the node's CPU class (how many distinct CPU requests it can hold) and
        # its model: one table lookup per node instead of three comparisons.
        self._cpu_levels = np.unique(self.cpu)
        self._cpu_level_list = [int(c) for c in self._cpu_levels]
        classes = np.arange(len(self._cpu_levels) + 1)
        cpu_rank = np.searchsorted(self._cpu_levels, self.cpu)
        self._static = (
            (classes[:, None, None] > cpu_rank[None, None, :])
            & self.access.T[None, :, :]
            & ~self.cpu_only[None, None, :]
        )
        self._seen: dict[tuple[bytes, int, int], float] = {}
        # GPU models the pod mix treats alike (same access column) share
        # cached rows: a node's rows are keyed on its (CPU class, model class).
        columns = [self.access[:, m].tobytes() for m in range(len(models) + 1)]
        self.model_class = np.array([columns.index(c) for c in columns], dtype=np.int64)
        self._after: dict[tuple[int, int], dict[bytes, FloatArray]] = {}
        self._after_rows = 0
        self._eyes: dict[tuple[int, int], IntArray] = {}

    def of(self, gpu_free: IntArray, cpu_free: IntArray, model_id: IntArray) -> FloatArray:
        """Fragmentation (milli-GPU) of each row; ``gpu_free`` is (rows, gpus)."""
        if len(self.freq) == 0:
            return np.zeros(len(cpu_free))
        if len(cpu_free) > _DEDUP_ROWS:
            rows = np.concatenate([gpu_free, cpu_free[:, None], model_id[:, None]], axis=1)
            halved = _dedup_if_halves(rows)
            if halved is not None:
                unique, inverse = halved
                frag = self._of(unique[:, :-2], unique[:, -2], unique[:, -1])
                result: FloatArray = frag[inverse]
                return result
        return self._of(gpu_free, cpu_free, model_id)

    def per_pod(self, gpu_free: IntArray, cpu_free: IntArray, model_id: IntArray) -> FloatArray:
        """Milli-GPU each typical pod could not use, per row: (rows, typical pods).

        Whole numbers, in float64: the product with the frequencies rounds the
        same as on int64 (numpy converts before calling BLAS), and skipping
        the conversion saves a pass over the batch.
        """
        rows, gpus = gpu_free.shape
        width = len(self._levels) + 1
        size = rows * width
        offsets, ones = self._buffers(rows, gpus)
        # Array methods, not np.* functions: those add a Python-level wrapper.
        level = self._levels.searchsorted(gpu_free, side="right")
        level += offsets[:, None]
        # Histograms rather than (rows, levels, GPUs) masks summed over the
        # short GPU axis, which numpy reduces slowly.  Weighted bincounts are
        # float64, whatever numpy's stubs say.
        flat = level.ravel()
        count = cast(FloatArray, np.bincount(flat, ones, size))
        milli = cast(FloatArray, np.bincount(flat, gpu_free.ravel(), size))
        fits = self._hold(count.reshape(rows, width))[:, :-1] >= self.count
        fits &= self._static[self._cpu_levels.searchsorted(cpu_free, side="right"), model_id]
        held = self._hold(milli.reshape(rows, width))
        total = held[:, -1:]
        per_pod: FloatArray = np.where(fits, total - held[:, :-1], total)
        return per_pod

    def _buffers(self, rows: int, gpus: int) -> tuple[IntArray, FloatArray]:
        """Each row's first histogram bin, and unit weights: kept for small batches."""
        width = len(self._levels) + 1
        if rows > len(self._offsets) or rows * gpus > len(self._ones):
            offsets, ones = np.arange(0, 2 * rows * width, width), np.ones(2 * rows * gpus)
            if len(ones) > _BUFFERS:
                return offsets[:rows], ones[: rows * gpus]
            self._offsets, self._ones = offsets, ones
        return self._offsets[:rows], self._ones[: rows * gpus]

    def _hold(self, per_level: FloatArray) -> FloatArray:
        """Per row and typical pod, the sum over the levels that can hold the pod."""
        # Exact in any order (small integers), so rows may be split freely:
        # chunks stay under OpenBLAS's threading threshold, whose helper
        # threads would otherwise spin on the other core after each product.
        step = max(1, _BLAS_SINGLE_THREAD // self._holds.size)
        if len(per_level) <= step:
            held: FloatArray = per_level @ self._holds
            return held
        return np.concatenate(
            [per_level[i : i + step] @ self._holds for i in range(0, len(per_level), step)]
        )

    def weigh(self, per_pod: FloatArray) -> FloatArray:
        """Fragmentation of a batch from its ``per_pod`` rows: one product per batch.

        The product must see the batch exactly as it always did, a C-ordered
        matrix (numpy picks another BLAS routine for other layouts, which
        rounds differently), but its address and dtype do not matter.
        """
        if len(self.freq) == 0:
            return np.zeros(len(per_pod))
        if not per_pod.flags.c_contiguous:
            per_pod = np.ascontiguousarray(per_pod)
        frag: FloatArray = per_pod @ self.freq
        return frag

    def after_per_pod(
        self, gpu_free: IntArray, cpu_free: IntArray, model_id: IntArray, pod: PodShape
    ) -> FloatArray:
        """``per_pod`` of each node state after placing ``pod`` (``cpu_free`` already less
        the pod's CPU): a shared pod gets one row per GPU it could go on, in GPU
        order; any other pod one row, with its whole GPUs taken first-free first.

        Node states recur (98 % of the evaluations in the throughput benchmark,
        three quarters on openb), so each node's rows are kept under the node's
        content and the pod's kind.
        """
        gpus = gpu_free.shape[1]
        kind = (pod.gpu_milli, pod.gpu_count)
        table = self._after.get(kind)
        if table is None:
            table = self._after[kind] = {}
        # The key: the GPU row, then CPU class and model class in one column.
        tag = self._cpu_levels.searchsorted(cpu_free, side="right")
        tag *= len(self.model_class)
        tag += self.model_class[model_id]
        raw = np.concatenate([gpu_free, tag[:, None]], axis=1).tobytes()
        width = (gpus + 1) * gpu_free.itemsize
        keys = [raw[i : i + width] for i in range(0, len(raw), width)]
        found = list(map(table.get, keys))
        missing = [i for i, block in enumerate(found) if block is None]
        if missing:
            at = np.array(missing)
            free, cpu, model = gpu_free[at], cpu_free[at], model_id[at]
            if pod.is_fractional:
                # One candidate state per (node, GPU): the pod on that GPU.
                trial = free[:, None, :] - self.on_each_gpu(pod.gpu_milli, gpus)
                new = self.per_pod(
                    trial.reshape(-1, gpus), cpu.repeat(gpus), model.repeat(gpus)
                ).reshape(len(at), gpus, -1)
            else:
                if pod.gpu_count:
                    free = _take_whole(free, pod.gpu_count)
                new = self.per_pod(free, cpu, model)[:, None, :]
            self._after_rows += new.shape[0] * new.shape[1]
            if self._after_rows > _SEEN_AFTER_ROWS:
                for kept in self._after.values():
                    kept.clear()
                self._after_rows = new.shape[0] * new.shape[1]
            for i, block in zip(missing, new, strict=True):
                found[i] = table[keys[i]] = block
        blocks = cast(list[FloatArray], found)  # every None was filled in
        return np.concatenate(blocks)

    def on_each_gpu(self, milli: int, gpus: int) -> IntArray:
        """(gpus, gpus): ``milli`` on the diagonal, what a shared pod takes from each GPU."""
        eye = self._eyes.get((milli, gpus))
        if eye is None:
            eye = self._eyes[(milli, gpus)] = milli * np.eye(gpus, dtype=np.int64)
        return eye

    def cpu_class(self, cpu_free: int) -> int:
        """How many of the pod mix's distinct CPU requests ``cpu_free`` can hold."""
        return bisect_right(self._cpu_level_list, cpu_free)

    def of_one(self, gpu_free: IntArray, cpu_free: int, model_id: int) -> float:
        """``of`` for a single node state (``gpu_free`` is its row)."""
        if len(self.freq) == 0:
            return 0.0
        return self._single(gpu_free, cpu_free, model_id)

    def _of(self, gpu_free: IntArray, cpu_free: IntArray, model_id: IntArray) -> FloatArray:
        # One product per batch, as ever: BLAS rounds a row by its place in it.
        if len(cpu_free) == 1:
            return np.array([self._single(gpu_free, int(cpu_free[0]), int(model_id[0]))])
        return self.weigh(self.per_pod(gpu_free, cpu_free, model_id))

    def _single(self, gpu_free: IntArray, cpu_free: int, model_id: int) -> float:
        """A batch of one state: its value depends on the state alone, so look it up."""
        key = (gpu_free.tobytes(), bisect_right(self._cpu_level_list, cpu_free), model_id)
        frag = self._seen.get(key)
        if frag is None:
            if len(self._seen) >= _SEEN_STATES:
                self._seen.clear()
            row = gpu_free.reshape(1, -1)
            cpu = np.array([cpu_free], dtype=np.int64)
            model = np.array([model_id], dtype=np.int64)
            frag = self._seen[key] = float(self.weigh(self.per_pod(row, cpu, model))[0])
        return frag


def _stale(stamps: IntArray, state: ClusterState, nodes: Nodes) -> IntArray:
    """Nodes among ``nodes`` whose cached value predates their last change."""
    stale: IntArray
    if isinstance(nodes, slice):
        stale = (stamps != state.stamp).nonzero()[0]
    else:
        stale = nodes[stamps[nodes] != state.stamp[nodes]]
    return stale


class _PodCache:
    """What FGD knows about one pod shape on every node, each entry under a stamp."""

    __slots__ = ("after", "gpu", "score", "source", "stamp")

    def __init__(self, size: int) -> None:
        self.after = np.zeros(size)  # fragmentation after placing the pod
        self.gpu = np.zeros(size, dtype=np.int64)  # the GPU a shared pod would use
        self.stamp = np.full(size, -1, dtype=np.int64)  # node stamp of after/gpu
        # ``fgd``: the integer score folded with the tie-break rank (see
        # ``FgdScorer._rerank``) so that one argmax chooses; ``fgd-exact``: the score.
        self.score = np.zeros(size)
        # The version of the node's before-value that ``score`` was computed
        # from (-1: none).  Not the stamp: a node whose stamp comes back (a
        # state copy, a rolled-back trial) may get its before-value recomputed
        # in another batch, with other last bits, and the score must follow.
        self.source = np.full(size, -1, dtype=np.int64)


class FgdScorer:
    """Score = fragmentation before minus after placing the pod (bigger is better)."""

    name = "fgd"
    integer_scores = True

    def __init__(self, context: ScorerContext) -> None:
        self.context = context
        self.frag: Fragmentation | None = None
        self._state_id = -1
        self._before = np.zeros(0)
        self._before_stamp = np.zeros(0, dtype=np.int64)
        self._before_version = np.zeros(0, dtype=np.int64)
        self._versions = 0
        self._pods: dict[PodShape, _PodCache] = {}
        # The same pod objects come back (a trace's shapes): find their caches
        # by identity before hashing and comparing six fields.
        self._pods_by_id: dict[int, tuple[PodShape, _PodCache]] = {}
        # What a batch of one node gives for a pod: it depends on the node's
        # state alone.  Key: GPU row, CPU class, model class, pod kind.
        self._after_one: dict[tuple[bytes, int, int, int, int], tuple[float, int]] = {}
        # The ranks integer scores are folded with (kept, so that its id is
        # not reused): score * scale + (top rank - rank), exact in float64.
        self._ranks: IntArray | None = None
        self._rank_term = np.zeros(0)
        self._rank_scale = 1.0

    # -- caches --------------------------------------------------------------

    def _bind_state(self, state: ClusterState) -> Fragmentation:
        if self.frag is None or self._state_id != id(state.cpu_cap):
            self.frag = Fragmentation(self.context.typical_pods, state.models)
            self._state_id = id(state.cpu_cap)
            self._before = np.zeros(len(state))
            self._before_stamp = np.full(len(state), -1, dtype=np.int64)
            self._before_version = np.full(len(state), -1, dtype=np.int64)
            self._pods = {}
            self._pods_by_id = {}
            self._after_one = {}
            self._ranks = None
            self._rank_term = np.zeros(len(state))
            self._rank_scale = 1.0
        return self.frag

    def _update_before(self, frag: Fragmentation, state: ClusterState, stale: IntArray) -> None:
        self._versions += 1
        if len(stale) == 1:
            # The usual case (the node the last pod went to), in scalars.
            node = stale.item(0)
            self._before[node] = frag.of_one(
                state.gpu_free[node], state.cpu_free.item(node), state.model_id.item(node)
            )
            self._before_stamp[node] = state.stamp.item(node)
            self._before_version[node] = self._versions
            return
        self._before[stale] = frag.of(
            state.gpu_free[stale], state.cpu_free[stale], state.model_id[stale]
        )
        self._before_stamp[stale] = state.stamp[stale]
        self._before_version[stale] = self._versions

    def _pod_cache(self, state: ClusterState, pod: PodShape) -> _PodCache:
        known = self._pods_by_id.get(id(pod))
        if known is not None and known[0] is pod:
            return known[1]
        cache = self._pods.get(pod)
        if cache is None:
            cache = self._pods[pod] = _PodCache(len(state))
        if len(self._pods_by_id) >= _SEEN_PODS:
            self._pods_by_id.clear()
        self._pods_by_id[id(pod)] = (pod, cache)  # holding ``pod`` keeps its id unique
        return cache

    def _update_after(
        self, frag: Fragmentation, state: ClusterState, pod: PodShape, cache: _PodCache,
        stale: IntArray,
    ) -> None:
        if len(stale) == 1:
            node = stale.item(0)
            key = (
                state.gpu_free[node].tobytes(),
                frag.cpu_class(state.cpu_free.item(node) - pod.cpu),
                frag.model_class.item(state.model_id.item(node)),
                pod.gpu_milli,
                pod.gpu_count,
            )
            one = self._after_one.get(key)
            if one is None:
                if len(self._after_one) >= _SEEN_STATES:
                    self._after_one.clear()
                after, gpu = self._evaluate(frag, state, pod, stale)
                one = self._after_one[key] = (float(after[0]), int(gpu[0]))
            cache.after[node], cache.gpu[node] = one
            cache.stamp[node] = state.stamp.item(node)
            cache.source[node] = -1
            return
        cache.after[stale], cache.gpu[stale] = self._evaluate(frag, state, pod, stale)
        cache.stamp[stale] = state.stamp[stale]
        cache.source[stale] = -1

    def _frag_after(
        self, state: ClusterState, pod: PodShape, nodes: Nodes
    ) -> tuple[FloatArray, IntArray]:
        frag = self._bind_state(state)
        cache = self._pod_cache(state, pod)
        stale = _stale(cache.stamp, state, nodes)
        if len(stale):
            self._update_after(frag, state, pod, cache, stale)
        return cache.after[nodes], cache.gpu[nodes]

    def _evaluate(
        self, frag: Fragmentation, state: ClusterState, pod: PodShape, nodes: IntArray
    ) -> tuple[FloatArray, IntArray]:
        free = state.gpu_free[nodes]
        cpu = state.cpu_free[nodes] - pod.cpu
        models = state.model_id[nodes]
        if len(nodes) > _DEDUP_ROWS:
            rows = np.concatenate([free, cpu[:, None], models[:, None]], axis=1)
            halved = _dedup_if_halves(rows)
            if halved is not None:
                unique, inverse = halved
                after, gpu = self._evaluate_rows(
                    frag, pod, unique[:, :-2], unique[:, -2], unique[:, -1]
                )
                return after[inverse], gpu[inverse]
        return self._evaluate_rows(frag, pod, free, cpu, models)

    def _evaluate_rows(
        self, frag: Fragmentation, pod: PodShape, free: IntArray, cpu: IntArray, models: IntArray
    ) -> tuple[FloatArray, IntArray]:
        """Fragmentation after placing ``pod`` on nodes in these states, and the GPU used."""
        rows, gpus = free.shape
        # ``Fragmentation.of`` would deduplicate big batches and weigh only the
        # distinct rows; where it provably cannot, the same batch is built
        # from the rows cached per node state.
        if not pod.is_fractional:
            if rows <= _DEDUP_ROWS:
                after = frag.weigh(frag.after_per_pod(free, cpu, models, pod))
            else:
                taken = _take_whole(free, pod.gpu_count) if pod.gpu_count else free
                after = frag.of(taken, cpu, models)
            return after, np.zeros(rows, dtype=np.int64)
        if rows * gpus <= _DEDUP_ROWS or not _trials_may_halve(free, cpu, models):
            values = frag.weigh(frag.after_per_pod(free, cpu, models, pod)).reshape(rows, gpus)
        else:
            # One candidate state per (node, GPU): the pod on that GPU.
            trial = free[:, None, :] - frag.on_each_gpu(pod.gpu_milli, gpus)
            values = frag.of(
                trial.reshape(rows * gpus, gpus), cpu.repeat(gpus), models.repeat(gpus)
            ).reshape(rows, gpus)
        # A node where no GPU fits keeps +inf: it is never feasible for this pod.
        values = np.where(free >= pod.gpu_milli, values, np.inf)
        best = self._best_gpu(values, free, pod)
        return values[np.arange(rows), best], best

    def _best_gpu(self, values: FloatArray, free: IntArray, pod: PodShape) -> IntArray:
        del free, pod
        result: IntArray = values.argmin(axis=1)
        return result

    def _scores(
        self, state: ClusterState, pod: PodShape, nodes: Nodes, among: BoolArray | None = None
    ) -> _PodCache:
        """Bring the pod's cached scores on ``nodes`` up to date (``among``: a mask
        of exactly the nodes in the index array ``nodes``, when the caller has one)."""
        frag = self._bind_state(state)
        cache = self._pod_cache(state, pod)
        stamp, before_stamp, version = state.stamp, self._before_stamp, self._before_version
        # One pass finds every node whose before-value, after-value or score
        # is out of date, in node order; the before and after batches are cut
        # from it, the same nodes in the same order as when each was found on
        # its own.  A stale before-value always shows here too: the after-value
        # is only ever refreshed alone by resetting the score's source.
        stale_after: BoolArray
        if isinstance(nodes, slice) or among is not None:
            stale_after = cache.stamp != stamp
            out_of_date = cache.source != version
            out_of_date |= stale_after
            if among is not None:
                out_of_date &= among
            changed = out_of_date.nonzero()[0]
            if len(changed) == 0:
                return cache
            stale_after = stale_after[changed]
        else:
            now = stamp[nodes]
            stale_after = cache.stamp[nodes] != now
            out_of_date = cache.source[nodes] != version[nodes]
            out_of_date |= stale_after
            changed = nodes[out_of_date]
            if len(changed) == 0:
                return cache
            stale_after = stale_after[out_of_date]
        if len(changed) == 1 and self.integer_scores:
            self._score_one(frag, state, pod, cache, changed, bool(stale_after[0]))
            return cache
        stale_before = before_stamp[changed] != stamp[changed]
        # Before, then after: the same batches, in the same order, as when
        # every call recomputed the scores of all nodes from these two.
        stale = changed[stale_before]
        if len(stale):
            self._update_before(frag, state, stale)
        stale = changed[stale_after]
        if len(stale):
            self._update_after(frag, state, pod, cache, stale)
        # Every changed node's score is now out of date: a recomputed
        # before-value has a new version, a recomputed after-value no source.
        delta = self._before[changed] - cache.after[changed]
        if self.integer_scores:
            # The paper's plugin: int64(sigmoid(delta / 1000) * 100), in place.
            score = np.negative(delta, out=delta)
            score /= 1000.0
            np.exp(score, out=score)
            score += 1.0
            np.divide(100.0, score, out=score)
            np.trunc(score, out=score)
            score *= self._rank_scale
            score += self._rank_term[changed]
        else:
            score = self._refine(state, pod, changed, delta)
        cache.score[changed] = score
        cache.source[changed] = version[changed]
        return cache

    def _score_one(
        self, frag: Fragmentation, state: ClusterState, pod: PodShape, cache: _PodCache,
        changed: IntArray, stale_after: bool,
    ) -> None:
        """``_scores`` for a single changed node (a quarter of the calls on openb), in
        scalars: the same operations, and ``np.exp`` of a float rounds as on an array."""
        node = changed.item(0)
        if self._before_stamp.item(node) != state.stamp.item(node):
            self._update_before(frag, state, changed)
        if stale_after:
            self._update_after(frag, state, pod, cache, changed)
        delta = self._before.item(node) - cache.after.item(node)
        score = float(math.trunc(100.0 / (1.0 + float(np.exp(-delta / 1000.0)))))
        cache.score[node] = score * self._rank_scale + self._rank_term.item(node)
        cache.source[node] = self._before_version.item(node)

    # -- scorer protocol -----------------------------------------------------

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        scores: FloatArray = self._scores(state, pod, nodes).score[nodes]
        if self.integer_scores:
            # Unfold the rank: exact, as every term is a small integer.
            unfolded: FloatArray = (scores - self._rank_term[nodes]) / self._rank_scale
            return unfolded
        return scores.copy() if isinstance(nodes, slice) else scores

    def choose_node(
        self, state: ClusterState, pod: PodShape, nodes: Nodes, feasible: BoolArray, ranks: IntArray
    ) -> int:
        """``choose`` on this pod's scores over ``nodes`` (ALL: the ``feasible`` ones).

        Scores stay folded with the last ``ranks`` seen (a new array is
        compared by content); an array changed in place is not noticed.
        """
        # ``place_pod`` passes the feasible nodes themselves as the index array.
        cache = self._scores(state, pod, nodes, None if isinstance(nodes, slice) else feasible)
        if not self.integer_scores:
            if isinstance(nodes, slice):
                scores = np.where(feasible, cache.score, -np.inf)
                top = scores.max()
                if np.isfinite(top):
                    tied = (scores == top).nonzero()[0]
                    if len(tied) == 1:
                        return int(tied[0])
                    return int(tied[ranks[tied].argmin()])
                nodes = feasible.nonzero()[0]
            return choose(cache.score[nodes], nodes, ranks)
        self._rerank(ranks)
        keys = cache.score
        if isinstance(nodes, slice):
            # Keys are >= 0, so -1 never wins over a feasible node.
            return int(np.where(feasible, keys, -1.0).argmax())
        return int(nodes[keys[nodes].argmax()])

    def _rerank(self, ranks: IntArray) -> None:
        """Fold integer scores with ``ranks``: score * scale + (top rank - rank), so that
        one argmax picks the best score, then the lowest rank, then the lowest node
        index, exactly as ``choose``."""
        if self._ranks is ranks:
            return
        if self._ranks is not None and np.array_equal(self._ranks, ranks):
            self._ranks = ranks
            return
        top = int(ranks.max()) if len(ranks) else 0
        scale = float(top - (int(ranks.min()) if len(ranks) else 0) + 1)
        term = (top - ranks).astype(np.float64)
        for cache in self._pods.values():
            cache.score -= self._rank_term
            cache.score /= self._rank_scale
            cache.score *= scale
            cache.score += term
        self._ranks, self._rank_scale, self._rank_term = ranks, scale, term

    def _refine(
        self, state: ClusterState, pod: PodShape, nodes: Nodes, delta: FloatArray
    ) -> FloatArray:
        return delta

    def pick_gpus(self, state: ClusterState, pod: PodShape, node: int) -> tuple[int, ...]:
        if pod.gpu_count == 0:
            return ()
        if pod.is_fractional:
            self._bind_state(state)
            cache = self._pod_cache(state, pod)
            if cache.stamp.item(node) == state.stamp.item(node):
                return (int(cache.gpu[node]),)
            _, gpu = self._frag_after(state, pod, np.array([node]))
            return (int(gpu[0]),)
        slots = (state.gpu_free[node] == MILLI).nonzero()[0]
        return tuple(int(g) for g in slots[: pod.gpu_count])


class FgdExactScorer(FgdScorer):
    """FGD on the exact fragmentation delta; near-ties go to the tighter-packed node."""

    name = "fgd-exact"
    integer_scores = False

    def _refine(
        self, state: ClusterState, pod: PodShape, nodes: Nodes, delta: FloatArray
    ) -> FloatArray:
        # Among equal fragmentation deltas prefer the node with less free GPU
        # (milli) left: a tie-break worth less than one milli-GPU of delta.
        left = state.gpu_free[nodes].sum(axis=1)
        scale = float(state.max_gpus * MILLI + 1)
        refined: FloatArray = np.round(delta, 6) - left / scale
        return refined


register_scorer(FgdScorer.name, FgdScorer)
register_scorer(FgdExactScorer.name, FgdExactScorer)
