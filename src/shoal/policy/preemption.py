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
quota and the nodes (gang placement with the victims removed, in a trial of
the cluster state that is undone afterwards), then
victims that turn out unneeded are dropped, most costly first.  Also as in
Kueue, another tenant's workloads stop being candidates once the victims
already chosen bring that tenant back within its nominal quota.  Whether the
preemptor borrows is judged on current usage, before any victim is removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.resources import MILLI, Vector
from shoal.domain.tenant import (
    BorrowWithinCohort,
    PreemptionPolicy,
    ReclaimWithinCohort,
    WithinTenant,
)
from shoal.domain.workload import Workload
from shoal.policy.decisions import PreemptReason
from shoal.policy.ledger import QuotaLedger
from shoal.policy.placement import Placer
from shoal.policy.quota import TenantQuota, Usage, total_usage
from shoal.policy.snapshot import Running

__all__ = [
    "PreemptionPlan",
    "Running",
    "Victim",
    "candidates",
    "find_victims",
    "lost_work",
    "search_victims",
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
    running: Iterable[Running],
    now: float,
) -> list[Victim]:
    """Workloads the policy lets ``preemptor`` evict, cheapest loss first."""
    tenant = tenants[preemptor.tenant]
    policy = tenant.preemption
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    # Per owner: the reason its workloads would be evicted for, and whether
    # only lower-priority ones qualify (None: none of them qualify).
    rules: dict[str, tuple[PreemptReason, bool] | None] = {}
    ranked: list[tuple[float, int, float, str, Victim]] = []
    priority = preemptor.priority
    for run in running:
        workload = run.workload
        if not workload.preemptible:
            continue
        owner = workload.tenant
        if owner not in rules:
            rules[owner] = _rule(tenant, policy, borrows, tenants.get(owner), usage, request)
        rule = rules[owner]
        if rule is None or (rule[1] and not workload.priority < priority):
            continue
        victim = Victim(run, rule[0], lost_work(run, now))
        ranked.append((victim.cost, workload.priority, -run.start_time, workload.name, victim))
    ranked.sort(key=_rank)
    return [entry[4] for entry in ranked]


def _rank(entry: tuple[float, int, float, str, Victim]) -> tuple[float, int, float, str]:
    return entry[:4]


def _rule(
    tenant: TenantQuota,
    policy: PreemptionPolicy,
    borrows: bool,
    other: TenantQuota | None,
    usage: Usage,
    request: Vector,
) -> tuple[PreemptReason, bool] | None:
    """Why ``other``'s workloads may be evicted for ``tenant``, and whether only lower ones."""
    if other is None:
        return None
    if other.name == tenant.name:
        return ("priority", True) if policy.within_tenant == WithinTenant.LOWER_PRIORITY else None
    if tenant.cohort is None or other.cohort != tenant.cohort:
        return None
    if not _borrows_any(other, usage.get(other.name, {}), request):
        return None
    if borrows:
        if policy.borrow_within_cohort != BorrowWithinCohort.LOWER_PRIORITY:
            return None
        return ("borrow", True)
    reclaim = policy.reclaim_within_cohort
    if reclaim == ReclaimWithinCohort.NEVER:
        return None
    return ("reclaim", reclaim == ReclaimWithinCohort.LOWER_PRIORITY)


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
    is left as it was.
    """
    ledger = QuotaLedger(tenants, usage)
    return search_victims(preemptor, request, ledger, running, state, placer, now)


def search_victims(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    running: Sequence[Running],
    state: ClusterState,
    placer: Placer,
    now: float,
) -> PreemptionPlan | None:
    """``find_victims`` on a cycle's ledger; ``ledger`` and ``state`` end as they began.

    Victims are tried by refunding them in the ledger and unbinding them in a
    trial of ``state`` (no copies), one at a time, so each step costs one
    quota check and, once totals allow, one placement.
    """
    up = state.up
    free_gpu, free_cpu = int(state.gpu_free[up].sum()), int(state.cpu_free[up].sum())
    need_gpu, need_cpu = preemptor.gpu_milli, sum(pod.cpu for pod in preemptor.pods)
    tenant = preemptor.tenant
    pool_ = candidates(preemptor, request, ledger.tenants, ledger.usage, running, now)
    if not pool_ or not _could_fit(preemptor, request, ledger, pool_, free_gpu, free_cpu):
        return None
    chosen: list[Victim] = []
    bindings: list[Binding] | None = None
    gpu_freed = cpu_freed = 0
    with state.trial():
        try:
            for victim in pool_:
                owner = victim.running.tenant
                # As in Kueue: once earlier victims brought a tenant back within
                # its nominal quota, its other workloads are no longer fair game.
                if owner != tenant and not ledger.borrows_any(owner, request):
                    continue
                ledger.refund(owner, victim.running.usage)
                chosen.append(victim)
                for binding in victim.running.bindings:
                    state.unbind(binding)
                    gpu_freed += binding.shape.gpu_total_milli
                    cpu_freed += binding.shape.cpu
                if free_gpu + gpu_freed < need_gpu or free_cpu + cpu_freed < need_cpu:
                    continue
                if not ledger.check(tenant, request).fits:
                    continue
                if not placer.could_fit(state, preemptor):
                    continue
                bindings = placer.place(state, preemptor)
                if bindings is not None:
                    break
            if bindings is None:
                return None
            # Greedy order can pick victims a later one made unnecessary; drop
            # the costliest of those first so the loss stays small.  Dropping
            # one puts it back; keeping one takes it out again.
            for victim in sorted(chosen, key=lambda v: -v.cost):
                run = victim.running
                for binding in run.bindings:
                    state.bind(binding)
                ledger.charge(run.tenant, run.usage)
                gpu_freed -= sum(b.shape.gpu_total_milli for b in run.bindings)
                cpu_freed -= sum(b.shape.cpu for b in run.bindings)
                trial = None
                if (
                    free_gpu + gpu_freed >= need_gpu
                    and free_cpu + cpu_freed >= need_cpu
                    and ledger.check(tenant, request).fits
                    and placer.could_fit(state, preemptor)
                ):
                    trial = placer.place(state, preemptor)
                if trial is not None:
                    chosen = [v for v in chosen if v is not victim]
                    bindings = trial
                    continue
                for binding in run.bindings:
                    state.unbind(binding)
                ledger.refund(run.tenant, run.usage)
                gpu_freed += sum(b.shape.gpu_total_milli for b in run.bindings)
                cpu_freed += sum(b.shape.cpu for b in run.bindings)
        finally:
            for victim in chosen:
                ledger.charge(victim.running.tenant, victim.running.usage)
    return PreemptionPlan(victims=tuple(chosen), bindings=tuple(bindings))


def _could_fit(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
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
    freed = total_usage((v.running.tenant, v.running.usage) for v in pool_)
    for owner, vector in freed.items():
        ledger.refund(owner, vector)
    try:
        return ledger.check(preemptor.tenant, request).fits
    finally:
        for owner, vector in freed.items():
            ledger.charge(owner, vector)


def _borrows_any(tenant: TenantQuota, usage: Vector, request: Vector) -> bool:
    """Whether ``tenant`` uses more than nominal of a resource in ``request``."""
    return any(
        usage.get(r, 0) > tenant.nominal.get(r, 0) for r, amount in request.items() if amount > 0
    )
