"""Preemption: which running workloads to evict so a pending one can run.

Candidates follow the preemptor's tenant policy (``PreemptionPolicy``):

* ``withinTenant: LowerPriority`` - the tenant's own workloads of strictly
  lower priority (reason ``priority``);
* ``reclaimWithinCohort`` - workloads of other cohort tenants that borrow a
  resource the preemptor needs, when the preemptor's tenant stays within its
  nominal quota after admission (reason ``reclaim``; ``LowerPriority`` also
  requires a lower priority);
* ``borrowWithinCohort: LowerPriority`` - lower-priority workloads of other
  cohort tenants that borrow, even though the preemptor will borrow too
  (reason ``borrow``).

Non-preemptible workloads are never candidates.

How this differs from Kueue: Kueue orders candidates by priority, then most
recent admission, and ignores progress.  Shoal orders them by *lost work*,
the GPU time since each victim's last checkpoint (``(now - last_checkpoint)
x milli-GPUs``; CPU-only jobs count ``milli-CPU / 1000``), then lower
priority, then most recent start.  Evicting a job that checkpointed a minute
ago costs a minute; evicting one that never did costs its whole run.

Like Kueue, candidates are added greedily until the preemptor fits both its
quota and the nodes (gang placement on a copy with the victims removed), then
victims that turn out unneeded are dropped, most costly first.  Also as in
Kueue, another tenant's workloads stop being candidates once the victims
already chosen bring that tenant back within its nominal quota.  Whether the
preemptor borrows is judged on current usage, before any victim is removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.resources import MILLI, Vector
from shoal.domain.tenant import BorrowWithinCohort, ReclaimWithinCohort, WithinTenant
from shoal.domain.workload import Workload
from shoal.policy.decisions import PreemptReason
from shoal.policy.placement import Placer
from shoal.policy.quota import TenantQuota, Usage, check, usage_after
from shoal.policy.snapshot import Running

__all__ = [
    "PreemptionPlan",
    "Running",
    "Victim",
    "candidates",
    "find_victims",
    "lost_work",
    "within_nominal",
]


@dataclass(frozen=True, slots=True)
class Victim:
    running: Running
    reason: PreemptReason
    cost: float
    """Lost work: milli-GPU-seconds (milli-CPU/1000-seconds for CPU-only jobs)."""

    @property
    def lost_gpu_seconds(self) -> float:
        return self.cost / MILLI if self.running.workload.gpu_milli else 0.0


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    """Victims to evict and where the preemptor would then go."""

    victims: tuple[Victim, ...]
    bindings: tuple[Binding, ...]


def lost_work(running: Running, now: float) -> float:
    """Work lost if ``running`` stops now, weighted by the GPUs (or CPUs) it holds."""
    workload = running.workload
    weight = workload.gpu_milli or sum(pod.cpu for pod in workload.pods) / MILLI
    return max(0.0, now - running.saved_at(now)) * weight


def within_nominal(tenant: TenantQuota, usage: Vector, request: Vector) -> bool:
    """Whether ``tenant`` stays within nominal quota after being charged ``request``."""
    return all(
        usage.get(r, 0) + amount <= tenant.nominal.get(r, 0)
        for r, amount in request.items()
        if amount > 0
    )


def victim_tenants(
    preemptor: Workload,
    request: Vector,
    tenants: Mapping[str, TenantQuota],
    usage: Usage,
) -> set[str]:
    """Tenants whose workloads ``preemptor`` may evict at all (a cheap pre-filter)."""
    tenant = tenants[preemptor.tenant]
    policy = tenant.preemption
    names = set()
    if policy.within_tenant == WithinTenant.LOWER_PRIORITY:
        names.add(tenant.name)
    if tenant.cohort is None:
        return names
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    allowed = (
        policy.borrow_within_cohort == BorrowWithinCohort.LOWER_PRIORITY
        if borrows
        else policy.reclaim_within_cohort != ReclaimWithinCohort.NEVER
    )
    if allowed:
        names.update(
            other.name
            for other in tenants.values()
            if other.cohort == tenant.cohort
            and other.name != tenant.name
            and _borrows_any(other, usage.get(other.name, {}), request)
        )
    return names


def candidates(
    preemptor: Workload,
    request: Vector,
    tenants: Mapping[str, TenantQuota],
    usage: Usage,
    running: Sequence[Running],
    now: float,
) -> list[Victim]:
    """Workloads the policy lets ``preemptor`` evict, cheapest loss first."""
    tenant = tenants[preemptor.tenant]
    policy = tenant.preemption
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    lender_borrows: dict[str, bool] = {}
    found: list[Victim] = []
    for run in running:
        if not run.workload.preemptible:
            continue
        lower = run.priority < preemptor.priority
        reason: PreemptReason
        if run.tenant == tenant.name:
            if policy.within_tenant != WithinTenant.LOWER_PRIORITY or not lower:
                continue
            reason = "priority"
        else:
            other = tenants.get(run.tenant)
            if tenant.cohort is None or other is None or other.cohort != tenant.cohort:
                continue
            if other.name not in lender_borrows:
                lender_borrows[other.name] = _borrows_any(other, usage.get(other.name, {}), request)
            if not lender_borrows[other.name]:
                continue
            if borrows:
                if policy.borrow_within_cohort != BorrowWithinCohort.LOWER_PRIORITY or not lower:
                    continue
                reason = "borrow"
            else:
                reclaim = policy.reclaim_within_cohort
                if reclaim == ReclaimWithinCohort.NEVER:
                    continue
                if reclaim == ReclaimWithinCohort.LOWER_PRIORITY and not lower:
                    continue
                reason = "reclaim"
        found.append(Victim(run, reason, lost_work(run, now)))
    found.sort(key=lambda v: (v.cost, v.running.priority, -v.running.start_time, v.running.name))
    return found


def find_victims(
    preemptor: Workload,
    request: Vector,
    tenants: Mapping[str, TenantQuota],
    usage: Usage,
    running: Sequence[Running],
    state: ClusterState,
    placer: Placer,
    now: float,
) -> PreemptionPlan | None:
    """The victims that let ``preemptor`` fit, losing the least work; None if none do.

    Meant for a preemptor that does not fit as things are (were it to fit, the
    plan would have no victims).  ``request`` is its quota charge; ``state``
    is not changed.
    """
    up = state.up
    free_gpu, free_cpu = int(state.gpu_free[up].sum()), int(state.cpu_free[up].sum())
    need_gpu, need_cpu = preemptor.gpu_milli, sum(pod.cpu for pod in preemptor.pods)

    def fits(victims: Sequence[Victim]) -> list[Binding] | None:
        """Bindings for the preemptor once ``victims`` are gone, or None."""
        after = usage
        for victim in victims:
            after = usage_after(after, victim.running.tenant, remove=victim.running.usage)
        if not check(tenants, after, preemptor.tenant, request).fits:
            return None
        # A gang placement costs a pass over all nodes; most too-small victim
        # sets are ruled out by totals alone.
        shapes = [b.shape for v in victims for b in v.running.bindings]
        if free_gpu + sum(s.gpu_total_milli for s in shapes) < need_gpu:
            return None
        if free_cpu + sum(s.cpu for s in shapes) < need_cpu:
            return None
        scratch = state.copy()
        for victim in victims:
            for binding in victim.running.bindings:
                scratch.unbind(binding)
        return placer.place(scratch, preemptor)

    pool_ = candidates(preemptor, request, tenants, usage, running, now)
    if not pool_ or not _could_fit(preemptor, request, tenants, usage, pool_, free_gpu, free_cpu):
        return None
    chosen: list[Victim] = []
    bindings: list[Binding] | None = None
    remaining = usage
    gpu_freed = cpu_freed = 0
    # The greedy pass frees victims one at a time on one private copy and
    # keeps running totals, so each step costs one check, not a recount.
    freed = state.copy()
    for victim in pool_:
        owner = victim.running.tenant
        # As in Kueue: once earlier victims brought a tenant back within its
        # nominal quota, its other workloads are no longer fair game.
        if owner != preemptor.tenant and not _borrows_any(
            tenants[owner], remaining.get(owner, {}), request
        ):
            continue
        remaining = usage_after(remaining, owner, remove=victim.running.usage)
        chosen.append(victim)
        for binding in victim.running.bindings:
            freed.unbind(binding)
            gpu_freed += binding.shape.gpu_total_milli
            cpu_freed += binding.shape.cpu
        if free_gpu + gpu_freed < need_gpu or free_cpu + cpu_freed < need_cpu:
            continue
        if not check(tenants, remaining, preemptor.tenant, request).fits:
            continue
        bindings = placer.place(freed, preemptor)
        if bindings is not None:
            break
    if bindings is None:
        return None
    # Greedy order can pick victims a later one made unnecessary; drop the
    # costliest of those first so the loss stays small.
    for victim in sorted(chosen, key=lambda v: -v.cost):
        trial = [v for v in chosen if v is not victim]
        trial_bindings = fits(trial)
        if trial_bindings is not None:
            chosen, bindings = trial, trial_bindings
    return PreemptionPlan(victims=tuple(chosen), bindings=tuple(bindings))


def _could_fit(
    preemptor: Workload,
    request: Vector,
    tenants: Mapping[str, TenantQuota],
    usage: Usage,
    pool_: Sequence[Victim],
    free_gpu: int,
    free_cpu: int,
) -> bool:
    """Whether evicting every candidate would at least free enough quota and capacity.

    A cheap necessary condition: most searches in a busy cluster fail, and
    this rules them out without the one-victim-at-a-time pass.
    """
    gpu = free_gpu + sum(b.shape.gpu_total_milli for v in pool_ for b in v.running.bindings)
    cpu = free_cpu + sum(b.shape.cpu for v in pool_ for b in v.running.bindings)
    if gpu < preemptor.gpu_milli or cpu < sum(pod.cpu for pod in preemptor.pods):
        return False
    after = usage
    for victim in pool_:
        after = usage_after(after, victim.running.tenant, remove=victim.running.usage)
    return check(tenants, after, preemptor.tenant, request).fits


def _borrows_any(tenant: TenantQuota, usage: Vector, request: Vector) -> bool:
    """Whether ``tenant`` uses more than nominal of a resource in ``request``."""
    return any(
        usage.get(r, 0) > tenant.nominal.get(r, 0) for r, amount in request.items() if amount > 0
    )
