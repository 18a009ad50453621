"""A running job with nothing new is not looked at again, when the ports can tell.

The pods port may say which pods changed since the last pass
(``control.ports.PodChanges``) and the checkpoints port that its answer
follows the pods (``follows_pods``): the controller then skips a running
job whose record is unchanged and none of whose pods changed.  What must
not change is any decision: the random runs below take the same
transitions, events and records with and without the skipping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.testing import FakeWorld, fake_controller

TENANTS: dict[str, dict[str, Any]] = {
    name: {"cohort": "lab", "quota": {"cpu": {"nominal": 16}, "memory": {"nominal": "64Gi"},
                                      "gpus": {"A100": {"nominal": 4}}},
           "preemption": {"reclaimWithinCohort": "Any"}}
    for name in ("team-a", "team-b")
}


def job(name: str, tenant: str = "team-a", *, gpus: int = 1, pods: int = 1,
        priority: str = "normal", retries: int = 0) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"tenant": tenant, "priority": priority, "maxRetries": retries,
                     "podSets": [{"count": pods, "resources": {"cpu": 1, "memory": "1Gi",
                                                               "gpu": gpus}}]}}


def world_of(tracking: bool) -> FakeWorld:
    nodes = expand_pool("gpu", NodePoolSpec(count=2, cpu=16, memory="64Gi",
                                            gpus=GpuSpec(model="A100", count=4)))
    world = fake_controller(nodes, TENANTS, grace_seconds=10)
    world.pods.tracks_changes = tracking
    world.checkpoints.follows_pods = tracking
    return world


def counting(world: FakeWorld) -> list[str]:
    """The jobs ``observe`` is asked about, in order (the pods port's calls)."""
    seen: list[str] = []
    inner: Callable[[JobRow, PodRecord], PodStatus] = world.pods.observe

    def observe(job: JobRow, pod: PodRecord) -> PodStatus:
        seen.append(job.name)
        return inner(job, pod)

    world.pods.observe = observe  # type: ignore[method-assign]
    return seen


def test_a_quiet_running_job_is_looked_at_again_only_when_its_pods_change() -> None:
    world = world_of(tracking=True)
    world.submit(job("a"))
    world.submit(job("b", gpus=2, pods=2))
    world.settle()
    assert world.phase("a") == world.phase("b") == "Running"
    seen = counting(world)
    world.controller.step()
    world.clock.advance(3600)  # no deadline of a running job moves with the clock
    world.controller.step()
    assert seen == []
    world.pods.finish("b", 1)
    world.settle()
    assert set(seen) == {"b"}, "only the job whose pod changed is looked at"
    assert world.phase("b") == "Running"  # its other worker runs on
    world.pods.finish("b", 0)
    world.pods.finish("a", 0, code=1)
    world.settle()
    assert world.phase("a") == "Failed" and world.phase("b") == "Succeeded"


def test_without_a_checkpoints_port_that_follows_the_pods_every_job_is_looked_at() -> None:
    world = world_of(tracking=True)
    world.checkpoints.follows_pods = False
    world.submit(job("a"))
    world.settle()
    seen = counting(world)
    world.controller.step()
    world.controller.step()
    assert seen == ["a", "a"]


def test_a_record_changed_by_someone_else_is_looked_at_again() -> None:
    world = world_of(tracking=True)
    world.submit(job("a"))
    world.settle()
    seen = counting(world)
    world.store.request_delete("a")  # a new record object: the deletion is seen
    world.settle()
    assert "a" in seen
    assert world.phase("a") == "Cancelled"


def _state(world: FakeWorld) -> list[tuple[Any, ...]]:
    return [(j.name, j.phase, j.attempts, j.reason, j.preemptions, j.failures,
             tuple((p.state, p.handle, p.exit_code) for p in j.pods))
            for j in world.store.list_jobs()]


def _act(world: FakeWorld, rng: random.Random, step: int) -> None:
    roll = rng.random()
    running = [(j.name, p.index) for j in world.store.list_jobs(phases=("Running",))
               for p in j.pods if not p.done]
    if roll < 0.35:
        tenant = rng.choice(sorted(TENANTS))
        pods = rng.choice((1, 1, 2))
        world.submit(job(f"j{step}", tenant, gpus=rng.choice((1, 2)), pods=pods,
                         priority=rng.choice(("normal", "high")), retries=rng.choice((0, 1))))
    elif roll < 0.65 and running:
        name, index = rng.choice(running)
        world.pods.finish(name, index, code=rng.choice((0, 0, 1)))
    elif roll < 0.75:
        live = [j.name for j in world.store.list_jobs() if not j.deleted]
        if live:
            world.store.request_delete(rng.choice(live))
    elif roll < 0.85 and running:
        world.pods.ignore_sigterm.add(rng.choice(running)[0])
    else:
        world.clock.advance(rng.choice((0.5, 2.0, 11.0)))


@pytest.mark.parametrize("seed", range(12))
def test_the_same_transitions_with_and_without_skipping_quiet_jobs(seed: int) -> None:
    plain, tracking = world_of(tracking=False), world_of(tracking=True)
    passes: list[list[bool]] = []
    for world in (plain, tracking):
        rng = random.Random(seed)
        passes.append([])
        for step in range(60):
            _act(world, rng, step)
            # Passes until it settles after each act, each pass's answer compared.
            for _ in range(50):
                passes[-1].append(world.controller.step())
                if not passes[-1][-1]:
                    break
            else:
                raise AssertionError(f"seed {seed} step {step}: still changing after 50 passes")
    assert passes[1] == passes[0]
    assert _state(tracking) == _state(plain)
    assert tracking.store.events == plain.store.events
    looked, plain_looked = counting(tracking), counting(plain)
    plain.controller.step()
    tracking.controller.step()
    assert len(looked) <= len(plain_looked)


def test_a_nomination_ends_when_the_preemptor_runs_so_two_jobs_never_take_turns() -> None:
    # Seed 0 of the random runs above: at step 30 j21 (team-a, high) had
    # evicted j3 long before and run since; while j3 still waited, j21 was
    # nominated for ever, so it and j29 took turns with j10 (team-b,
    # reclaiming team-a's borrowed quota) while the clock stood still.
    world = world_of(tracking=False)
    rng = random.Random(0)
    for step in range(31):
        _act(world, rng, step)
        world.settle()
    # It settled: j3 still waits and still names j21, whose run since ended the nomination.
    j3 = world.store.get_job("j3")
    assert (j3.phase, j3.preemptor, j3.preemptor_attempts) == ("Pending", "j21", 0)
    assert world.store.get_job("j21").attempts >= 1
