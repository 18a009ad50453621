"""Parked buckets change what a cycle costs, never what it decides.

A replay is run twice on the same random contended workload: once as it
runs (buckets that failed stay parked between cycles, ``policy.parking``),
once with the parked set thrown away before every cycle, so that every
bucket is tried in every cycle.  Both must take the same decisions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from tests.compiled import pure_python_only

from shoal.control import machine
from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.tenant import BorrowWithinCohort, PreemptionPolicy
from shoal.domain.workload import PodShape, Workload
from shoal.policy.parking import Parked
from shoal.policy.quota import TenantQuota
from shoal.sim.replay import ReplayEngine

SHAPES = (
    (PodShape(cpu=2000, memory=4096, gpu_count=1, gpu_milli=500),),
    (PodShape(cpu=4000, memory=8192, gpu_count=1, gpu_milli=1000),),
    (PodShape(cpu=8000, memory=16384, gpu_count=2, gpu_milli=1000),),
    (PodShape(cpu=16000, memory=32768, gpu_count=4, gpu_milli=1000),) * 2,
    (PodShape(cpu=1000, memory=2048),),
)


class _Watched(dict[Any, Any]):
    """A placer memo that counts the cycles that found buckets parked."""

    cycles_with_parked = 0

    def get(self, key: Any, default: Any = None) -> Any:
        found = super().get(key, default)
        if key == "parked" and isinstance(found, Parked) and found.buckets:
            self.cycles_with_parked += 1
        return found


class _Forgetful(dict[Any, Any]):
    """A placer memo that keeps no parked buckets: every cycle tries every bucket."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default if key == "parked" else super().get(key, default)


def _jobs(seed: int, tenants: int, count: int) -> list[Workload]:
    rng = np.random.default_rng(seed)
    jobs = []
    at = 0.0
    for i in range(count):
        at += float(rng.exponential(40.0)) if i >= count // 4 else 0.0
        jobs.append(Workload(
            name=f"j{i:03d}",
            tenant=f"t{int(rng.integers(tenants))}",
            pods=SHAPES[int(rng.integers(len(SHAPES)))],
            priority=int(rng.choice([0, 100, 1000], p=[0.4, 0.5, 0.1])),
            submit_time=at,
            duration=float(rng.lognormal(6.0, 1.0)),
            checkpoint_interval=300.0,
        ))
    return jobs


def _tenants(names: int, nominal_gpus: int) -> dict[str, TenantQuota]:
    policy = PreemptionPolicy(borrow_within_cohort=BorrowWithinCohort.LOWER_PRIORITY)
    out = {}
    for i in range(names):
        quota = TenantQuota.equal_share(
            f"t{i}", "lab",
            {"cpu": 64_000, "memory": 131_072, "gpu/A100": nominal_gpus * 1000},
        )
        out[quota.name] = dataclasses.replace(quota, preemption=policy)
    return out


def _outcome(engine: ReplayEngine) -> list[tuple[object, ...]]:
    engine.run()
    return [
        (name, r.first_start, r.finish, r.row.attempts, round(r.lost_gpu_seconds, 6))
        for name, r in sorted(engine.jobs.items())
    ]


@pure_python_only
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_parked_buckets_take_the_decisions_of_trying_every_bucket(seed: int) -> None:
    nodes = expand_pool("gpu", NodePoolSpec(count=6, cpu=64, memory="128Gi",
                                            gpus=GpuSpec(model="A100", count=8)))
    tenants = _tenants(4, 12)
    jobs = _jobs(seed, 4, 160)
    parked = ReplayEngine(nodes, tenants, jobs, "most-allocated", seed)
    tried = ReplayEngine(nodes, tenants, jobs, "most-allocated", seed)
    tried.placer.memo = _Forgetful()
    watched = parked.placer.memo = _Watched()
    kept = _outcome(parked)
    assert kept == _outcome(tried)
    # The workload did contend: jobs waited and some were preempted.
    assert sum(1 for _, start, _, _, _ in kept if start is not None) == len(jobs)
    assert any(attempts > 1 for _, _, _, attempts, _ in kept)
    assert parked.cycles == tried.cycles
    # And parking did happen: many cycles found buckets set aside.
    assert watched.cycles_with_parked > parked.cycles // 4


@pure_python_only
@pytest.mark.parametrize("seed", [1, 2])
def test_the_kept_nominations_are_those_read_from_every_record(seed: int) -> None:
    """The simulator keeps its nominated set between cycles; before every cycle
    it equals ``machine.nominated`` over all the records (what live runtimes read)."""
    nodes = expand_pool("gpu", NodePoolSpec(count=6, cpu=64, memory="128Gi",
                                            gpus=GpuSpec(model="A100", count=8)))
    engine = ReplayEngine(nodes, _tenants(4, 12), _jobs(seed, 4, 160), "most-allocated", seed)
    cycle = engine._cycle_once
    seen: list[frozenset[str]] = []

    def checked(now: float) -> bool:
        waiting = {name: r.row.attempts for name, r in engine.jobs.items() if name in engine.pending}
        expected = machine.nominated((r.row for r in engine.jobs.values()), waiting)
        assert engine._nominated() == expected
        seen.append(expected)
        return cycle(now)

    engine._cycle_once = checked  # type: ignore[method-assign]
    engine.run()
    assert sum(1 for nominated in seen if nominated) > 10  # preemptors did wait
