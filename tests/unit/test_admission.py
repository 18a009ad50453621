"""One scheduling cycle: validation, ordering, quota, gang placement, preemption, FIFO."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.domain.cluster import ClusterState
from shoal.domain.workload import Workload
from shoal.policy.admission import CycleResult, PendingQueue, Running, Snapshot, schedule
from shoal.policy.decisions import Admit, Inadmissible, Pending, Preempt
from shoal.policy.quota import TenantQuota
from tests.unit.builders import A100, cluster, placer, start, tenant, tenants, workload


def run_cycle(
    quotas: dict[str, TenantQuota],
    state: ClusterState,
    pending: list[Workload],
    running: tuple[Running, ...] = (),
    scorer: str = "most-allocated",
    preempting: frozenset[str] = frozenset(),
) -> CycleResult:
    before = state.gpu_free.copy(), state.cpu_free.copy()
    snapshot = Snapshot(100.0, state, quotas, running, tuple(pending), preempting)
    result = schedule(snapshot, placer(state, scorer))
    assert np.array_equal(state.gpu_free, before[0]), "the snapshot's cluster must not change"
    assert np.array_equal(state.cpu_free, before[1])
    return result


def kinds(result: CycleResult) -> dict[str, str]:
    return {
        d.workload: type(d).__name__
        for d in result.decisions
        if isinstance(d, Admit | Pending | Inadmissible)
    }


ONE = tenants(tenant("a", 16, allowedPriorities=[0, "high"]))
# (id, workload, substring of the Inadmissible reason)
INADMISSIBLE = [
    ("unknown tenant", workload("w", "ghost"), "unknown tenant 'ghost'"),
    ("priority not allowed", workload("w", "a", priority=100), "priority 100 is not allowed"),
    ("no quota for the model", workload("w", "a", models=("H100",)), "no quota for gpu/H100"),
    ("more than the tenant can get", workload("w", "a", 6, pods=3), "could ever get"),
    ("larger than any node", workload("w", "a", 6), "larger than any node"),
    ("more than the nodes hold", workload("w", "a", 4, pods=3), "in all, more than"),
]


@pytest.mark.parametrize(
    ("work", "reason"), [c[1:] for c in INADMISSIBLE], ids=[c[0] for c in INADMISSIBLE]
)
def test_permanent_problems_are_inadmissible(work: Workload, reason: str) -> None:
    quotas = {**ONE, "small": tenant("small", 4)}
    result = run_cycle(quotas, cluster(4, 4), [work, workload("ok", "a")])
    decision = result.for_workload("w")
    assert isinstance(decision, Inadmissible)
    assert reason in decision.reason
    assert kinds(result)["ok"] == "Admit"


def test_gang_is_all_or_nothing() -> None:
    state = cluster(2, 2)
    quotas = tenants(tenant("a", 8), tenant("b", 8))
    running = (start(state, workload("r0", "b")), start(state, workload("r1", "b")))
    gang = workload("gang", "a", 1, pods=3)
    pair = workload("pair", "a", 1, pods=2, submit=1)
    result = run_cycle(quotas, state, [gang, pair], running)
    assert kinds(result) == {"gang": "Pending", "pair": "Admit"}
    assert "all 3 pods" in result.pending[0].reason
    # The pair got the two free GPUs: the gang held none of them.
    assert [b.node for b in result.admitted[0].bindings] == [1, 1]


@pytest.mark.parametrize("scorer", ["most-allocated", "best-fit"])
def test_fractional_gpus_share_one_gpu(scorer: str) -> None:
    quotas = tenants(tenant("a", 4))
    halves = [workload("h1", "a", 0.5), workload("h2", "a", 0.5, submit=1)]
    result = run_cycle(quotas, cluster(2, 2), halves, scorer=scorer)
    first, second = (a.bindings[0] for a in result.admitted)
    assert (first.node, first.gpus) == (second.node, second.gpus)
    assert [a.usage[A100] for a in result.admitted] == [500, 500]


def test_cohort_borrowing_and_lending_limit_in_a_cycle() -> None:
    quotas = tenants(tenant("a", 2, cohort="c"), tenant("b", 4, cohort="c", lending=1))
    pending = [workload(f"w{i}", "a", 1, submit=i) for i in range(5)]
    result = run_cycle(quotas, cluster(8), pending)
    assert [(a.workload, a.borrowing) for a in result.admitted] == [
        ("w0", False),
        ("w1", False),
        ("w2", True),
    ]
    assert kinds(result)["w3"] == "Pending"
    assert (
        "needs 1 GPU, a can get 0 GPU now (2 GPU nominal, 3 GPU in use, 1 GPU borrowable "
        "from cohort c)"
        in result.pending[0].reason
    )


def test_admitted_workloads_are_seen_by_later_ones() -> None:
    quotas = tenants(tenant("a", 8))
    result = run_cycle(quotas, cluster(6), [workload("x", "a", 4), workload("y", "a", 4, submit=1)])
    assert kinds(result) == {"x": "Admit", "y": "Pending"}
    assert "not enough free capacity" in result.pending[0].reason


def test_order_priority_then_fair_share() -> None:
    quotas = tenants(tenant("a", 1, cohort="c"), tenant("b", 1, cohort="c"), tenant("c", 2))
    state = cluster(4)
    running = (start(state, workload("a-old", "a", 1)),)
    pending = [
        workload("a-new", "a", 1, submit=0),  # a would borrow 1: share 1/2
        workload("b-new", "b", 1, submit=5),  # b stays within nominal: share 0
        workload("c-low", "c", 2, submit=0),
        workload("c-high", "c", 2, submit=9, priority=10),
    ]
    result = run_cycle(quotas, state, pending, running)
    assert [a.workload for a in result.admitted] == ["c-high", "b-new"]
    assert kinds(result) | {"c-low": "Pending", "a-new": "Pending"} == kinds(result)


def test_fair_share_order_follows_usage_from_one_cycle_to_the_next() -> None:
    """A runtime keeps its placer (and what its memo remembers, shares included)
    and its queue across cycles: when usage moves from one tenant to the other,
    so does the order."""
    quotas = tenants(*(tenant(name, 1, cohort="c") for name in "ab"), tenant("l", 2, cohort="c"))
    queue = PendingQueue([workload("a-new", "a", 1), workload("b-new", "b", 1, submit=5)])
    how = placer(cluster(4))
    admitted = []
    for busy in ("a", "b"):  # the tenant that borrows already, with one GPU left free
        state = cluster(4)
        running = (start(state, workload(f"{busy}-old", busy, 2)),
                   start(state, workload("l-old", "l", 1)))
        result = schedule(Snapshot(100.0, state, quotas, running, queue), how)
        admitted.append([a.workload for a in result.admitted])
    assert admitted == [["b-new"], ["a-new"]]


@pytest.mark.parametrize(
    ("queueing", "small"), [("BestEffortFIFO", "Admit"), ("StrictFIFO", "Pending")]
)
def test_fifo_modes(queueing: str, small: str) -> None:
    quotas = tenants(tenant("a", 2, cohort="c", queueing=queueing), tenant("b", 8, cohort="c"))
    state = cluster(4)
    running = (start(state, workload("r", "b", 1)),)
    # "small" would borrow nothing, so fair sharing alone puts it first; under
    # StrictFIFO the older "big" stays the head and, not fitting, blocks it.
    pending = [workload("big", "a", 4, submit=0), workload("small", "a", 1, submit=1)]
    result = run_cycle(quotas, state, pending, running)
    assert kinds(result) == {"big": "Pending", "small": small}
    if small == "Pending":
        assert result.pending[1] == Pending("small", "StrictFIFO: waiting behind big")


def test_preemption_decisions_and_victims_keep_their_room() -> None:
    quotas = tenants(tenant("a", 4, cohort="c"), tenant("b", 4, cohort="c"))
    state = cluster(8)
    running = (
        start(state, workload("b1", "b", 4), 0.0, 10.0),
        start(state, workload("b2", "b", 4), 0.0, 90.0),
    )
    pending = [
        workload("a1", "a", 4, submit=0),
        workload("a2", "a", 4, submit=1),  # would also need a victim
        workload("b3", "b", 1, priority=-1),  # must not take the victim's GPUs
    ]
    result = run_cycle(quotas, state, pending, running)
    assert result.decisions[:2] == (
        Preempt("b2", "b", "a1", "reclaim", 40.0),
        Pending("a1", "waiting for 1 victims to stop"),
    )
    assert [p.victim for p in result.preempted] == ["b2"]
    assert kinds(result) == {"a1": "Pending", "a2": "Pending", "b3": "Pending"}


def test_within_tenant_priority_preemption() -> None:
    quotas = tenants(tenant("a", 8))
    state = cluster(8)
    running = (start(state, workload("low", "a", 8), 0.0, 50.0),)
    result = run_cycle(quotas, state, [workload("high", "a", 2, priority=100)], running)
    assert result.preempted == (Preempt("low", "a", "high", "priority", 400.0),)


def test_non_preemptible_workloads_are_never_victims() -> None:
    quotas = tenants(tenant("a", 8))
    state = cluster(8)
    running = (start(state, workload("low", "a", 8, preemptible=False)),)
    result = run_cycle(quotas, state, [workload("high", "a", 2, priority=100)], running)
    assert result.preempted == ()
    assert result.pending[0].workload == "high"
    assert "gpu/A100" in result.pending[0].reason


def test_preemptor_already_preempting_waits_without_new_victims() -> None:
    quotas = tenants(tenant("a", 8))
    state = cluster(8)
    running = (start(state, workload("low", "a", 8)),)
    high = workload("high", "a", 2, priority=100)
    result = run_cycle(quotas, state, [high], running, preempting=frozenset({"high"}))
    assert result.decisions == (Pending("high", "waiting for preempted workloads to stop"),)


def test_a_victim_is_claimed_by_one_preemptor_only() -> None:
    quotas = tenants(tenant("a", 8))
    state = cluster(8)
    running = (
        start(state, workload("cheap", "a", 4), 0.0, 90.0),
        start(state, workload("dear", "a", 4), 0.0, 10.0),
    )
    pending = [workload(f"h{i}", "a", 4, priority=100, submit=i) for i in (1, 2)]
    result = run_cycle(quotas, state, pending, running)
    # h2 may not count on "cheap" again, and until it stops the quota it holds
    # and h1's reservation leave no room: h2 waits for the next cycle.
    assert [(p.victim, p.preemptor) for p in result.preempted] == [("cheap", "h1")]
    assert kinds(result) == {"h1": "Pending", "h2": "Pending"}
