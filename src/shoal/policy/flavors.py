"""GPU flavors: which GPU model a workload's quota is charged to, and what it asks for.

Quota is kept per GPU model (``gpu/A100``), so before quota can be checked a
workload needs a flavor, as in Kueue.  The candidates are the models the
tenant has quota for, in the tenant's order, that every GPU pod of the
workload accepts; a workload's GPU pods all use one flavor (Kueue assigns one
per pod set, which is the same for single-pod-set jobs).  Placement is then
restricted to nodes of that model so the charge matches where pods land.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.resources import MILLI, add, gpu_model, is_gpu
from shoal.domain.workload import PodShape, Workload
from shoal.policy.placement import Placer
from shoal.policy.quota import TenantQuota

Flavor = str | None
"""A GPU model, or None for a workload without GPUs."""


def candidates(workload: Workload, tenant: TenantQuota) -> list[Flavor]:
    """Flavors the workload may use under ``tenant``'s quota, in the tenant's order."""
    gpu_pods = [pod for pod in workload.pods if pod.gpu_count]
    if not gpu_pods:
        return [None]
    models = [gpu_model(r) for r in tenant.nominal if is_gpu(r)]
    return [m for m in models if all(not p.models or m in p.models for p in gpu_pods)]


def request(workload: Workload, flavor: Flavor) -> dict[str, int]:
    """The quota the workload charges with ``flavor``; zero amounts left out."""
    total: dict[str, int] = {}
    for pod in workload.pods:
        total = add(total, pod.quota_vector(flavor or ""))
    return {r: amount for r, amount in total.items() if amount > 0}


def restrict(workload: Workload, flavor: Flavor) -> Workload:
    """The workload with its GPU pods limited to ``flavor``'s nodes."""
    if flavor is None:
        return workload
    pods = tuple(replace(p, models=(flavor,)) if p.gpu_count else p for p in workload.pods)
    return replace(workload, pods=pods)


def usage_of(state: ClusterState, bindings: list[Binding] | tuple[Binding, ...]) -> dict[str, int]:
    """Quota charged by pods bound as given (GPU model read from each node)."""
    total: dict[str, int] = {}
    for binding in bindings:
        model = state.nodes[binding.node].gpu_model
        total = add(total, binding.shape.quota_vector(model))
    return {r: amount for r, amount in total.items() if amount > 0}


def never_fits(state: ClusterState, placer: Placer, workload: Workload) -> str | None:
    """Why the workload could not run even on an empty cluster, or None.

    Checks every pod against node capacities and the workload's total against
    the allowed nodes' total, ignoring which nodes are up (nodes come back).
    The answer depends only on capacities, so the placer remembers it.
    """
    key = ("never_fits", workload.pods, workload.constraints)
    if key not in placer.memo:
        placer.memo[key] = _never_fits(state, placer, workload)
    reason = placer.memo[key]
    assert reason is None or isinstance(reason, str)
    return reason


def _never_fits(state: ClusterState, placer: Placer, workload: Workload) -> str | None:
    allowed_any = np.zeros(len(state), dtype=np.bool_)
    for i, pod in enumerate(workload.pods):
        allowed = placer.allowed(state, workload, pod)
        if pod.gpu_count:
            allowed = allowed & (state.gpu_count > 0)
        if not allowed.any():
            where = f" with GPU model {', '.join(pod.models)}" if pod.models else ""
            return f"pod {i} ({_describe(pod)}): no node{where} matches its constraints"
        mask = allowed & _capacity_mask(state, pod)
        if not mask.any():
            return f"pod {i} ({_describe(pod)}) is larger than any node it may run on"
        allowed_any |= mask
    room_cpu = int(state.cpu_cap[allowed_any].sum())
    room_gpu = int(state.gpu_count[allowed_any].sum()) * MILLI
    need_cpu = sum(pod.cpu for pod in workload.pods)
    need_gpu = sum(pod.gpu_total_milli for pod in workload.pods)
    if need_gpu > room_gpu or need_cpu > room_cpu:
        return (
            f"needs {need_gpu / MILLI:g} GPU and {need_cpu / MILLI:g} cpu in all, more than "
            f"the {room_gpu / MILLI:g} GPU and {room_cpu / MILLI:g} cpu of the nodes it may use"
        )
    return None


def _capacity_mask(state: ClusterState, pod: PodShape) -> np.ndarray:
    mask = (state.cpu_cap >= pod.cpu) & (state.mem_cap >= pod.memory)
    if pod.gpu_count:
        mask &= state.gpu_count >= pod.gpu_count
        mask &= state.gpu_memory >= pod.gpu_memory
    return mask


def _describe(pod: PodShape) -> str:
    text = f"cpu={pod.cpu / MILLI:g} memory={pod.memory}Mi"
    if pod.gpu_count:
        text += f" gpu={pod.gpu_total_milli / MILLI:g}"
    return text
