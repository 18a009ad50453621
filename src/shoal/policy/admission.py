"""One scheduling cycle: pending workloads in, admissions and preemptions out.

Phases, in the manner of Kueue's scheduler:

1. *Validate* each pending workload: unknown tenant, a priority the tenant
   may not use, a resource it has no quota for, more than it could ever get,
   or a pod larger than any node make it ``Inadmissible`` for good.
2. *Order* them: higher priority first, then the lower fair share after
   admission, then older; a StrictFIFO tenant's workloads keep its own
   priority-then-age order among the places they hold.
3. For each in turn: *quota* check, then gang *placement* on a working copy
   of the cluster.  An admitted workload is bound there and charged, so later
   ones see it.
4. If it does not fit, try *preemption*: victims get ``Preempt`` and the
   preemptor stays ``Pending`` until they stop.  The victims keep their
   resources in this cycle, so nothing else is admitted onto them, and the
   preemptor's request is reserved in its tenant's usage so later workloads
   cannot take the quota it is waiting for.
5. Otherwise ``Pending`` with the reason.  Under StrictFIFO a blocked head
   also holds back the tenant's later workloads; under BestEffortFIFO they
   still try.  Inadmissible workloads block nothing: they never run.

Every workload is all-or-nothing (gang or not), as Kueue admits whole jobs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from shoal.domain.cluster import Binding
from shoal.domain.workload import Workload
from shoal.policy import fairshare, flavors
from shoal.policy.decisions import (
    Admit,
    CycleResult,
    Decision,
    Inadmissible,
    Pending,
    Preempt,
)
from shoal.policy.placement import Placer
from shoal.policy.preemption import find_victims, victim_tenants
from shoal.policy.quota import Usage, amount_text, ceiling, check, total_usage, usage_after
from shoal.policy.snapshot import Running, Snapshot

__all__ = ["CycleResult", "Running", "Snapshot", "schedule"]


@dataclass(frozen=True, slots=True)
class _Entry:
    workload: Workload
    flavors: tuple[flavors.Flavor, ...]


def schedule(snapshot: Snapshot, placer: Placer) -> CycleResult:
    """Decide what to admit and preempt now; ``snapshot`` is left unchanged."""
    return _Cycle(snapshot, placer).run()


class _Cycle:
    def __init__(self, snapshot: Snapshot, placer: Placer) -> None:
        self.snap = snapshot
        self.placer = placer
        # Copied on the first admission: most cycles in a busy cluster admit
        # nothing and never need their own copy.
        self.state = snapshot.cluster
        self._own_state = False
        if snapshot.usage is not None:
            self.usage: Usage = {t: dict(v) for t, v in snapshot.usage.items()}
        else:
            self.usage = total_usage((r.tenant, r.usage) for r in snapshot.running)
        self.claimed: set[str] = set()
        self._by_tenant: Mapping[str, Collection[Running]] | None = snapshot.running_by_tenant
        # Within a cycle the cluster only fills up, usage only grows and
        # victims are only claimed, so a request that found no room (or no
        # victims) fails again for an identical request: remember those.
        self.no_room: set[object] = set()
        self.no_victims: set[object] = set()
        # As in Kueue, only a tenant's head (its first workload that does not
        # fit) may preempt in a cycle; this bounds a cycle's preemption work
        # by the number of tenants, however long the queues are.
        self.preempt_tried: set[str] = set()
        self.blocked: dict[str, str] = {}
        self.decisions: list[Decision] = []

    def run(self) -> CycleResult:
        entries = []
        for workload in self.snap.pending:
            outcome = self.validate(workload)
            if isinstance(outcome, str):
                self.decisions.append(Inadmissible(workload.name, outcome))
            else:
                entries.append(outcome)
        for entry in self.order(entries):
            self.try_admit(entry)
        return CycleResult(tuple(self.decisions))

    # -- 1. validate -----------------------------------------------------------

    def validate(self, workload: Workload) -> _Entry | str:
        # The answer depends only on the workload, its tenant's settings and
        # node capacities, so it is remembered across cycles.
        tenant = self.snap.tenants.get(workload.tenant)
        key = ("validate", workload)
        seen = self.placer.memo.get(key)
        if isinstance(seen, tuple) and seen[0] is tenant:
            result: _Entry | str = seen[1]
            return result
        result = self._validate(workload)
        self.placer.memo[key] = (tenant, result)
        return result

    def _validate(self, workload: Workload) -> _Entry | str:
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
            return _Entry(workload, tuple(viable))
        if reasons:
            return reasons[0]
        models = sorted({m for pod in workload.pods for m in pod.models})
        wanted = ", ".join(f"gpu/{m}" for m in models) if models else "any GPU model"
        return f"tenant {tenant.name} has no quota for {wanted}"

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

    # -- 2. order --------------------------------------------------------------

    def order(self, entries: list[_Entry]) -> list[_Entry]:
        tenants = self.snap.tenants

        def key(entry: _Entry) -> fairshare.OrderKey:
            workload = entry.workload
            request = flavors.request(workload, entry.flavors[0])
            after = fairshare.share_after(tenants, self.usage, workload.tenant, request)
            return fairshare.order_key(workload, after)

        ordered = sorted(entries, key=key)
        # StrictFIFO: the tenant's workloads take the places they earned, but
        # in the tenant's own queue order, so its head is always tried first.
        for name, tenant in tenants.items():
            if not tenant.strict_fifo:
                continue
            slots = [i for i, e in enumerate(ordered) if e.workload.tenant == name]
            queue = sorted(
                (ordered[i] for i in slots), key=lambda e: fairshare.fifo_key(e.workload)
            )
            for slot, entry in zip(slots, queue, strict=True):
                ordered[slot] = entry
        return ordered

    # -- 3.-5. quota, placement, preemption -------------------------------------

    def try_admit(self, entry: _Entry) -> None:
        workload = entry.workload
        tenant = self.snap.tenants[workload.tenant]
        head = self.blocked.get(tenant.name)
        if tenant.strict_fifo and head is not None:
            self.decisions.append(Pending(workload.name, f"StrictFIFO: waiting behind {head}"))
            return
        reasons = []
        for flavor in entry.flavors:
            request = flavors.request(workload, flavor)
            quota = check(self.snap.tenants, self.usage, tenant.name, request)
            if not quota.fits:
                reasons.append(quota.reason)
                continue
            room_key = (flavor, workload.pods, workload.constraints)
            bindings = None
            if room_key not in self.no_room:
                bindings = self.placer.place(self.state, flavors.restrict(workload, flavor))
            if bindings is None:
                self.no_room.add(room_key)
                reasons.append(_no_room(workload, flavor))
                continue
            self.admit(workload, bindings, quota.borrowing)
            return
        self.blocked.setdefault(tenant.name, workload.name)
        if workload.name in self.snap.preempting:
            reason = "waiting for preempted workloads to stop"
            # Keep its quota while its victims stop, as in the cycle that
            # preempted them: else a victim that stopped first is admitted
            # again into the room it just left, and preempted again.
            request = flavors.request(workload, entry.flavors[0])
            self.usage = usage_after(self.usage, workload.tenant, add=request)
        elif tenant.name in self.preempt_tried or not self.preempt(entry):
            reason = reasons[0]
        else:
            return
        self.decisions.append(Pending(workload.name, reason))

    def admit(self, workload: Workload, bindings: list[Binding], borrowing: bool) -> None:
        # Placement saw restricted pods; record the workload's own shapes.
        own = tuple(
            Binding(node=b.node, gpus=b.gpus, shape=pod)
            for b, pod in zip(bindings, workload.pods, strict=True)
        )
        if not self._own_state:
            self.state, self._own_state = self.state.copy(), True
        for binding in own:
            self.state.bind(binding)
        usage = flavors.usage_of(self.state, own)
        self.usage = usage_after(self.usage, workload.tenant, add=usage)
        self.decisions.append(Admit(workload.name, workload.tenant, own, usage, borrowing))

    def by_tenant(self) -> Mapping[str, Collection[Running]]:
        """Running workloads per tenant, grouped on first use (most cycles never need it)."""
        if self._by_tenant is None:
            grouped: dict[str, list[Running]] = {}
            for run in self.snap.running:
                grouped.setdefault(run.tenant, []).append(run)
            self._by_tenant = grouped
        return self._by_tenant

    def preempt(self, entry: _Entry) -> bool:
        workload = entry.workload
        self.preempt_tried.add(workload.tenant)
        for flavor in entry.flavors:
            request = flavors.request(workload, flavor)
            owners = victim_tenants(workload, request, self.snap.tenants, self.usage)
            running = [
                r
                for owner in owners
                for r in self.by_tenant().get(owner, ())
                if r.name not in self.claimed
            ]
            if not running:
                continue
            key = (workload.tenant, workload.priority, flavor, workload.pods, workload.constraints)
            if key in self.no_victims:
                continue
            plan = find_victims(
                flavors.restrict(workload, flavor),
                request,
                self.snap.tenants,
                self.usage,
                running,
                self.state,
                self.placer,
                self.snap.now,
            )
            if plan is None or not plan.victims:
                self.no_victims.add(key)
                continue
            for victim in plan.victims:
                run: Running = victim.running
                self.claimed.add(run.name)
                self.decisions.append(
                    Preempt(
                        run.name, run.tenant, workload.name, victim.reason, victim.lost_gpu_seconds
                    )
                )
            self.usage = usage_after(self.usage, workload.tenant, add=request)
            count = len(plan.victims)
            self.decisions.append(Pending(workload.name, f"waiting for {count} victims to stop"))
            return True
        return False


def _no_room(workload: Workload, flavor: flavors.Flavor) -> str:
    where = f" on gpu/{flavor} nodes" if flavor else ""
    pods = len(workload.pods)
    what = (
        "the pod" if pods == 1 else f"all {pods} pods" + (" of the gang" if workload.gang else "")
    )
    return f"not enough free capacity{where} for {what}"
