"""The pending queue's buckets, and cluster trials that undo every change."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.domain.cluster import Binding
from shoal.policy.queue import PendingQueue, bucket_key
from tests.compiled import is_compiled
from tests.unit.builders import cluster, placer, workload


def test_buckets_group_identical_requests_oldest_first() -> None:
    jobs = [
        workload("c", "a", gpus=1, submit=3.0),
        workload("a", "a", gpus=1, submit=1.0),
        workload("b", "a", gpus=2, submit=2.0),
        workload("d", "a", gpus=1, priority=5, submit=0.5),
        workload("e", "b", gpus=1, submit=0.0),
    ]
    queue = PendingQueue(jobs)
    buckets = {b.key: [n for _, n, _ in b.entries] for b in queue.buckets()}
    assert buckets[bucket_key(jobs[0])] == ["a", "c"]
    assert len(buckets) == 4  # priority, size and tenant each make a bucket
    assert len(queue) == 5 and "c" in queue
    assert queue.discard("a") is jobs[1]
    assert queue.discard("a") is None
    assert [n for _, n, _ in next(iter(queue.buckets())).entries] == ["c"]
    # Requeued under its name: replaced, not doubled.
    queue.add(jobs[0])
    assert len(queue) == 4
    assert queue.get("b") is jobs[2]
    for job in list(queue):
        queue.discard(job.name)
    assert not queue and list(queue.buckets()) == []


def snapshot(state) -> list[np.ndarray]:
    return [getattr(state, a).copy() for a in (
        "cpu_free", "mem_free", "gpu_free", "gpu_mem_free", "gpu_left", "free_share",
        "whole_free", "max_free", "kinds", "up", "stamp")]


def test_a_trial_puts_every_row_back_even_on_error() -> None:
    state = cluster(8, 8, 4)
    how = placer(state)
    first = how.place(state, workload("x", "a", gpus=3))
    assert first is not None
    state.bind(first[0])
    before, releases = snapshot(state), state.releases
    with pytest.raises(RuntimeError), state.trial():
        state.unbind(first[0])
        with state.trial():  # nested: its own changes go, the outer ones stay
            state.bind(Binding(node=2, gpus=(0, 1), shape=first[0].shape))
            state.set_up(1, False)
        assert state.up[1] and state.gpu_free[2, 0] == 1000
        raise RuntimeError("boom")
    after = snapshot(state)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert state.releases == releases
    # A stamp handed out inside a trial is never handed out again.
    state.bind(Binding(node=2, gpus=(3,), shape=first[0].shape))
    assert state.stamp[2] > max(before[-1])


def test_gang_placement_leaves_the_state_as_it_was() -> None:
    state = cluster(8, 8)
    before = snapshot(state)
    assert placer(state).place(state, workload("g", "a", gpus=8, pods=2)) is not None
    assert placer(state).place(state, workload("h", "a", gpus=8, pods=3)) is None
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(state), strict=True))


def test_a_copy_is_independent_and_shares_capacities_and_stamps() -> None:
    from shoal.domain import cluster as cluster_module

    state = cluster(8, 8, 8)
    state.bind(Binding(0, (0, 1), workload("w", "a", gpus=2).pods[0]))
    clone = state.copy()
    # Every attribute is either copied or shared: none is left behind.
    if not is_compiled("shoal.domain.cluster"):
        listed = {*cluster_module._MUTABLE, *cluster_module._SHARED, "releases", "_journals"}
        assert set(vars(state)) == listed
    assert all(np.array_equal(a, b) for a, b in zip(snapshot(state), snapshot(clone), strict=True))
    assert clone.cpu_cap is state.cpu_cap  # scorers' caches see the same cluster
    assert clone.releases == state.releases
    clone.bind(Binding(1, (0,), workload("v", "a", gpus=1).pods[0]))
    assert state.whole_free[1] == 8 and clone.whole_free[1] == 7
    assert state.stamp[0] != 0 and clone.stamp[1] > state.stamp[0]
    state.bind(Binding(2, (0,), workload("u", "a", gpus=1).pods[0]))
    assert state.stamp[2] > clone.stamp[1]  # one counter: no stamp given twice
