"""The embedded runtime's inventory port: nodes from the NodePools in the store.

The key is the pools' stored specs, so a pool re-applied with new labels or
capacities (even under the same names) gives a new key and fresh placement
caches.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from shoal.control.cluster_view import nodes_from
from shoal.control.ports import NodeSet


class _Pools(Protocol):
    def nodes(self) -> dict[str, dict[str, Any]]: ...


class PoolInventory:
    """Implements ``control.ports.Inventory`` over the store's NodePool specs."""

    def __init__(self, store: _Pools) -> None:
        self.store = store
        self._cached: NodeSet | None = None

    def nodes(self) -> NodeSet:
        rows = self.store.nodes()
        key = json.dumps(rows, sort_keys=True)
        if self._cached is None or self._cached.key != key:
            self._cached = NodeSet(key, tuple(nodes_from(rows)))
        return self._cached
