"""Victim choice: least lost work first, tenant policies, minimal victim sets."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.policy import flavors, preemption
from shoal.policy.preemption import PreemptionPlan, find_victims, lost_work
from shoal.policy.quota import TenantQuota
from shoal.policy.snapshot import Running
from tests.unit.builders import cluster, placer, start, tenant, tenants, usage_of, workload

NOW = 100.0
# Running job: (name, tenant, gpus, priority, start, last checkpoint, preemptible)
Job = tuple[str, str, float, int, float, float | None, bool]


def job(name: str, gpus: float, prio: int = 0, ckpt: float | None = None, **kw: object) -> Job:
    return (
        name,
        str(kw.get("tenant", "a")),
        gpus,
        prio,
        float(kw.get("start", 0.0)),  # type: ignore[arg-type]
        ckpt,
        bool(kw.get("preemptible", True)),
    )


def plan_for(
    quotas: dict[str, TenantQuota],
    jobs: list[Job],
    who: str,
    gpus: float,
    prio: int,
    node_gpus: int = 8,
) -> PreemptionPlan | None:
    state = cluster(node_gpus)
    how = placer(state)
    runs: list[Running] = []
    for name, owner, size, priority, started, ckpt, preemptible in jobs:
        work = workload(name, owner, size, priority=priority, preemptible=preemptible)
        runs.append(start(state, work, started, ckpt, how))
    before = state.gpu_free.copy()
    preemptor = workload("new", who, gpus, priority=prio)
    request = flavors.request(preemptor, "A100")
    plan = find_victims(preemptor, request, quotas, usage_of(*runs), runs, state, how, NOW)
    assert np.array_equal(state.gpu_free, before), "find_victims must not change the state"
    return plan


SOLO = tenants(tenant("a", 8))
# (id, running jobs, GPUs and priority of the preemptor, expected victims)
WITHIN_TENANT = [
    (
        "more recent checkpoint loses less",
        [job("x", 4, ckpt=50), job("y", 4, ckpt=90)],
        4,
        100,
        {"y"},
    ),
    ("never checkpointed loses its whole run", [job("x", 4), job("y", 4, start=80)], 4, 100, {"y"}),
    ("fewer GPUs lose less work", [job("x", 2), job("y", 6)], 2, 100, {"x"}),
    (
        "equal loss: lower priority first",
        [job("x", 4, 10, ckpt=50), job("y", 4, 0, ckpt=50)],
        4,
        100,
        {"y"},
    ),
    (
        "equal loss and priority: latest started",
        [job("x", 4, ckpt=50), job("y", 4, ckpt=50, start=40)],
        4,
        100,
        {"y"},
    ),
    (
        "two victims when one is not enough",
        [job("x", 4, ckpt=90), job("y", 2, ckpt=80), job("z", 2, ckpt=70)],
        6,
        100,
        {"x", "y"},
    ),
    (
        "a cheap victim made unneeded is dropped",
        [job("x", 1, ckpt=99), job("y", 4, ckpt=90), job("z", 3, preemptible=False)],
        4,
        100,
        {"y"},
    ),
    (
        "non-preemptible is never chosen",
        [job("x", 4, ckpt=99, preemptible=False), job("y", 4)],
        4,
        100,
        {"y"},
    ),
    ("same priority is not preempted", [job("x", 8, 100)], 4, 100, None),
    ("nothing works: no victims", [job("x", 8, preemptible=False)], 4, 100, None),
]


@pytest.mark.parametrize(
    ("jobs", "gpus", "prio", "expected"),
    [case[1:] for case in WITHIN_TENANT],
    ids=[case[0] for case in WITHIN_TENANT],
)
def test_within_tenant_victims_minimise_lost_work(
    jobs: list[Job], gpus: float, prio: int, expected: set[str] | None
) -> None:
    plan = plan_for(SOLO, jobs, "a", gpus, prio)
    if expected is None:
        assert plan is None
        return
    assert plan is not None
    assert {v.running.name for v in plan.victims} == expected
    assert {v.reason for v in plan.victims} == {"priority"}
    assert sum(b.shape.gpu_total_milli for b in plan.bindings) == gpus * 1000


def test_victims_that_free_no_usable_room_stay_when_the_quota_needs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three cheap jobs on a node that a non-preemptible job keeps too full for the
    preemptor free no room it could use, but their quota is what it lacks: the
    pass that drops unneeded victims tries them together, finds the quota
    short, and keeps each one."""
    monkeypatch.setattr(preemption, "_FEW", 0)  # count which candidates move room in any search
    state = cluster(8, 8)
    how = placer(state)
    quotas = tenants(tenant("a", 8), tenant("b", 8))
    runs = [start(state, workload("held", "b", 5, preemptible=False), 0.0, None, how)]
    runs += [start(state, workload(f"s{i}", "a", 1), 90.0 + i, None, how) for i in range(3)]
    runs.append(start(state, workload("big", "a", 4), 0.0, None, how))
    assert {b.node for run in runs[:4] for b in run.bindings} == {0}
    assert runs[4].bindings[0].node == 1  # n1 has room for the preemptor already
    preemptor = workload("new", "a", 4, priority=1)
    request = flavors.request(preemptor, "A100")
    plan = find_victims(preemptor, request, quotas, usage_of(*runs), runs, state, how, NOW)
    assert plan is not None
    assert sorted(v.running.name for v in plan.victims) == ["s0", "s1", "s2"]
    assert [b.node for b in plan.bindings] == [1]


def test_within_tenant_never_protects_own_jobs() -> None:
    quotas = tenants(tenant("a", 8, preemption={"withinTenant": "Never"}))
    assert plan_for(quotas, [job("x", 8)], "a", 4, 100) is None


def cohort(**a_policy: str) -> dict[str, TenantQuota]:
    return tenants(
        tenant("a", 4, cohort="c", preemption=a_policy),
        tenant("b", 2, cohort="c"),
        tenant("idle", 4, cohort="c"),
    )


B_BORROWS = [job("b1", 2, tenant="b", ckpt=10), job("b2", 2, tenant="b", ckpt=90)]
FILL = job("idle1", 2, tenant="idle")  # within its nominal quota: never a victim
A_FULL = job("a1", 4, 9, tenant="a")  # a at its nominal quota: more is borrowing
# (id, tenants, running jobs on one 8-GPU node, GPUs and priority of a's job, victims)
COHORT_CASES = [
    ("reclaim: cheapest borrowed job", cohort(), [*B_BORROWS, FILL], 4, 0, {"b2": "reclaim"}),
    ("reclaim Never", cohort(reclaimWithinCohort="Never"), [*B_BORROWS, FILL], 4, 0, None),
    (
        "reclaim LowerPriority, equal priority",
        cohort(reclaimWithinCohort="LowerPriority"),
        [*B_BORROWS, FILL],
        4,
        0,
        None,
    ),
    (
        "reclaim LowerPriority, lower priority",
        cohort(reclaimWithinCohort="LowerPriority"),
        [*B_BORROWS, FILL],
        4,
        5,
        {"b2": "reclaim"},
    ),
    (
        "reclaim stops once the owner is back at nominal",
        cohort(),
        [
            job("b1", 2, tenant="b", ckpt=99),
            job("b2", 2, tenant="b", ckpt=98),
            job("idle1", 3, tenant="idle"),
        ],
        4,
        0,
        None,
    ),
    ("borrowing preemptor may not reclaim", cohort(), [A_FULL, *B_BORROWS], 2, 5, None),
    (
        "borrowWithinCohort LowerPriority",
        cohort(borrowWithinCohort="LowerPriority"),
        [A_FULL, *B_BORROWS],
        2,
        5,
        {"b2": "borrow"},
    ),
    (
        "borrowWithinCohort needs a lower priority",
        cohort(borrowWithinCohort="LowerPriority"),
        [A_FULL, *B_BORROWS],
        2,
        0,
        None,
    ),
    (
        "tenant within nominal is never reclaimed",
        cohort(),
        [job("b1", 2, tenant="b"), job("idle1", 4, tenant="idle")],
        4,
        0,
        None,
    ),
]


@pytest.mark.parametrize(
    ("quotas", "jobs", "gpus", "prio", "expected"),
    [case[1:] for case in COHORT_CASES],
    ids=[case[0] for case in COHORT_CASES],
)
def test_cohort_victims_follow_policy(
    quotas: dict[str, TenantQuota],
    jobs: list[Job],
    gpus: float,
    prio: int,
    expected: dict[str, str] | None,
) -> None:
    plan = plan_for(quotas, jobs, "a", gpus, prio)
    if expected is None:
        assert plan is None
        return
    assert plan is not None
    assert {v.running.name: v.reason for v in plan.victims} == expected


@pytest.mark.parametrize(
    ("gpus", "cpu", "saved", "expected"),
    [(2, 1, 40.0, 60 * 2000), (0.5, 1, None, 100 * 500), (0, 8, 90.0, 10 * 8.0)],
    ids=["gpu-milli-seconds", "fraction-never-saved", "cpu-only-fallback"],
)
def test_lost_work(gpus: float, cpu: float, saved: float | None, expected: float) -> None:
    run = Running(workload("w", "a", gpus, cpu=cpu), (), {}, 0.0, saved)
    assert lost_work(run, NOW) == pytest.approx(expected)
