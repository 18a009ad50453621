"""The runtime-neutral controller on fakes of every port (``shoal.testing``), on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.testing import FakeWorld, fake_controller

TENANTS = {
    name: {"cohort": "lab", "quota": {"cpu": {"nominal": 8}, "memory": {"nominal": "32Gi"},
                                      "gpus": {"A100": {"nominal": 2}}}}
    for name in ("team-a", "team-b")
}
TENANTS["team-b"]["preemption"] = {"reclaimWithinCohort": "Any"}


def job(name: str, tenant: str = "team-a", *, gpus: int = 1, pods: int = 1,
        priority: str = "normal", retries: int = 0, checkpoint: float | None = None
        ) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tenant": tenant, "priority": priority, "maxRetries": retries,
        "podSets": [{"count": pods, "resources": {"cpu": 1, "memory": "1Gi", "gpu": gpus}}],
    }
    if checkpoint is not None:
        spec["checkpointIntervalSeconds"] = checkpoint
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def world() -> FakeWorld:
    nodes = expand_pool("gpu", NodePoolSpec(count=1, cpu=16, memory="64Gi",
                                            gpus=GpuSpec(model="A100", count=4)))
    return fake_controller(nodes, TENANTS, grace_seconds=10)


def test_a_gang_member_failing_fails_the_attempt_and_holds_gpus_until_all_pods_are_gone(
        world: FakeWorld) -> None:
    world.submit(job("gang", gpus=2, pods=2, retries=1))
    world.settle()
    assert world.phase("gang") == "Running"
    world.pods.linger.add("gang")  # the killed worker takes its time to exit
    world.pods.finish("gang", 0, code=1)
    world.settle()
    assert world.phase("gang") == "Stopping"
    world.submit(job("b-big", "team-b", gpus=2))
    world.settle()
    assert world.phase("b-big") == "Pending", "the gang's GPUs are held until its pods are gone"
    world.pods.finish("gang", 1, code=137)
    world.settle()
    gang = world.store.get_job("gang")
    assert gang.phase == "Pending" and gang.reason == "retrying after: exited with code 1"
    assert gang.next_attempt_at == pytest.approx(1.0)  # backoff 1 s after the first failure
    assert world.phase("b-big") == "Running"


def test_retries_back_off_exponentially_then_fail(world: FakeWorld) -> None:
    world.submit(job("flaky", retries=2))
    delays = []
    for _ in range(3):
        world.settle()
        world.pods.finish("flaky", 0, code=3)
        world.settle()
        row = world.store.get_job("flaky")
        if row.phase == "Failed":
            break
        assert row.next_attempt_at is not None
        delays.append(row.next_attempt_at - world.clock.now())
        world.clock.set(row.next_attempt_at)
    assert delays == [1.0, 2.0]
    failed = world.store.get_job("flaky")
    assert (failed.phase, failed.reason, failed.attempts) == ("Failed", "exited with code 3", 3)


def test_a_victim_that_exits_zero_in_its_grace_period_succeeds(world: FakeWorld) -> None:
    world.pods.ignore_sigterm.add("a-big")
    world.submit(job("a-big", gpus=4, priority="low"))
    world.settle()
    world.clock.advance(5)
    world.submit(job("b-small", "team-b", gpus=2))
    world.settle()
    assert world.phase("a-big") == "Preempting"
    world.pods.finish("a-big", 0, code=0)  # it finished its work before the deadline
    world.settle()
    assert world.phase("a-big") == "Succeeded"
    assert world.store.get_job("a-big").preemptions == 0
    assert world.phase("b-small") == "Running"


def test_a_victim_ignoring_sigterm_is_killed_at_the_deadline_and_loses_work_since_its_checkpoint(
        world: FakeWorld) -> None:
    world.pods.ignore_sigterm.add("a-big")
    world.submit(job("a-big", gpus=4, priority="low"))
    world.settle()
    world.checkpoints.save("a-big", time=30.0, step=300)
    world.clock.set(42)
    world.submit(job("b-small", "team-b", gpus=2))
    world.settle()
    world.clock.set(51.9)
    world.settle()
    assert world.phase("a-big") == "Preempting", "not killed before the grace period ends"
    world.clock.set(52)  # 42 + 10 s grace
    world.settle()
    victim = world.store.get_job("a-big")
    assert victim.phase == "Pending" and victim.preemptions == 1
    assert victim.lost_seconds == pytest.approx(52 - 30)
    assert world.phase("b-small") == "Running"
    # When it runs again, the report knows it resumed from step 300.
    world.pods.finish("b-small", 0)
    world.settle()
    resumed = [e["data"] for e in world.store.events
               if e["kind"] == "admitted" and e["job"] == "a-big"][-1]
    assert (resumed["attempt"], resumed["resumed"], resumed["resumed_from"]) == (2, True, 300)


def test_without_a_checkpoint_the_declared_interval_counts(world: FakeWorld) -> None:
    world.submit(job("a-big", gpus=4, priority="low", checkpoint=20))
    world.settle()
    world.clock.set(70)  # saved at 20, 40, 60
    world.submit(job("b-small", "team-b", gpus=2))
    world.settle()
    assert world.store.get_job("a-big").lost_seconds == pytest.approx(10)


def test_a_pod_that_cannot_start_fails_the_job_with_the_reason(world: FakeWorld) -> None:
    world.pods.fail_start["bad"] = "command 'nope' not found"
    world.submit(job("bad"))
    world.settle()
    bad = world.store.get_job("bad")
    assert (bad.phase, bad.reason) == ("Failed", "command 'nope' not found")


def test_deleting_a_running_job_stops_its_pods_then_cancels_it(world: FakeWorld) -> None:
    world.pods.ignore_sigterm.add("doomed")
    world.submit(job("doomed"))
    world.settle()
    world.store.request_delete("doomed")
    world.settle()
    assert world.phase("doomed") == "Stopping"
    world.clock.advance(10)
    world.settle()
    assert world.phase("doomed") == "Cancelled"
    assert world.event_kinds("doomed") == ["admitted", "cancelled"]
    assert "doomed" in world.pods.released


def test_a_conflicting_write_changes_nothing_and_the_next_pass_decides_again(
        world: FakeWorld) -> None:
    world.submit(job("raced"))
    stale = world.store.get_job("raced")
    world.store.request_delete("raced")  # a user's delete lands first
    from shoal.control import machine

    step = machine.admit(stale, [("gpu-000", (0,))], ["u1"], 0.0, None)
    assert world.controller._apply(stale, step) is True
    assert world.pods.started == [], "nothing started on a stale decision"
    world.settle()
    assert world.phase("raced") == "Cancelled"


def test_fgd_on_the_live_controller_knows_the_pod_mix(world: FakeWorld) -> None:
    world.controller.config = type(world.controller.config)(policy="fgd", seed=0)
    world.submit(job("one", gpus=1))
    world.submit(job("two", gpus=2))
    world.settle()
    placer = world.controller.placers.current
    assert placer is not None
    mix = placer.scorer.context.typical_pods  # type: ignore[attr-defined]
    assert {shape.gpu_count for shape, _ in mix} == {1, 2}, "FGD measures against the jobs' pods"


def test_relabelled_nodes_with_the_same_names_are_placed_by_their_new_labels(
        world: FakeWorld) -> None:
    def pool(label: str) -> list[Any]:
        spec = NodePoolSpec(count=1, cpu=16, memory="64Gi", labels={"disk": label},
                            gpus=GpuSpec(model="A100", count=4))
        return expand_pool("gpu", spec)

    world.inventory.set(pool("hdd"))
    first = job("first")
    first["spec"]["nodeSelector"] = {"disk": "hdd"}
    world.submit(first)
    world.settle()
    assert world.phase("first") == "Running"
    world.inventory.set(pool("ssd"))  # the pool is re-applied: same node names, new labels
    second = job("second")
    second["spec"]["nodeSelector"] = {"disk": "ssd"}
    world.submit(second)
    stale = job("stale")
    stale["spec"]["nodeSelector"] = {"disk": "hdd"}
    world.submit(stale)
    world.settle()
    assert world.phase("second") == "Running"
    assert world.phase("stale") == "Failed", "no node is labelled hdd any more"


def test_a_lost_pod_requeues_the_job_without_using_a_retry(world: FakeWorld) -> None:
    world.submit(job("gone", retries=0))
    world.settle()
    pod = world.store.get_job("gone").pods[0]
    del world.pods.pods[pod.uid]  # the runtime cannot find it any more (a restart)
    world.settle()
    row = world.store.get_job("gone")
    assert (row.phase, row.next_attempt_at) == ("Pending", 1.0), "after a pause: no hot loop"
    world.clock.advance(1)
    world.settle()
    row = world.store.get_job("gone")
    assert (row.phase, row.failures, row.attempts) == ("Running", 0, 2), "started again"
    assert row.preemptions == 1 and "requeued" in world.event_kinds("gone")
    assert "retrying" not in world.event_kinds("gone")


def test_sigkill_is_sent_again_until_the_pods_are_gone(world: FakeWorld) -> None:
    world.pods.ignore_sigterm.add("a-big")
    world.pods.linger.add("a-big")  # the first SIGKILL is lost (the plane crashed)
    world.submit(job("a-big", gpus=4, priority="low"))
    world.settle()
    world.submit(job("b-small", "team-b", gpus=2))
    world.settle()
    world.clock.advance(10)
    world.settle()
    assert world.phase("a-big") == "Preempting"
    world.pods.linger.clear()
    world.settle()  # the next pass kills it again (no progress to report yet) ...
    world.settle()  # ... and the one after sees it gone
    assert world.phase("a-big") == "Pending" and world.phase("b-small") == "Running"


def test_a_restarted_controller_sends_sigterm_to_a_job_left_stopping(world: FakeWorld) -> None:
    from shoal.control import machine
    from shoal.control.controller import Controller

    world.submit(job("victim", gpus=4, priority="low"))
    world.settle()
    # The plane saved "Preempting" and died before sending SIGTERM.
    row = world.store.get_job("victim")
    world.store.save_job(machine.preempt(row, 0.0, 10.0, "someone", "preempted", 0).job)
    pod = world.pods.pods[row.pods[0].uid]
    assert not pod.terminated
    restarted = Controller(world.store, world.inventory, world.pods, world.checkpoints,
                           world.clock, world.controller.config)
    restarted.step()
    assert pod.terminated and not pod.killed, "SIGTERM after the restart, before the deadline"
    assert world.store.get_job("victim").preemptions == 1


def test_one_broken_record_does_not_stop_the_other_jobs(world: FakeWorld) -> None:
    from dataclasses import replace

    world.submit(job("good"))
    world.submit(job("bad"))
    world.settle()
    bad = world.store.get_job("bad")
    world.store.jobs["bad"] = replace(bad, manifest={"spec": "not a manifest"})
    world.pods.finish("good", 0)
    world.settle()
    assert world.phase("good") == "Succeeded"
    errors = [e for e in world.store.events if e["kind"] == "error"]
    assert [e["job"] for e in errors] == ["bad"], "reported once, as an event"
    assert "bad" in world.controller.job_errors


def test_a_transient_start_error_is_retried_but_bad_input_is_not(world: FakeWorld) -> None:
    world.pods.fail_start["bad"] = "command 'nope' not found"
    world.pods.transient_start["full"] = "No space left on device"
    world.submit(job("bad", retries=3))
    world.submit(job("full", retries=3))
    world.settle()
    assert world.phase("bad") == "Failed"
    full = world.store.get_job("full")
    assert full.phase == "Pending" and full.reason == "retrying after: No space left on device"


def test_a_victim_that_stopped_first_does_not_take_back_the_room(world: FakeWorld) -> None:
    for name in ("v1", "v2", "v3", "v4"):
        world.submit(job(name, gpus=1, priority="low"))
    world.settle()  # team-a borrows all four GPUs, two of them team-b's
    world.pods.ignore_sigterm.update({"v1", "v2", "v3", "v4"})
    world.submit(job("b-pair", "team-b", gpus=2))
    world.settle()
    victims = [n for n in ("v1", "v2", "v3", "v4") if world.phase(n) == "Preempting"]
    assert len(victims) == 2
    world.pods.finish(victims[0], 0, code=143)  # one stops at once, the other takes its time
    world.settle()
    assert world.phase(victims[0]) == "Pending", "not admitted again into the GPU it left"
    world.clock.advance(10)  # the other is killed at the deadline
    world.settle()
    world.settle()
    assert world.phase("b-pair") == "Running"
    assert all(world.store.get_job(v).preemptions == 1 for v in victims), "preempted once"


@pytest.mark.parametrize("gang", [1, 2])
def test_a_crash_before_the_pods_start_starts_them_once_after_the_restart(
        world: FakeWorld, gang: int) -> None:
    from shoal.testing import SimulatedCrash

    world.submit(job("once", gpus=1, pods=gang))
    world.pods.crash_before_start.add("once")
    with pytest.raises(SimulatedCrash):
        world.settle()
    recorded = world.store.get_job("once")
    assert recorded.phase == "Running" and {p.state for p in recorded.pods} == {"starting"}
    assert world.event_kinds("once") == ["admitted"], "the event is saved with the transition"
    world.restart()
    world.settle()
    row = world.store.get_job("once")
    assert row.phase == "Running" and row.attempts == 1
    assert [p.uid for p in row.pods] == [p.uid for p in recorded.pods], "the same pods"
    assert sorted(world.pods.started) == [("once", i) for i in range(gang)], "each started once"
    assert world.event_kinds("once") == ["admitted"]


def test_a_pod_that_ended_before_the_restart_is_not_started_again(world: FakeWorld) -> None:
    from shoal.testing import SimulatedCrash

    world.submit(job("quick"))
    world.pods.crash_after_start.add("quick")
    with pytest.raises(SimulatedCrash):
        world.settle()
    world.pods.finish("quick", 0)  # it ended while no control plane watched
    world.restart()
    world.settle()
    assert world.phase("quick") == "Succeeded"
    assert world.pods.started == [("quick", 0)]


def test_a_job_deleted_before_its_pods_ever_started_is_cancelled(world: FakeWorld) -> None:
    from shoal.testing import SimulatedCrash

    world.submit(job("never"))
    world.pods.crash_before_start.add("never")
    with pytest.raises(SimulatedCrash):
        world.settle()
    world.store.request_delete("never")
    world.restart()
    world.settle()
    assert world.phase("never") == "Cancelled" and world.pods.started == []


def test_a_checkpoint_folder_that_breaks_the_scan_does_not_stop_preemption_or_deletion(
        world: FakeWorld) -> None:
    """A tenant's files may make reading its checkpoints fail: it is still stopped."""
    world.pods.ignore_sigterm.add("stuck")
    world.submit(job("stuck", gpus=4, priority="low"))
    world.settle()
    world.checkpoints.broken["stuck"] = RecursionError("maximum recursion depth exceeded")
    world.submit(job("claim", "team-b", gpus=2))
    world.settle()
    assert world.phase("stuck") == "Preempting"
    world.clock.advance(10)
    world.settle()
    assert world.phase("stuck") == "Pending" and world.phase("claim") == "Running"
    assert "error" in world.event_kinds("stuck"), "the failure is reported"
    world.store.request_delete("claim")
    world.checkpoints.broken["claim"] = OSError("too many open files")
    world.settle()
    assert world.phase("claim") == "Cancelled"


def test_the_epoch_moves_on_only_when_room_comes_back(world: FakeWorld) -> None:
    # Snapshot.epoch: equal epochs let the cycle trust a failed victim search
    # it remembers, as the simulator does with its one cluster state.
    from shoal.control.records import JobRow

    controller = world.controller
    nodes = list(world.inventory.nodes().nodes)

    def held(*names: str) -> list[JobRow]:
        return [JobRow(name=n, tenant="t", manifest={}, phase="Running", version=1, attempts=1)
                for n in names]

    first = controller._epoch(held("a", "b"), nodes, TENANTS)
    assert controller._epoch(held("a", "b", "c"), nodes, TENANTS) == first  # an admission
    after_stop = controller._epoch(held("a", "c"), nodes, TENANTS)  # b stopped
    assert after_stop != first
    assert controller._epoch(held("a", "c"), nodes[:0], TENANTS) == after_stop  # a node went
    assert controller._epoch(held("a", "c"), nodes, TENANTS) != after_stop  # ...and came back
    changed = {**TENANTS, "team-c": TENANTS["team-a"]}
    assert controller._epoch(held("a", "c"), nodes, changed)[1] != after_stop[1]


def _story(world: FakeWorld) -> list[tuple[str, str, int, int, tuple[str, ...]]]:
    """Preemption, a gang, retries and ends: each job's phase, attempts, preemptions, nodes."""
    for name in ("v1", "v2", "v3", "v4"):
        world.submit(job(name, gpus=1, priority="low", retries=1))
    world.settle()
    world.submit(job("b-pair", "team-b", gpus=2))
    world.submit(job("gang", "team-b", gpus=1, pods=2))
    world.settle()
    for name in ("v1", "v2", "v3", "v4", "b-pair"):
        if world.phase(name) == "Running":
            world.pods.finish(name, 0, code=1 if name == "v4" else 0)
    world.clock.advance(5)
    world.settle()
    world.settle()
    rows = [world.store.get_job(n) for n in ("v1", "v2", "v3", "v4", "b-pair", "gang")]
    return [(r.name, r.phase, r.attempts, r.preemptions, tuple(p.node for p in r.pods))
            for r in rows]


def test_the_work_on_different_jobs_may_run_in_any_order() -> None:
    """A runtime may run a pass's jobs side by side: the outcome cannot depend on their order."""
    nodes = expand_pool("gpu", NodePoolSpec(count=1, cpu=16, memory="64Gi",
                                            gpus=GpuSpec(model="A100", count=4)))
    serial = fake_controller(nodes, TENANTS, grace_seconds=10)
    backwards = fake_controller(nodes, TENANTS, grace_seconds=10)
    widths: list[int] = []

    def reversed_order(work: Any) -> list[bool]:
        widths.append(len(work))
        done = {i: item() for i, item in reversed(list(enumerate(work)))}
        return [done[i] for i in range(len(work))]

    backwards.controller.fan_out = reversed_order
    expected = _story(serial)
    assert _story(backwards) == expected
    assert max(widths) >= 2, "the passes did hand several jobs over at once"
    assert {phase for _, phase, *_ in expected} >= {"Succeeded", "Pending"}


def test_pods_started_in_the_background_are_recorded_in_one_write_once_they_run(
        world: FakeWorld) -> None:
    """As on Kubernetes: ``start`` gives no handle; the record keeps the pods ``starting``
    (no write while they are) and records their start and handles together."""
    world.pods.background.add("bg")
    world.submit(job("bg", pods=2))
    world.settle()
    row = world.store.get_job("bg")
    assert row.phase == "Running" and [p.state for p in row.pods] == ["starting"] * 2
    admitted = row.version
    world.clock.advance(5)
    world.settle()
    assert world.store.get_job("bg").version == admitted, "nothing new: no write"
    world.pods.up("bg", 0)
    world.pods.up("bg", 1)
    world.settle()
    row = world.store.get_job("bg")
    assert row.version == admitted + 1
    assert [(p.state, p.handle) for p in row.pods] == [
        ("running", f"fake:{p.uid}") for p in row.pods]
    assert world.pods.started == [("bg", 0), ("bg", 1)], "started once"


def test_a_job_deleted_while_its_pods_start_in_the_background_stops_them(
        world: FakeWorld) -> None:
    world.pods.background.add("bg")
    world.submit(job("bg"))
    world.settle()
    (uid,) = [p.uid for p in world.store.get_job("bg").pods]
    world.store.request_delete("bg")
    world.settle()
    assert world.phase("bg") == "Cancelled"
    assert world.pods.pods[uid].terminated, "its pod was stopped while it started"


def test_a_gang_whose_second_pod_cannot_start_stops_the_first_begun_in_the_background(
        world: FakeWorld) -> None:
    world.pods.background.add("gang")
    start = world.pods.start

    def second_fails(job: Any, pod: Any) -> str | None:
        if pod.index == 1:
            raise OSError("no space left on device")
        return start(job, pod)

    world.pods.start = second_fails  # type: ignore[method-assign]
    world.submit(job("gang", pods=2, retries=1))
    world.controller.step()
    gang = world.store.get_job("gang")
    assert (gang.phase, gang.reason) == ("Pending", "retrying after: no space left on device")
    first = next(p for p in world.pods.pods.values() if p.job == "gang" and p.index == 0)
    assert first.killed, "the pod begun in the background was stopped, not left running"


def test_an_apply_that_keeps_failing_posts_one_error_event(world: FakeWorld) -> None:
    world.submit(job("a"))
    world.settle()
    world.pods.finish("a", 0)
    save = world.store.save_job
    world.store.save_job = lambda *a, **k: (_ for _ in ()).throw(  # type: ignore[method-assign]
        RuntimeError("the store is down"))
    for _ in range(3):
        world.controller.step()
    assert world.event_kinds("a").count("error") == 1
    world.store.save_job = save  # type: ignore[method-assign]
    world.settle()
    assert world.phase("a") == "Succeeded"
