"""One scenario, two runtimes, the same decisions.

A heterogeneous cluster (two A100 nodes, one H100 node, one CPU node), three
tenants in a cohort, a two-pod gang, a fractional-GPU job and a reclaim with a
grace period run:

* **live**: the embedded runtime with its real adapters (SQLite store, real
  processes, the NodePool inventory, the checkpoint folder), driven on a
  manual clock: time stands still while real processes start and exit, so
  only the scenario decides what happens when;
* **simulated**: the replay engine on the same nodes, tenants and jobs.

Both must admit the same jobs at the same times on the same nodes and GPU
indices, preempt the same victims and charge the same lost work.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.control.records import HOLDING_PHASES
from shoal.domain.job import TrainingJob
from shoal.domain.manifest import parse_manifests
from shoal.domain.nodes import NodePool, expand_pool
from shoal.domain.tenant import Tenant
from shoal.domain.workload import from_training_job
from shoal.policy.quota import TenantQuota
from shoal.runtime.local.plane import EmbeddedPlane
from shoal.sim.replay import run_replay
from shoal.testing import FakeClock

POLICY, SEED, GRACE = "most-allocated", 7, 5.0

CLUSTER = """
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: a100}
spec: {count: 2, cpu: 8, memory: 16Gi, gpus: {model: A100, count: 4}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: h100}
spec: {count: 1, cpu: 16, memory: 32Gi, gpus: {model: H100, count: 8}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: cpu}
spec: {count: 1, cpu: 4, memory: 8Gi}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  cohort: lab
  quota: {cpu: {nominal: 12}, memory: {nominal: 24Gi}, gpus: {A100: {nominal: 4}}}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-b}
spec:
  cohort: lab
  quota: {cpu: {nominal: 8}, memory: {nominal: 16Gi}, gpus: {A100: {nominal: 4}, H100: {nominal: 4}}}
  preemption: {reclaimWithinCohort: Any}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-c}
spec:
  cohort: lab
  quota: {cpu: {nominal: 8}, memory: {nominal: 16Gi}, gpus: {H100: {nominal: 4}}}
"""

# name, tenant, priority, pods, resources, submit time, duration (s of work)
JOBS: list[tuple[str, str, str, int, str, float, float]] = [
    # team-a's gang borrows team-b's idle A100 quota: 2 pods x 4 A100s.
    ("a-gang", "team-a", "low", 2, "{cpu: 1, memory: 1Gi, gpu: {count: 4, models: [A100]}}",
     0.0, 100.0),
    ("b-frac", "team-b", "normal", 1, "{cpu: 1, memory: 1Gi, gpu: {fraction: 0.5, models: [H100]}}",
     1.0, 50.0),
    ("c-h100", "team-c", "normal", 1, "{cpu: 2, memory: 2Gi, gpu: {count: 3, models: [H100]}}",
     2.0, 30.0),
    ("c-cpu", "team-c", "normal", 1, "{cpu: 2, memory: 1Gi}", 3.0, 5.0),
    # team-b wants its A100s back: the gang is preempted (SIGTERM, 5 s grace).
    ("b-reclaim", "team-b", "normal", 1, "{cpu: 1, memory: 1Gi, gpu: {count: 2, models: [A100]}}",
     10.0, 20.0),
]
CHECKPOINT_EVERY = 4.0  # the gang saves every 4 s: preempted at 10, it loses 2 s


def manifest(name: str, tenant: str, priority: str, pods: int, resources: str,
             done_dir: Path) -> str:
    # Each pod runs until the scenario says its work is done (a file appears),
    # or until SIGTERM (the default action ends it at once).
    wait = ("import os, pathlib, time\n"
            f"done = pathlib.Path({str(done_dir)!r}) / os.environ['SHOAL_JOB']\n"
            "while not done.exists(): time.sleep(0.01)\n")
    return yaml.safe_dump({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"tenant": tenant, "priority": priority, "maxRetries": 0,
                 "checkpointIntervalSeconds": CHECKPOINT_EVERY,
                 "podSets": [{"count": pods, "resources": yaml.safe_load(resources)}],
                 "command": [sys.executable, "-c", wait]},
    }, sort_keys=False)


def scenario(done_dir: Path) -> list[Any]:
    text = CLUSTER + "".join(
        "---\n" + manifest(name, tenant, prio, pods, res, done_dir)
        for name, tenant, prio, pods, res, _, _ in JOBS
    )
    return parse_manifests(text, "scenario.yaml")


def decisions(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What both runtimes must agree on, in order."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if e["kind"] == "admitted":
            out.append((e["time"], "admitted", e["job"],
                        tuple((node, tuple(gpus)) for node, gpus in e["placement"])))
        elif e["kind"] == "preempted":
            out.append((e["time"], "preempted", e["job"]))
        elif e["kind"] in ("requeued", "succeeded"):
            out.append((e["time"], e["kind"], e["job"], e.get("lost_seconds")))
    return out


# -- simulated ----------------------------------------------------------------------------


def simulated(done_dir: Path) -> list[tuple[Any, ...]]:
    manifests = scenario(done_dir)
    pools = sorted((m for m in manifests if isinstance(m, NodePool)),
                   key=lambda m: m.metadata.name)  # the embedded inventory's order
    nodes = [n for m in pools for n in expand_pool(m.metadata.name, m.spec)]
    tenants = {m.metadata.name: TenantQuota.from_spec(m.metadata.name, m.spec)
               for m in manifests if isinstance(m, Tenant)}
    timing = {name: (at, work) for name, *_, at, work in JOBS}
    workloads = [
        replace(from_training_job(m, submit_time=timing[m.metadata.name][0]),
                duration=timing[m.metadata.name][1])
        for m in manifests if isinstance(m, TrainingJob)
    ]
    run = run_replay(nodes, tenants, workloads, POLICY, SEED, record_events=True,
                     grace_seconds=GRACE)
    return decisions([{**e, "kind": e["event"], "time": e["time_s"],
                       "placement": e.get("placement", [])} for e in run.events])


# -- live ---------------------------------------------------------------------------------


@pytest.fixture
def live_plane(tmp_path: Path) -> Iterator[tuple[EmbeddedPlane, FakeClock]]:
    clock = FakeClock(0.0)
    plane = EmbeddedPlane(tmp_path / "state", policy=POLICY, seed=SEED, grace_seconds=GRACE,
                          clock=clock)
    yield plane, clock
    for job in plane.store.list_jobs(phases=HOLDING_PHASES):
        for pod in job.pods:
            plane.pods.kill(job, pod)
    plane.stop()
    plane.store.close()


def settle(plane: EmbeddedPlane, finishing: set[str], timeout: float = 60.0) -> None:
    """Step until nothing changes and no pod we expect to exit is still running.

    The clock stands still meanwhile: real processes may take as long as they
    like to start or exit without changing any decision.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        busy = plane.step()
        rows = {r.name: r for r in plane.store.list_jobs()}
        exiting = [n for n, r in rows.items()
                   if (n in finishing and r.phase in HOLDING_PHASES) or r.phase == "Preempting"]
        if not busy and not exiting:
            return
        assert time.monotonic() < deadline, f"pods of {exiting} did not exit in {timeout} s"
        if not busy:
            pause.wait(0.01)  # a real process is exiting; the manual clock does not move


def live(plane: EmbeddedPlane, clock: FakeClock, done_dir: Path) -> list[tuple[Any, ...]]:
    manifests = scenario(done_dir)
    for m in manifests:
        spec = m.spec.model_dump(mode="json", by_alias=True)
        if isinstance(m, NodePool):
            plane.store.put_node(m.metadata.name, spec)
        elif isinstance(m, Tenant):
            plane.store.put_tenant(m.metadata.name, spec)
    arrivals = sorted(((at, name) for name, *_, at, _ in JOBS), reverse=True)
    jobs = {m.metadata.name: m.model_dump(mode="json", by_alias=True)
            for m in manifests if isinstance(m, TrainingJob)}
    work_left = {name: work for name, *_, work in JOBS}
    finish_at: dict[str, float] = {}
    seen = 0
    while arrivals or finish_at:
        now = min(([arrivals[-1][0]] if arrivals else []) + list(finish_at.values()))
        clock.set(now)
        while arrivals and arrivals[-1][0] == now:
            _, name = arrivals.pop()
            plane.store.create_job(name, jobs[name]["spec"]["tenant"], jobs[name], now,
                                   str(plane.checkpoint_dir(name)))
        finishing = {name for name, at in finish_at.items() if at == now}
        for name in finishing:
            (done_dir / name).touch()
            del finish_at[name]
        settle(plane, finishing)
        # Follow the attempts as the scenario would: admitted -> when its work is done.
        events = plane.store.events()
        for event in events[seen:]:
            name, data = event["job"], event["data"]
            if event["kind"] == "admitted":
                finish_at[name] = event["time"] + work_left[name]
            elif event["kind"] == "requeued":
                work_left[name] -= data["kept_seconds"]
                finish_at.pop(name, None)
        seen = len(events)
    return decisions([{**e, **e["data"]} for e in plane.store.events()])


def test_live_and_simulated_runs_take_the_same_decisions(
        live_plane: tuple[EmbeddedPlane, FakeClock], tmp_path: Path) -> None:
    done_dir = tmp_path / "done"
    done_dir.mkdir()
    expected = simulated(done_dir)
    admitted = {d[2]: d[3] for d in expected if d[1] == "admitted"}
    # The scenario exercises what it claims: a gang over both A100 nodes, a
    # fraction and a whole-GPU job sharing the H100 node, a CPU-only job on
    # a node with room, and a reclaim that preempts the gang and costs 2 s of work.
    assert sorted(node for node, _ in admitted["a-gang"]) == ["a100-000", "a100-001"]
    assert admitted["b-frac"][0][0] == admitted["c-h100"][0][0] == "h100-000"
    assert admitted["c-cpu"][0][1] == (), "a CPU-only pod gets no GPU"
    assert (10.0, "preempted", "a-gang") in expected
    assert (10.0, "requeued", "a-gang", 2.0) in expected
    assert [d[2] for d in expected if d[1] == "succeeded"] == [
        "c-cpu", "b-reclaim", "c-h100", "b-frac", "a-gang"]

    plane, clock = live_plane
    assert live(plane, clock, done_dir) == expected
