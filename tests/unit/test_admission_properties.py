"""Properties of a cycle on random small clusters: capacity and quota are never exceeded."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.workload import PodShape, Workload
from shoal.policy import flavors
from shoal.policy.admission import CycleResult, Running, Snapshot, schedule
from shoal.policy.decisions import Preempt
from shoal.policy.quota import TenantQuota, total_usage
from tests.unit.builders import node, placer

MODELS = ("A100", "H100")
NAMES = ("t0", "t1", "t2")


@st.composite
def clusters(draw: st.DrawFn) -> ClusterState:
    sizes = draw(st.lists(st.sampled_from([0, 1, 2, 4, 8]), min_size=1, max_size=4))
    return ClusterState(
        [node(f"n{i}", g, draw(st.sampled_from(MODELS)), cpu=16) for i, g in enumerate(sizes)]
    )


@st.composite
def quotas(draw: st.DrawFn) -> dict[str, TenantQuota]:
    out = {}
    for name in NAMES:
        nominal = {"cpu": draw(st.integers(0, 24)) * 1000, "memory": 1 << 30}
        for model in draw(st.sets(st.sampled_from(MODELS), min_size=1)):
            nominal[f"gpu/{model}"] = draw(st.integers(0, 12)) * 500
        limit = st.none() | st.integers(0, 2).map(lambda gpus: gpus * 1000)
        out[name] = TenantQuota(
            name=name,
            cohort=draw(st.sampled_from([None, "c", "c"])),
            weight=draw(st.sampled_from([0.5, 1.0, 2.0])),
            nominal=nominal,
            borrowing_limit={r: draw(limit) for r in nominal},
            lending_limit={r: _at_most(draw(limit), amount) for r, amount in nominal.items()},
            strict_fifo=draw(st.booleans()),
        )
    return out


def _at_most(limit: int | None, nominal: int) -> int | None:
    return None if limit is None else min(limit, nominal)


@st.composite
def workloads(draw: st.DrawFn, prefix: str, priorities: tuple[int, ...]) -> list[Workload]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        gpus = draw(st.sampled_from([0, 0.25, 0.5, 1, 2]))
        shape = PodShape(
            cpu=draw(st.integers(0, 2)) * 1000,
            memory=1024,
            gpu_count=0 if gpus == 0 else max(1, int(gpus)),
            gpu_milli=0 if gpus == 0 else min(1000, round(gpus * 1000)),
        )
        out.append(
            Workload(
                name=f"{prefix}{i}",
                tenant=draw(st.sampled_from([*NAMES, "ghost"])),
                pods=(shape,) * draw(st.integers(1, 3)),
                priority=draw(st.sampled_from(priorities)),
                submit_time=float(draw(st.integers(0, 3))),
                preemptible=draw(st.booleans()),
            )
        )
    return out


def check_capacity(state: ClusterState, bindings: Iterable[Binding]) -> None:
    fresh = ClusterState(state.nodes)
    for binding in bindings:
        fresh.bind(binding)
    for free in (fresh.cpu_free, fresh.mem_free, fresh.gpu_free, fresh.gpu_mem_free):
        assert (free >= 0).all(), "a node is over capacity"


def check_quota(tenants: dict[str, TenantQuota], usage: dict[str, dict[str, int]]) -> None:
    for name, used in usage.items():
        tenant = tenants[name]
        for resource, amount in used.items():
            assert resource in tenant.nominal, f"{name} uses {resource} without quota"
            nominal = tenant.nominal[resource]
            limit = tenant.borrowing_limit.get(resource)
            if tenant.cohort is None:
                assert amount <= nominal
            elif limit is not None:
                assert amount <= nominal + limit
    for resource in {r for t in tenants.values() for r in t.nominal}:
        members = [t for t in tenants.values() if t.cohort == "c"]
        pool = sum(t.lendable(resource) for t in members)
        drawn = sum(
            max(0, usage.get(t.name, {}).get(resource, 0) - t.guaranteed(resource)) for t in members
        )
        assert drawn <= pool, f"cohort borrows {drawn} of {resource}, pool is {pool}"


def check_decisions(result: CycleResult, pending: list[Workload], running: list[Running]) -> None:
    decided = [d.workload for d in result.decisions if not isinstance(d, Preempt)]
    assert sorted(decided) == sorted(w.name for w in pending), "one decision per workload"
    by_name = {r.name: r for r in running}
    victims = [p.victim for p in result.preempted]
    assert len(victims) == len(set(victims))
    for victim in victims:
        assert by_name[victim].workload.preemptible


def admitted_as_running(result: CycleResult, pending: list[Workload]) -> list[Running]:
    by_name = {w.name: w for w in pending}
    return [
        Running(by_name[a.workload], a.bindings, a.usage, start_time=0.0) for a in result.admitted
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    state=clusters(),
    tenants=quotas(),
    first=workloads("w", (0, 10)),
    second=workloads("x", (0, 100)),
    scorer=st.sampled_from(["most-allocated", "least-allocated", "best-fit"]),
)
def test_cycles_never_overcommit_nodes_or_quota(
    state: ClusterState,
    tenants: dict[str, TenantQuota],
    first: list[Workload],
    second: list[Workload],
    scorer: str,
) -> None:
    how = placer(state, scorer)
    result = schedule(Snapshot(0.0, state, tenants, (), tuple(first)), how)
    check_decisions(result, first, [])
    running = admitted_as_running(result, first)
    bindings = [b for r in running for b in r.bindings]
    check_capacity(state, bindings)
    check_quota(tenants, total_usage((r.tenant, r.usage) for r in running))
    for admit in result.admitted:
        assert admit.usage == flavors.usage_of(state, admit.bindings)

    # A second cycle on top: victims keep running this cycle, so everything
    # running plus everything newly admitted must still fit.
    busy = state.copy()
    for binding in bindings:
        busy.bind(binding)
    before = busy.gpu_free.copy()
    again = schedule(Snapshot(50.0, busy, tenants, tuple(running), tuple(second)), how)
    assert np.array_equal(busy.gpu_free, before), "the snapshot's cluster must not change"
    check_decisions(again, second, running)
    bindings += [b for a in again.admitted for b in a.bindings]
    check_capacity(state, bindings)
    charges = [(r.tenant, r.usage) for r in running]
    charges += [(a.tenant, a.usage) for a in again.admitted]
    check_quota(tenants, total_usage(charges))
