"""Replay engine: reclaim, checkpoints, lost work, node failures, on a virtual clock."""

from __future__ import annotations

import pytest

from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.workload import PodShape, Workload
from shoal.policy.quota import TenantQuota
from shoal.sim.replay import NodeFailure, run_replay
from shoal.sim.results import entitlements, replay_result


def pool(count: int, gpus: int) -> list:
    spec = NodePoolSpec(count=count, cpu=32, memory="128Gi", gpus=GpuSpec(model="A100", count=gpus))
    return expand_pool("gpu", spec)


def quota(name: str, gpus: int, cohort: str | None = "lab") -> TenantQuota:
    return TenantQuota.equal_share(
        name, cohort, {"cpu": 16_000, "memory": 65_536, "gpu/A100": gpus * 1000}
    )


def job(name: str, tenant: str, gpus: int, at: float, duration: float, *,
        priority: int = 100, checkpoint: float | None = None, pods: int = 1) -> Workload:
    shape = PodShape(cpu=1000, memory=1024, gpu_count=gpus, gpu_milli=1000)
    return Workload(name=name, tenant=tenant, pods=(shape,) * pods, priority=priority,
                    submit_time=at, duration=duration, checkpoint_interval=checkpoint)


def test_owner_reclaims_borrowed_gpus_and_victim_resumes_from_checkpoint() -> None:
    tenants = {"a": quota("a", 2), "b": quota("b", 2)}
    jobs = [job("a1", "a", 4, at=0, duration=1000, priority=0, checkpoint=300),
            job("b1", "b", 2, at=700, duration=100)]
    run = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1, record_events=True)
    a1, b1 = run.jobs["a1"], run.jobs["b1"]
    # a1 borrowed b's two GPUs; at 700 b reclaims them.  a1 saved at 600, so
    # 100 s x 4 GPUs are lost and 400 s of work remain after b1 ends at 800.
    assert (b1.first_start, b1.finish) == (700, 800)
    assert (a1.preemptions, a1.attempts) == (1, 2)
    assert a1.lost_gpu_seconds == pytest.approx(400)
    assert a1.finish == pytest.approx(1200)
    kinds = [(e["event"], e.get("job")) for e in run.events if e["time_s"] == 700]
    assert kinds[:4] == [("submitted", "b1"), ("preempted", "a1"), ("requeued", "a1"),
                         ("admitted", "b1")]
    requeued = next(e for e in run.events if e["event"] == "requeued")
    assert (requeued["lost_seconds"], requeued["kept_seconds"]) == (100, 600)


def test_without_checkpoints_a_victim_starts_over() -> None:
    tenants = {"a": quota("a", 2), "b": quota("b", 2)}
    jobs = [job("a1", "a", 4, at=0, duration=1000, priority=0),
            job("b1", "b", 2, at=700, duration=100)]
    run = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1)
    assert run.jobs["a1"].lost_gpu_seconds == pytest.approx(700 * 4)
    assert run.jobs["a1"].finish == pytest.approx(1800)


def test_victim_with_least_lost_work_is_chosen() -> None:
    tenants = {"a": quota("a", 0), "b": quota("b", 4)}
    # Two equal borrowers; x checkpointed at 500, y at 400: taking x loses less.
    jobs = [job("x", "a", 2, at=0, duration=5000, priority=0, checkpoint=250),
            job("y", "a", 2, at=0, duration=5000, priority=0, checkpoint=400),
            job("b1", "b", 2, at=520, duration=10)]
    result = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1)
    assert result.jobs["x"].preemptions == 1 and result.jobs["y"].preemptions == 0
    assert result.jobs["x"].lost_gpu_seconds == pytest.approx(20 * 2)


def test_node_failure_requeues_and_recovery_resumes() -> None:
    tenants = {"a": quota("a", 4, cohort=None)}
    nodes = pool(1, 2)
    jobs = [job("j", "a", 2, at=0, duration=500, checkpoint=100)]
    run = run_replay(nodes, tenants, jobs, "least-allocated", seed=1,
                     failures=[NodeFailure(at=250, node=nodes[0].name, down_for=100)])
    record = run.jobs["j"]
    assert record.preemptions == 1
    assert record.lost_gpu_seconds == pytest.approx(50 * 2)
    assert record.finish == pytest.approx(650)


def test_gang_waits_until_all_workers_fit() -> None:
    tenants = {"a": quota("a", 8, cohort=None)}
    jobs = [job("small", "a", 1, at=0, duration=100),
            job("gang", "a", 4, at=10, duration=50, pods=2)]
    run = run_replay(pool(2, 4), tenants, jobs, "least-allocated", seed=3)
    assert run.jobs["gang"].first_start == pytest.approx(100)
    assert run.jobs["gang"].finish == pytest.approx(150)


def test_metrics_and_fair_shares() -> None:
    tenants = {"a": quota("a", 2), "b": quota("b", 2)}
    jobs = [job("a1", "a", 2, at=0, duration=100), job("b1", "b", 2, at=0, duration=100),
            job("a2", "a", 2, at=0, duration=100)]
    run = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1)
    result = replay_result([run], entitlements(tenants, 4000))
    metrics = result["metrics"]
    assert metrics["jobs_completed"] == 3
    assert metrics["jct_mean_s"] == pytest.approx((100 + 100 + 200) / 3)
    assert metrics["queue_delay_mean_s"] == pytest.approx(100 / 3)
    # Over 200 s: 4 GPUs busy for 100 s, then 2.
    assert metrics["gpu_allocation_mean"] == pytest.approx(0.75)
    shares = {t["tenant"]: t for t in metrics["per_tenant"]}
    assert shares["a"]["share_mean"] == pytest.approx(0.5)
    assert shares["b"]["share_mean"] == pytest.approx(0.25)
    assert shares["a"]["entitlement"] == pytest.approx(0.5)


def test_a_victim_slow_to_stop_holds_its_gpus_until_it_stops() -> None:
    tenants = {"a": quota("a", 2), "b": quota("b", 2)}
    jobs = [job("a1", "a", 4, at=0, duration=1000, priority=0, checkpoint=300),
            job("b1", "b", 2, at=700, duration=100)]
    run = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1, record_events=True,
                     grace_seconds=30, stop_seconds=20)
    b1, a1 = run.jobs["b1"], run.jobs["a1"]
    # SIGTERM at 700, the victim's pods are gone at 720: only then b1 starts,
    # and the victim lost 120 s (since its checkpoint at 600) on 4 GPUs.
    assert (b1.first_start, b1.finish) == (720, 820)
    assert a1.lost_gpu_seconds == pytest.approx(120 * 4)
    stop = run.events.index(next(e for e in run.events if e["event"] == "requeued"))
    assert run.events[stop]["time_s"] == 720


def test_a_victim_ignoring_sigterm_is_killed_at_the_grace_deadline() -> None:
    tenants = {"a": quota("a", 2), "b": quota("b", 2)}
    jobs = [job("a1", "a", 4, at=0, duration=1000, priority=0),
            job("b1", "b", 2, at=700, duration=100)]
    run = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1,
                     grace_seconds=10, stop_seconds=1e9)
    assert run.jobs["b1"].first_start == 710


def test_a_victim_still_stopping_is_never_chosen_again() -> None:
    tenants = {"a": quota("a", 0), "b": quota("b", 4)}
    jobs = [job("a1", "a", 4, at=0, duration=5000, priority=0),
            job("b1", "b", 2, at=10, duration=100),
            job("b2", "b", 2, at=15, duration=100)]
    run = run_replay(pool(1, 4), tenants, jobs, "best-fit", seed=1, record_events=True,
                     grace_seconds=30, stop_seconds=20)
    preempted = [(e["time_s"], e["job"]) for e in run.events if e["event"] == "preempted"]
    assert preempted == [(10, "a1")], "one preemption, as the live controller decides"
    assert (run.jobs["b1"].first_start, run.jobs["b2"].first_start) == (30, 30)
