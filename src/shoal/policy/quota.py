"""Quota: Kueue ClusterQueue and cohort semantics over integer resource vectors.

For each resource ``r`` a tenant has ``nominal`` quota.  Of it,
``lendable = lendingLimit or nominal`` may be lent to its cohort and
``guaranteed = nominal - lendable`` is kept for the tenant alone.  A cohort's
pool is the sum of its members' lendable quota; every member's usage above
its guaranteed part draws on that pool.  ``borrowingLimit`` caps how far a
tenant may go beyond its nominal quota (no limit: as far as the pool allows).
A tenant without a cohort is a cohort of one, so it can never exceed its
nominal quota.  A resource the tenant has no quota entry for is never
admissible, except ``pods``: a tenant without a pods quota may run any
number of pods (its ``nominal`` holds ``UNLIMITED_PODS``, none of it lent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shoal.domain import priority as priorities
from shoal.domain.resources import CPU, MEMORY, MILLI, PODS, Vector, is_gpu
from shoal.domain.tenant import PreemptionPolicy, TenantSpec

Usage = Mapping[str, Vector]
"""Resources in use, per tenant name."""

UNLIMITED_PODS = 1 << 62
"""Nominal ``pods`` of a tenant without a pods quota: more than could ever run."""


@dataclass(frozen=True)
class TenantQuota:
    """A tenant's quota and queueing policy, flattened from its ``TenantSpec``."""

    name: str
    cohort: str | None = None
    weight: float = 1.0
    nominal: dict[str, int] = field(default_factory=dict)
    borrowing_limit: dict[str, int | None] = field(default_factory=dict)
    lending_limit: dict[str, int | None] = field(default_factory=dict)
    preemption: PreemptionPolicy = field(default_factory=PreemptionPolicy)
    allowed_priorities: frozenset[int] | None = None
    strict_fifo: bool = False
    job_order: str = "fifo"
    """The tenant's own order of its jobs: fifo, las or srtf (``policy.ordering``)."""
    las_thresholds: tuple[float, ...] = (16 * 3600.0,)
    """las: attained GPU-seconds at which a job moves to the next queue."""
    starvation_factor: float | None = None

    def __post_init__(self) -> None:
        # Every pod charges one of ``pods``; without a pods quota that is no
        # limit.  Kept, not lent, so it never fills a cohort's pool and the
        # tenant never counts as borrowing pods (reclaim and fair share).
        if PODS not in self.nominal:
            object.__setattr__(self, "nominal", {**self.nominal, PODS: UNLIMITED_PODS})
            object.__setattr__(self, "borrowing_limit", {**self.borrowing_limit, PODS: None})
            object.__setattr__(self, "lending_limit", {**self.lending_limit, PODS: 0})

    @property
    def limits_pods(self) -> bool:
        """Whether the tenant has a pods quota (else it may run any number of pods)."""
        return self.nominal[PODS] != UNLIMITED_PODS

    @classmethod
    def from_spec(cls, name: str, spec: TenantSpec) -> TenantQuota:
        quota = spec.quota.by_resource()
        allowed = spec.allowed_priorities
        return cls(
            name=name,
            cohort=spec.cohort,
            weight=spec.weight,
            nominal={r: nominal for r, (nominal, _, _) in quota.items()},
            borrowing_limit={r: borrow for r, (_, borrow, _) in quota.items()},
            lending_limit={r: lend for r, (_, _, lend) in quota.items()},
            preemption=spec.preemption,
            allowed_priorities=(
                None if allowed is None else frozenset(priorities.resolve(p) for p in allowed)
            ),
            strict_fifo=spec.queueing == "StrictFIFO",
            job_order=spec.ordering.policy.value,
            las_thresholds=tuple(h * 3600.0 for h in spec.ordering.thresholds_gpu_hours),
            starvation_factor=spec.ordering.starvation_factor,
        )

    @classmethod
    def equal_share(cls, name: str, cohort: str | None, nominal: Mapping[str, int]) -> TenantQuota:
        """Nominal quota as given, no borrowing or lending limits, default policy."""
        return cls(
            name=name,
            cohort=cohort,
            nominal=dict(nominal),
            borrowing_limit=dict.fromkeys(nominal),
            lending_limit=dict.fromkeys(nominal),
        )

    def has_quota(self, resource: str) -> bool:
        return resource in self.nominal

    def lendable(self, resource: str) -> int:
        limit = self.lending_limit.get(resource)
        nominal = self.nominal.get(resource, 0)
        return nominal if limit is None else min(limit, nominal)

    def guaranteed(self, resource: str) -> int:
        return self.nominal.get(resource, 0) - self.lendable(resource)


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """Whether a request fits; ``reason`` names the resource and numbers when not."""

    fits: bool
    borrowing: bool
    reason: str = ""
    resource: str | None = None


def members(tenants: Mapping[str, TenantQuota], name: str) -> list[TenantQuota]:
    """The tenants sharing ``name``'s cohort (just ``name`` when it has none)."""
    cohort = tenants[name].cohort
    if cohort is None:
        return [tenants[name]]
    return [t for t in tenants.values() if t.cohort == cohort]


def pool(tenants: Mapping[str, TenantQuota], name: str, resource: str) -> int:
    """What ``name``'s cohort can lend of ``resource`` beyond guaranteed quotas."""
    return sum(t.lendable(resource) for t in members(tenants, name))


def ceiling(tenants: Mapping[str, TenantQuota], name: str, resource: str) -> int:
    """The most of ``resource`` that ``name`` could ever use, with its cohort idle."""
    tenant = tenants[name]
    limit = tenant.borrowing_limit.get(resource)
    most = tenant.guaranteed(resource) + pool(tenants, name, resource)
    if limit is not None:
        most = min(most, tenant.nominal.get(resource, 0) + limit)
    return most


def usage_after(
    usage: Usage, tenant: str, add: Vector | None = None, remove: Vector | None = None
) -> dict[str, dict[str, int]]:
    """A copy of ``usage`` with ``add`` charged to and ``remove`` refunded from ``tenant``."""
    out = {name: dict(vector) for name, vector in usage.items()}
    mine = out.setdefault(tenant, {})
    for resource, amount in (add or {}).items():
        mine[resource] = mine.get(resource, 0) + amount
    for resource, amount in (remove or {}).items():
        mine[resource] = mine.get(resource, 0) - amount
    return out


def total_usage(charges: Iterable[tuple[str, Vector]]) -> dict[str, dict[str, int]]:
    """Usage per tenant from ``(tenant, usage)`` pairs, e.g. the running workloads."""
    out: dict[str, dict[str, int]] = {}
    for tenant, vector in charges:
        mine = out.setdefault(tenant, {})
        for resource, amount in vector.items():
            mine[resource] = mine.get(resource, 0) + amount
    return out


def borrowed(tenants: Mapping[str, TenantQuota], usage: Usage) -> dict[str, dict[str, int]]:
    """Per tenant, how much of each resource it uses beyond its nominal quota."""
    out: dict[str, dict[str, int]] = {}
    for name, tenant in tenants.items():
        over = {
            r: amount - tenant.nominal.get(r, 0)
            for r, amount in usage.get(name, {}).items()
            if amount > tenant.nominal.get(r, 0)
        }
        if over:
            out[name] = over
    return out


def check(
    tenants: Mapping[str, TenantQuota], usage: Usage, name: str, request: Vector
) -> QuotaCheck:
    """Whether ``request`` fits tenant ``name`` given current ``usage``."""
    tenant = tenants[name]
    mine = usage.get(name, {})
    borrowing = False
    for resource, amount in sorted(request.items()):
        if amount <= 0:
            continue
        if not tenant.has_quota(resource):
            return _no(f"tenant {name} has no quota for {resource}", resource)
        used = mine.get(resource, 0)
        after = used + amount
        nominal = tenant.nominal[resource]
        borrowing = borrowing or after > nominal

        def short(free: int, why: str, resource: str = resource, used: int = used,
                  amount: int = amount, nominal: int = nominal) -> QuotaCheck:
            # Worded like "needs 6 CPU; team-a can get 2 now (2 nominal, 0 in use, 0
            # borrowable)": built only when the check fails, as it runs in the hot loop.
            text = (
                f"{resource}: needs {amount_text(resource, amount)}, {name} can get "
                f"{amount_text(resource, max(0, free))} now ({amount_text(resource, nominal)} "
                f"nominal, {amount_text(resource, used)} in use, {why})"
            )
            return _no(text, resource)

        if tenant.cohort is None:
            if after > nominal:
                return short(nominal - used, "no cohort to borrow from")
            continue
        limit = tenant.borrowing_limit.get(resource)
        if limit is not None and after > nominal + limit:
            return short(nominal + limit - used,
                         f"borrowingLimit {amount_text(resource, limit)}")
        need = max(0, after - tenant.guaranteed(resource))
        # A tenant within its guaranteed part never waits for the cohort.
        if need == 0:
            continue
        others = sum(
            max(0, usage.get(t.name, {}).get(resource, 0) - t.guaranteed(resource))
            for t in members(tenants, name)
            if t.name != name
        )
        available = pool(tenants, name, resource) - others
        if need > available:
            reachable = tenant.guaranteed(resource) + available
            if reachable >= nominal:
                why = (f"{amount_text(resource, reachable - nominal)} borrowable from "
                       f"cohort {tenant.cohort}")
            else:
                why = (f"{amount_text(resource, nominal - reachable)} of it lent to others "
                       f"in cohort {tenant.cohort}")
            return short(reachable - used, why)
    return QuotaCheck(fits=True, borrowing=borrowing)


def _no(reason: str, resource: str) -> QuotaCheck:
    return QuotaCheck(fits=False, borrowing=False, reason=reason, resource=resource)


def amount_text(resource: str, amount: int) -> str:
    """An amount as users write it: GPUs and cores, not milli; memory in MiB."""
    if is_gpu(resource):
        return f"{amount / MILLI:g} GPU"
    if resource == CPU:
        return f"{amount / MILLI:g} cpu"
    if resource == MEMORY:
        return f"{amount} MiB"
    if resource == PODS:
        return f"{amount} pod" if amount == 1 else f"{amount} pods"
    return str(amount)
