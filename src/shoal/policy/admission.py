"""One scheduling cycle: pending workloads in, admissions and preemptions out.

Phases, in the manner of Kueue's scheduler:

1. *Validate* each pending workload: unknown tenant, a priority the tenant
   may not use, a resource it has no quota for, more than it could ever get,
   or a pod larger than any node make it ``Inadmissible`` for good.
2. *Order* them: nominated workloads (those that evicted others and have not
   run since) first, then higher priority, then the lower fair share after
   admission, then older; a StrictFIFO tenant's workloads keep its own
   priority-then-age order among the places they hold.
3. For each in turn: *quota* check, then gang *placement*.  An admitted
   workload is bound and charged, so later ones see it; the cycle works in a
   trial of the snapshot's cluster state (undone when it ends) and on its own
   quota ledger, so it copies neither.
4. If it does not fit, try *preemption*: victims get ``Preempt`` and the
   preemptor stays ``Pending`` until they stop.  The victims keep their
   resources in this cycle and the nodes the preemptor will use are held for
   it, so nothing else is admitted onto them, and the preemptor's request is
   reserved in its tenant's usage so later workloads cannot take the quota it
   is waiting for.  Until it runs it is *nominated*: later cycles try it first.
5. Otherwise ``Pending`` with the reason.  Under StrictFIFO a blocked head
   also holds back the tenant's later workloads; under BestEffortFIFO they
   still try.  Inadmissible workloads block nothing: they never run.

Every workload is all-or-nothing (gang or not), as Kueue admits whole jobs.

Cost: pending workloads come grouped in buckets of identical requests
(``policy.queue``); a bucket's order key is computed once, and once one of its
workloads finds no quota or room the rest of the bucket waits in bulk (the
cluster only fills and usage only grows within a cycle, so they would fail
the same way).  A bucket that failed stays *parked* across cycles until
something is given back that could let it run (``policy.parking``): only its
tenant's first parked bucket takes a turn, which fails without a try.  A
cycle's work is then about one step per bucket plus one per bucket that could
change and one per admission, however long the queue.  Decisions are the same
as trying every workload in turn.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import cast

from shoal.domain.cluster import Binding
from shoal.domain.workload import PodShape, Workload
from shoal.policy import fairshare, flavors, ordering
from shoal.policy.decisions import (
    Admit,
    CycleResult,
    Decision,
    Inadmissible,
    Pending,
    Preempt,
    Waiting,
)
from shoal.policy.ledger import LedgerCheck, QuotaLedger, QuotaTerms
from shoal.policy.parking import Park, Parked
from shoal.policy.placement import Placer
from shoal.policy.placement.gang import RoomCount
from shoal.policy.preemption import NO_CANDIDATES, UNFOUND, Unfound, search
from shoal.policy.queue import Bucket, PendingQueue
from shoal.policy.quota import TenantQuota, amount_text, ceiling, total_usage
from shoal.policy.running_table import RunningTable
from shoal.policy.snapshot import ReleaseLog, Running, Snapshot

__all__ = ["CycleResult", "PendingQueue", "Running", "Snapshot", "schedule"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What validation found for a bucket: its viable flavors and their quota charges."""

    flavors: tuple[flavors.Flavor, ...]
    requests: tuple[dict[str, int], ...]
    pods: tuple[tuple[PodShape, ...], ...]
    """The bucket's pods restricted to each flavor (``flavors.restrict``)."""
    rooms: tuple[int, ...]
    """Per flavor, a number for (flavor, pods, constraints): what no room depends on."""
    searches: tuple[tuple[str, int], ...]
    """Per flavor, the placer's memo key of a failed victim search: a number for what
    it depends on besides the cluster (tenant, priority, flavor, pods, constraints)."""

    last: dict[int, tuple[Workload, Workload]] = field(default_factory=dict, compare=False)
    """Per flavor, the last workload restricted and what it became: a bucket's head
    is restricted again and again (to place it, then to search for victims)."""

    def restrict(self, workload: Workload, at: int) -> Workload:
        """``flavors.restrict(workload, self.flavors[at])`` for a workload of the bucket."""
        if self.flavors[at] is None:
            return workload
        seen = self.last.get(at)
        if seen is not None and seen[0] is workload:
            return seen[1]
        restricted = replace(workload, pods=self.pods[at])
        self.last[at] = (workload, restricted)
        return restricted


def schedule(snapshot: Snapshot, placer: Placer) -> CycleResult:
    """Decide what to admit and preempt now; ``snapshot`` is left unchanged."""
    with snapshot.cluster.trial():
        return _Cycle(snapshot, placer).run()


class _Cycle:
    def __init__(self, snapshot: Snapshot, placer: Placer) -> None:
        self.snap = snapshot
        self.placer = placer
        # Bound to directly: schedule() runs the cycle in a trial of it.
        self.state = snapshot.cluster
        usage = snapshot.usage
        if usage is None:
            usage = total_usage((r.tenant, r.usage) for r in snapshot.running)
        terms = placer.memo.get("quota terms")
        self.ledger = QuotaLedger(
            snapshot.tenants, usage, terms if isinstance(terms, QuotaTerms) else None
        )
        placer.memo["quota terms"] = self.ledger.terms
        pending = snapshot.pending
        self.queue = pending if isinstance(pending, PendingQueue) else PendingQueue(pending)
        self.claimed: set[str] = set()
        self._table = snapshot.running_table
        self._lowest: float | None = None
        # Within a cycle the cluster only fills up, usage only grows and
        # victims are only claimed, so a request that found no room fails
        # again for an identical request: remember those.
        self.no_room: set[int] = set()  # _Plan.rooms
        # As in Kueue, only a tenant's head (its first workload that does not
        # fit) may preempt in a cycle; this bounds a cycle's preemption work
        # by the number of tenants, however long the queues are.
        self.preempt_tried: set[str] = set()
        self.blocked: dict[str, str] = {}
        # The release log does not change during a cycle: read its figures once.
        log = snapshot.released
        self._mark = log.count if log is not None else -1
        self._resets = log.resets if log is not None else 0
        self.decisions: list[Decision] = []
        self.admitted: list[str] = []
        # Buckets that failed in an earlier cycle and would fail again
        # (``policy.parking``): the placer's memo keeps them between cycles.
        parked = placer.memo.get("parked")
        self._epoch: tuple[object, ...] | None = None
        version = self._epoch = self.epoch(0)
        if not (
            isinstance(parked, Parked)
            and len(parked.buckets) <= _BUCKETS_KEPT
            and parked.carry(snapshot.released, version, _same, snapshot.tenants,
                             snapshot.preempting, snapshot.nominated, self.state, self.queue)
        ):
            parked = Parked(snapshot.released, version, snapshot.tenants, snapshot.preempting)
            placer.memo["parked"] = parked
        self.parking = parked
        self.parked = parked.buckets
        self.held = False
        self.waiting: list[Waiting] = []
        # Parked buckets that take no turn: all their workloads wait (CycleResult.parked).
        self.parked_rest: list[tuple[list[tuple[float, str, Workload]], Callable[[], str]]] = []
        # Why the last workload tried found no quota or room: the rest of its
        # bucket waits for the same reason.
        self.last_why: Callable[[], str] = str
        self.last_failure: object = None

    def run(self) -> CycleResult:
        # Entries end with a cursor, or (bucket, park) for a parked bucket's turn.
        heap: list[tuple[int, int, float, float, str, int, _Cursor | tuple[Bucket, Park]]] = []
        tick = itertools.count()
        strict: dict[str, list[_Cursor]] = {}
        failed: list[tuple[_Cursor, str, Callable[[], str], object]] = []
        nominated = self.snap.nominated
        # Tried on their own: nominated workloads go first, and workloads
        # waiting for their victims reserve quota where they stand.
        solo = self.snap.preempting | nominated
        # Looked up by name: scanning every bucket for them costs the queue.
        solos_in: dict[int, list[tuple[float, str]]] = {}
        for name in solo:
            where = self.queue.where(name)
            if where is not None:
                solos_in.setdefault(id(where[0]), []).append((where[1], name))
        share_of = self.shares()
        parked_by: dict[str, list[tuple[int, Bucket, Park]]] = {}
        for bucket in self.queue.buckets():
            park = self.parked.get(bucket)
            if park is not None:
                if bucket.entries[0][1] == park.head and id(bucket) not in solos_in:
                    # It would fail at any turn this cycle, untried.
                    parked_by.setdefault(bucket.key[0], []).append((bucket.key[1], bucket, park))
                    continue
                del self.parked[bucket]
            plan = self.validate(bucket)
            if isinstance(plan, str):
                self.decisions.extend(Inadmissible(name, plan) for _, name, _ in bucket.entries)
                continue
            tenant = self.snap.tenants[bucket.tenant]
            share = share_of(tenant.name, plan.requests[0])
            cursor = _Cursor(bucket, plan, solo)
            if tenant.strict_fifo or tenant.job_order != "fifo":
                strict.setdefault(tenant.name, []).append(cursor)
            for at, name in solos_in.get(id(bucket), ()):
                single = _Cursor.single(cursor, at, name)
                first = 0 if name in nominated else 1
                heapq.heappush(
                    heap, (first, -bucket.priority, share, at, name, next(tick), single)
                )
            head = cursor.peek()
            if head is not None:
                heapq.heappush(
                    heap, (1, -bucket.priority, share, head[0], head[1], next(tick), cursor)
                )
        for tenant_name, parked in parked_by.items():
            # Only the tenant's first parked bucket in the order needs its
            # turn (it may be the tenant's head, which tries preemption): the
            # others wait untried.  Priority comes first in the order, so
            # only the highest priority's shares are worked out.
            top = max([entry[0] for entry in parked]) if len(parked) > 1 else parked[0][0]
            best: tuple[tuple[int, int, float, float, str], Bucket, Park] | None = None
            for priority, bucket, park in parked:
                if priority == top:
                    share = share_of(tenant_name, cast(_Plan, park.plan).requests[0])
                    at, name, _ = bucket.entries[0]
                    key = (1, -top, share, at, name)
                    if best is None or key < best[0]:
                        best = (key, bucket, park)
            assert best is not None
            for _, bucket, park in parked:
                if bucket is not best[1]:
                    self.parked_rest.append((bucket.entries, park.why))
            key, bucket, park = best
            heapq.heappush(heap, (*key, next(tick), (bucket, park)))
        now, service = self.snap.now, self.snap.service
        streams = {
            name: _own_stream(self.snap.tenants[name], cursors, service, now)
            for name, cursors in strict.items()
        }
        while heap:
            _, _, share, _, _, _, item = heapq.heappop(heap)
            if isinstance(item, tuple):
                # A parked bucket's turn: its head fails untried (``fail_parked``).
                bucket, park = item
                if bucket.key[0] not in streams:
                    entries = bucket.entries
                    self.fail_parked(entries[0][2], _plan_of(park), park)
                    if len(entries) > 1:
                        self.waiting.append(Waiting(_Names(entries, 1, ()), park.why))
                    continue
                cursor = _Cursor(bucket, _plan_of(park), ())
                cursor.park = park
            else:
                cursor = item
            tenant = self.snap.tenants[cursor.bucket.tenant]
            stream = streams.get(tenant.name)
            if stream is not None:
                if tenant.strict_fifo and tenant.name in self.blocked:
                    continue  # the rest wait behind its head: listed at the end
                # This place in the order goes to the first workload in the
                # tenant's own order (StrictFIFO: its oldest of the highest
                # priority; las, srtf: see policy.ordering), whichever it is.
                cursor.advance()
                nxt = cursor.peek()
                if nxt is not None and cursor.solo is None:
                    heapq.heappush(heap, (1, -cursor.bucket.priority, share, nxt[0], nxt[1],
                                          next(tick), cursor))
                workload, plan = next(stream)
                self.try_admit(workload, plan)
                continue
            workload = cursor.workload()
            if cursor.park is not None:
                self.fail_parked(workload, cursor.plan, cursor.park)
                cursor.advance()
                if cursor.peek() is not None:
                    self.waiting.append(Waiting(cursor.rest(), cursor.park.why))
                continue
            fits = self.try_admit(workload, cursor.plan)
            cursor.advance()
            if cursor.solo is not None:
                continue
            if fits:
                nxt = cursor.peek()
                if nxt is not None:
                    heapq.heappush(heap, (1, -cursor.bucket.priority, share, nxt[0], nxt[1],
                                          next(tick), cursor))
                continue
            failed.append((cursor, workload.name, self.last_why, self.last_failure))
            if cursor.peek() is not None:
                self.waiting.append(Waiting(cursor.rest(), self.last_why))
        for name, stream in streams.items():
            rest = list(stream)
            if rest:
                reason = f"StrictFIFO: waiting behind {self.blocked.get(name)}"
                self.decisions.extend(Pending(w.name, reason) for w, _ in rest)
        if not self.held:
            for cursor, name, why, failure in failed:
                self.park(cursor.bucket, cursor.plan, name, why, failure)
        self.parking.admitted = tuple(self.admitted)
        return CycleResult(tuple(self.decisions), tuple(self.waiting), tuple(self.parked_rest))

    def shares(self) -> Callable[[str, dict[str, int]], float]:
        """``ledger.share_after`` of a tenant and request, as the cycle starts.

        Buckets of one tenant often ask for the same (their priorities
        differ), and a tenant's share only moves with its usage: the placer's
        memo keeps the shares of each tenant across cycles, until its usage
        differs from what they were worked out on.
        """
        kept = self.placer.memo.get("shares")
        if not (isinstance(kept, _Shares) and kept.terms is self.ledger.terms):
            kept = self.placer.memo["shares"] = _Shares(self.ledger.terms)
        seen = kept.by_tenant
        usage = self.ledger.usage
        checked: dict[str, dict[int, tuple[dict[str, int], float]]] = {}

        def share_of(tenant: str, request: dict[str, int]) -> float:
            known = checked.get(tenant)
            if known is None:
                mine = usage.get(tenant, {})
                entry = seen.get(tenant)
                if entry is None or entry[0] != mine:
                    entry = seen[tenant] = (dict(mine), {})
                known = checked[tenant] = entry[1]
            hit = known.get(id(request))
            # The request itself is kept with its share, so its id is not reused.
            if hit is not None and hit[0] is request:
                return hit[1]
            share = self.ledger.share_after(tenant, request)
            known[id(request)] = (request, share)
            return share

        return share_of

    # -- 1. validate -----------------------------------------------------------

    def validate(self, bucket: Bucket) -> _Plan | str:
        # The answer depends only on the bucket's key, its tenant's settings
        # and node capacities, so it is remembered across cycles, by bucket
        # (a bucket lives as long as it has workloads) and by key.
        tenant = self.snap.tenants.get(bucket.tenant)
        by_bucket = self.placer.memo.get("plans by bucket")
        if not isinstance(by_bucket, dict) or len(by_bucket) > _BUCKETS_KEPT:
            by_bucket = self.placer.memo["plans by bucket"] = {}
        seen = by_bucket.get(bucket)
        if seen is None:
            seen = self.placer.memo.get(("validate", bucket.key))
        if not (isinstance(seen, tuple) and seen[0] is tenant):
            seen = (tenant, self._validate(bucket.entries[0][2]))
            self.placer.memo[("validate", bucket.key)] = seen
        by_bucket[bucket] = seen
        result: _Plan | str = seen[1]
        return result

    def _validate(self, workload: Workload) -> _Plan | str:
        tenant = self.snap.tenants.get(workload.tenant)
        if tenant is None:
            return f"unknown tenant {workload.tenant!r}"
        if not workload.pods:
            return "workload has no pods"
        allowed = tenant.allowed_priorities
        if allowed is not None and workload.priority not in allowed:
            listed = ", ".join(str(p) for p in sorted(allowed))
            return (
                f"priority {workload.priority} is not allowed for tenant {tenant.name} ({listed})"
            )
        viable: list[flavors.Flavor] = []
        reasons: list[str] = []
        for flavor in flavors.candidates(workload, tenant):
            reason = self.impossible(workload, flavor)
            if reason is None:
                viable.append(flavor)
            else:
                reasons.append(reason)
        if viable:
            requests = tuple(self.interned(flavors.request(workload, f)) for f in viable)
            pods = tuple(flavors.restrict(workload, f).pods for f in viable)
            what = (workload.pods, workload.constraints)
            rooms = tuple(self.number(("room", f, *what)) for f in viable)
            searches = tuple(
                ("no_victims", self.number(("victims", tenant.name, workload.priority, f, *what)))
                for f in viable
            )
            return _Plan(tuple(viable), requests, pods, rooms, searches)
        if reasons:
            return reasons[0]
        models = sorted({m for pod in workload.pods for m in pod.models})
        wanted = ", ".join(f"gpu/{m}" for m in models) if models else "any GPU model"
        return f"tenant {tenant.name} has no quota for {wanted}"

    def number(self, key: tuple[object, ...]) -> int:
        """A number for ``key``, the same in every cycle (quick to hash)."""
        numbers = self.placer.memo.get("numbers")
        if not isinstance(numbers, dict):
            numbers = self.placer.memo["numbers"] = {}
        found = numbers.get(key)
        if found is None:
            found = numbers[key] = len(numbers)
        assert isinstance(found, int)
        return found

    def interned(self, request: dict[str, int]) -> dict[str, int]:
        """One object for equal requests, across buckets (the cycle then works out
        the fair share a request leads to once per tenant, not once per bucket)."""
        key = ("request", tuple(sorted(request.items())))
        seen = self.placer.memo.get(key)
        if isinstance(seen, dict):
            return seen
        self.placer.memo[key] = request
        return request

    def impossible(self, workload: Workload, flavor: flavors.Flavor) -> str | None:
        """Why ``workload`` could never run with ``flavor``, or None."""
        tenant = self.snap.tenants[workload.tenant]
        for resource, amount in sorted(flavors.request(workload, flavor).items()):
            if not tenant.has_quota(resource):
                return f"tenant {tenant.name} has no quota for {resource}"
            most = ceiling(self.snap.tenants, tenant.name, resource)
            if amount > most:
                return (
                    f"{resource}: requests {amount_text(resource, amount)}, more than tenant "
                    f"{tenant.name} could ever get ({amount_text(resource, most)})"
                )
        return flavors.never_fits(self.state, self.placer, flavors.restrict(workload, flavor))

    # -- 3.-5. quota, placement, preemption -------------------------------------

    def park(self, bucket: Bucket, plan: _Plan, head: str, why: Callable[[], str],
             failure: object) -> None:
        """Park a bucket whose head failed this cycle (single-flavor plans only)."""
        if len(plan.flavors) != 1:
            return
        if isinstance(failure, LedgerCheck):
            args = failure.args
            if args is None or failure.resource is None:
                return
            if args[0] == "no-quota":
                deficit = math.inf
            else:
                amount, free = args[3], args[5]
                assert isinstance(amount, int) and isinstance(free, int)
                deficit = float(amount - free)
            park = Park(head, why, failure.resource, deficit, plan.rooms[0], plan)
            self.parking.park(bucket, park, None)
        else:
            assert isinstance(failure, tuple)
            failed_workload = failure[0]
            assert isinstance(failed_workload, Workload)
            restricted = plan.restrict(failed_workload, 0)
            self.parking.park(bucket, Park(head, why, None, 0, plan.rooms[0], plan),
                              lambda: RoomCount(self.state, self.placer, restricted))

    def fail_parked(self, workload: Workload, plan: _Plan, park: Park) -> None:
        """A parked bucket's turn: it fails as ``try_admit`` would, without trying."""
        tenant = workload.tenant
        self.blocked.setdefault(tenant, workload.name)
        self.last_why = park.why
        if tenant not in self.preempt_tried and self.preempt(workload, plan):
            return
        self.decisions.append(Pending(workload.name, park.why))

    def try_admit(self, workload: Workload, plan: _Plan) -> bool:
        """Admit ``workload`` or record why not; True when it was admitted."""
        tenant = self.snap.tenants[workload.tenant]
        head = self.blocked.get(tenant.name)
        if tenant.strict_fifo and head is not None:
            self.decisions.append(Pending(workload.name, f"StrictFIFO: waiting behind {head}"))
            return False
        reasons: list[object] = []
        for at, (flavor, request) in enumerate(zip(plan.flavors, plan.requests, strict=True)):
            quota = self.ledger.check(tenant.name, request)
            if not quota.fits:
                reasons.append(quota)
                continue
            room_key = plan.rooms[at]
            bindings = None
            if room_key not in self.no_room:
                restricted = plan.restrict(workload, at)
                if self.placer.could_fit(self.state, restricted):
                    bindings = self.placer.place(self.state, restricted)
            if bindings is None:
                self.no_room.add(room_key)
                reasons.append((workload, flavor))
                continue
            self.admit(workload, bindings, quota.borrowing)
            return True
        self.blocked.setdefault(tenant.name, workload.name)
        self.last_why = _reason_of(reasons[0])
        self.last_failure = reasons[0]
        if workload.name in self.snap.preempting:
            # Keep its quota while its victims stop, as in the cycle that
            # preempted them: else a victim that stopped first is admitted
            # again into the room it just left, and preempted again.
            self.ledger.charge(workload.tenant, plan.requests[0])
            self.decisions.append(Pending(workload.name, "waiting for preempted workloads to stop"))
            return False
        if tenant.name not in self.preempt_tried and self.preempt(workload, plan):
            return False
        self.decisions.append(Pending(workload.name, self.last_why))
        return False

    def admit(self, workload: Workload, bindings: list[Binding], borrowing: bool) -> None:
        # Placement saw restricted pods; record the workload's own shapes.
        own = tuple(
            Binding(node=b.node, gpus=b.gpus, shape=pod)
            for b, pod in zip(bindings, workload.pods, strict=True)
        )
        for binding in own:
            self.state.bind(binding)
        usage = flavors.usage_of(self.state, own)
        self.ledger.charge(workload.tenant, usage)
        self.decisions.append(Admit(workload.name, workload.tenant, own, usage, borrowing))
        self.admitted.append(workload.name)

    def table(self) -> RunningTable:
        """Running workloads as columns, built on first use if the runtime keeps
        none (most cycles never search for victims)."""
        if self._table is None:
            self._table = RunningTable(self.snap.running)
        return self._table

    def lowest(self) -> float:
        """The lowest priority of a running workload (infinity when none runs)."""
        if self._lowest is None:
            if self._table is not None:
                levels = [level for _, level in self._table.levels]
            else:
                levels = [run.workload.priority for run in self.snap.running]
            self._lowest = min(levels, default=math.inf)
        return self._lowest

    def epoch(self, moment: float) -> tuple[object, ...]:
        """When a failed victim search may be trusted again (see ``Snapshot.epoch``)."""
        if moment == 0 and self._epoch is not None:
            return self._epoch
        if self.snap.epoch is not None:
            return ("epoch", self.snap.epoch, moment)
        return (self.state.lineage, (self.state.releases, moment), self.snap.tenants)

    def failed(
        self, unfound: Unfound, version: tuple[object, ...], moment: float, borrows: bool
    ) -> _Failed:
        log = self.snap.released
        return _Failed(version, unfound, log, log.count if log is not None else 0, moment,
                       borrows, log.resets if log is not None else 0)

    def still_fails(
        self, seen: _Failed, version: tuple[object, ...], moment: float, borrows: bool
    ) -> bool:
        """Whether a remembered failure holds now: nothing gave room back since, or
        only releases it survives (``Unfound.survives``), with the tenant borrowing as then."""
        log = self.snap.released
        if (
            log is not None
            and seen.log is log
            and seen.mark == self._mark
            and seen.resets == self._resets
            and seen.moment == moment
            and seen.borrows == borrows
        ):
            return True  # nothing given back since it last held
        if _same(seen.version, version):
            return True
        if (
            log is None
            or seen.log is not log
            or seen.resets != log.resets
            or seen.moment != moment
            or seen.borrows != borrows
        ):
            return False
        released = log.since(seen.mark)
        if released is None:
            return False
        if not seen.unfound.survives(released):
            # Releases since ``mark`` broke it and always will (its room count
            # took them in and fits now): keep it from counting them again.
            seen.unfound = UNFOUND
            return False
        seen.version, seen.mark = version, self._mark
        return True

    def outranks(self, workload: Workload) -> Callable[[Running], bool] | None:
        """Under las or srtf: whether ``workload`` goes before a running one of its tenant."""
        tenant = self.snap.tenants[workload.tenant]
        if tenant.job_order == "fifo":
            return None
        now, service = self.snap.now, self.snap.service
        mine = ordering.rank(
            tenant, workload, ordering.service_of(service, workload.name), None, now
        )

        def outranks(run: Running) -> bool:
            theirs = ordering.rank(
                tenant, run.workload, ordering.service_of(service, run.name), run.start_time, now
            )
            return theirs > mine

        return outranks

    def preempt(self, workload: Workload, plan: _Plan) -> bool:
        self.preempt_tried.add(workload.tenant)
        tenant = self.snap.tenants[workload.tenant]
        memo = self.placer.memo
        for at, request in enumerate(plan.requests):
            # A search that failed is not tried again until room comes back
            # that could change its answer (a workload it did not count as
            # freed stops, and with its room the preemptor might fit; a node
            # comes up) or the tenants change: the caller's placer remembers
            # it across cycles (docs/scheduling.md, "What a cycle costs").
            # Admissions alone do not count: they can add candidates (work
            # that found room the preemptor could not use), which a later
            # search will find, but retrying on each would cost a search per
            # head per cycle.
            memo_key = plan.searches[at]
            # Under las or srtf, running jobs move back in the order as they
            # run: time itself is relevant, and a failure holds for this instant only.
            fifo = tenant.job_order == "fifo"
            borrows = not self.ledger.within_nominal(tenant.name, request)
            if borrows and fifo and self.lowest() >= workload.priority:
                continue  # a borrower may only evict lower priorities, and none run
            moment = 0 if fifo else self.snap.now
            version = self._epoch if fifo and self._epoch is not None else self.epoch(moment)
            seen = memo.get(memo_key)
            if type(seen) is _Failed and (
                # still_fails' first test, inline: most parked heads take it every cycle.
                (seen.mark == self._mark and seen.log is self.snap.released
                 and seen.resets == self._resets and seen.moment == moment
                 and seen.borrows == borrows)
                or self.still_fails(seen, version, moment, borrows)
            ):
                continue
            found = search(
                plan.restrict(workload, at),
                request,
                self.ledger,
                self.table(),
                self.state,
                self.placer,
                self.snap.now,
                self.outranks(workload),
                self.claimed,
            )
            if found is NO_CANDIDATES:
                continue
            if isinstance(found, Unfound) or not found.victims:
                memo[memo_key] = self.failed(
                    found if isinstance(found, Unfound) else UNFOUND, version, moment, borrows
                )
                continue
            for victim in found.victims:
                run: Running = victim.running
                self.claimed.add(run.name)
                self.decisions.append(
                    Preempt(
                        run.name, run.tenant, workload.name, victim.reason, victim.lost_gpu_seconds
                    )
                )
            self.ledger.charge(workload.tenant, request)
            # Hold the nodes the preemptor will use for the rest of the cycle:
            # else a later workload takes the free part of its room, and next
            # cycle it evicts again (and the victims come back, and so on).
            self.held = True
            for binding in found.bindings:
                self.state.set_up(binding.node, False)
            count = len(found.victims)
            self.decisions.append(Pending(workload.name, f"waiting for {count} victims to stop"))
            return True
        return False


_BUCKETS_KEPT = 10_000
"""Buckets whose plans a placer's memo keeps by bucket (then it starts over)."""


class _Shares:
    """Shares after admission (``ledger.share_after``) per tenant and request, with
    the tenant's usage they were worked out on; valid for one ``QuotaTerms``."""

    __slots__ = ("by_tenant", "terms")

    def __init__(self, terms: QuotaTerms) -> None:
        self.terms = terms
        self.by_tenant: dict[str, tuple[dict[str, int], dict[int, tuple[dict[str, int], float]]]]
        self.by_tenant = {}


class _Failed:
    """A failed victim search, as the placer's memo keeps it across cycles."""

    __slots__ = ("borrows", "log", "mark", "moment", "resets", "unfound", "version")

    def __init__(self, version: tuple[object, ...], unfound: Unfound, log: ReleaseLog | None,
                 mark: int, moment: float, borrows: bool, resets: int) -> None:
        self.version = version
        """``_Cycle.epoch`` when it was last known to hold."""
        self.unfound = unfound
        self.log = log
        """The runtime's ``ReleaseLog`` (None: only ``version`` tells)."""
        self.mark = mark
        """Releases in ``log`` already accounted for."""
        self.moment = moment
        self.borrows = borrows
        """Whether the preemptor's tenant borrowed with the request, then."""
        self.resets = resets
        """``log.resets`` then: a reset since (a node came up) trusts nothing."""


class _Cursor:
    """A bucket being worked through in order, skipping workloads tried on their own."""

    __slots__ = ("at", "bucket", "park", "plan", "skip", "solo")

    def __init__(self, bucket: Bucket, plan: _Plan, skip: Collection[str]) -> None:
        self.bucket = bucket
        self.plan = plan
        self.skip = skip
        self.at = 0
        self.solo: str | None = None
        self.park: Park | None = None

    @classmethod
    def single(cls, parent: _Cursor, submit_time: float, name: str) -> _Cursor:
        """A cursor over one workload of ``parent``'s bucket."""
        cursor = cls(parent.bucket, parent.plan, ())
        cursor.solo = name
        cursor.at = next(i for i, e in enumerate(parent.bucket.entries) if e[1] == name)
        del submit_time
        return cursor

    def _settle(self) -> None:
        if self.solo is None and self.skip:
            entries = self.bucket.entries
            while self.at < len(entries) and entries[self.at][1] in self.skip:
                self.at += 1

    def peek(self) -> tuple[float, str, Workload] | None:
        if self.solo is not None:
            return None
        self._settle()
        entries = self.bucket.entries
        return entries[self.at] if self.at < len(entries) else None

    def workload(self) -> Workload:
        if self.solo is None:
            self._settle()
        return self.bucket.entries[self.at][2]

    def advance(self) -> None:
        self.at += 1

    def rest(self) -> _Names:
        return _Names(self.bucket.entries, self.at, self.skip)


class _Names:
    """The names of a bucket's workloads from a position on, read when called."""

    __slots__ = ("entries", "skip", "start")

    def __init__(self, entries: list[tuple[float, str, Workload]], start: int,
                 skip: Collection[str]) -> None:
        self.entries, self.start, self.skip = entries, start, skip

    def __call__(self) -> Iterator[str]:
        for _, name, _ in itertools.islice(self.entries, self.start, None):
            if name not in self.skip:
                yield name


def _own_stream(
    tenant: TenantQuota,
    cursors: list[_Cursor],
    service: Mapping[str, ordering.Service],
    now: float,
) -> Iterator[tuple[Workload, _Plan]]:
    """A tenant's workloads in its own order (StrictFIFO: priority, then age)."""
    merged: list[tuple[tuple[object, ...], Workload, _Plan]] = []
    for cursor in cursors:
        for _, _, workload in cursor.bucket.entries:
            if tenant.job_order == "fifo":
                order: tuple[object, ...] = fairshare.fifo_key(workload)
            else:
                own = ordering.service_of(service, workload.name)
                order = ordering.key(tenant, workload, own, now)
            merged.append((order, workload, cursor.plan))
    merged.sort(key=lambda item: item[0])
    for _, workload, plan in merged:
        yield workload, plan


def _plan_of(park: Park) -> _Plan:
    plan = park.plan
    assert isinstance(plan, _Plan)
    return plan


def _same(seen: tuple[object, ...], version: tuple[object, ...]) -> bool:
    """Equal epochs; objects (cluster lineage, tenants) compare by identity, not value."""
    if len(seen) != len(version):
        return False
    if version[0] == "epoch":
        return seen == version
    return seen[0] is version[0] and seen[1] == version[1] and seen[2] is version[2]


def _reason_of(why: object) -> Callable[[], str]:
    """The wording of a failed flavor, deferred: a quota check's, or no room."""
    if isinstance(why, tuple):
        workload, flavor = why
        return lambda: _no_room(workload, flavor)
    assert isinstance(why, LedgerCheck)
    return lambda: why.reason


def _no_room(workload: Workload, flavor: flavors.Flavor) -> str:
    where = f" on gpu/{flavor} nodes" if flavor else ""
    pods = len(workload.pods)
    what = (
        "the pod" if pods == 1 else f"all {pods} pods" + (" of the gang" if workload.gang else "")
    )
    return f"not enough free capacity{where} for {what}"
