"""The one way to build a ``Placer``: a scorer by name, seeded, with the expected pod mix.

Every runtime builds its placer here, so that the same policy, seed, nodes
and pod mix give the same placements, node for node and GPU for GPU, live and
in simulation.  The seed fixes both the scorer's randomness and the order in
which equally good nodes are preferred.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.domain.workload import PodShape
from shoal.policy.placement.base import ScorerContext, make_scorer, node_ranks, typical_pods
from shoal.policy.placement.gang import Placer


def build_placer(policy: str, nodes: int, seed: int, pods: Iterable[PodShape] = ()) -> Placer:
    """A placer for ``nodes`` nodes; ``pods`` is the pod mix FGD measures fragmentation against."""
    context = ScorerContext(typical_pods=typical_pods(list(pods)), seed=seed)
    return Placer(make_scorer(policy, context), node_ranks(nodes, seed))
