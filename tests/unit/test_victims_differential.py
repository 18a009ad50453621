"""The vectorised victim search chooses exactly what the one-by-one search chose.

``victims_reference`` is the search as it was before ``RunningTable``: every
candidate a Python tuple, ranked by a tuple sort.  On random small clusters
(shared and whole GPUs, gangs, three tenants in a cohort with random quotas
and policies, ties in lost work) both must pick the same victims for the same
reasons, at the same cost, with the same bindings for the preemptor, and
leave the ledger and the cluster as they found them.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.domain.cluster import ClusterState
from shoal.domain.tenant import (
    BorrowWithinCohort,
    PreemptionPolicy,
    ReclaimWithinCohort,
    WithinTenant,
)
from shoal.domain.workload import Constraints
from shoal.policy import flavors, preemption
from shoal.policy.ledger import QuotaLedger
from shoal.policy.preemption import NO_CANDIDATES, PreemptionPlan, search_victims
from shoal.policy.quota import TenantQuota
from shoal.policy.running_table import RunningTable
from shoal.policy.snapshot import Running
from tests.unit import victims_reference
from tests.unit.builders import node, placer, usage_of, workload

NAMES = ("t0", "t1", "t2")
NOW = 3_600.0


@st.composite
def scenarios(draw: st.DrawFn, gangs: tuple[str, ...] = ("same", "spread", "mixed")
              ) -> tuple[object, ...]:
    state = ClusterState(
        [node(f"n{i}", draw(st.sampled_from([4, 8])), cpu=32)
         for i in range(draw(st.integers(2, 5)))]
    )
    quotas = {}
    for name in NAMES:
        policy = PreemptionPolicy(
            within_tenant=draw(st.sampled_from([*WithinTenant, WithinTenant.LOWER_PRIORITY])),
            reclaim_within_cohort=draw(
                st.sampled_from([*ReclaimWithinCohort, ReclaimWithinCohort.ANY])
            ),
            borrow_within_cohort=draw(
                st.sampled_from([*BorrowWithinCohort, BorrowWithinCohort.LOWER_PRIORITY])
            ),
        )
        gpus = draw(st.integers(1, 10)) * 1000
        limit = draw(st.none() | st.integers(0, 8).map(lambda g: g * 1000))
        quotas[name] = TenantQuota(
            name=name,
            cohort="c",
            nominal={"cpu": 200_000, "memory": 1 << 30, "gpu/A100": gpus},
            borrowing_limit={"cpu": None, "memory": None, "gpu/A100": limit},
            lending_limit={"cpu": None, "memory": None, "gpu/A100": None},
            preemption=policy,
            job_order=draw(st.sampled_from(["fifo", "fifo", "las"])),
        )
    how = placer(state)
    runs: list[Running] = []
    # Few distinct times, so that equal lost work (ties broken by name) is common.
    times = st.sampled_from([0.0, 600.0, 1_200.0, 3_000.0])
    for i in range(draw(st.integers(0, 24))):
        gpus = draw(st.sampled_from([0.25, 0.5, 1, 2, 4, 8]))
        pods = draw(st.sampled_from([1, 1, 1, 2])) if gpus >= 1 else 1
        work = workload(
            f"r{draw(st.integers(0, 99)):02d}-{i}",
            draw(st.sampled_from(NAMES)),
            gpus,
            pods=pods,
            priority=draw(st.sampled_from([0, 1, 2])),
            preemptible=draw(st.booleans() | st.just(True)),
        )
        bindings = how.place(state, work)
        if bindings is None:
            continue
        for binding in bindings:
            state.bind(binding)
        started = draw(times)
        checkpoint = draw(st.none() | times)
        runs.append(
            Running(
                workload=work,
                bindings=tuple(bindings),
                usage=flavors.usage_of(state, bindings),
                start_time=started,
                last_checkpoint=checkpoint,
                checkpoint_interval=draw(st.none() | st.sampled_from([300.0, 700.0])),
            )
        )
    shape = draw(st.sampled_from(gangs))
    gpus = draw(st.sampled_from([1, 2, 4] if shape != "same" else [0.5, 1, 2, 4, 8]))
    preemptor = workload(
        "new",
        draw(st.sampled_from(NAMES)),
        gpus,
        pods=draw(st.sampled_from([1, 1, 2, 3] if shape == "same" else [2, 3])) if gpus >= 1 else 1,
        priority=draw(st.sampled_from([0, 1, 2, 2, 3])),
    )
    # Gangs that a pod count does not place exactly: spread over nodes, or
    # of two pod shapes (the greedy pass then places at every step).
    if shape == "spread":
        preemptor = dataclasses.replace(
            preemptor, constraints=Constraints(anti_affinity="node")
        )
    elif shape == "mixed":
        other = workload("x", preemptor.tenant, draw(st.sampled_from([1, 2])))
        preemptor = dataclasses.replace(preemptor, pods=(*preemptor.pods, other.pods[0]))
    claimed = draw(st.sets(st.sampled_from([r.name for r in runs]), max_size=2)) if runs else set()
    return state, quotas, runs, preemptor, claimed


def _outranks(run: Running) -> bool:
    return sum(map(ord, run.name)) % 2 == 0


def _same(new: PreemptionPlan | None, old: PreemptionPlan | None) -> None:
    # The reference answers None for both "no candidates" and "none make room".
    new = None if new is NO_CANDIDATES else new
    old = None if old is NO_CANDIDATES else old
    assert (new is None) == (old is None), (new, old)
    if new is None or old is None:
        return
    assert [(v.running.name, v.reason, v.cost) for v in new.victims] == [
        (v.running.name, v.reason, v.cost) for v in old.victims
    ]
    assert new.bindings == old.bindings


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_table_search_equals_one_by_one(scenario: tuple[object, ...]) -> None:
    _check_against_reference(scenario)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(gangs=("spread", "mixed")))
def test_gangs_placed_step_by_step_equal_one_by_one(scenario: tuple[object, ...]) -> None:
    """Gangs whose pod count does not tell where they fit take the greedy pass
    that places at every step; it too chooses as the one-by-one search."""
    _check_against_reference(scenario)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(gangs=("same",)), st.sampled_from([1, 2, 3]))
def test_a_lone_pod_ranking_its_cheapest_candidates_first_chooses_the_same(
    scenario: tuple[object, ...], prefix: int
) -> None:
    """A lone pod's search first ranks only the cheapest few candidates (all of
    those that tie with the last of them included); with a prefix of one to
    three, most searches here go through it, and the plans are the reference's."""
    with mock.patch.object(preemption, "PREFIX", prefix):
        _check_against_reference(scenario)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(gangs=("same",)), st.sampled_from([1, 2, 3]))
def test_candidates_that_move_no_room_are_dropped_together_as_one_by_one(
    scenario: tuple[object, ...], prefix: int
) -> None:
    """The greedy pass over a room count leaves out the room of candidates on
    nodes that could not take a pod of the preemptor's even with every
    candidate gone, and tries to drop runs of them in one quota check; with
    that done for every search (``_FEW`` at 0), the plans are the reference's."""
    with mock.patch.object(preemption, "_FEW", 0), mock.patch.object(
        preemption, "PREFIX", prefix
    ):
        _check_against_reference(scenario)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from([1, 2, 3]))
def test_the_victims_taken_owner_by_owner_are_those_of_ranking_every_candidate(
    scenario: tuple[object, ...], prefix: int
) -> None:
    """Each owner's cut-off found among its cheapest candidates first (a prefix of
    one to three, then more) takes what ranking every candidate takes."""
    _, quotas, runs, preemptor, claimed = scenario
    assert isinstance(quotas, dict) and isinstance(runs, list) and isinstance(claimed, set)
    request = flavors.request(preemptor, "A100")  # type: ignore[arg-type]
    ledger = QuotaLedger(quotas, usage_of(*runs))
    table = RunningTable(runs)
    pool = preemption._candidates(preemptor, request, ledger, table, NOW, None, claimed)  # type: ignore[arg-type]
    if pool is None:
        return
    ranked = preemption._ranked(pool, table)
    whole = ranked.rows[preemption._taken(preemptor, request, ledger, table, ranked.rows)]  # type: ignore[arg-type]
    with mock.patch.object(preemption, "PREFIX", prefix):
        at = preemption._taken_at(preemptor, request, ledger, table, pool)  # type: ignore[arg-type]
    assert sorted(pool.rows[at].tolist()) == sorted(whole.tolist())
    assert len(set(at.tolist())) == len(at)


def _check_against_reference(scenario: tuple[object, ...]) -> None:
    state, quotas, runs, preemptor, claimed = scenario
    assert isinstance(state, ClusterState)
    assert isinstance(quotas, dict) and isinstance(runs, list) and isinstance(claimed, set)
    how = placer(state)
    request = flavors.request(preemptor, "A100")  # type: ignore[arg-type]
    usage = usage_of(*runs)
    outranks = _outranks if quotas[preemptor.tenant].job_order == "las" else None  # type: ignore[attr-defined]
    ledger = QuotaLedger(quotas, usage)
    before_usage = {t: dict(v) for t, v in ledger.usage.items()}
    before = state.gpu_free.copy(), state.cpu_free.copy()
    table = RunningTable(runs)
    new = search_victims(
        preemptor, request, ledger, table, state, how, NOW, outranks, claimed  # type: ignore[arg-type]
    )
    assert ledger.usage == before_usage
    assert np.array_equal(state.gpu_free, before[0]) and np.array_equal(state.cpu_free, before[1])
    others = [r for r in runs if r.name not in claimed]
    old = victims_reference.search_victims(
        preemptor, request, QuotaLedger(quotas, usage), others, state, how, NOW, outranks  # type: ignore[arg-type]
    )
    _same(new, old)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_a_kept_table_equals_a_fresh_one(scenario: tuple[object, ...], data: st.DataObject) -> None:
    """Rows removed, re-added and replaced (a victim no longer preemptible) read
    the same as a table built from scratch."""
    state, quotas, runs, preemptor, _ = scenario
    assert isinstance(runs, list) and isinstance(state, ClusterState) and isinstance(quotas, dict)
    kept = RunningTable(capacity=1)
    for run in runs:
        kept.add(run)
    gone = data.draw(st.sets(st.sampled_from([r.name for r in runs]), max_size=4)) if runs else set()
    for name in gone:
        kept.remove(name)
    live = [r for r in runs if r.name not in gone]
    if live:
        frozen = dataclasses.replace(
            live[0], workload=dataclasses.replace(live[0].workload, preemptible=False)
        )
        kept.add(frozen)
        live[0] = frozen
    how = placer(state)
    request = flavors.request(preemptor, "A100")  # type: ignore[arg-type]
    usage = usage_of(*live)
    plans = [
        search_victims(preemptor, request, QuotaLedger(quotas, usage), table, state, how, NOW)  # type: ignore[arg-type]
        for table in (kept, RunningTable(live))
    ]
    _same(plans[0], plans[1])
    assert sorted(r.name for r in kept) == sorted(r.name for r in live)
