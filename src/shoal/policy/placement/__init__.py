"""Placement: filter and score all nodes at once, then pick GPUs inside the node."""

from shoal.policy.placement import fgd as _fgd
from shoal.policy.placement import scorers as _scorers
from shoal.policy.placement.base import (
    Scorer,
    ScorerContext,
    best_fit_gpus,
    make_scorer,
    node_ranks,
    place_pod,
    register_scorer,
    scorer_names,
    typical_pods,
)
from shoal.policy.placement.factory import build_placer
from shoal.policy.placement.gang import Placer
from shoal.policy.placement.scorers import BestFitGpus

del _fgd, _scorers

__all__ = [
    "BestFitGpus",
    "Placer",
    "Scorer",
    "ScorerContext",
    "best_fit_gpus",
    "build_placer",
    "make_scorer",
    "node_ranks",
    "place_pod",
    "register_scorer",
    "scorer_names",
    "typical_pods",
]
