"""Tenant orderings (fifo, las, srtf): keys, queue changes, and what they decide in a cycle."""

from __future__ import annotations

import dataclasses
import math

import pytest

from shoal.domain.tenant import TenantSpec
from shoal.policy import ordering
from shoal.policy.admission import Snapshot, schedule
from shoal.policy.decisions import Admit, Preempt
from shoal.policy.ordering import Service
from shoal.policy.quota import TenantQuota
from tests.unit.builders import cluster, placer, start, tenant, tenants, workload

HOUR = 3600.0


def ordered(policy: str, **spec: object) -> TenantQuota:
    return tenant("a", 8, ordering={"policy": policy, **spec})


def test_spec_flattens_into_the_quota() -> None:
    quota = ordered("las", thresholdsGpuHours=[1, 4], starvationFactor=2)
    assert quota.job_order == "las"
    assert quota.las_thresholds == (HOUR, 4 * HOUR)
    assert quota.starvation_factor == 2
    assert tenant("b", 8).job_order == "fifo"


def test_thresholds_must_ascend() -> None:
    with pytest.raises(ValueError, match="strictly ascending"):
        TenantSpec.model_validate({"ordering": {"policy": "las", "thresholdsGpuHours": [2, 1]}})


def test_las_queue_counts_gpu_seconds_over_all_attempts() -> None:
    quota = ordered("las", thresholdsGpuHours=[1, 4])
    job = workload("j", "a", gpus=2)
    assert ordering.las_queue(quota, 0) == 0
    # 20 minutes ran before, 10 running now, on 2 GPUs: exactly one GPU-hour.
    done = ordering.attained(job, Service(ran_seconds=1200), running_since=100.0, now=700.0)
    assert done == HOUR
    assert ordering.las_queue(quota, done) == 1
    assert ordering.las_queue(quota, 4 * HOUR) == 2
    # It reaches the next threshold (4 GPU-hours) 1.5 hours later on its 2 GPUs.
    assert ordering.next_change(quota, job, Service(ran_seconds=1200), 100.0, 700.0) == (
        700.0 + 1.5 * HOUR
    )
    assert ordering.next_change(ordered("fifo"), job, Service(), 100.0, 700.0) is None


def test_starving_jobs_go_back_to_the_first_queue() -> None:
    quota = ordered("las", thresholdsGpuHours=[1], starvationFactor=2)
    job = workload("j", "a", gpus=4)
    ran = Service(ran_seconds=HOUR, queued_at=1000.0)
    assert ordering.rank(quota, job, ran, None, 1000.0 + 2 * HOUR - 1) == 1
    assert ordering.rank(quota, job, ran, None, 1000.0 + 2 * HOUR) == 0
    # A job that never ran is never "starving": it is in the first queue anyway.
    assert not ordering.starving(quota, Service(), 1e9)


def test_srtf_ranks_by_remaining_gpu_time() -> None:
    quota = ordered("srtf")
    job = dataclasses.replace(workload("j", "a", gpus=2), duration=1000.0)
    assert ordering.rank(quota, job, Service(kept_seconds=400.0), None, 0.0) == 1200.0
    assert ordering.rank(quota, job, Service(), 0.0, 250.0) == 1500.0
    unknown = workload("k", "a", gpus=1)
    assert ordering.rank(quota, unknown, Service(), None, 0.0) == math.inf


def cycle(quota: TenantQuota, pending, running=(), service=None, now=100.0, state=None):
    state = state if state is not None else cluster(8)
    snapshot = Snapshot(now, state, tenants(quota), running, tuple(pending),
                        service=service or {})
    return schedule(snapshot, placer(state))


def test_las_admits_the_job_with_least_attained_service_first() -> None:
    quota = ordered("las", thresholdsGpuHours=[1])
    old = workload("old", "a", gpus=8, submit=0.0)  # ran two GPU-hours before
    new = workload("new", "a", gpus=8, submit=50.0)
    service = {"old": Service(ran_seconds=900.0, queued_at=60.0)}
    las = cycle(quota, [old, new], service=service)
    assert [a.workload for a in las.admitted] == ["new"]
    fifo = cycle(ordered("fifo"), [old, new], service=service)
    assert [a.workload for a in fifo.admitted] == ["old"]


def test_las_preempts_a_same_priority_job_of_a_later_queue() -> None:
    quota = ordered("las", thresholdsGpuHours=[1])
    state = cluster(8)
    # Running since 0 on 8 GPUs: at 100 s it has attained 800 GPU-seconds...
    long = start(state, workload("long", "a", gpus=8), started=0.0)
    fresh = workload("fresh", "a", gpus=8, submit=90.0)
    early = cycle(quota, [fresh], (long,), now=100.0, state=state)
    assert early.preempted == ()
    # ...and at 500 s, 4,000 GPU-seconds: past the first queue, so it gives way.
    late = cycle(quota, [fresh], (long,), now=500.0, state=state)
    assert late.preempted == (Preempt("long", "a", "fresh", "queue", 4000.0),)
    # FIFO never evicts a job of the same priority.
    assert cycle(ordered("fifo"), [fresh], (long,), now=500.0, state=state).preempted == ()


def test_srtf_preempts_the_job_with_more_work_left() -> None:
    quota = ordered("srtf")
    state = cluster(8)
    long = start(state, dataclasses.replace(workload("long", "a", gpus=8), duration=10_000.0))
    short = dataclasses.replace(workload("short", "a", gpus=8, submit=50.0), duration=60.0)
    result = cycle(quota, [short], (long,), now=100.0, state=state)
    assert [p.victim for p in result.preempted] == ["long"]
    assert result.preempted[0].reason == "queue"
    longer = dataclasses.replace(short, name="longer", duration=1e6)
    assert cycle(quota, [longer], (long,), now=100.0, state=state).preempted == ()


def test_priority_still_comes_first_under_las() -> None:
    quota = ordered("las", thresholdsGpuHours=[1])
    low = workload("low", "a", gpus=8, submit=0.0)
    high = workload("high", "a", gpus=8, priority=10, submit=50.0)
    service = {"high": Service(ran_seconds=10 * HOUR, queued_at=10.0)}
    result = cycle(quota, [low, high], service=service)
    assert [d.workload for d in result.admitted] == ["high"]
    assert all(not isinstance(d, Admit) or d.workload == "high" for d in result.decisions)


def test_a_nominated_preemptor_goes_before_the_victims_it_evicted() -> None:
    # "a" reclaimed its nominal quota from "b"; b's job (of higher priority)
    # was requeued.  Without nomination b's job sorts first, takes the room
    # back, and a evicts it again, for ever.
    from tests.unit.builders import tenant as make

    quotas = tenants(make("a", 4, cohort="c"), make("b", 4, cohort="c"))
    state = cluster(8)
    reclaimer = workload("reclaimer", "a", gpus=4, submit=10.0)
    victim = workload("victim", "b", gpus=8, priority=100, submit=0.0)
    plain = Snapshot(50.0, state, quotas, (), (reclaimer, victim))
    assert [a.workload for a in schedule(plain, placer(state)).admitted] == ["victim"]
    nominated = Snapshot(50.0, state, quotas, (), (reclaimer, victim),
                         nominated=frozenset({"reclaimer"}))
    admitted = [a.workload for a in schedule(nominated, placer(state)).admitted]
    assert admitted == ["reclaimer"]


def test_a_replay_ends_at_its_last_finish_whatever_wakeups_remain() -> None:
    # Each running las job has a wake-up at its next threshold; jobs that end
    # before it must not stretch the replay (and every mean over its span).
    from shoal.sim.replay import run_replay
    from tests.unit.builders import node

    quota = dataclasses.replace(ordered("las", thresholdsGpuHours=[100]), name="a")
    jobs = [dataclasses.replace(workload(f"j{i}", "a", gpus=1, submit=float(i)), duration=60.0)
            for i in range(3)]
    run = run_replay([node("n0")], {"a": quota}, jobs, "best-fit", 1)
    assert run.horizon == 62.0
    assert all(r.finish is not None for r in run.jobs.values())
