"""What lets victim searches skip work, held to what it stands for.

* ``RoomCount`` is ``Placer.could_fit`` kept up to date node by node, and for
  a workload that ``fit_is_exact`` it tells exactly whether a placement exists;
* the flat entries of a ``RunningTable`` kept through adds, removals and
  replacements give the room a fresh table gives;
* a failed search that ``Unfound.survives`` some releases fails again when
  searched after them (same instant, same tenants, the preemptor's tenant
  borrowing as before), also when one of them came after the search;
* a ``ReleaseLog`` forgets what came before a reset.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.workload import Constraints, Workload
from shoal.policy import flavors
from shoal.policy.ledger import QuotaLedger
from shoal.policy.placement.gang import Free, RoomCount, fit_is_exact
from shoal.policy.preemption import NO_CANDIDATES, Unfound, search, within_nominal
from shoal.policy.preemption import _free_without as free_without
from shoal.policy.running_table import RunningTable
from shoal.policy.snapshot import ReleaseLog, Running
from tests.unit.builders import node, placer, usage_of, workload
from tests.unit.test_victims_differential import NOW, scenarios

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def filled(draw: st.DrawFn) -> tuple[ClusterState, list[list[Binding]], Workload]:
    """A small cluster with pods bound on it, and a workload to place."""
    state = ClusterState(
        [node(f"n{i}", draw(st.sampled_from([4, 8])), cpu=16) for i in range(draw(st.integers(1, 4)))]
    )
    how = placer(state)
    held: list[list[Binding]] = []
    for i in range(draw(st.integers(0, 12))):
        gpus = draw(st.sampled_from([0, 0.25, 0.5, 1, 2, 4]))
        work = workload(f"w{i}", "t", gpus, cpu=draw(st.sampled_from([1, 2, 4])))
        bindings = how.place(state, work)
        if bindings is not None:
            for binding in bindings:
                state.bind(binding)
            held.append(bindings)
    gpus = draw(st.sampled_from([0, 0.5, 1, 2, 4, 8]))
    wanted = workload("new", "t", gpus, pods=draw(st.integers(1, 3)) if gpus >= 1 else 1,
                      cpu=draw(st.sampled_from([1, 4, 8])))
    how_spread = draw(st.sampled_from(["none", "none", "node", "mixed"]))
    if how_spread == "node":
        wanted = dataclasses.replace(wanted, constraints=Constraints(anti_affinity="node"))
    elif how_spread == "mixed":
        wanted = dataclasses.replace(wanted, pods=(*wanted.pods, workload("x", "t", 1).pods[0]))
    return state, held, wanted


@SETTINGS
@given(filled(), st.data())
def test_a_room_count_answers_as_could_fit_and_exactly_when_it_says_so(
    case: tuple[ClusterState, list[list[Binding]], Workload], data: st.DataObject
) -> None:
    state, held, wanted = case
    how = placer(state)
    room = RoomCount(state, how, wanted)
    gone: list[list[Binding]] = []
    for step in range(data.draw(st.integers(0, 6))):
        if held and (not gone or data.draw(st.booleans())):
            bindings = held.pop(data.draw(st.integers(0, len(held) - 1)))
            room.give(bindings)
            gone.append(bindings)
        elif gone:
            bindings = gone.pop(data.draw(st.integers(0, len(gone) - 1)))
            room.give(bindings, -1)
            held.append(bindings)
        del step
    with state.trial():
        for bindings in gone:
            for binding in bindings:
                state.unbind(binding)
        counted = Free.of(state)
        expected = all(
            int((counted.pods_per_node(state, pod) * how.allowed(state, wanted, pod)
                 ).clip(max=1 if len(wanted.pods) > 1 and wanted.constraints.anti_affinity != "none"
                        else None).sum()) >= wanted.pods.count(pod)
            for pod in set(wanted.pods)
        )
        assert room.fits() == expected
        if len(wanted.pods) > 1:
            assert room.fits() == how.could_fit(state, wanted)
        if fit_is_exact(wanted):
            assert room.fits() == (how.place(state, wanted) is not None)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_kept_entries_give_the_room_a_fresh_table_gives(
    scenario: tuple[object, ...], data: st.DataObject
) -> None:
    state, _, runs, _, _ = scenario
    assert isinstance(state, ClusterState) and isinstance(runs, list)
    kept = RunningTable(capacity=1)
    live: dict[str, Running] = {}
    # Many rounds of removals and re-adds, so that dropped entries pile up and
    # the entry columns are compacted on the way.
    for _ in range(data.draw(st.integers(1, 6))):
        for run in runs:
            if run.name not in live or data.draw(st.booleans()):
                kept.add(run)
                live[run.name] = run
        for name in data.draw(st.sets(st.sampled_from(sorted(live)), max_size=6)) if live else ():
            kept.remove(name)
            del live[name]
    fresh = RunningTable(live.values())
    for table in (kept, fresh):
        assert sorted(r.name for r in table) == sorted(live)
    take = sorted(data.draw(st.sets(st.sampled_from(sorted(live)), max_size=8))) if live else []
    rooms = [
        free_without(state, table, np.array([table.slot[n] for n in take], dtype=np.int64),
                     True, True)
        for table in (kept, fresh)
    ]
    for attr in ("cpu", "memory", "gpu", "gpu_memory"):
        assert np.array_equal(getattr(rooms[0], attr), getattr(rooms[1], attr))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_a_failure_that_survives_releases_fails_again_after_them(
    scenario: tuple[object, ...], data: st.DataObject
) -> None:
    state, quotas, runs, preemptor, claimed = scenario
    assert isinstance(state, ClusterState) and isinstance(quotas, dict)
    assert isinstance(runs, list) and isinstance(claimed, set) and isinstance(preemptor, Workload)
    if data.draw(st.booleans()):
        # Quota to spare: failures are for want of room.
        quotas = {
            name: dataclasses.replace(q, nominal={**q.nominal, "gpu/A100": 100_000})
            for name, q in quotas.items()
        }
    how = placer(state)
    request = flavors.request(preemptor, "A100")
    found = search(preemptor, request, QuotaLedger(quotas, usage_of(*runs)), RunningTable(runs),
                   state, how, NOW, None, claimed)
    if not isinstance(found, Unfound) or not runs:
        return
    tenant = quotas[preemptor.tenant]
    borrowed = not within_nominal(tenant, usage_of(*runs).get(tenant.name, {}), request)
    gone = data.draw(st.sets(st.sampled_from([r.name for r in runs]), min_size=1, max_size=2))
    left = [r for r in runs if r.name not in gone]
    usage = usage_of(*left)
    if borrowed != (not within_nominal(tenant, usage.get(tenant.name, {}), request)):
        return  # the rules that apply changed: the memory does not hold then
    released = [(r.name, r.attempt, r.bindings) for r in runs if r.name in gone]
    if data.draw(st.booleans()):
        # A workload that came after the search and went again: it gives back
        # room that the search had seen free.
        ghost = workload("ghost", preemptor.tenant, data.draw(st.sampled_from([0.5, 1, 2, 8])))
        bindings = how.place(state, ghost)
        if bindings is not None:
            released.insert(data.draw(st.integers(0, len(released))), ("ghost", 1, bindings))
    if not found.survives(released):
        return
    with state.trial():
        for run in runs:
            if run.name in gone:
                for binding in run.bindings:
                    state.unbind(binding)
        again = search(preemptor, request, QuotaLedger(quotas, usage), RunningTable(left),
                       state, how, NOW, None, claimed - gone)
    assert again is NO_CANDIDATES or isinstance(again, Unfound)


def test_a_release_log_forgets_what_came_before_a_reset_or_beyond_what_it_keeps() -> None:
    log = ReleaseLog(kept=2)
    log.add("a", 1, ())
    mark = log.count
    log.add("b", 1, ())
    assert log.since(mark) == [("b", 1, ())]
    log.reset()
    assert log.since(mark) is None
    assert log.since(log.count) == []
    for name in "cdef":
        log.add(name, 1, ())
    assert log.count == 6
    assert log.since(2) is None  # no longer kept
    assert log.since(5) == [("f", 1, ())]


def test_room_given_back_twice_never_counts_for_less() -> None:
    """A workload that took room after a failed search and gave it back is added
    to room the search had seen free: capped at capacity, the count only grows."""
    state = ClusterState([node("n0", 8, cpu=16)])
    how = placer(state)
    room = RoomCount(state, how, workload("big", "t", 8))
    assert room.fits()
    ghost = how.place(state, workload("ghost", "t", 1))
    assert ghost is not None
    room.give(ghost, capped=True)
    assert room.fits()
