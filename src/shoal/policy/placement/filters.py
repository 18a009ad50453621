"""Filters: which nodes can take a pod, as boolean masks over all nodes at once."""

from __future__ import annotations

import numpy as np

from shoal.domain.cluster import BoolArray, ClusterState
from shoal.domain.nodes import GPU_SHARING
from shoal.domain.resources import MILLI
from shoal.domain.workload import Constraints, PodShape


def static_mask(state: ClusterState, constraints: Constraints) -> BoolArray:
    """Nodes allowed by labels, affinity and taints; these never change during a run."""
    mask = np.ones(len(state), dtype=np.bool_)
    if not (constraints.node_selector or constraints.required or _any_taints(state)):
        return mask
    for i, node in enumerate(state.nodes):
        labels = node.labels
        if any(labels.get(key) != value for key, value in constraints.node_selector):
            mask[i] = False
            continue
        if not all(_matches(labels, req) for req in constraints.required):
            mask[i] = False
            continue
        if not all(_tolerated(taint, constraints) for taint in node.taints):
            mask[i] = False
    return mask


def _any_taints(state: ClusterState) -> bool:
    return any(node.taints for node in state.nodes)


def _matches(labels: dict[str, str], req: tuple[str, str, tuple[str, ...]]) -> bool:
    key, operator, values = req
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    return key not in labels


def _tolerated(taint: object, constraints: Constraints) -> bool:
    effect = getattr(taint, "effect", "NoSchedule")
    if effect == "PreferNoSchedule":
        return True
    key, value = getattr(taint, "key", ""), getattr(taint, "value", "")
    return any(
        t_key == key and t_value in (None, value) and t_effect in (None, effect)
        for t_key, t_value, t_effect in constraints.tolerations
    )


def model_mask(state: ClusterState, models: tuple[str, ...]) -> BoolArray:
    """Nodes whose GPU model is allowed (any model when ``models`` is empty)."""
    if not models:
        return np.ones(len(state), dtype=np.bool_)
    ids = [state.models.index(model) for model in models if model in state.models]
    return np.isin(state.model_id, np.array(ids, dtype=np.int64))


def sharing_mask(state: ClusterState) -> BoolArray:
    """Nodes a fractional GPU pod may use: those labelled ``GPU_SHARING`` when any
    node is, else every node (``domain.nodes.GPU_SHARING``)."""
    marked = np.array([GPU_SHARING in node.labels for node in state.nodes], dtype=np.bool_)
    return marked if marked.any() else np.ones(len(state), dtype=np.bool_)


def fit_mask(state: ClusterState, pod: PodShape, allowed: BoolArray | None = None) -> BoolArray:
    """Nodes that are up and have room for ``pod`` right now."""
    # In place: every temporary is another pass over all nodes' memory.
    mask = state.cpu_free >= pod.cpu
    mask &= state.up
    mask &= state.mem_free >= pod.memory
    if allowed is not None:
        mask &= allowed
    if pod.gpu_count:
        if pod.gpu_milli >= MILLI:
            mask &= state.whole_free >= pod.gpu_count
            if pod.gpu_memory:
                mask &= state.gpu_memory >= pod.gpu_memory
        else:
            mask &= state.max_free >= pod.gpu_milli
            if pod.gpu_memory:
                rows = np.flatnonzero(mask)
                ok = (
                    (state.gpu_free[rows] >= pod.gpu_milli)
                    & (state.gpu_mem_free[rows] >= pod.gpu_memory)
                ).any(axis=1)
                mask[rows[~ok]] = False
    return mask


def usable_gpus(state: ClusterState, pod: PodShape, node: int) -> np.ndarray:
    """GPU slots on ``node`` that could take one of ``pod``'s GPUs."""
    free = state.gpu_free[node]
    ok = free >= pod.gpu_milli
    if pod.gpu_memory:
        ok &= state.gpu_mem_free[node] >= pod.gpu_memory
    return np.flatnonzero(ok)
