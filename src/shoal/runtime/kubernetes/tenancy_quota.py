"""A tenant's ResourceQuota (its ceiling) and LimitRange (its default requests).

Shoal admits jobs against *nominal* quota and lets a tenant borrow idle
quota of its cohort, so what a tenant holds at one moment may exceed its
nominal quota.  A ResourceQuota at nominal would make Kubernetes refuse the
pods of every borrowing job that Shoal admitted.  The ResourceQuota is
therefore the **ceiling**: the most the tenant could ever hold
(``policy.quota.ceiling``: its guaranteed part plus all its cohort could
lend, capped by its ``borrowingLimit``).  Shoal's admission stays the real
limit; the ResourceQuota is the backstop that holds even for pods created
without Shoal (by hand, or by a bug), and it changes when a tenant of the
same cohort changes what it lends.

Resources, as the embedded runtime counts them (requests, not limits):

* ``requests.cpu``, ``requests.memory``: ``0`` when the tenant has no quota
  for them (such jobs are never admitted);
* ``requests.nvidia.com/gpu``: the sum over GPU models (Kubernetes has one
  resource name for all models), rounded up to whole GPUs; left out on a
  cluster with shared GPUs (``shared_gpus``).  There a fractional pod asks
  for ``nvidia.com/gpu: 1``, one share of a GPU (``gpu_resources``), so the
  count is of shares, not GPUs: a tenant whose fractional jobs add up to one
  GPU may hold any number of shares, and any count here could refuse pods
  that Shoal admitted.  Shoal's admission is then the only GPU limit;
* ``pods``: only when the tenant has a pods quota.

The LimitRange gives each container that requests no CPU or memory the
tenant's ``defaultRequests`` (Shoal's defaults when unset), which is also
what lets such pods pass a quota on ``requests.*``.  It sets no default
*limit*: a default limit below a container's own request would make the pod
invalid.  Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shoal.domain.job import SHOAL_DEFAULT_REQUESTS
from shoal.domain.resources import CPU, MEMORY, MILLI, PODS, is_gpu
from shoal.domain.tenant import Tenant
from shoal.policy.quota import TenantQuota, ceiling
from shoal.runtime.kubernetes import quantities

Body = dict[str, Any]

QUOTA_NAME = "shoal-quota"
LIMITS_NAME = "shoal-defaults"
GPU = "nvidia.com/gpu"


def hard_limits(tenant: Tenant, cohort: Iterable[Tenant] = (),
                shared_gpus: bool = False) -> dict[str, str]:
    """``spec.hard`` of the tenant's ResourceQuota; ``cohort``: other tenants (any cohort);
    ``shared_gpus``: whether a node of the cluster shares its GPUs (no GPU count then)."""
    name = tenant.metadata.name
    quotas = {name: TenantQuota.from_spec(name, tenant.spec)}
    if tenant.spec.cohort is not None:
        for other in cohort:
            if other.spec.cohort == tenant.spec.cohort and other.metadata.name != name:
                quotas[other.metadata.name] = TenantQuota.from_spec(
                    other.metadata.name, other.spec)
    mine = quotas[name]

    def most(resource: str) -> int:
        return ceiling(quotas, name, resource) if mine.has_quota(resource) else 0

    gpu_milli = sum(most(resource) for resource in mine.nominal if is_gpu(resource))
    hard = {
        "requests.cpu": quantities.cpu(most(CPU)),
        "requests.memory": quantities.memory(most(MEMORY)),
    }
    if not shared_gpus:
        hard[f"requests.{GPU}"] = quantities.count(-(-gpu_milli // MILLI))
    if mine.limits_pods:
        hard["pods"] = quantities.count(most(PODS))
    return hard


def resource_quota(tenant: Tenant, cohort: Iterable[Tenant] = (),
                   shared_gpus: bool = False) -> Body:
    return {"kind": "ResourceQuota", "metadata": {"name": QUOTA_NAME},
            "spec": {"hard": hard_limits(tenant, cohort, shared_gpus)}}


def limit_range(tenant: Tenant) -> Body:
    defaults = tenant.spec.default_requests or SHOAL_DEFAULT_REQUESTS
    request = {"cpu": quantities.cpu(defaults.cpu), "memory": quantities.memory(defaults.memory)}
    return {"kind": "LimitRange", "metadata": {"name": LIMITS_NAME},
            "spec": {"limits": [{"type": "Container", "defaultRequest": request}]}}
