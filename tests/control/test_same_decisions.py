"""The same scenario in ``shoal run``'s control plane and in the simulator decides alike."""

from __future__ import annotations

from dataclasses import replace

from shoal.api.client import ShoalClient
from shoal.domain.job import TrainingJob
from shoal.domain.manifest import parse_manifests
from shoal.domain.nodes import NodePool, expand_pool
from shoal.domain.tenant import Tenant
from shoal.domain.workload import from_training_job
from shoal.policy.quota import TenantQuota
from shoal.sim.replay import run_replay
from tests.control.conftest import CLUSTER, job, wait_for

UNTIL_TERM = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]
QUICK = ["python", "-c", "pass"]
# name, tenant, GPUs, priority, command (live), submit time and duration (simulated).
# a-big borrows team-b's quota; b-small arrives while it runs and reclaims it.
SCENARIO = [
    ("a-big", "team-a", 4, "low", UNTIL_TERM, 0.0, 30.0),
    ("b-small", "team-b", 2, "normal", QUICK, 2.0, 1.0),
]


def decisions_live(admin: ShoalClient) -> list[tuple[str, str]]:
    def decided() -> list[tuple[str, str]]:
        return [(e["kind"], e["job"]) for e in admin.events() if e["kind"] in ("admitted", "preempted")]

    for name, tenant, gpus, priority, command, _, _ in SCENARIO:
        admin.apply_text(job(name, tenant, command, gpus=gpus, priority=priority), f"{name}.yaml")
        # The next job arrives once this one has been decided on, as in the trace.
        wait_for(lambda name=name: any(j == name for _, j in decided()))
    wait_for(lambda: len(decided()) == 4)
    return decided()


def decisions_simulated() -> list[tuple[str, str]]:
    manifests = parse_manifests(
        CLUSTER + "".join("---\n" + job(n, t, c, gpus=g, priority=p) for n, t, g, p, c, _, _ in SCENARIO),
        "scenario.yaml",
    )
    nodes = [n for m in manifests if isinstance(m, NodePool) for n in expand_pool(m.metadata.name, m.spec)]
    tenants = {
        m.metadata.name: TenantQuota.from_spec(m.metadata.name, m.spec)
        for m in manifests if isinstance(m, Tenant)
    }
    timing = {name: (at, duration) for name, *_, at, duration in SCENARIO}
    workloads = []
    for m in manifests:
        if isinstance(m, TrainingJob):
            at, duration = timing[m.metadata.name]
            workloads.append(replace(from_training_job(m, submit_time=at), duration=duration))
    run = run_replay(nodes, tenants, workloads, "most-allocated", seed=0, record_events=True)
    return [(e["event"], e["job"]) for e in run.events if e["event"] in ("admitted", "preempted")]


def test_live_and_simulated_runs_decide_the_same(admin: ShoalClient) -> None:
    simulated = decisions_simulated()
    assert simulated == [("admitted", "a-big"), ("preempted", "a-big"),
                         ("admitted", "b-small"), ("admitted", "a-big")]
    assert decisions_live(admin) == simulated
