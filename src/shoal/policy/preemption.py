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

The search reads running workloads from a ``RunningTable`` (columns), so
ranking, the per-owner cut-off and the room freed per node are computed for
all candidates at once; most searches in a busy cluster fail, and they fail
there, before anything is unbound or placed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

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
from shoal.policy.placement.gang import Free
from shoal.policy.quota import TenantQuota, Usage
from shoal.policy.running_table import Ints, RunningTable
from shoal.policy.snapshot import Running

__all__ = [
    "NO_CANDIDATES",
    "PreemptionPlan",
    "Running",
    "RunningTable",
    "Victim",
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


NO_CANDIDATES = PreemptionPlan((), ())
"""What a search answers when the policy lets the preemptor evict nothing at all
(as opposed to None: there were candidates, but no set of them makes room)."""


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
    running: Iterable[Running],
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
    found = search_victims(
        preemptor, request, ledger, RunningTable(running), state, placer, now
    )
    return None if found is NO_CANDIDATES else found


class _Candidates:
    """The rows a search may evict, cheapest loss first, and why each may go."""

    __slots__ = ("cost", "queue", "reasons", "rows")

    def __init__(self, rows: Ints, cost: np.ndarray, reasons: list[PreemptReason | None],
                 queue: set[int]) -> None:
        self.rows, self.cost, self.reasons, self.queue = rows, cost, reasons, queue

    def victim(self, table: RunningTable, at: int) -> Victim:
        slot = int(self.rows[at])
        reason = "queue" if slot in self.queue else self.reasons[int(table.tenant[slot])]
        assert reason is not None
        return Victim(table.run(slot), reason, float(self.cost[at]))


def _candidates(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    table: RunningTable,
    now: float,
    outranks: Callable[[Running], bool] | None,
    claimed: Collection[str],
) -> _Candidates | None:
    """Rows the policy lets ``preemptor`` evict, ranked; None when it may evict nothing.

    The rank is lost work, then lower priority, then the most recent start,
    then the name.  ``outranks``: under a las or srtf tenant ordering, whether
    the preemptor goes before one of its tenant's running workloads of the same
    priority (which may then be evicted, reason ``queue``).
    """
    tenants, usage = ledger.tenants, ledger.usage
    tenant = tenants[preemptor.tenant]
    policy = tenant.preemption
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    codes = len(table.tenants)
    ok = np.zeros(codes, dtype=np.bool_)
    lower = np.zeros(codes, dtype=np.bool_)
    reasons: list[PreemptReason | None] = []
    for code, owner in enumerate(table.tenants):
        rule = _rule(tenant, policy, borrows, tenants.get(owner), usage, request)
        reasons.append(None if rule is None else rule[0])
        if rule is not None:
            ok[code], lower[code] = True, rule[1]
    if not ok.any():
        return None
    size = table.size
    owner_of = table.tenant[:size]
    priority = table.priority[:size]
    present = table.alive[:size] & ok[owner_of]
    present &= ~lower[owner_of] | (priority < preemptor.priority)
    queue: set[int] = set()
    own = table.tenant_code.get(tenant.name, -1)
    same: Ints | None = None
    if outranks is not None and own >= 0 and reasons[own] == "priority" and lower[own]:
        # Under las or srtf a tenant's own jobs of the same priority may go too.
        same = np.flatnonzero(table.alive[:size] & (owner_of == own) & (priority == preemptor.priority))
        present[same] = True
    for name in claimed:
        slot = table.slot.get(name)
        if slot is not None:
            present[slot] = False
    if not present.any():
        return None
    mask = present & table.preemptible[:size]
    if same is not None:
        for slot in same:
            if mask[slot]:
                if outranks is not None and outranks(table.run(int(slot))):
                    queue.add(int(slot))
                else:
                    mask[slot] = False
    rows = np.flatnonzero(mask)
    start = table.start[rows]
    checkpoint = table.checkpoint[rows]
    interval = table.interval[rows]
    # lost_work() for every row, in the same float operations (Python's //
    # and numpy's floor_divide agree), so ties break exactly as one by one.
    with np.errstate(divide="ignore", invalid="ignore"):
        by_interval = start + np.floor_divide(now - start, interval) * interval
    saved = np.where(
        checkpoint >= start,
        np.minimum(checkpoint, now),
        np.where(interval > 0, by_interval, start),
    )
    cost = np.maximum(0.0, now - saved) * table.weight[rows]
    later_first = -start
    levels = table.priority[rows]
    names = table.name_key[rows]
    keys = [names[:, word] for word in range(names.shape[1] - 1, -1, -1)]
    order = np.lexsort((*keys, later_first, levels, cost))
    rows, cost = rows[order], cost[order]
    names = names[order]
    tied = (cost[1:] == cost[:-1]) & (levels[order][1:] == levels[order][:-1])
    tied &= later_first[order][1:] == later_first[order][:-1]
    tied &= (names[1:] == names[:-1]).all(axis=1)
    if tied.any():
        # Equal on every number and in the names' first bytes: the whole
        # name decides, as it did when candidates were tuples.
        edges = np.diff(np.concatenate(([0], tied.astype(np.int8), [0])))
        for first, last in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1),
                               strict=True):
            group = [int(slot) for slot in rows[first:last + 1]]
            group.sort(key=lambda slot: table.run(slot).name)
            rows[first:last + 1] = group
    return _Candidates(rows, cost, reasons, queue)


def _taken(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    table: RunningTable,
    ranked: Ints,
) -> BoolArray:
    """Which ranked rows the greedy pass would take if it never stopped early.

    As in Kueue, another tenant's workloads stop being candidates once the
    victims already taken from it bring it back within its nominal quota on
    every resource the preemptor requests: the last one taken is the one that
    gets it there.  The preemptor's own workloads are never cut off.
    """
    wanted = [r for r, amount in request.items() if amount > 0]
    owners = table.tenant[ranked]
    own = table.tenant_code.get(preemptor.tenant, -1)
    if not wanted:
        taken: BoolArray = owners == own
        return taken
    # How far above nominal each owner is on each wanted resource.
    above = np.zeros((len(table.tenants), len(wanted)), dtype=np.int64)
    for code in np.unique(owners):
        name = table.tenants[int(code)]
        if int(code) == own:
            continue
        nominal = ledger.tenants[name].nominal
        above[code] = [ledger.used(name, r) - nominal.get(r, 0) for r in wanted]
    zero = np.zeros(len(table.alive), dtype=np.int64)
    use = np.stack([table.usage.get(r, zero)[ranked] for r in wanted], axis=1)
    # Group by owner, keeping rank order within each group, and sum what was
    # taken before each row within its group.
    by_owner = np.argsort(owners, kind="stable")
    grouped, amounts = owners[by_owner], use[by_owner]
    before = np.cumsum(amounts, axis=0) - amounts
    firsts = np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1])))
    lengths = np.diff(np.concatenate((firsts, [len(grouped)])))
    before -= np.repeat(before[firsts], lengths, axis=0)
    keep = (before < above[grouped]).any(axis=1) | (grouped == own)
    taken = np.empty(len(ranked), dtype=np.bool_)
    taken[by_owner] = keep
    return taken


def _free_without(state: ClusterState, table: RunningTable, rows: Ints, gpu: bool) -> Free:
    """The room every node would have with the workloads of ``rows`` gone."""
    n = len(state)
    nodes = table.pod_node[rows].ravel()
    real = nodes >= 0
    nodes = nodes[real]
    cpu = state.cpu_free + np.bincount(
        nodes, weights=table.pod_cpu[rows].ravel()[real], minlength=n
    ).astype(np.int64)
    memory = state.mem_free + np.bincount(
        nodes, weights=table.pod_memory[rows].ravel()[real], minlength=n
    ).astype(np.int64)
    if not gpu:
        return Free(cpu, memory, state.gpu_free, state.gpu_mem_free)
    width = state.max_gpus
    gpu_nodes = table.gpu_node[rows].ravel()
    real = gpu_nodes >= 0
    flat = gpu_nodes[real] * width + table.gpu_slot[rows].ravel()[real]
    gpus = state.gpu_free + np.bincount(
        flat, weights=table.gpu_milli[rows].ravel()[real], minlength=n * width
    ).astype(np.int64).reshape(n, width)
    gpu_memory = state.gpu_mem_free + np.bincount(
        flat, weights=table.gpu_memory[rows].ravel()[real], minlength=n * width
    ).astype(np.int64).reshape(n, width)
    return Free(cpu, memory, gpus, gpu_memory)


def _could_fit(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    table: RunningTable,
    rows: Ints,
    state: ClusterState,
    placer: Placer,
    free_gpu: int,
    free_cpu: int,
) -> bool:
    """Whether the greedy pass can succeed: is there room and quota once it has
    taken every victim it would ever take (``rows``)?

    Answered from the ledger and per-node sums alone, without unbinding or
    placing anything.  Quota and room only grow as victims go, so for a lone
    pod the answer is exact; for a gang it is a necessary condition
    (``Placer.could_fit``).
    """
    tenant = preemptor.tenant
    if free_gpu + int(table.gpu_total[rows].sum()) < preemptor.gpu_milli:
        return False
    if free_cpu + int(table.cpu_total[rows].sum()) < sum(p.cpu for p in preemptor.pods):
        return False
    wanted = [r for r, amount in request.items() if amount > 0]
    owners = table.tenant[rows]
    given: dict[str, dict[str, int]] = {}
    for code in np.unique(owners):
        mine = rows[owners == code]
        given[table.tenants[int(code)]] = {
            r: int(table.usage[r][mine].sum()) if r in table.usage else 0 for r in wanted
        }
    for owner, back in given.items():
        ledger.refund(owner, back)
    try:
        if not ledger.check(tenant, request).fits:
            return False
    finally:
        for owner, back in given.items():
            ledger.charge(owner, back)
    free = _free_without(state, table, rows, preemptor.gpu_milli > 0)
    if len(preemptor.pods) == 1:
        pod = preemptor.pods[0]
        return free.fits_somewhere(state, pod, placer.allowed(state, preemptor, pod))
    return placer.could_fit(state, preemptor, free=free)


def search_victims(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    table: RunningTable,
    state: ClusterState,
    placer: Placer,
    now: float,
    outranks: Callable[[Running], bool] | None = None,
    claimed: Collection[str] = (),
) -> PreemptionPlan | None:
    """``find_victims`` on a cycle's ledger; ``ledger`` and ``state`` end as they began.

    Workloads named in ``claimed`` (victims already chosen this cycle) are not
    candidates.  Answers ``NO_CANDIDATES`` when the policy lets the preemptor
    evict nothing at all.  Victims are tried by refunding them in the ledger
    and unbinding them in a trial of ``state`` (no copies), one at a time, so
    each step costs one quota check and, once totals allow, one placement.
    """
    found = _candidates(preemptor, request, ledger, table, now, outranks, claimed)
    if found is None:
        return NO_CANDIDATES
    if not len(found.rows):
        return None
    taken = _taken(preemptor, request, ledger, table, found.rows)
    order = np.flatnonzero(taken)
    rows = found.rows[order]
    if not len(rows):
        return None
    up = state.up
    free_gpu, free_cpu = int(state.gpu_free[up].sum()), int(state.cpu_free[up].sum())
    if not _could_fit(preemptor, request, ledger, table, rows, state, placer, free_gpu, free_cpu):
        return None
    ranked = (found.victim(table, int(at)) for at in order)
    return _greedy(preemptor, request, ledger, state, placer, ranked, free_gpu, free_cpu)


def _greedy(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    state: ClusterState,
    placer: Placer,
    ranked: Iterable[Victim],
    free_gpu: int,
    free_cpu: int,
) -> PreemptionPlan | None:
    """Take ``ranked`` victims in order until the preemptor fits, then drop the
    ones a later victim made unnecessary, costliest first."""
    need_gpu, need_cpu = preemptor.gpu_milli, sum(pod.cpu for pod in preemptor.pods)
    tenant = preemptor.tenant
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
            for victim in ranked:
                ledger.refund(victim.running.tenant, victim.running.usage, request)
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


def _borrows_any(tenant: TenantQuota, usage: Vector, request: Vector) -> bool:
    """Whether ``tenant`` uses more than nominal of a resource in ``request``."""
    return any(
        usage.get(r, 0) > tenant.nominal.get(r, 0) for r, amount in request.items() if amount > 0
    )
