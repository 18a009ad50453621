"""The victim search as it was before ``RunningTable``: one Python object per candidate.

Kept only as the reference a differential test compares the vectorised search with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from shoal.domain.cluster import Binding, BoolArray, ClusterState
from shoal.domain.resources import MILLI, Vector
from shoal.domain.tenant import (
    BorrowWithinCohort,
    PreemptionPolicy,
    ReclaimWithinCohort,
    WithinTenant,
)
from shoal.domain.workload import PodShape, Workload
from shoal.policy.decisions import PreemptReason
from shoal.policy.ledger import QuotaLedger
from shoal.policy.placement import Placer
from shoal.policy.placement.filters import fit_mask
from shoal.policy.quota import TenantQuota, Usage
from shoal.policy.snapshot import Running

__all__ = [
    "PreemptionPlan",
    "Ranked",
    "Running",
    "Victim",
    "candidates",
    "find_victims",
    "lost_work",
    "lower_only",
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
    return max(0.0, now - running.saved_at(now)) * running.weight


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


Ranked = tuple[float, int, float, str, Running, PreemptReason]
"""A candidate: cost (lost work), priority, -start, name, the workload, the reason."""


def candidates(
    preemptor: Workload,
    request: Vector,
    tenants: Mapping[str, TenantQuota],
    usage: Usage,
    running: Iterable[Running],
    now: float,
    outranks: Callable[[Running], bool] | None = None,
) -> list[Ranked]:
    """Workloads the policy lets ``preemptor`` evict, cheapest loss first.

    Tuples, not ``Victim`` values: a search looks at thousands and turns only
    the ones it takes into victims.  ``outranks``: under a las or srtf tenant
    ordering, whether the preemptor goes before one of its tenant's running
    workloads of the same priority (which may then be evicted, reason ``queue``).
    """
    tenant = tenants[preemptor.tenant]
    policy = tenant.preemption
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    # Per owner: the reason its workloads would be evicted for, and whether
    # only lower-priority ones qualify (None: none of them qualify).
    rules: dict[str, tuple[PreemptReason, bool] | None] = {}
    ranked: list[Ranked] = []
    priority = preemptor.priority
    for run in running:
        workload = run.workload
        if not workload.preemptible:
            continue
        owner = workload.tenant
        if owner not in rules:
            rules[owner] = _rule(tenant, policy, borrows, tenants.get(owner), usage, request)
        rule = rules[owner]
        if rule is None:
            continue
        reason = rule[0]
        if rule[1] and not workload.priority < priority:
            if not (
                outranks is not None
                and reason == "priority"
                and workload.priority == priority
                and outranks(run)
            ):
                continue
            reason = "queue"
        # lost_work(run, now), inline: this loop runs over every candidate.
        start, checkpoint, interval = run.start_time, run.last_checkpoint, run.checkpoint_interval
        if checkpoint is not None and checkpoint >= start:
            saved = min(checkpoint, now)
        elif interval:
            saved = start + ((now - start) // interval) * interval
        else:
            saved = start
        cost = max(0.0, now - saved) * run.weight
        ranked.append((cost, workload.priority, -start, workload.name, run, reason))
    # Names are unique, so the sort never compares the last two fields.
    ranked.sort()
    return ranked


def lower_only(
    preemptor: Workload,
    request: Vector,
    tenants: Mapping[str, TenantQuota],
    usage: Usage,
    owner: str,
) -> bool | None:
    """Whether only ``owner``'s lower-priority workloads may be evicted (None: none may).

    Lets a caller that keeps running workloads grouped by priority skip the
    groups that hold no candidate at all.
    """
    tenant = tenants[preemptor.tenant]
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    rule = _rule(tenant, tenant.preemption, borrows, tenants.get(owner), usage, request)
    return None if rule is None else rule[1]


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
    outranks: Callable[[Running], bool] | None = None,
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
    ranked = candidates(preemptor, request, ledger.tenants, ledger.usage, running, now, outranks)
    if not ranked or not _could_fit(preemptor, request, ledger, ranked, state, placer,
                                    free_gpu, free_cpu):
        return None
    chosen: list[Victim] = []
    bindings: list[Binding] | None = None
    gpu_freed = cpu_freed = 0
    # A lone pod fits once one node has room for it, and freeing victims only
    # adds room where they ran: after one full placement that failed, a step
    # needs another only if a node it freed could now take the pod.  So the
    # room victims free is first counted per node (``freed``) and they are
    # unbound only when a placement is due.
    lone = len(preemptor.pods) == 1
    pod = preemptor.pods[0]
    allowed = placer.allowed(state, preemptor, pod) if lone else None
    freed: dict[int, _Freed] = {}
    dirty: set[int] = set()
    unbound = 0
    placed_once = False
    with state.trial():
        try:
            borrows: dict[str, bool] = {}
            for entry in ranked:
                victim = Victim(entry[4], entry[5], entry[0])
                owner = victim.running.tenant
                # As in Kueue: once earlier victims brought a tenant back within
                # its nominal quota, its other workloads are no longer fair game.
                if owner != tenant:
                    if owner not in borrows:
                        borrows[owner] = ledger.borrows_any(owner, request)
                    if not borrows[owner]:
                        continue
                    del borrows[owner]
                ledger.refund(owner, victim.running.usage, request)
                chosen.append(victim)
                for binding in victim.running.bindings:
                    gpu_freed += binding.shape.gpu_total_milli
                    cpu_freed += binding.shape.cpu
                    if lone:
                        _free(freed, binding)
                        dirty.add(binding.node)
                if not lone:
                    for binding in victim.running.bindings:
                        state.unbind(binding)
                if free_gpu + gpu_freed < need_gpu or free_cpu + cpu_freed < need_cpu:
                    continue
                if not ledger.check(tenant, request).fits:
                    continue
                if lone:
                    assert allowed is not None
                    # Only nodes freed since the last look can have changed their answer.
                    if placed_once:
                        fits = any(_room_on(state, pod, allowed, n, freed[n]) for n in dirty)
                        dirty.clear()
                        if not fits:
                            continue
                    for earlier in chosen[unbound:]:
                        for binding in earlier.running.bindings:
                            state.unbind(binding)
                    unbound, freed = len(chosen), {}
                    dirty.clear()
                    placed_once = True
                elif not placer.could_fit(state, preemptor):
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
                ledger.charge(run.tenant, run.usage, 1, request)
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
                ledger.refund(run.tenant, run.usage, request)
                gpu_freed += sum(b.shape.gpu_total_milli for b in run.bindings)
                cpu_freed += sum(b.shape.cpu for b in run.bindings)
        finally:
            for victim in chosen:
                ledger.charge(victim.running.tenant, victim.running.usage, 1, request)
    return PreemptionPlan(victims=tuple(chosen), bindings=tuple(bindings))


class _Freed:
    """Room that victims not yet unbound free on one node."""

    __slots__ = ("cpu", "gpu", "gpu_memory", "memory")

    def __init__(self) -> None:
        self.cpu = self.memory = 0
        self.gpu: dict[int, int] = {}
        self.gpu_memory: dict[int, int] = {}


def _free(freed: dict[int, _Freed], binding: Binding) -> None:
    room = freed.get(binding.node)
    if room is None:
        room = freed[binding.node] = _Freed()
    shape = binding.shape
    room.cpu += shape.cpu
    room.memory += shape.memory
    for gpu in binding.gpus:
        room.gpu[gpu] = room.gpu.get(gpu, 0) + shape.gpu_milli
        room.gpu_memory[gpu] = room.gpu_memory.get(gpu, 0) + shape.gpu_memory


def _room_on(
    state: ClusterState, pod: PodShape, allowed: BoolArray, node: int, room: _Freed
) -> bool:
    """Whether ``pod`` fits on ``node`` once ``room`` is freed there (``fit_mask``'s rules)."""
    if not (state.up[node] and allowed[node]):
        return False
    if state.cpu_free[node] + room.cpu < pod.cpu or state.mem_free[node] + room.memory < pod.memory:
        return False
    if not pod.gpu_count:
        return True
    free = [int(v) + room.gpu.get(g, 0) for g, v in enumerate(state.gpu_free[node])]
    if pod.gpu_milli >= MILLI:
        if pod.gpu_memory and state.gpu_memory[node] < pod.gpu_memory:
            return False
        return sum(1 for v in free if v == MILLI) >= pod.gpu_count
    memory = [int(v) + room.gpu_memory.get(g, 0) for g, v in enumerate(state.gpu_mem_free[node])]
    return any(
        f >= pod.gpu_milli and (not pod.gpu_memory or m >= pod.gpu_memory)
        for f, m in zip(free, memory, strict=True)
    )


def _could_fit(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    ranked: Sequence[Ranked],
    state: ClusterState,
    placer: Placer,
    free_gpu: int,
    free_cpu: int,
) -> bool:
    """Whether the greedy pass can succeed: is there room and quota once it has
    taken every victim it would ever take?

    Most searches in a busy cluster fail, and most of those only after trying
    every candidate; this answers from the ledger and per-node sums alone,
    without unbinding or placing anything.  Quota and room only grow as victims
    go, so for a lone pod the answer is exact; for a gang it is a necessary
    condition (``Placer.could_fit``).
    """
    tenant = preemptor.tenant
    wanted = [r for r, amount in request.items() if amount > 0]
    # Per owner: how far above nominal it is on each requested resource (the
    # greedy pass stops taking an owner's workloads once none is above), and
    # what the victims taken from it give back.
    over: dict[str, list[int]] = {}
    done: set[str] = set()  # owners back within nominal: nothing more is taken from them
    given: dict[str, dict[str, int]] = {}
    bindings: list[Binding] = []
    for entry in ranked:
        run = entry[4]
        owner, usage = run.workload.tenant, run.usage
        if owner != tenant:
            if owner in done:
                continue
            above = over.get(owner)
            if above is None:
                nominal = ledger.tenants[owner].nominal
                above = over[owner] = [
                    ledger.used(owner, r) - nominal.get(r, 0) for r in wanted
                ]
                if not any(v > 0 for v in above):
                    done.add(owner)
                    continue
            for i, r in enumerate(wanted):
                above[i] -= usage.get(r, 0)
            if not any(v > 0 for v in above):
                done.add(owner)  # this one is taken; later ones of its are not
        back = given.get(owner)
        if back is None:
            back = given[owner] = dict.fromkeys(wanted, 0)
        for r in wanted:
            back[r] += usage.get(r, 0)
        bindings.extend(run.bindings)
    if not given:
        return False
    for owner, back in given.items():
        ledger.refund(owner, back)
    try:
        if not ledger.check(tenant, request).fits:
            return False
    finally:
        for owner, back in given.items():
            ledger.charge(owner, back)
    if free_gpu + sum(b.shape.gpu_total_milli for b in bindings) < preemptor.gpu_milli:
        return False
    if free_cpu + sum(b.shape.cpu for b in bindings) < sum(p.cpu for p in preemptor.pods):
        return False
    if len(preemptor.pods) == 1:
        pod = preemptor.pods[0]
        allowed = placer.allowed(state, preemptor, pod)
        freed: dict[int, _Freed] = {}
        for binding in bindings:
            _free(freed, binding)
        if any(_room_on(state, pod, allowed, node, room) for node, room in freed.items()):
            return True
        return bool(fit_mask(state, pod, allowed).any())
    return placer.could_fit(state, preemptor, freed=bindings)


def _borrows_any(tenant: TenantQuota, usage: Vector, request: Vector) -> bool:
    """Whether ``tenant`` uses more than nominal of a resource in ``request``."""
    return any(
        usage.get(r, 0) > tenant.nominal.get(r, 0) for r, amount in request.items() if amount > 0
    )
