"""What each tenant uses, borrows and waits for, as ``kubectl get clusterqueues`` shows it.

Usage is counted as the control loop counts it: the quota vector of every
pod bound to a node (``policy.flavors.usage_of``), for jobs that hold
resources (Running, Preempting, Stopping).  Borrowed is usage above nominal quota.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shoal.app.ports import JobRecord
from shoal.app.views import pod_field
from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.job import TrainingJob
from shoal.domain.nodes import Node, NodePoolSpec, expand_pool
from shoal.domain.phases import HOLDING_PHASES
from shoal.domain.resources import PODS, total
from shoal.domain.tenant import TenantSpec
from shoal.domain.workload import from_training_job
from shoal.policy.flavors import usage_of
from shoal.policy.quota import TenantQuota


def tenant_status(
    tenants: Mapping[str, dict[str, Any]],
    nodes: Mapping[str, dict[str, Any]],
    jobs: Sequence[JobRecord],
) -> list[dict[str, Any]]:
    """Per tenant: cohort, weight, nominal quota, usage, borrowed, pending and running jobs."""
    state = ClusterState([
        node for name, spec in sorted(nodes.items())
        for node in expand_pool(name, NodePoolSpec.model_validate(spec))
    ])
    return tenant_status_in(tenants, state, jobs)


def tenant_status_in(
    tenants: Mapping[str, dict[str, Any]], state: ClusterState, jobs: Sequence[JobRecord],
) -> list[dict[str, Any]]:
    """``tenant_status`` on the nodes of ``state`` (a cluster's nodes are not node pools)."""
    used: dict[str, list[dict[str, int]]] = {}
    for row in jobs:
        if row.phase in HOLDING_PHASES:
            used.setdefault(row.tenant, []).append(_usage(row, state))
    out = []
    for name, spec in sorted(tenants.items()):
        quota = TenantQuota.from_spec(name, TenantSpec.model_validate(spec))
        usage = total(used.get(name, []))
        borrowed = {r: a - quota.nominal.get(r, 0) for r, a in usage.items()
                    if a > quota.nominal.get(r, 0)}
        out.append({
            "name": name, "cohort": quota.cohort, "weight": quota.weight,
            # A tenant without a pods quota may run any number: show no number.
            "nominal": {r: a for r, a in quota.nominal.items()
                        if r != PODS or quota.limits_pods},
            "usage": usage, "borrowed": borrowed,
            "pending": sum(1 for r in jobs if r.tenant == name and r.phase == "Pending"),
            "running": len(used.get(name, [])),
        })
    return out


def capacity(nodes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The cluster's total capacity, without node names (what a tenant may see)."""
    return capacity_of([node for name, spec in nodes.items()
                        for node in expand_pool(name, NodePoolSpec.model_validate(spec))])


def capacity_of(nodes: Sequence[Node]) -> dict[str, Any]:
    """``capacity`` of concrete nodes (a cluster's, which are not node pools)."""
    vector = dict[str, int]()
    for node in nodes:
        vector = total([vector, {"cpu": node.cpu, "memory": node.memory}])
        if node.gpu_count:
            key = f"gpu/{node.gpu_model}"
            vector[key] = vector.get(key, 0) + node.gpu_count * 1000
    return {"node_count": len(nodes), "capacity": vector}


def node_spec(node: Node) -> dict[str, Any]:
    """One node as a pool of one, in the shape ``get nodes`` shows pools."""
    cpu = f"{node.cpu // 1000}" if node.cpu % 1000 == 0 else f"{node.cpu}m"
    spec: dict[str, Any] = {"count": 1, "cpu": cpu, "memory": f"{node.memory}Mi",
                            "labels": dict(node.labels)}
    if node.gpu_count:
        spec["gpus"] = {"count": node.gpu_count, "model": node.gpu_model,
                        **({"memory": f"{node.gpu_memory}Mi"} if node.gpu_memory else {})}
    return spec


def _usage(row: JobRecord, state: ClusterState) -> dict[str, int]:
    workload = from_training_job(TrainingJob.model_validate(row.manifest), row.submit_time)
    bindings = []
    for pod in row.pods:
        node = state.index.get(str(pod_field(pod, "node")))
        index = int(pod_field(pod, "index", 0))
        gpus = tuple(int(g) for g in pod_field(pod, "gpus", ()) or ())
        if node is None or index >= len(workload.pods):
            continue  # its node was removed; it holds nothing countable
        if any(g >= state.gpu_count[node] for g in gpus):
            continue
        bindings.append(Binding(node=node, gpus=gpus, shape=workload.pods[index]))
    return usage_of(state, bindings)
