"""Placing a whole workload: every pod of a gang in one go, or none.

Pods are placed one after another in a trial of the cluster state that is
undone before returning, so a gang that does not fit leaves nothing behind (no
partial holds, no deadlock) and no placement copies the cluster.  ``pack`` first tries topology domains (NVLink domain, rack,
zone) that can hold the whole gang, tightest first; ``anti_affinity`` keeps
pods of the workload on distinct nodes or racks.

Before placing, ``could_fit`` counts how many pods of each shape the nodes
could take (a necessary condition, exact for identical pods placed freely:
``fit_is_exact``); ``RoomCount`` keeps that count up to date while pods are
given back or taken again on a few nodes, without touching the state.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from shoal.domain.cluster import Binding, BoolArray, ClusterState, IntArray
from shoal.domain.resources import MILLI
from shoal.domain.workload import ANTI_AFFINITY_LABELS, PACK_LABELS, PodShape, Workload
from shoal.policy.placement.base import Scorer, place_pod
from shoal.policy.placement.filters import model_mask, sharing_mask, static_mask


class Placer:
    """Places workloads with one scorer; caches the masks that never change."""

    def __init__(self, scorer: Scorer, ranks: IntArray) -> None:
        self.scorer = scorer
        self.ranks = ranks
        self._static: dict[object, BoolArray] = {}
        self._labels: dict[str, IntArray] = {}
        # Facts that depend only on node capacities and labels, for callers
        # that want to remember them across cycles.
        self.memo: dict[object, object] = {}

    def allowed(self, state: ClusterState, workload: Workload, pod: PodShape) -> BoolArray:
        shares = bool(pod.gpu_count) and pod.gpu_milli < MILLI
        key = (workload.constraints, pod.models, shares)
        mask = self._static.get(key)
        if mask is None:
            mask = static_mask(state, workload.constraints) & model_mask(state, pod.models)
            if shares:
                mask = mask & sharing_mask(state)
            self._static[key] = mask
        return mask

    def label_codes(self, state: ClusterState, key: str) -> IntArray:
        """Label values as integers (-1 when the node lacks the label)."""
        codes = self._labels.get(key)
        if codes is None:
            values = state.label_values(key)
            table = {v: i for i, v in enumerate(sorted({v for v in values if v is not None}))}
            codes = np.array([table.get(v, -1) if v is not None else -1 for v in values])
            self._labels[key] = codes
        return codes

    def could_fit(
        self,
        state: ClusterState,
        workload: Workload,
        freed: Sequence[Binding] = (),
        free: Free | None = None,
    ) -> bool:
        """False when the cluster provably has no room for the whole workload now
        (with the pods of ``freed`` gone, or with ``free`` room, if given).

        A necessary condition, cheap next to a gang placement: for each pod
        shape of the workload, the nodes it may use must hold as many pods of
        that shape as the workload has (one per node under anti-affinity).
        """
        if len(workload.pods) == 1:
            return True
        if free is None:
            free = Free.of(state, freed)
        counts: dict[PodShape, int] = {}
        for pod in workload.pods:
            counts[pod] = counts.get(pod, 0) + 1
        once = workload.constraints.anti_affinity != "none"
        for pod, count in counts.items():
            room = free.pods_per_node(state, pod) * self.allowed(state, workload, pod)
            if once:
                room = np.minimum(room, 1)
            if int(room.sum()) < count:
                return False
        return True

    def place(
        self, state: ClusterState, workload: Workload, count: int | None = None
    ) -> list[Binding] | None:
        """Bindings for all pods (or the first ``count``), or None; ``state`` is untouched."""
        pods = workload.pods if count is None else workload.pods[:count]
        if len(pods) == 1 and workload.constraints.anti_affinity == "none":
            binding = place_pod(
                state, pods[0], self.scorer, self.ranks, self.allowed(state, workload, pods[0])
            )
            return None if binding is None else [binding]
        pack = workload.constraints.pack
        if pack != "none" and len(pods) > 1:
            codes = self.label_codes(state, PACK_LABELS[pack])
            for domain in self._domains_by_fit(state, workload, pods, codes):
                bindings = self._place_all(state, workload, pods, codes == domain)
                if bindings is not None:
                    return bindings
        return self._place_all(state, workload, pods, None)

    def _domains_by_fit(
        self, state: ClusterState, workload: Workload, pods: Sequence[PodShape], codes: IntArray
    ) -> list[int]:
        """Domains whose free GPUs could hold the gang, the tightest first."""
        need = sum(pod.gpu_total_milli for pod in pods)
        allowed = self.allowed(state, workload, pods[0]) & state.up & (codes >= 0)
        free = np.where(allowed, state.gpu_free.sum(axis=1), 0)
        if need == 0:
            free = np.where(allowed, state.cpu_free, 0)
            need = sum(pod.cpu for pod in pods)
        per_domain = np.bincount(codes[codes >= 0], weights=free[codes >= 0])
        candidates = np.flatnonzero(per_domain >= need)
        return [int(d) for d in candidates[np.argsort(per_domain[candidates], kind="stable")]]

    def _place_all(
        self,
        state: ClusterState,
        workload: Workload,
        pods: Sequence[PodShape],
        within: BoolArray | None,
    ) -> list[Binding] | None:
        spread = workload.constraints.anti_affinity
        spread_codes = (
            self.label_codes(state, ANTI_AFFINITY_LABELS[spread]) if spread != "none" else None
        )
        used: BoolArray = np.zeros(len(state), dtype=np.bool_)
        bindings: list[Binding] = []
        with state.trial():
            for pod in pods:
                allowed = self.allowed(state, workload, pod)
                if within is not None:
                    allowed = allowed & within
                if spread_codes is not None and bindings:
                    allowed = allowed & ~used
                binding = place_pod(state, pod, self.scorer, self.ranks, allowed)
                if binding is None:
                    return None
                state.bind(binding)
                bindings.append(binding)
                if spread_codes is not None:
                    code = spread_codes[binding.node]
                    used |= spread_codes == code if code >= 0 else _only(len(state), binding.node)
        return bindings


class Free:
    """Free CPU, memory and per-GPU milli (and GPU memory) of every node, possibly
    with some pods gone."""

    __slots__ = ("cpu", "gpu", "gpu_memory", "memory")

    def __init__(
        self, cpu: IntArray, memory: IntArray, gpu: IntArray, gpu_memory: IntArray | None = None
    ) -> None:
        self.cpu, self.memory, self.gpu = cpu, memory, gpu
        self.gpu_memory = gpu_memory

    def fits_somewhere(self, state: ClusterState, pod: PodShape, allowed: BoolArray) -> bool:
        """Whether some allowed node that is up has room for ``pod`` (``fit_mask``'s rules)."""
        mask = self.cpu >= pod.cpu
        mask &= state.up
        mask &= self.memory >= pod.memory
        mask &= allowed
        if pod.gpu_count:
            if pod.gpu_milli >= MILLI:
                whole = (state.whole_free if self.gpu is state.gpu_free
                         else (self.gpu == MILLI).sum(axis=1))
                mask &= whole >= pod.gpu_count
                if pod.gpu_memory:
                    mask &= state.gpu_memory >= pod.gpu_memory
            else:
                ok = self.gpu >= pod.gpu_milli
                if pod.gpu_memory:
                    gpu_memory = state.gpu_mem_free if self.gpu_memory is None else self.gpu_memory
                    ok &= gpu_memory >= pod.gpu_memory
                mask &= ok.any(axis=1)
        return bool(mask.any())

    @classmethod
    def of(cls, state: ClusterState, gone: Sequence[Binding] = ()) -> Free:
        if not gone:
            return cls(state.cpu_free, state.mem_free, state.gpu_free)
        cpu, memory, gpu = state.cpu_free.copy(), state.mem_free.copy(), state.gpu_free.copy()
        for binding in gone:
            shape, node = binding.shape, binding.node
            cpu[node] += shape.cpu
            memory[node] += shape.memory
            for slot in binding.gpus:
                gpu[node, slot] += shape.gpu_milli
        return cls(cpu, memory, gpu)

    def pods_per_node(
        self, state: ClusterState, pod: PodShape, up: BoolArray | None = None
    ) -> IntArray:
        """How many pods of this shape each node could still take (0 on nodes that are
        down; ``up``: the nodes to count as up, if not those that are)."""
        room = np.where(state.up if up is None else up, np.int64(1 << 40), 0)
        if pod.cpu:
            room = np.minimum(room, self.cpu // pod.cpu)
        if pod.memory:
            room = np.minimum(room, self.memory // pod.memory)
        if pod.gpu_count:
            if pod.gpu_milli >= MILLI:
                # The state keeps its own count of whole free GPUs per node.
                whole = (state.whole_free if self.gpu is state.gpu_free
                         else (self.gpu == MILLI).sum(axis=1))
                if pod.gpu_memory:
                    whole = np.where(state.gpu_memory >= pod.gpu_memory, whole, 0)
                room = np.minimum(room, whole // pod.gpu_count)
            else:
                # Each shared GPU holds as many fractions as fit in what it has free.
                slots = (self.gpu // pod.gpu_milli).sum(axis=1)
                room = np.minimum(room, slots // pod.gpu_count)
        result: IntArray = np.maximum(room, 0)
        return result


def fit_is_exact(workload: Workload) -> bool:
    """Whether counting pods per node (``RoomCount``) is exact for ``workload``: it
    can be placed whenever the nodes could take as many pods as it has.

    So it is for identical pods placed with no packing or spreading, none of
    which asks for GPU memory: placing one of them on a node takes exactly one
    from that node's ``pods_per_node`` count (a whole GPU, a fraction of one
    GPU, CPU and memory only go down by one pod's worth), so the pods go one
    by one for as long as the count says they can.
    """
    pods = workload.pods
    pod = pods[0]
    if pod.gpu_memory or (pod.gpu_count and pod.gpu_milli < MILLI and pod.gpu_count != 1):
        return False
    if len(pods) == 1:
        return True
    constraints = workload.constraints
    if constraints.pack != "none" or constraints.anti_affinity != "none":
        return False
    return all(other == pod for other in pods)


class RoomCount:
    """``Placer.could_fit`` kept up to date as pods go or come back on a few nodes.

    It counts, per pod shape of a workload, how many pods of that shape the
    nodes could take (``Free.pods_per_node`` on the nodes it may use, one per
    node under anti-affinity), starting from ``free`` (or the state's room)
    and changing only the nodes that ``give`` touches: the cluster state is
    not touched.  ``fits()`` answers as ``could_fit`` would on that room, for a
    lone pod too; for a workload that ``fit_is_exact`` it is whether it can be
    placed.  ``up``: the nodes to count as up (read as they change), if not
    the state's.
    """

    __slots__ = ("_base", "_caps", "_free", "_needs", "_shapes", "_state", "_up", "counts")

    def __init__(
        self,
        state: ClusterState,
        placer: Placer,
        workload: Workload,
        free: Free | None = None,
        up: BoolArray | None = None,
    ) -> None:
        self._state = state
        self._up = up = state.up if up is None else up
        self._base = base = free if free is not None else Free.of(state)
        once = len(workload.pods) > 1 and workload.constraints.anti_affinity != "none"
        wanted: dict[PodShape, int] = {}
        for pod in workload.pods:
            wanted[pod] = wanted.get(pod, 0) + 1
        self._shapes: list[_Shape] = []
        for pod, count in wanted.items():
            allowed = placer.allowed(state, workload, pod)
            if pod.gpu_count and pod.gpu_milli >= MILLI and pod.gpu_memory:
                # Whole GPUs with too little memory take no pod (as pods_per_node).
                allowed = allowed & (state.gpu_memory >= pod.gpu_memory)
            per_node = base.pods_per_node(state, pod, up) * allowed
            if once:
                per_node = np.minimum(per_node, 1)
            self._shapes.append(_Shape(pod, count, allowed, once, per_node))
        self.counts = [int(shape.first.sum()) for shape in self._shapes]
        """Per shape, how many pods of it the nodes could take."""
        self._needs = [shape.count for shape in self._shapes]
        self._free: dict[int, list[int]] = {}
        """Touched nodes' free CPU, memory and per-GPU milli (one list)."""
        self._caps: dict[int, tuple[int, int]] = {}
        """Touched nodes' CPU and memory capacity, read once (``give(capped=True)``)."""

    def fits(self) -> bool:
        # Asked after nearly every ``give``: a comparison per shape, in C (one
        # comparison for the usual workload of one shape).
        counts = self.counts
        if len(counts) == 1:
            return counts[0] >= self._needs[0]
        return all(map(operator.ge, counts, self._needs))

    def nodes(self) -> BoolArray:
        """The nodes that could take a pod of some shape, as first counted (before ``give``)."""
        mask: BoolArray = np.zeros(len(self._state), dtype=np.bool_)
        for shape in self._shapes:
            mask |= shape.first > 0
        return mask

    def give(self, bindings: Sequence[Binding], sign: int = 1, capped: bool = False) -> None:
        """Pods of ``bindings`` gone (``sign=-1``: back again).

        ``capped``: the room may be counted as free already (pods that came
        after the room was taken and went again); a node's room then never
        exceeds its capacity, so the counts only grow.
        """
        touched = self._free
        shapes = self._shapes
        counts = self.counts
        for binding in bindings:
            node, shape = binding.node, binding.shape
            free = touched.get(node)
            if free is None:
                base = self._base
                free = [int(base.cpu[node]), int(base.memory[node])]
                free.extend(base.gpu[node].tolist())
                touched[node] = free
                for kind in shapes:
                    kind.touch(node)
            free[0] += sign * shape.cpu
            free[1] += sign * shape.memory
            milli = sign * shape.gpu_milli
            for gpu in binding.gpus:
                free[2 + gpu] += milli
            if capped:
                caps = self._caps.get(node)
                if caps is None:
                    state = self._state
                    caps = self._caps[node] = (int(state.cpu_cap[node]), int(state.mem_cap[node]))
                if free[0] > caps[0]:
                    free[0] = caps[0]
                if free[1] > caps[1]:
                    free[1] = caps[1]
                for gpu in binding.gpus:
                    if free[2 + gpu] > MILLI:
                        free[2 + gpu] = MILLI
            up = bool(self._up[node])
            for i, kind in enumerate(shapes):
                count = kind.on(node, free) if up else 0
                counts[i] += count - kind.now[node]
                kind.now[node] = count


class _Shape:
    """One pod shape of a ``RoomCount``: how many the workload has, and per node
    how many could go there (first, and now for the nodes touched since)."""

    __slots__ = ("allowed", "count", "cpu", "first", "gpu_count", "gpu_milli", "memory",
                 "now", "ok", "once", "pod", "whole")

    def __init__(
        self, pod: PodShape, count: int, allowed: BoolArray, once: bool, first: IntArray
    ) -> None:
        self.pod, self.count, self.allowed, self.once, self.first = pod, count, allowed, once, first
        self.now: dict[int, int] = {}
        self.ok: dict[int, bool] = {}
        """Per node touched, whether the pod may go there (``allowed``)."""
        # The pod's figures, read once: ``on`` runs for every pod that comes or goes.
        self.cpu, self.memory = pod.cpu, pod.memory
        self.gpu_count, self.gpu_milli = pod.gpu_count, pod.gpu_milli
        self.whole = pod.gpu_milli >= MILLI

    def touch(self, node: int) -> None:
        """Start following ``node``: its count as first counted."""
        self.now[node] = int(self.first[node])
        self.ok[node] = bool(self.allowed[node])

    def on(self, node: int, free: list[int]) -> int:
        """``Free.pods_per_node`` of one node that is up, from its free ``free``."""
        if not self.ok[node]:
            return 0
        # Comparisons, not min(): this runs for every pod that comes or goes.
        room = 1 << 40
        cpu, memory, gpu_count = self.cpu, self.memory, self.gpu_count
        if cpu:
            room = free[0] // cpu
        if memory:
            fits = free[1] // memory
            if fits < room:
                room = fits
        if gpu_count:
            if self.whole:
                fits = free[2:].count(MILLI) // gpu_count
            else:
                milli = self.gpu_milli
                fits = sum([v // milli for v in free[2:]]) // gpu_count
            if fits < room:
                room = fits
        if room <= 0:
            return 0
        return 1 if self.once else room


def pods_per_node(state: ClusterState, pod: PodShape) -> IntArray:
    """How many pods of this shape each node could still take (0 on nodes that are down)."""
    return Free.of(state).pods_per_node(state, pod)


def _only(size: int, node: int) -> BoolArray:
    mask: BoolArray = np.zeros(size, dtype=np.bool_)
    mask[node] = True
    return mask

