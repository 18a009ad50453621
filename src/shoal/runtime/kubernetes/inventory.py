"""The inventory port on Kubernetes: schedulable Nodes, less what others' pods use.

Nodes become ``domain.nodes.Node`` (``convert.node_of``).  Pods that another
scheduler placed (no ``shoal.dev/job`` label) hold room Shoal cannot use, so
their requests are taken off their node's CPU, memory and GPUs before
Shoal places anything (GPUs of the kind Shoal places there: MIG slices of
the node's profile, or whole GPUs, a share of a shared GPU counting as a
whole one: ``gpu_resources.py``); Shoal's own pods are not taken off here: the control
core binds them from its job records, as in every runtime.  Only those
foreign pods are read (``!shoal.dev/job``): Shoal's own thousands are not.

Over the control loop's cache (``cache.CachedKube``) the node set is built
again only when a Node or a foreign pod changed, not on every pass.
"""

from __future__ import annotations

import hashlib
import json

from shoal.control.ports import NodeSet
from shoal.runtime.kubernetes.cache import CachedKube
from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL, nodes_of

__all__ = ["FOREIGN", "KubeInventory"]

FOREIGN = f"!{JOB_LABEL}"
"""The label selector of pods that Shoal did not place."""


class KubeInventory:
    """Implements ``control.ports.Inventory`` over Node and Pod objects."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cached: NodeSet | None = None
        self._seen: tuple[int, int] | None = None

    def nodes(self) -> NodeSet:
        generations = self._generations()
        if generations is not None and generations == self._seen and self._cached is not None:
            return self._cached
        nodes = nodes_of(self.kube.list("Node"), self.kube.list("Pod", labels=FOREIGN))
        text = json.dumps([n.model_dump(mode="json") for n in nodes], sort_keys=True)
        key = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        if self._cached is None or self._cached.key != key:
            self._cached = NodeSet(key, tuple(nodes))
        self._seen = generations
        return self._cached

    def _generations(self) -> tuple[int, int] | None:
        """What the cache has seen change of Nodes and foreign pods; None: not cached."""
        kube = self.kube
        if not isinstance(kube, CachedKube) or not kube.cache.answers("Node") \
                or not kube.cache.answers("Pod", FOREIGN):
            return None
        return (kube.cache.generation("Node"), kube.cache.generation("Pod", FOREIGN))
