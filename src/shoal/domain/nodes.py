"""Node pools: identical nodes with CPU, memory, GPUs, topology labels and taints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.quantity import CpuMilli, MemoryMiB

ZONE = "topology.shoal.dev/zone"
RACK = "topology.shoal.dev/rack"
NVLINK = "topology.shoal.dev/nvlink-domain"
HOSTNAME = "kubernetes.io/hostname"
GPU_SHARING = "shoal.dev/gpu-sharing"
"""A node whose GPUs a device plugin splits among pods.  When some node of a
cluster carries it, a pod asking for a fraction of a GPU goes only to such
nodes (elsewhere its one GPU would be a whole one); when none does, Shoal
shares every node's GPUs itself."""


class GpuSpec(Spec):
    """The GPUs of every node in a pool: all of one model."""

    model: str = Field(min_length=1, description="GPU model, also the quota flavor, e.g. A100")
    count: int = Field(ge=0, le=64, description="GPUs per node")
    memory: MemoryMiB = Field(default=0, description="memory of one GPU")


class Taint(Spec):
    """Keeps pods off the pool's nodes unless they tolerate it (``tolerations``)."""

    key: str = Field(min_length=1, description="taint key")
    value: str = Field(default="", description="taint value")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        default="NoSchedule",
        description="PreferNoSchedule is a preference only: it never keeps a pod off a node",
    )


class Topology(Spec):
    """How a pool's nodes are grouped; each group becomes a label on the nodes."""

    zone: str | None = Field(
        default=None, description="value of the topology.shoal.dev/zone label of every node"
    )
    nodes_per_rack: int | None = Field(
        default=None, ge=1, description="consecutive nodes per rack (topology.shoal.dev/rack)"
    )
    nodes_per_nvlink_domain: int | None = Field(
        default=None, ge=1, description="nodes sharing one NVLink/NUMA domain (1 = per node)"
    )


class NodePoolSpec(Spec):
    """``count`` identical nodes."""

    count: int = Field(ge=0, le=1_000_000, description="number of nodes")
    cpu: CpuMilli = Field(gt=0, description="CPU of one node")
    memory: MemoryMiB = Field(gt=0, description="memory of one node")
    gpus: GpuSpec | None = Field(default=None, description="the GPUs of one node; unset: none")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="labels of every node, for nodeSelector and affinity.required",
    )
    taints: list[Taint] = Field(default_factory=list, description="taints of every node")
    topology: Topology = Field(default_factory=Topology)


class NodePool(Spec):
    """A pool of identical nodes: capacity that Shoal schedules jobs onto."""

    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["NodePool"]
    metadata: Metadata
    spec: NodePoolSpec


class InlineNodePool(NodePoolSpec):
    """A node pool written inside a Simulation's cluster section."""

    name: Name = Field(description="the pool's name; its nodes are named <name>-<index>")


class Node(Spec):
    """One concrete node, expanded from a pool or read from a trace."""

    name: str
    pool: str
    cpu: int = Field(ge=0)
    memory: int = Field(ge=0)
    gpu_model: str = ""
    gpu_count: int = Field(default=0, ge=0)
    gpu_memory: int = Field(default=0, ge=0)
    labels: dict[str, str] = Field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    @model_validator(mode="after")
    def _model_with_gpus(self) -> Node:
        if self.gpu_count and not self.gpu_model:
            raise ValueError("a node with GPUs needs a GPU model")
        return self


def expand_pool(name: str, spec: NodePoolSpec) -> list[Node]:
    """The pool's nodes, named ``<pool>-<index>``, with their topology labels."""
    nodes = []
    width = max(3, len(str(max(spec.count - 1, 0))))
    for index in range(spec.count):
        node_name = f"{name}-{index:0{width}d}"
        labels = {HOSTNAME: node_name, **spec.labels}
        topo = spec.topology
        if topo.zone is not None:
            labels[ZONE] = topo.zone
        if topo.nodes_per_rack is not None:
            labels[RACK] = f"{name}-rack-{index // topo.nodes_per_rack}"
        domain_size = topo.nodes_per_nvlink_domain or 1
        labels[NVLINK] = f"{name}-nvl-{index // domain_size}"
        gpus = spec.gpus
        nodes.append(
            Node(
                name=node_name,
                pool=name,
                cpu=spec.cpu,
                memory=spec.memory,
                gpu_model=gpus.model if gpus and gpus.count else "",
                gpu_count=gpus.count if gpus else 0,
                gpu_memory=gpus.memory if gpus else 0,
                labels=labels,
                taints=tuple(spec.taints),
            )
        )
    return nodes
