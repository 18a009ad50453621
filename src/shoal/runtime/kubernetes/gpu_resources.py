"""GPUs on Kubernetes: whole GPUs, MIG slices and shared GPUs, as pure functions of JSON.

Shoal's domain gives a node one GPU model and a count, and a pod whole GPUs
or a share of one (``fraction`` and ``memory``).  What a Node offers and
what a pod asks for are translated here, by this convention:

* **Whole GPUs** (the NVIDIA device plugin): allocatable ``nvidia.com/gpu``,
  the model from the label ``nvidia.com/gpu.product``.  A pod asks
  ``nvidia.com/gpu: N``.
* **MIG slices** (the device plugin's *mixed* strategy): allocatable
  ``nvidia.com/mig-<profile>`` (``mig-1g.10gb``).  A node without whole
  GPUs is offered as its slices, one Shoal GPU per slice, of the model
  ``<product>-MIG-<profile>`` (the name GPU feature discovery gives such a
  slice; tenants' quotas name it), with the profile's memory.  The domain
  has one model per node: a node with several profiles is offered as its
  most numerous one (ties: the first by name).  A pod whose ``gpu.models``
  are all slices of one profile asks ``nvidia.com/mig-<profile>: N``.
* **Shared GPUs** (HAMi-style sharing device plugins): a node labelled
  ``shoal.dev/gpu-sharing=hami`` or with allocatable ``nvidia.com/gpumem``
  or ``nvidia.com/gpucores``.  Its GPUs are the physical ones: the label
  ``nvidia.com/gpu.count`` (such plugins advertise ``nvidia.com/gpu`` as
  GPUs x shares), else allocatable ``nvidia.com/gpu``.  Shoal's view of the
  node carries the label ``shoal.dev/gpu-sharing`` (a job selects such
  nodes with it).  A fractional pod asks ``nvidia.com/gpu: 1`` (one share),
  ``nvidia.com/gpucores`` (the fraction in percent of the GPU's cores) and,
  when it names its GPU memory, ``nvidia.com/gpumem`` (MiB).

Every GPU pod carries Shoal's choice in annotations: ``shoal.dev/gpu-index``
(the GPU or slice indices on the node), and for a share
``shoal.dev/gpu-fraction`` and ``shoal.dev/gpu-memory`` (MiB, when set);
its environment has ``SHOAL_GPU_FRACTION`` as the embedded runtime's has.
No ``CUDA_VISIBLE_DEVICES``: on Kubernetes the device plugin chooses the
devices a container sees.

No I/O, no ``kubernetes`` import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.domain.job import GpuRequest
from shoal.domain.nodes import GPU_SHARING
from shoal.runtime.kubernetes import quantities

__all__ = [
    "FRACTION_ANNOTATION",
    "GPU",
    "GPU_CORES",
    "GPU_COUNT_LABEL",
    "GPU_MEMORY",
    "INDEX_ANNOTATION",
    "MEMORY_ANNOTATION",
    "MIG_MARK",
    "SHARING",
    "SHARING_LABEL",
    "GpuOffer",
    "PodGpus",
    "gpus_requested",
    "mig_model",
    "mig_profile",
    "offer_of",
    "pod_gpus",
    "resource_of_model",
    "shares_gpus",
]

GPU = "nvidia.com/gpu"
GPU_MEMORY = "nvidia.com/gpumem"
"""A shared GPU's device memory a pod may use, in MiB (HAMi's name)."""
GPU_CORES = "nvidia.com/gpucores"
"""The share of a GPU's cores a pod may use, in percent (HAMi's name)."""
MIG_PREFIX = "nvidia.com/mig-"
MIG_MARK = "-MIG-"
"""Between the product and the profile in a MIG slice's model name."""
GPU_MODEL_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
SHARING_LABEL = GPU_SHARING
SHARING = "hami"
"""The value of ``SHARING_LABEL`` on a node whose GPUs a sharing device plugin splits."""
INDEX_ANNOTATION = "shoal.dev/gpu-index"
FRACTION_ANNOTATION = "shoal.dev/gpu-fraction"
MEMORY_ANNOTATION = "shoal.dev/gpu-memory"

_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


@dataclass(frozen=True)
class GpuOffer:
    """What a node offers Shoal: ``count`` GPUs (or slices) of ``model``, each of ``memory`` MiB."""

    model: str
    count: int
    memory: int
    resource: str
    """The resource name a pod placed on them asks for."""
    sharing: bool = False


@dataclass(frozen=True)
class PodGpus:
    """What a pod's container asks for and what Shoal tells it about its GPUs."""

    limits: dict[str, str]
    annotations: dict[str, str]
    env: dict[str, str]


def mig_profile(resource: str) -> str | None:
    """``nvidia.com/mig-1g.10gb`` -> ``1g.10gb``; None for any other resource."""
    if not resource.startswith(MIG_PREFIX):
        return None
    profile = resource[len(MIG_PREFIX):]
    return profile if _PROFILE.match(profile) else None


def mig_model(product: str, profile: str) -> str:
    """The model name of a MIG slice: ``A100-SXM4-80GB-MIG-1g.10gb``."""
    return f"{product}{MIG_MARK}{profile}"


def _profile_of_model(model: str) -> str | None:
    _, mark, profile = model.rpartition(MIG_MARK)
    return profile if mark and _PROFILE.match(profile) else None


def resource_of_model(model: str) -> str:
    """The resource name that counts GPUs of ``model`` on a node (a MIG slice's, or whole)."""
    profile = _profile_of_model(model)
    return f"{MIG_PREFIX}{profile}" if profile else GPU


def _count(value: Any) -> int:
    try:
        return max(0, int(quantities.value(value)))
    except ValueError:
        return 0


def _int_label(labels: Mapping[str, str], key: str) -> int:
    text = labels.get(key, "")
    return int(text) if text.isdigit() else 0


def offer_of(allocatable: Mapping[str, Any], labels: Mapping[str, str]) -> GpuOffer | None:
    """The GPUs a node offers, by the convention above; None: no GPUs."""
    product = labels.get(GPU_MODEL_LABEL, "unknown")
    whole = _count(allocatable.get(GPU, 0))
    if whole:
        sharing = (labels.get(SHARING_LABEL) == SHARING
                   or GPU_MEMORY in allocatable or GPU_CORES in allocatable)
        count = min(_int_label(labels, GPU_COUNT_LABEL) or whole, whole) if sharing else whole
        memory = _int_label(labels, GPU_MEMORY_LABEL)
        if sharing and not memory and GPU_MEMORY in allocatable:
            memory = _count(allocatable[GPU_MEMORY]) // count  # the plugin's total, per GPU
        return GpuOffer(product, count, memory, GPU, sharing)
    slices = {profile: n for key, value in allocatable.items()
              if (profile := mig_profile(key)) is not None and (n := _count(value))}
    if not slices:
        return None
    profile = min(slices, key=lambda p: (-slices[p], p))
    match = _PROFILE.match(profile)
    memory = int(match.group(2)) * 1024 if match else 0
    return GpuOffer(mig_model(product, profile), slices[profile], memory,
                    f"{MIG_PREFIX}{profile}")


def shares_gpus(node: Mapping[str, Any]) -> bool:
    """Whether a Node object shares its GPUs (Ready or not: it may come back)."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    offer = offer_of(allocatable, labels)
    return offer is not None and offer.sharing


def gpus_requested(requests: Mapping[str, Any], resource: str) -> int:
    """How many of ``resource`` a container asks for (a pod's GPUs of a node's kind)."""
    return _count(requests.get(resource, 0))


def _mig_resource(gpu: GpuRequest) -> str | None:
    """The MIG resource of a request whose allowed models are all slices of one profile."""
    profiles = {_profile_of_model(model) for model in gpu.models}
    if len(profiles) != 1:
        return None
    (profile,) = profiles
    return f"{MIG_PREFIX}{profile}" if profile else None


def pod_gpus(gpu: GpuRequest | None, indices: tuple[int, ...]) -> PodGpus:
    """The resource limits, annotations and environment of a pod given ``indices``."""
    if gpu is None or not (gpu.count or gpu.fraction):
        return PodGpus({}, {}, {})
    annotations = {INDEX_ANNOTATION: ",".join(map(str, indices))}
    if gpu.fraction is not None and gpu.fraction < 1:
        # One share of one GPU, as sharing device plugins count it.
        limits = {GPU: "1", GPU_CORES: str(max(1, round(gpu.fraction * 100)))}
        annotations[FRACTION_ANNOTATION] = str(gpu.fraction)
        if gpu.memory:
            limits[GPU_MEMORY] = str(gpu.memory)
            annotations[MEMORY_ANNOTATION] = str(gpu.memory)
        return PodGpus(limits, annotations, {"SHOAL_GPU_FRACTION": f"{gpu.fraction:g}"})
    return PodGpus({_mig_resource(gpu) or GPU: str(gpu.count)}, annotations, {})
