"""What the control plane exports to Prometheus: quota use per tenant, jobs per phase,
replicas wanted and ready per service revision.

Read on each scrape from the same store the API reads (``queries.tenants``),
so a scrape shows what ``shoal get tenants`` shows.  Values are in
Prometheus' base units: CPU in cores, memory in bytes, GPUs in GPUs (half a
GPU is 0.5), pods as a count; the resource is a label (``cpu``,
``memory``, ``pods``, ``gpu/<model>``).  The rendering (``prometheus-client``)
is the API shell's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from shoal.app.core import App
from shoal.app.ports import Caller
from shoal.app.queries import tenants
from shoal.domain.names import job_name
from shoal.domain.phases import PHASES
from shoal.domain.resources import CPU, MEMORY, MILLI, is_gpu
from shoal.errors import Forbidden

__all__ = ["Family", "families", "in_base_units"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Family:
    """One metric: name, help, type, its label names and samples (label values, value)."""

    name: str
    help: str
    kind: Literal["gauge"]
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def in_base_units(resource: str, amount: int) -> float:
    """A quota amount (millicores, MiB, milli-GPUs, pods) in Prometheus' base units."""
    if resource == CPU or is_gpu(resource):
        return amount / MILLI
    if resource == MEMORY:
        return float(amount * _MIB)
    return float(amount)


def families(app: App, caller: Caller) -> list[Family]:
    """The metric families of a scrape; only an admin may scrape (it shows every tenant)."""
    if caller.role != "admin":
        raise Forbidden("only an admin token may read /metrics (it shows every tenant)")
    nominal = Family("shoal_tenant_quota_nominal", "Nominal quota of a tenant per resource",
                     "gauge", ("tenant", "resource"))
    used = Family("shoal_tenant_quota_used", "Quota a tenant's running jobs hold per resource",
                  "gauge", ("tenant", "resource"))
    borrowed = Family("shoal_tenant_quota_borrowed",
                      "Quota a tenant holds above its nominal quota, per resource",
                      "gauge", ("tenant", "resource"))
    jobs = Family("shoal_jobs", "Jobs per tenant and phase", "gauge", ("tenant", "phase"))
    for status in tenants(app, caller)["status"]:
        name = status["name"]
        for family, vector in ((nominal, status["nominal"]), (used, status["usage"]),
                               (borrowed, status["borrowed"])):
            for resource, amount in sorted(vector.items()):
                family.samples.append(((name, resource), in_base_units(resource, amount)))
    desired = Family("shoal_service_replicas_desired",
                     "Replicas the autoscaler wants for a service's revision", "gauge",
                     ("tenant", "service", "revision"))
    ready = Family("shoal_service_replicas_ready",
                   "Replicas of a service's revision that are ready to serve", "gauge",
                   ("tenant", "service", "revision"))
    for service in app.store.services():
        name = job_name(service["name"])
        for revision, seen in sorted((service["state"].get("replicas") or {}).items()):
            labels = (service["tenant"], name, job_name(revision))
            desired.samples.append((labels, float(seen["desired"])))
            ready.samples.append((labels, float(seen["ready"])))
    counts = Counter((row.tenant, row.phase) for row in app.store.list_jobs())
    for tenant in sorted({t for t, _ in counts}):
        for phase in PHASES:
            jobs.samples.append(((tenant, phase), float(counts.get((tenant, phase), 0))))
    return [nominal, used, borrowed, jobs, desired, ready]
