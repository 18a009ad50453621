"""Parked buckets: not tried while nothing could let them run, tried again once something could.

Cycles are run as a runtime runs them: one placer (its memo keeps the parked
buckets), one ``ReleaseLog``, admissions bound and releases logged between
cycles.  Which buckets a cycle tries is read from the quota checks it makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shoal.domain.cluster import ClusterState
from shoal.domain.workload import Workload
from shoal.policy.admission import CycleResult, Running, Snapshot, schedule
from shoal.policy.decisions import Admit, Pending
from shoal.policy.ledger import QuotaLedger
from shoal.policy.placement import Placer
from shoal.policy.queue import PendingQueue
from shoal.policy.snapshot import ReleaseLog
from tests.compiled import pure_python_only
from tests.unit.builders import cluster, placer, start, tenant, tenants, usage_of, workload


@contextmanager
def checks_made() -> Iterator[list[str]]:
    """The tenants whose requests a cycle checked against quota, in order."""
    made: list[str] = []
    original = QuotaLedger.check

    def check(self: QuotaLedger, name: str, request: dict[str, int]) -> object:
        made.append(name)
        return original(self, name, request)

    QuotaLedger.check = check  # type: ignore[method-assign,assignment]
    try:
        yield made
    finally:
        QuotaLedger.check = original  # type: ignore[method-assign]


class Runtime:
    """Just enough of a runtime: running workloads, a queue, a release log."""

    def __init__(self, state: ClusterState, quotas: dict[str, object]) -> None:
        self.state = state
        self.tenants = quotas
        self.placer: Placer = placer(state)
        self.log = ReleaseLog()
        self.running: dict[str, Running] = {}
        self.queue = PendingQueue()

    def run(self, work: Workload) -> None:
        self.running[work.name] = start(self.state, work, how=self.placer)

    def stop(self, name: str) -> None:
        run = self.running.pop(name)
        for binding in run.bindings:
            self.state.unbind(binding)
        self.log.add(name, run.attempt, run.bindings)

    def cycle(self) -> CycleResult:
        result = schedule(
            Snapshot(
                now=0.0,
                cluster=self.state,
                tenants=self.tenants,  # type: ignore[arg-type]
                running=tuple(self.running.values()),
                pending=self.queue,
                usage=usage_of(*self.running.values()),
                released=self.log,
            ),
            self.placer,
        )
        for decision in result.actions:
            if isinstance(decision, Admit):
                work = self.queue.discard(decision.workload)
                assert work is not None
                for binding in decision.bindings:
                    self.state.bind(binding)
                self.running[work.name] = Running(
                    workload=work, bindings=decision.bindings, usage=dict(decision.usage),
                    start_time=0.0,
                )
        return result


def pending_names(result: CycleResult) -> set[str]:
    return {d.workload for d in result.decisions if isinstance(d, Pending)}


@pure_python_only
def test_a_bucket_short_of_quota_waits_untried_until_enough_is_released() -> None:
    # One tenant, no cohort: 4 GPUs of quota, all in use by two jobs of 2.
    runtime = Runtime(cluster(8), tenants(tenant("a", 4)))
    runtime.run(workload("r1", "a", gpus=2))
    runtime.run(workload("r2", "a", gpus=2))
    runtime.queue.add(workload("big", "a", gpus=4, submit=1))
    first = runtime.cycle()
    assert pending_names(first) == {"big"}
    with checks_made() as made:
        again = runtime.cycle()
    assert made == []  # parked: nothing was released, so it is not tried
    assert pending_names(again) == {"big"}
    # 2 GPUs back: still 2 short, so still untried.
    runtime.stop("r1")
    with checks_made() as made:
        assert pending_names(runtime.cycle()) == {"big"}
    assert made == []
    # 4 back in all: tried, and admitted.
    runtime.stop("r2")
    with checks_made() as made:
        result = runtime.cycle()
    assert made == ["a"]
    assert [d.workload for d in result.admitted] == ["big"]


@pure_python_only
def test_a_bucket_short_of_room_is_tried_once_a_release_could_hold_it() -> None:
    # Quota aplenty; two nodes of 4 GPUs, each with 3 in use: no room for 2 GPUs.
    runtime = Runtime(cluster(4, 4), tenants(tenant("a", 100)))
    for i in range(2):
        runtime.run(workload(f"three{i}", "a", gpus=3))
    runtime.queue.add(workload("pair", "a", gpus=2, submit=1))
    assert pending_names(runtime.cycle()) == {"pair"}
    with checks_made() as made:
        assert pending_names(runtime.cycle()) == {"pair"}
    assert made == []
    # One stops: its node is free, room for the pair.
    runtime.stop("three0")
    result = runtime.cycle()
    assert [d.workload for d in result.admitted] == ["pair"]


@pure_python_only
def test_arrivals_into_a_parked_bucket_wait_with_it_and_a_new_bucket_is_tried() -> None:
    runtime = Runtime(cluster(8), tenants(tenant("a", 4), tenant("b", 4)))
    runtime.run(workload("r1", "a", gpus=4))
    runtime.queue.add(workload("a1", "a", gpus=2, submit=1))
    runtime.cycle()
    runtime.queue.add(workload("a2", "a", gpus=2, submit=2))
    runtime.queue.add(workload("b1", "b", gpus=2, submit=3))
    with checks_made() as made:
        result = runtime.cycle()
    assert made == ["b"]
    assert pending_names(result) == {"a1", "a2"}
    assert [d.workload for d in result.admitted] == ["b1"]


@pure_python_only
@pytest.mark.parametrize("change", ["reset", "tenants"])
def test_a_reset_or_new_tenants_try_every_bucket_again(change: str) -> None:
    runtime = Runtime(cluster(8), tenants(tenant("a", 4)))
    runtime.run(workload("r1", "a", gpus=4))
    runtime.queue.add(workload("big", "a", gpus=2, submit=1))
    runtime.cycle()
    if change == "reset":
        runtime.log.reset()  # a node came up, say: nothing before counts
    else:
        runtime.tenants = tenants(tenant("a", 6))
    with checks_made() as made:
        result = runtime.cycle()
    assert made == ["a"]
    if change == "tenants":
        assert [d.workload for d in result.admitted] == ["big"]
