"""Fair sharing: weighted dominant-resource share of borrowed quota, as in Kueue.

A tenant's share is, over the resources it uses, the largest fraction of its
cohort's lendable pool that it borrows (usage above nominal), divided by its
weight.  Tenants within nominal have share 0.  Pending workloads are tried in
order of priority, then the share their tenant would have after admitting
them, so the cohort's spare quota goes to whoever has borrowed least.

Entitlements are for reports: what share of the cluster's GPUs a tenant is
promised.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.domain.resources import Vector, is_gpu
from shoal.domain.workload import Workload
from shoal.policy.quota import TenantQuota, Usage, pool, usage_after

OrderKey = tuple[int, float, float, str]


def share(tenants: Mapping[str, TenantQuota], usage: Usage, name: str) -> float:
    """Weighted dominant share of the cohort pool that ``name`` borrows."""
    tenant = tenants[name]
    dominant = 0.0
    for resource, amount in usage.get(name, {}).items():
        over = amount - tenant.nominal.get(resource, 0)
        if over <= 0:
            continue
        lendable = pool(tenants, name, resource)
        # Quota checks never let a tenant borrow from an empty pool; skipping
        # such a resource keeps the share finite if quotas shrank under it.
        if lendable > 0:
            dominant = max(dominant, over / lendable)
    return dominant / tenant.weight


def shares(tenants: Mapping[str, TenantQuota], usage: Usage) -> dict[str, float]:
    return {name: share(tenants, usage, name) for name in tenants}


def share_after(
    tenants: Mapping[str, TenantQuota], usage: Usage, name: str, request: Vector
) -> float:
    """The share ``name`` would have after being charged ``request``."""
    return share(tenants, usage_after(usage, name, add=request), name)


def order_key(workload: Workload, share_after_admission: float) -> OrderKey:
    """Sort key for pending workloads: higher priority, lower share, older, by name."""
    return (-workload.priority, share_after_admission, workload.submit_time, workload.name)


def fifo_key(workload: Workload) -> tuple[int, float, str]:
    """A tenant's own queue order: priority, then age (what StrictFIFO preserves)."""
    return (-workload.priority, workload.submit_time, workload.name)


def nominal_gpus(tenant: TenantQuota) -> int:
    """Nominal milli-GPUs over all GPU models."""
    return sum(amount for resource, amount in tenant.nominal.items() if is_gpu(resource))


def entitled_gpu_shares(
    tenants: Mapping[str, TenantQuota], cluster_gpu_milli: int
) -> dict[str, float]:
    """Each tenant's promised fraction of the cluster's GPUs.

    Nominal GPU quota over cluster GPUs; when no tenant has GPU quota, the
    weights split the cluster.  Shares are not capped: an oversubscribed
    cluster (nominal quotas summing to more than it has) shows as a total
    above 1, which a report should make visible.
    """
    if any(nominal_gpus(t) for t in tenants.values()):
        if cluster_gpu_milli <= 0:
            return dict.fromkeys(tenants, 0.0)
        return {name: nominal_gpus(t) / cluster_gpu_milli for name, t in tenants.items()}
    weights = sum(t.weight for t in tenants.values())
    return {name: t.weight / weights for name, t in tenants.items()} if weights else {}
