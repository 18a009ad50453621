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
there, before anything is unbound or placed.  When the preemptor's pods are
placed exactly by a count of pods per node (``fit_is_exact``), the greedy
pass keeps that count up to date victim by victim and places once, at the
end.  A failed search says which releases cannot change its answer
(``Unfound``), so that its caller need not search again after them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

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
from shoal.policy.placement.gang import Free, RoomCount, fit_is_exact
from shoal.policy.quota import TenantQuota, Usage
from shoal.policy.running_table import Ints, RunningTable
from shoal.policy.snapshot import Running

__all__ = [
    "NO_CANDIDATES",
    "UNFOUND",
    "PreemptionPlan",
    "Running",
    "RunningTable",
    "Unfound",
    "Victim",
    "find_victims",
    "lost_work",
    "search",
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
    wanted: list[str],
) -> tuple[PreemptReason, bool] | None:
    """Why ``other``'s workloads may be evicted for ``tenant``, and whether only lower ones.

    ``wanted``: the resources the preemptor requests.
    """
    if other is None:
        return None
    if other.name == tenant.name:
        return ("priority", True) if policy.within_tenant == WithinTenant.LOWER_PRIORITY else None
    if tenant.cohort is None or other.cohort != tenant.cohort:
        return None
    held = usage.get(other.name)
    nominal = other.nominal
    if not held or not any(held.get(r, 0) > nominal.get(r, 0) for r in wanted):
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
    """The rows a search may evict, their lost work, and why each may go (ranked:
    cheapest loss first)."""

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
    """Rows the policy lets ``preemptor`` evict, with their lost work, not ranked yet
    (``_ranked``, ``_cheapest``); None when it may evict nothing.

    ``outranks``: under a las or srtf tenant ordering, whether
    the preemptor goes before one of its tenant's running workloads of the same
    priority (which may then be evicted, reason ``queue``).
    """
    tenants, usage = ledger.tenants, ledger.usage
    tenant = tenants[preemptor.tenant]
    policy = tenant.preemption
    borrows = not within_nominal(tenant, usage.get(tenant.name, {}), request)
    if borrows and outranks is None and all(
        level >= preemptor.priority for _, level in table.levels
    ):
        return None  # a borrower may only evict lower priorities, and none run
    wanted = [r for r, amount in request.items() if amount > 0]
    reasons: list[PreemptReason | None] = []
    lower_only: list[bool] = []
    for owner in table.tenants:
        rule = _rule(tenant, policy, borrows, tenants.get(owner), usage, wanted)
        reasons.append(None if rule is None else rule[0])
        lower_only.append(rule is not None and rule[1])
    own = table.tenant_code.get(tenant.name, -1)
    same_level = (
        outranks is not None and own >= 0 and reasons[own] == "priority" and lower_only[own]
    )
    # Which rows the rules allow, counted from the rows per owner and priority:
    # most searches of a busy cluster end here, with none.
    if not same_level and not any(
        reasons[code] is not None and (not lower_only[code] or level < preemptor.priority)
        for code, level in table.levels
    ):
        return None
    ok = np.array([reason is not None for reason in reasons], dtype=np.bool_)
    lower = np.array(lower_only, dtype=np.bool_)
    size = table.size
    owner_of = table.tenant[:size]
    priority = table.priority[:size]
    present = table.alive[:size] & ok[owner_of]
    present &= ~lower[owner_of] | (priority < preemptor.priority)
    queue: set[int] = set()
    same: Ints | None = None
    if same_level:
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
        for slot in same.tolist():
            if mask[slot]:
                if outranks is not None and outranks(table.run(slot)):
                    queue.add(slot)
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
    return _Candidates(rows, cost, reasons, queue)


def _ranked(found: _Candidates, table: RunningTable) -> _Candidates:
    """``found`` in the order of lost work, then the table's label: priority,
    latest start, name.

    Labels are distinct, so sorting by them and then, stably, by lost work is
    the whole order (as sorting on every key, in a fraction of the time).
    """
    rows, cost = found.rows, found.cost
    by_label = np.argsort(table.label[rows])
    rows, cost = rows[by_label], cost[by_label]
    order = np.argsort(cost, kind="stable")
    return _Candidates(rows[order], cost[order], found.reasons, found.queue)


def _cheapest(found: _Candidates, table: RunningTable, count: int) -> _Candidates | None:
    """The first candidates of ``_ranked(found)``: at least ``count`` of them (every one
    as cheap as the ``count``-th, so that the rest cost more), in that order; None
    when that would be all of them.

    Ranking only these costs a partition of the losses and a sort of a few,
    where ranking all sorts every candidate twice.
    """
    cost = found.cost
    if count >= len(cost):
        return None
    bound = np.partition(cost, count - 1)[count - 1]
    cheap = np.flatnonzero(cost <= bound)
    if len(cheap) >= len(cost):
        return None
    rows = found.rows[cheap]
    order = np.lexsort((table.label[rows], cost[cheap]))
    return _Candidates(rows[order], cost[cheap][order], found.reasons, found.queue)


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
    mine: BoolArray = owners == own
    if not wanted:
        return mine
    if mine.all():
        return np.ones(len(ranked), dtype=np.bool_)  # no other owner to cut off
    taken = mine.copy()
    theirs = np.flatnonzero(~mine)
    owners = owners[theirs]
    # How far above nominal each owner is on each wanted resource.
    above = np.zeros((len(table.tenants), len(wanted)), dtype=np.int64)
    for code in np.flatnonzero(np.bincount(owners, minlength=len(table.tenants))).tolist():
        name = table.tenants[code]
        nominal = ledger.tenants[name].nominal
        above[code] = [ledger.used(name, r) - nominal.get(r, 0) for r in wanted]
    zero = np.zeros(len(table.alive), dtype=np.int64)
    rows = ranked[theirs]
    use = np.stack([table.usage.get(r, zero)[rows] for r in wanted], axis=1)
    # Group by owner, keeping rank order within each group, and sum what was
    # taken before each row within its group.
    # Owner codes are small: as 16-bit numbers a stable sort is a radix sort.
    small = owners.astype(np.int16) if len(table.tenants) <= np.iinfo(np.int16).max else owners
    by_owner = np.argsort(small, kind="stable")
    grouped, amounts = owners[by_owner], use[by_owner]
    before = np.cumsum(amounts, axis=0) - amounts
    firsts = np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1])))
    lengths = np.diff(np.concatenate((firsts, [len(grouped)])))
    before -= np.repeat(before[firsts], lengths, axis=0)
    keep = np.empty(len(theirs), dtype=np.bool_)
    keep[by_owner] = (before < above[grouped]).any(axis=1)
    taken[theirs] = keep
    return taken


def _taken_at(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    table: RunningTable,
    pool: _Candidates,
) -> Ints:
    """The candidates of ``pool`` that ``_taken`` keeps when every one is ranked
    (``_ranked``), as positions in ``pool``, in no particular order.

    What is taken of another owner is a prefix of its candidates in rank
    order (the sum taken before a row only grows along it), usually short:
    an owner is cut off once it is back within nominal.  So each owner's
    cheapest candidates are ranked first (``PREFIX``, then eight times as
    many), and all of them only if the cut-off is not among those; the
    preemptor's own are all taken, unranked.
    """
    wanted = [r for r, amount in request.items() if amount > 0]
    owners = table.tenant[pool.rows]
    own = table.tenant_code.get(preemptor.tenant, -1)
    mine: BoolArray = owners == own
    if not wanted or mine.all():
        return np.flatnonzero(mine) if not wanted else np.arange(len(owners))
    parts = [np.flatnonzero(mine)]
    zero = np.zeros(len(table.alive), dtype=np.int64)
    for code in np.flatnonzero(np.bincount(owners, minlength=len(table.tenants))).tolist():
        if code == own:
            continue
        name = table.tenants[code]
        nominal = ledger.tenants[name].nominal
        held = ledger.usage.get(name, {})
        over = [held.get(r, 0) - nominal.get(r, 0) for r in wanted]
        if max(over) <= 0:
            continue  # within nominal already: not even its first candidate
        above = np.array(over)
        at = np.flatnonzero(owners == code)
        cost = pool.cost[at]
        count = PREFIX
        while True:
            if count < len(at):
                bound = np.partition(cost, count - 1)[count - 1]
                cheap = np.flatnonzero(cost <= bound)
            else:
                cheap = np.arange(len(at))
            rows = pool.rows[at[cheap]]
            ranked = cheap[np.lexsort((table.label[rows], cost[cheap]))]
            rows = pool.rows[at[ranked]]
            use = np.stack([table.usage.get(r, zero)[rows] for r in wanted], axis=1)
            before = np.cumsum(use, axis=0) - use
            cut = np.flatnonzero((before >= above).all(axis=1))
            if len(cut):
                parts.append(at[ranked[: int(cut[0])]])
                break
            if len(cheap) == len(at):
                parts.append(at)
                break
            count *= 8
    return np.concatenate(parts)


def _free_without(
    state: ClusterState, table: RunningTable, rows: Ints, gpu: bool, gpu_memory: bool
) -> Free:
    """The room every node would have with the workloads of ``rows`` gone (free GPU
    memory only if ``gpu_memory``: only pods that ask for some read it)."""
    n = len(state)
    pods = table.pods
    at = pods.positions(rows)
    nodes = pods["node"][at]
    cpu = state.cpu_free + np.bincount(
        nodes, weights=pods["cpu"][at], minlength=n
    ).astype(np.int64)
    memory = state.mem_free + np.bincount(
        nodes, weights=pods["memory"][at], minlength=n
    ).astype(np.int64)
    if not gpu:
        return Free(cpu, memory, state.gpu_free.copy(), state.gpu_mem_free.copy())
    width = state.max_gpus
    gpus = table.gpus
    at = gpus.positions(rows)
    flat = gpus["node"][at] * width + gpus["slot"][at]
    milli = state.gpu_free + np.bincount(
        flat, weights=gpus["milli"][at], minlength=n * width
    ).astype(np.int64).reshape(n, width)
    if not gpu_memory:
        return Free(cpu, memory, milli)
    memory_left = state.gpu_mem_free + np.bincount(
        flat, weights=gpus["memory"][at], minlength=n * width
    ).astype(np.int64).reshape(n, width)
    return Free(cpu, memory, milli, memory_left)


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
) -> bool | RoomCount:
    """Whether the greedy pass can succeed: is there room and quota once it has
    taken every victim it would ever take (``rows``)?  True if so; when it is
    room that lacks, the room count it would then have.

    Answered from the ledger and per-node sums alone, without unbinding or
    placing anything.  Quota and room only grow as victims go, so for a lone
    pod the answer is exact; for a gang it is a necessary condition
    (``Placer.could_fit``).
    """
    short = (
        free_gpu + int(table.gpu_total[rows].sum()) < preemptor.gpu_milli
        or free_cpu + int(table.cpu_total[rows].sum()) < sum(p.cpu for p in preemptor.pods)
    )
    if not short and not _quota_after(preemptor, request, ledger, table, rows):
        return False
    free = _free_without(state, table, rows, preemptor.gpu_milli > 0,
                         any(pod.gpu_memory for pod in preemptor.pods))
    if len(preemptor.pods) > 1 and bool(state.up.all()):
        # Every node is up: a count over them all is ``could_fit``'s answer
        # too, so one count serves both.
        room = RoomCount(state, placer, preemptor, free, np.ones(len(state), dtype=np.bool_))
        return True if not short and room.fits() else room
    if not short and _room_in(free, preemptor, state, placer):
        return True
    if len(preemptor.pods) == 1 and not fit_is_exact(preemptor):
        return False  # a count of pods would not be a necessary condition for it
    # What a later search could find at most, with these victims gone: nodes
    # that are down now (held in this cycle) may be up by then.
    return RoomCount(state, placer, preemptor, free, np.ones(len(state), dtype=np.bool_))


def _room_in(free: Free, preemptor: Workload, state: ClusterState, placer: Placer) -> bool:
    """Whether ``free`` could hold ``preemptor`` (exact for a lone pod, else ``could_fit``)."""
    if len(preemptor.pods) == 1:
        pod = preemptor.pods[0]
        return free.fits_somewhere(state, pod, placer.allowed(state, preemptor, pod))
    return placer.could_fit(state, preemptor, free=free)


def _quota_after(
    preemptor: Workload, request: Vector, ledger: QuotaLedger, table: RunningTable, rows: Ints
) -> bool:
    """Whether the preemptor's request fits its quota with the workloads of ``rows`` gone."""
    wanted = [r for r, amount in request.items() if amount > 0]
    owners = table.tenant[rows]
    codes = len(table.tenants)
    sums = {
        r: np.bincount(owners, weights=table.usage[r][rows], minlength=codes)
        for r in wanted if r in table.usage
    }
    given = {
        table.tenants[code]: {r: int(sums[r][code]) if r in sums else 0 for r in wanted}
        for code in np.flatnonzero(np.bincount(owners, minlength=codes)).tolist()
    }
    for owner, back in given.items():
        ledger.refund(owner, back)
    try:
        return ledger.check(preemptor.tenant, request).fits
    finally:
        for owner, back in given.items():
            ledger.charge(owner, back)


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
    found = search(preemptor, request, ledger, table, state, placer, now, outranks, claimed)
    return None if isinstance(found, Unfound) else found


class Unfound:
    """A search that found no victims, and which releases cannot change that.

    Releasing a running workload gives back its room and quota and can only
    shrink the candidates (its owner borrows less), so a failed search stays
    failed after releases of workloads it had already counted as freed, as
    long as whether the preemptor's tenant borrows stays the same (that
    decides which rules apply).  When what it lacked was room, it also stays
    failed after other releases as long as the room it saw plus theirs still
    cannot hold the preemptor.  See docs/scheduling.md, "What a cycle costs".
    """

    __slots__ = ("_counted", "any_release", "room")

    def __init__(
        self,
        counted: Collection[tuple[str, int]] = frozenset(),
        any_release: bool = False,
        room: RoomCount | None = None,
    ) -> None:
        # Made a set when first read: many failures are replaced before any release.
        self._counted = counted
        self.any_release = any_release
        """It failed for want of any candidate it may take: no release changes that."""
        self.room = room
        """When room is what it lacked: the pods the nodes could take with ``counted``
        gone (and, once ``survives`` added them, the releases since): a
        necessary condition for the preemptor to fit."""

    @property
    def counted(self) -> frozenset[tuple[str, int]]:
        """The workloads it counted as freed: name and ``Running.attempt``."""
        counted = self._counted
        if not isinstance(counted, frozenset):
            counted = self._counted = frozenset(counted)
        return counted

    def survives(self, released: Iterable[tuple[str, int, Sequence[Binding]]]) -> bool:
        """Whether it still fails after ``released`` (name, attempt, bindings) stopped.

        Meant for the same preemptor, request and tenants, and a preemptor's
        tenant that borrows as it did; when it survives, ``room`` has taken in the
        releases (when not, the caller drops it).
        """
        if self.any_release:
            return True
        counted, room = self.counted, self.room
        for name, attempt, held in released:
            if (name, attempt) in counted:
                continue
            if room is None:
                return False
            room.give(held, capped=True)  # it may have come after the search
            if room.fits():
                return False  # capped, the counts only grow: no later release undoes it
        return True


PREFIX = 32
"""Candidates ranked first, by a lone pod's search and per owner by ``_taken_at``
(then eight times as many, then all)."""

UNFOUND = Unfound()
"""A failure that any release may change (the greedy pass itself found no room)."""


def search(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    table: RunningTable,
    state: ClusterState,
    placer: Placer,
    now: float,
    outranks: Callable[[Running], bool] | None = None,
    claimed: Collection[str] = (),
) -> PreemptionPlan | Unfound:
    """``search_victims``, saying of a failure which releases it survives (``Unfound``)."""
    pool = _candidates(preemptor, request, ledger, table, now, outranks, claimed)
    if pool is None:
        return NO_CANDIDATES
    if not len(pool.rows):
        return Unfound(any_release=True)
    # Summed in place: a masked copy of every GPU costs several times the sum.
    up = state.up
    if up.all():
        free_gpu, free_cpu = int(state.gpu_free.sum()), int(state.cpu_free.sum())
    else:
        free_gpu = int(state.gpu_free.sum(where=up[:, None]))
        free_cpu = int(state.cpu_free.sum(where=up))
    if len(preemptor.pods) == 1 and fit_is_exact(preemptor):
        # A lone pod usually needs a victim or two: look among the cheapest
        # first.  The greedy pass takes candidates in order and stops at the
        # first that lets it fit, and the per-owner cut-off of a candidate
        # depends only on those before it; so when the cheapest candidates
        # would do, the plan is the one that ranking every candidate finds.
        count = PREFIX
        while (cheap := _cheapest(pool, table, count)) is not None:
            order = np.flatnonzero(_taken(preemptor, request, ledger, table, cheap.rows))
            if len(order) and _could_fit(preemptor, request, ledger, table, cheap.rows[order],
                                         state, placer, free_gpu, free_cpu) is True:
                plan = _greedy_counted(preemptor, request, ledger, state, placer, table,
                                       cheap, order, free_gpu, free_cpu)
                if plan is not None:
                    return plan
            count *= 8
    # The victims it would ever take, found owner by owner without ranking
    # every candidate; only they are ranked, and only if they would do.
    at = _taken_at(preemptor, request, ledger, table, pool)
    rows = pool.rows[at]
    if not len(rows):
        return Unfound(any_release=True)
    fits = _could_fit(preemptor, request, ledger, table, rows, state, placer, free_gpu, free_cpu)
    if fits is not True:
        room = fits if isinstance(fits, RoomCount) and not fits.fits() else None
        # Rows of running workloads: none of their entries is None.
        counted = cast(tuple[tuple[str, int], ...],
                       tuple(map(table.attempts.__getitem__, rows.tolist())))
        return Unfound(counted, room=room)
    found = _ranked(_Candidates(rows, pool.cost[at], pool.reasons, pool.queue), table)
    order = np.arange(len(rows))
    if fit_is_exact(preemptor):
        plan = _greedy_counted(
            preemptor, request, ledger, state, placer, table, found, order, free_gpu, free_cpu
        )
    else:
        ranked = (found.victim(table, int(i)) for i in order)
        plan = _greedy(preemptor, request, ledger, state, placer, ranked, free_gpu, free_cpu)
    return UNFOUND if plan is None else plan


def _greedy_counted(
    preemptor: Workload,
    request: Vector,
    ledger: QuotaLedger,
    state: ClusterState,
    placer: Placer,
    table: RunningTable,
    found: _Candidates,
    order: Ints,
    free_gpu: int,
    free_cpu: int,
) -> PreemptionPlan | None:
    """``_greedy`` for a preemptor whose room count is exact (``fit_is_exact``).

    Whether it fits is then a count of its pods per node, kept up to date on
    the nodes each victim frees or takes back (``RoomCount``), so neither pass
    unbinds or places anything: the victims are unbound and the preemptor
    placed once, at the end.  The victims and the placement are those of
    ``_greedy``: a placement depends only on the state it is made on, and
    every step that ``_greedy`` keeps leaves the state as the one that last
    placed found it.  Candidates are ``order`` (positions in ``found``); the
    passes read their rows of ``table``, and only the victims kept become
    ``Victim``s.

    Many candidates never change the count: none of their pods is on a node
    that could take one of the preemptor's even with every candidate gone
    (``_moves_room``), as when a gang of whole nodes ranks hundreds of small
    jobs on crowded nodes before the jobs that free whole nodes.  Their room
    is not counted, and the second pass tries a run of them in one quota
    check: the check only gets harder as usage is charged back, so if it
    holds with the whole run charged, it held for each of them in turn.
    """
    need_gpu, need_cpu = preemptor.gpu_milli, sum(pod.cpu for pod in preemptor.pods)
    tenant = preemptor.tenant
    room = RoomCount(state, placer, preemptor)
    runs = table.runs
    rows = found.rows[order]
    slots: list[int] = rows.tolist()
    gpus: list[int] = table.gpu_total[rows].tolist()
    cpus: list[int] = table.cpu_total[rows].tolist()
    costs: list[float] = found.cost[order].tolist()
    moves = (
        _moves_room(state, placer, preemptor, table, rows)
        if len(slots) > _FEW else [True] * len(slots)
    )
    chosen: list[int] = []  # indices into slots, in the order taken
    refunded: set[int] = set()  # the chosen ones whose usage is refunded in the ledger
    owed: list[int] = []  # chosen, not refunded yet: the ledger is read only once room fits

    def usage_of(taken: list[int]) -> dict[str, dict[str, int]]:
        # Charges add up: one per owner of the sums comes to the same ledger.
        return _usage_by_owner(table, rows[taken], request)

    def settle() -> None:
        for owner, vector in usage_of(owed).items():
            ledger.refund(owner, vector)
        refunded.update(owed)
        owed.clear()

    gpu_freed = cpu_freed = 0
    try:
        fits: bool | None = None  # room.fits(), when known since the last give
        for i, slot in enumerate(slots):
            run = runs[slot]
            assert run is not None
            chosen.append(i)
            owed.append(i)
            if moves[i]:
                room.give(run.bindings)
                fits = None
            gpu_freed += gpus[i]
            cpu_freed += cpus[i]
            if free_gpu + gpu_freed < need_gpu or free_cpu + cpu_freed < need_cpu:
                continue
            if fits is None:
                fits = room.fits()
            if fits:
                settle()
                if ledger.check(tenant, request).fits:
                    break
        else:
            return None
        # Drop the victims a later one made unnecessary, costliest first: room
        # first, the ledger only for those whose room is not needed.
        dropping = sorted(chosen, key=lambda i: -costs[i])
        at = alone = 0  # before ``alone``: tried one by one (a run that failed together)
        while at < len(dropping):
            i = dropping[at]
            at += 1
            run = runs[slots[i]]
            assert run is not None
            gpu, cpu = gpus[i], cpus[i]
            if free_gpu + gpu_freed - gpu < need_gpu or free_cpu + cpu_freed - cpu < need_cpu:
                continue
            if not moves[i] and at > alone:
                # The run of victims that move no room from here, each within
                # the totals with those before it dropped: tried together.
                batch, gpu_left, cpu_left = [i], gpu_freed - gpu, cpu_freed - cpu
                while at < len(dropping) and not moves[dropping[at]]:
                    j = dropping[at]
                    if (free_gpu + gpu_left - gpus[j] < need_gpu
                            or free_cpu + cpu_left - cpus[j] < need_cpu):
                        break
                    batch.append(j)
                    gpu_left, cpu_left = gpu_left - gpus[j], cpu_left - cpus[j]
                    at += 1
                if len(batch) > 1:
                    back = usage_of(batch)
                    for owner, vector in back.items():
                        ledger.charge(owner, vector)
                    if ledger.check(tenant, request).fits:
                        refunded.difference_update(batch)
                        gpu_freed, cpu_freed = gpu_left, cpu_left
                        continue
                    for owner, vector in back.items():
                        ledger.refund(owner, vector)
                    # Not all of them: each in turn, as the pass goes.
                    alone = at
                    at -= len(batch) - 1
            if not moves[i]:
                room_ok = True
            else:
                room.give(run.bindings, -1)
                room_ok = room.fits()
            if room_ok:
                ledger.charge(run.tenant, run.usage, 1, request)
                if ledger.check(tenant, request).fits:
                    refunded.discard(i)
                    gpu_freed, cpu_freed = gpu_freed - gpu, cpu_freed - cpu
                    continue
                ledger.refund(run.tenant, run.usage, request)
            if moves[i]:
                room.give(run.bindings)
        victims = [found.victim(table, int(order[i])) for i in chosen if i in refunded]
        with state.trial():
            for victim in victims:
                for binding in victim.running.bindings:
                    state.unbind(binding)
            bindings = placer.place(state, preemptor)
        assert bindings is not None, "an exact room count promised a placement"
    finally:
        for i in refunded:
            run = runs[slots[i]]
            assert run is not None
            ledger.charge(run.tenant, run.usage, 1, request)
    return PreemptionPlan(victims=tuple(victims), bindings=tuple(bindings))


def _usage_by_owner(table: RunningTable, rows: Ints, request: Vector) -> dict[str, dict[str, int]]:
    """What the workloads of ``rows`` use of ``request``'s resources, summed per owner
    (owners that use none of them included, with nothing)."""
    owners = table.tenant[rows]
    codes = len(table.tenants)
    present = np.flatnonzero(np.bincount(owners, minlength=codes)).tolist()
    sums: dict[str, dict[str, int]] = {table.tenants[code]: {} for code in present}
    for resource in request:
        column = table.usage.get(resource)
        if column is None:
            continue
        values = column[rows]
        by_owner = np.bincount(owners, weights=values, minlength=codes)
        used = np.bincount(owners, weights=values != 0, minlength=codes)
        for code in present:
            if used[code]:
                sums[table.tenants[code]][resource] = int(by_owner[code])
    return sums


_FEW = 16
"""Candidates below which ``_greedy_counted`` counts every one's room (finding
those that move none costs more than counting them)."""


def _moves_room(
    state: ClusterState, placer: Placer, preemptor: Workload, table: RunningTable, rows: Ints
) -> list[bool]:
    """Per row of ``rows``, whether giving its room back can change ``preemptor``'s
    room count: whether one of its pods is on a node that could take one of the
    preemptor's pods with every workload of ``rows`` gone.  A node's count only
    grows as room is freed, so on any other node it stays at none."""
    free = _free_without(state, table, rows, preemptor.gpu_milli > 0,
                         any(pod.gpu_memory for pod in preemptor.pods))
    reach = RoomCount(state, placer, preemptor, free).nodes()
    owners = table.pods.rows
    taken = np.zeros(table.size + 1, dtype=np.bool_)  # the last one stands for dropped entries
    taken[rows] = True
    hit = taken[owners] & reach[table.pods["node"]]
    moves = np.zeros(table.size + 1, dtype=np.bool_)
    moves[owners[hit]] = True
    result: list[bool] = moves[rows].tolist()
    return result


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
