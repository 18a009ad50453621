"""Scorer protocol, the scorer registry, and choosing one node for one pod.

A scorer rates every feasible node at once (numpy) and picks the GPUs on the
chosen node.  Higher scores win; ties go to the node with the lowest
``rank`` (a fixed, seeded order), which keeps runs reproducible.  A scorer
that keeps its scores between calls may also choose the node itself
(``NodeChooser``), as long as it chooses exactly as ``choose`` would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shoal.domain.cluster import Binding, BoolArray, ClusterState, IntArray
from shoal.domain.resources import MILLI
from shoal.domain.workload import PodShape
from shoal.errors import UnknownReferenceError
from shoal.policy.placement.filters import fit_mask, usable_gpus

FloatArray = npt.NDArray[np.float64]
Nodes = IntArray | slice
"""Which nodes to score: an index array, or ``ALL`` (a slice: no gather needed)."""
ALL = slice(None)


@dataclass(frozen=True)
class ScorerContext:
    """What a scorer may know besides the cluster: the expected pod mix and a seed."""

    typical_pods: tuple[tuple[PodShape, float], ...] = ()
    seed: int = 0
    options: dict[str, object] = field(default_factory=dict)


class Scorer(Protocol):
    """Rates nodes for a pod; higher is better."""

    name: str

    def score(self, state: ClusterState, pod: PodShape, nodes: Nodes) -> FloatArray:
        """One score per node in ``nodes``; values for infeasible nodes are ignored."""
        ...

    def pick_gpus(self, state: ClusterState, pod: PodShape, node: int) -> tuple[int, ...]:
        """The GPU slots on ``node`` that ``pod`` will use."""
        ...


NodeChooser = Callable[[ClusterState, PodShape, Nodes, BoolArray, IntArray], int]
"""A scorer's optional ``choose_node(state, pod, nodes, feasible, ranks)``: the node
that ``choose`` picks on ``score(state, pod, nodes)`` over the ``feasible`` nodes,
found faster.  ``nodes`` is ``ALL`` or exactly the feasible nodes (in order), as
``place_pod`` passes them."""


ScorerFactory = Callable[[ScorerContext], Scorer]
_REGISTRY: dict[str, ScorerFactory] = {}


def register_scorer(name: str, factory: ScorerFactory) -> None:
    """Make a scorer available by name to ``shoal sim --policy`` and scenarios."""
    _REGISTRY[name] = factory


def scorer_names() -> list[str]:
    return sorted(_REGISTRY)


def make_scorer(name: str, context: ScorerContext) -> Scorer:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(scorer_names())
        raise UnknownReferenceError(f"unknown placement policy {name!r}; known: {known}") from None
    return factory(context)


def best_fit_gpus(state: ClusterState, pod: PodShape, node: int) -> tuple[int, ...]:
    """Whole GPUs: the lowest-index free ones.  A fraction: the fullest GPU it fits on."""
    if pod.gpu_count == 0:
        return ()
    slots = usable_gpus(state, pod, node)
    if pod.gpu_milli >= MILLI:
        return tuple(int(g) for g in slots[: pod.gpu_count])
    free = state.gpu_free[node, slots]
    return (int(slots[int(free.argmin())]),)


def node_ranks(size: int, seed: int | None) -> IntArray:
    """Tie-break order: node index order, or a seeded permutation of it."""
    if seed is None:
        return np.arange(size, dtype=np.int64)
    return np.random.default_rng(seed).permutation(size).astype(np.int64)


def choose(scores: FloatArray, nodes: IntArray, ranks: IntArray) -> int:
    """The best-scoring node; among equals, the one ranked first."""
    top = scores.max()
    tied = nodes[scores == top]
    if len(tied) == 1:
        return int(tied[0])
    return int(tied[ranks[tied].argmin()])


def place_pod(
    state: ClusterState,
    pod: PodShape,
    scorer: Scorer,
    ranks: IntArray,
    allowed: BoolArray | None = None,
) -> Binding | None:
    """Filter then score every node; the pod's binding, or None when nothing fits."""
    mask = fit_mask(state, pod, allowed)
    feasible = int(np.count_nonzero(mask))
    if feasible == 0:
        return None
    # Which nodes get scored (none, all, or the feasible ones) is part of the
    # result: scorers that cache, like FGD, compute in batches of the nodes
    # they are asked about, and a batch's floating-point sums depend on it.
    chooser: NodeChooser | None = getattr(scorer, "choose_node", None)
    if feasible == 1:
        node = int(mask.argmax())
    elif 2 * feasible > len(state) and getattr(scorer, "score_all_nodes", True):
        # Mostly feasible: scoring every node beats gathering the feasible ones.
        if chooser is not None:
            node = chooser(state, pod, ALL, mask, ranks)
        else:
            nodes = mask.nonzero()[0]
            node = choose(scorer.score(state, pod, ALL)[nodes], nodes, ranks)
    else:
        nodes = mask.nonzero()[0]
        if chooser is not None:
            node = chooser(state, pod, nodes, mask, ranks)
        else:
            node = choose(scorer.score(state, pod, nodes), nodes, ranks)
    return Binding(node=node, gpus=scorer.pick_gpus(state, pod, node), shape=pod)


def typical_pods(
    shapes: Sequence[PodShape], coverage: float = 0.95
) -> tuple[tuple[PodShape, float], ...]:
    """The most common pod shapes covering ``coverage`` of all pods, with frequencies.

    This is the "expected pod mix" the fragmentation measure is taken against:
    shapes are counted, the most frequent kept until they cover ``coverage``
    of the pods, and their frequencies renormalised to sum to one.
    """
    # Counted as plain tuples (cpu, gpu_milli, gpu_count, models): building and
    # hashing a PodShape per pod costs more than the rest of this together.
    counts = Counter((s.cpu, s.gpu_milli, s.gpu_count, s.models) for s in shapes)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    total = sum(counts.values())
    kept: list[tuple[PodShape, int]] = []
    covered = 0
    for (cpu, milli, gpus, models), count in ordered:
        if covered >= coverage * total:
            break
        kept.append((PodShape(cpu=cpu, gpu_count=gpus, gpu_milli=milli, models=models), count))
        covered += count
    return tuple((shape, count / covered) for shape, count in kept)
