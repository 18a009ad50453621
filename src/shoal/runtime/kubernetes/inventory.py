"""The inventory port on Kubernetes: schedulable Nodes, less what others' pods use.

Nodes become ``domain.nodes.Node`` (``convert.node_of``).  Pods that another
scheduler placed (no ``shoal.dev/job`` label) hold room Shoal cannot use, so
their requests are taken off their node's CPU, memory and GPUs before
Shoal places anything; Shoal's own pods are not taken off here: the control
core binds them from its job records, as in every runtime.
"""

from __future__ import annotations

import hashlib
import json

from shoal.control.ports import NodeSet
from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import nodes_of

__all__ = ["KubeInventory"]

class KubeInventory:
    """Implements ``control.ports.Inventory`` over Node and Pod objects."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cached: NodeSet | None = None

    def nodes(self) -> NodeSet:
        nodes = nodes_of(self.kube.list("Node"), self.kube.list("Pod"))
        text = json.dumps([n.model_dump(mode="json") for n in nodes], sort_keys=True)
        key = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        if self._cached is None or self._cached.key != key:
            self._cached = NodeSet(key, tuple(nodes))
        return self._cached
