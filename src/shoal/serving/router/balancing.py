"""Where one request goes: a revision by weighted split, then a replica by
least outstanding requests.

Pure bookkeeping without I/O or clock, so the router's choices can be tested
and replayed: the split is a smooth weighted round robin (the one nginx uses),
which is deterministic and spreads a revision's share evenly instead of in
bursts — over any run of ``sum(weights)`` requests each revision gets exactly
its weight.  Among a revision's ready replicas the one with the fewest
requests in flight from this router wins; ties go to a seeded random pick so
that equal replicas share the load without a fixed favourite.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping


class WeightedSplit:
    """Smooth weighted round robin over the revisions with a positive weight."""

    def __init__(self, weights: Mapping[str, int]) -> None:
        self._weights = {name: w for name, w in weights.items() if w > 0}
        self._total = sum(self._weights.values())
        self._current = dict.fromkeys(self._weights, 0)

    @property
    def weights(self) -> dict[str, int]:
        return dict(self._weights)

    def next(self) -> str | None:
        """The revision of the next request; None when no revision takes traffic."""
        best: str | None = None
        current = self._current
        for name, weight in self._weights.items():
            current[name] += weight
            if best is None or current[name] > current[best]:
                best = name
        if best is not None:
            current[best] -= self._total
        return best


class Replica:
    """A ready replica of one revision and what this router has sent it."""

    __slots__ = ("outstanding", "url")

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.outstanding = 0

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, outstanding={self.outstanding})"


def least_outstanding(replicas: Iterable[Replica], rng: random.Random,
                      exclude: Replica | None = None) -> Replica | None:
    """The replica with the fewest requests in flight (ties: ``rng``'s pick)."""
    best: list[Replica] = []
    fewest = -1
    for replica in replicas:
        if replica is exclude:
            continue
        if fewest < 0 or replica.outstanding < fewest:
            best, fewest = [replica], replica.outstanding
        elif replica.outstanding == fewest:
            best.append(replica)
    if not best:
        return None
    return best[0] if len(best) == 1 else best[rng.randrange(len(best))]
