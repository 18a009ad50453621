"""Binding in the background, against a scripted stand-in for the API server.

``KubePods.start`` (with ``background`` set, as the control loop's ``run``
sets it) creates the job's objects in a pool and returns at once; the pod is
bound when it shows up, and its name comes back as the new handle.  Here the
"Job controller" is the test: it makes the pod when the test says, so every
case is exact (the bind timeout runs on a fake monotonic clock).  The real
API server shows the same in ``test_jobs_server.py`` and the benchmark.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.control import machine
from shoal.control.records import JobRow, PodRecord, PodStatus
from shoal.errors import AlreadyExistsError, ManifestError
from shoal.runtime.kubernetes.convert import JobObject, pod_name, row_of
from shoal.runtime.kubernetes.pods import BINDING, KubePods

Body = dict[str, Any]
NS = "team-a"


class Server:
    """What KubePods asks of the seam: objects by kind, Bindings, deletes; every call kept."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Body] = {("Node", "n1"): {"metadata": {"name": "n1"}}}
        self.calls: list[str] = []
        self.refuse: Exception | None = None
        self.lock = threading.Lock()
        self.discovery = self  # the served version of a kind: the first Shoal knows
        self.gets: list[str] = []

    def api_version(self, kind: str) -> str:
        from shoal.runtime.kubernetes.discovery import CANDIDATES

        return CANDIDATES[kind][0]

    def create(self, body: Body) -> Body:
        with self.lock:
            name = body["metadata"]["name"]
            self.calls.append(f"create {body['kind']} {name}")
            if self.refuse is not None:
                raise self.refuse
            if (body["kind"], name) in self.objects:
                raise AlreadyExistsError(f"{name} exists")
            self.objects[(body["kind"], name)] = body
            return body

    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        self.gets.append(f"{kind} {name}")
        return self.objects.get((kind, name))

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        label, _, value = labels.partition("=")
        return [o for (k, _), o in list(self.objects.items()) if k == kind
                and (o["metadata"].get("labels") or {}).get(label) == value]

    def listing(self, kind: str, namespace: str | None = None, labels: str = "",
                fields: str = "") -> Body:
        return {"metadata": {"resourceVersion": "1"}, "items": []}

    def bind(self, pod: str, namespace: str, node: str) -> None:
        with self.lock:
            self.calls.append(f"bind {pod} {node}")
            self.objects[("Pod", pod)]["spec"]["nodeName"] = node

    def delete(self, kind: str, name: str, namespace: str | None = None,
               grace_seconds: int | None = None) -> bool:
        self.calls.append(f"delete {kind} {name}")
        return self.objects.pop((kind, name), None) is not None

    def job_controller(self, suffix: str = "abcde", index: int = 0) -> str:
        """Make the pod of worker Job ``index``, as the Job controller does."""
        job = [o for (k, _), o in self.objects.items() if k == "Job"][index]
        name = f"{job['metadata']['name']}-{suffix}"
        self.objects[("Pod", name)] = {
            "metadata": {"name": name, "namespace": NS,
                         "labels": dict(job["spec"]["template"]["metadata"]["labels"])},
            "spec": {"schedulerName": "shoal"}, "status": {"phase": "Pending"}}
        return name


class Store:
    def __init__(self, obj: Body) -> None:
        self.job = JobObject(obj)

    def object_of(self, row: JobRow) -> JobObject:
        return self.job


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def training_job() -> Body:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "train", "namespace": NS, "uid": "job-uid",
                         "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"tenant": NS, "podSets": [{"count": 1, "resources": {
                "cpu": "1", "memory": "1Gi", "gpu": {"count": 1}}}]}}


@pytest.fixture()
def world() -> Iterator[tuple[Server, KubePods, JobRow, Clock]]:
    obj = training_job()
    pod = PodRecord(index=0, node="n1", gpus=(0,), uid="0123456789abcdef", started_at=1.0)
    row = row_of(obj).evolve(phase="Running", attempts=1, pods=(pod,))
    server, clock = Server(), Clock()
    pods = KubePods(server, Store(obj), bind_timeout_s=30.0, monotonic=clock)  # type: ignore[arg-type]
    woken = threading.Event()
    pods.background(woken.set, workers=2)
    yield server, pods, row, clock
    pods.foreground()


def start(pods: KubePods, row: JobRow) -> JobRow:
    """Start the row's pod: no handle comes back, so the record is as it was."""
    assert pods.start(row, row.pods[0]) is None, "no waiting for the Job controller"
    return row


def settle(pods: KubePods) -> None:
    """Let the pool finish what it was given (the test's only wait: no sleeping)."""
    pool = pods.pool
    assert pool is not None
    pool.submit(lambda: None).result(timeout=30)
    for future in [*pods._creating.values(), *pods._binding.values()]:
        future.exception(timeout=30)


def test_start_returns_before_the_pod_exists_and_the_pod_is_bound_when_it_appears(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, _ = world
    row = start(pods, row)
    settle(pods)
    # One pod: no Service; the class its pod names comes first (once per process).
    assert [c.split()[1] for c in server.calls] == ["PriorityClass", "Job"]
    # No pod yet: starting (nothing to record), and the loop is told when to look again.
    assert pods.observe(row, row.pods[0]) == PodStatus("starting", None, "")
    assert machine.observe(row, {row.pods[0].uid: PodStatus("starting", None, "")}, 2.0,
                           None, machine.RetryPolicy(), 0).job == row, "no write"
    assert pods.next_due() == 400.0, "the Job controller has 300 s to make the first pod"
    name = server.job_controller()
    assert pods.observe(row, row.pods[0]).state == "starting", "the Binding is sent, not done"
    settle(pods)
    assert server.calls[-1] == f"bind {name} n1"
    status = pods.observe(row, row.pods[0])
    assert status == PodStatus("running", None, "", handle=name)
    # The control core records the start and the pod's name as the handle in one
    # write: no second Binding, ever.
    step = machine.observe(row, {row.pods[0].uid: status}, 2.0, None,
                           machine.RetryPolicy(), 0)
    assert step.job.pods[0].handle == name and step.job.pods[0].state == "running"
    assert pods.observe(step.job, step.job.pods[0]).state == "running"
    assert sum(c.startswith("bind ") for c in server.calls) == 1
    assert pods.next_due() is None


def test_a_pod_the_job_controller_makes_late_in_a_burst_is_still_bound(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, clock = world
    row = start(pods, row)
    settle(pods)
    clock.now += 120.0  # the Job controller's queue is long: no pod for two minutes
    assert pods.observe(row, row.pods[0]) == PodStatus("starting", None, "")
    name = server.job_controller()
    assert pods.observe(row, row.pods[0]).handle is None
    settle(pods)
    assert pods.observe(row, row.pods[0]).handle == name


def test_a_pod_not_made_in_time_is_lost_and_a_late_one_is_never_bound(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, clock = world
    row = start(pods, row)
    settle(pods)
    assert pods.observe(row, row.pods[0]).state == "starting"
    clock.now += 300.0
    lost = pods.observe(row, row.pods[0])
    assert lost.state == "lost" and lost.message.startswith("not bound within 300 s: the Job")
    assert "has no pod" in lost.message
    server.job_controller()
    assert pods.observe(row, row.pods[0]).state == "lost"
    assert not any(c.startswith("bind ") for c in server.calls)


def test_a_bound_pod_deleted_before_its_name_is_recorded_is_lost_not_replaced(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, _ = world
    row = start(pods, row)
    settle(pods)
    first = server.job_controller("first")
    pods.observe(row, row.pods[0])
    settle(pods)
    del server.objects[("Pod", first)]  # deleted by hand: the Job controller replaces it
    server.job_controller("again")
    lost = pods.observe(row, row.pods[0])
    assert lost == PodStatus("lost", None, f"pod {first} is gone (deleted)")
    assert [c for c in server.calls if c.startswith("bind ")] == [f"bind {first} n1"]


def test_a_pod_of_a_stopping_job_is_not_bound_and_nothing_is_made_after_release(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, _ = world
    row = start(pods, row)
    job_name = pod_name(JobObject(training_job()), row.pods[0])
    stopping = row.evolve(phase="Stopping")
    settle(pods)
    server.job_controller()
    assert pods.observe(stopping, stopping.pods[0]) == PodStatus(
        "lost", None, "stopped before it was bound")
    pods.release(stopping, stopping.pods)  # after the creates in flight: nothing comes back
    pods.foreground()  # what was handed to the pools is done
    assert server.calls.index(f"create Job {job_name}") < server.calls.index(
        f"delete Job {job_name}")
    assert ("Job", job_name) not in server.objects
    assert not any(c.startswith("bind ") for c in server.calls)


def test_a_job_the_server_refuses_fails_the_pod_with_the_servers_reason(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, _ = world
    server.refuse = ManifestError("spec.template: invalid")
    row = start(pods, row)
    settle(pods)
    failed = pods.observe(row, row.pods[0])
    assert failed.state == "failed" and "spec.template: invalid" in failed.message


def test_a_pod_is_bound_as_the_watch_brings_it_without_waiting_for_a_pass(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, clock = world
    row = start(pods, row)
    settle(pods)
    name = server.job_controller()
    pods.appeared(server.objects[("Pod", name)])  # what the Pod watch's thread does
    pods.appeared(server.objects[("Pod", name)])  # a second event: still one Binding
    settle(pods)
    assert [c for c in server.calls if c.startswith("bind ")] == [f"bind {name} n1"]
    clock.now += 60.0  # bound in time: the deadline no longer matters
    assert pods.observe(row, row.pods[0]).handle == name


def test_a_pod_that_appears_after_its_gang_gave_up_is_not_bound(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, clock = world
    row = start(pods, row)
    settle(pods)
    clock.now += 300.0
    assert pods.observe(row, row.pods[0]).state == "lost"
    late = server.job_controller()
    pods.appeared(server.objects[("Pod", late)])
    settle(pods)
    assert not any(c.startswith("bind ") for c in server.calls)


def test_once_a_gangs_first_pod_exists_the_others_have_the_bind_timeout(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    """No partial hold: a gang whose first pod is bound waits at most ``bind_timeout_s``
    for the others, however long the Job controller may take to make a first pod."""
    server, pods, _, clock = world
    gang = training_job()
    gang["spec"]["podSets"][0]["count"] = 2
    pods.store = Store(gang)  # type: ignore[assignment]
    first_pod = PodRecord(index=0, node="n1", gpus=(0,), uid="0123456789abcdef", started_at=1.0)
    second = PodRecord(index=1, node="n1", gpus=(1,), uid="fedcba9876543210", started_at=1.0)
    row = row_of(gang).evolve(phase="Running", attempts=1, pods=(first_pod, second))
    assert [pods.start(row, pod) for pod in row.pods] == [None, None]
    settle(pods)
    assert [c.split()[1] for c in server.calls] == ["PriorityClass", "Service", "Job", "Job"]
    clock.now += 100.0
    first = server.job_controller("first", index=0)
    assert pods.observe(row, row.pods[0]).handle is None
    settle(pods)
    assert pods.observe(row, row.pods[0]).handle == first
    assert pods.observe(row, row.pods[1]).state == "starting"
    clock.now += 29.0
    assert pods.observe(row, row.pods[1]).state == "starting"
    clock.now += 1.0
    lost = pods.observe(row, row.pods[1])
    assert lost.state == "lost" and lost.message.startswith("not bound within 30 s: the Job")


def test_a_record_of_an_earlier_version_holding_a_bind_handle_is_still_bound(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    server, pods, row, _ = world
    row = start(pods, row)
    row = machine.started(row, row.pods[0].uid, BINDING + pod_name(
        JobObject(training_job()), row.pods[0]))
    settle(pods)
    assert pods.observe(row, row.pods[0]) == PodStatus("running", None, "")
    name = server.job_controller()
    pods.observe(row, row.pods[0])
    settle(pods)
    assert pods.observe(row, row.pods[0]).handle == name


def test_a_pod_started_by_an_earlier_process_and_never_bound_is_absent(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    """The record says ``starting`` and this process never started it: the control
    core starts it again, under the same id (its Job, made before, taken as it is)."""
    server, pods, row, _ = world
    job_name = pod_name(JobObject(training_job()), row.pods[0])
    server.objects[("Job", job_name)] = {"metadata": {"name": job_name}, "spec": {
        "template": {"metadata": {"labels": {"shoal.dev/pod-uid": row.pods[0].uid}}}}}
    assert pods.observe(row, row.pods[0]).state == "absent"
    row = start(pods, row)
    settle(pods)
    assert pods.observe(row, row.pods[0]).state == "starting"
    name = server.job_controller()
    pods.observe(row, row.pods[0])
    settle(pods)
    assert pods.observe(row, row.pods[0]).handle == name
    assert server.calls.count(f"create Job {job_name}") == 1, "tried once, found made"


def test_the_loop_is_told_when_a_pod_is_due_even_if_no_event_ever_comes() -> None:
    """A Job whose pod the Job controller never makes (a quota refuses it) brings no
    watch event: once the Job exists, an idle loop is woken to wait for its deadline."""
    obj = training_job()
    pod = PodRecord(index=0, node="n1", gpus=(0,), uid="0123456789abcdef", started_at=1.0)
    row = row_of(obj).evolve(phase="Running", attempts=1, pods=(pod,))
    server, clock, woken = Server(), Clock(), threading.Event()
    pods = KubePods(server, Store(obj), bind_timeout_s=30.0, monotonic=clock)  # type: ignore[arg-type]
    pods.background(woken.set, workers=2)
    try:
        start(pods, row)
        settle(pods)
        assert woken.is_set() and pods.next_due() == 400.0
    finally:
        pods.foreground()


class Journal(Server):
    """The seam with the Pod watch's journal: the uid labels of pods that changed."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[str] = set()

    def changed_labels(self, kind: str, label: str, mark: object) -> tuple[set[str], object]:
        found, self.changed = self.changed, set()
        return found, object()


def test_pods_waiting_for_the_job_controller_are_not_looked_at_until_their_pod_or_deadline(
) -> None:
    """In a burst thousands of made Jobs wait minutes for their pods: the loop looks
    at such a pod again only when the watch brings its pod, its deadline comes, or
    its gang's first pod exists (which brings the deadline closer)."""
    gang = training_job()
    gang["spec"]["podSets"][0]["count"] = 2
    first = PodRecord(index=0, node="n1", gpus=(0,), uid="0123456789abcdef", started_at=1.0)
    second = PodRecord(index=1, node="n1", gpus=(1,), uid="fedcba9876543210", started_at=1.0)
    row = row_of(gang).evolve(phase="Running", attempts=1, pods=(first, second))
    server, clock = Journal(), Clock()
    pods = KubePods(server, Store(gang), bind_timeout_s=30.0, monotonic=clock)  # type: ignore[arg-type]
    pods.background(threading.Event().set, workers=2)
    try:
        assert [pods.start(row, pod) for pod in row.pods] == [None, None]
        settle(pods)
        assert pods.next_due() == 400.0
        assert pods.changed_pods(None)[0] == set(), "made, no pod yet: nothing to look at"
        assert [pods.observe(row, p).state for p in row.pods] == ["starting", "starting"]
        clock.now = 400.0
        assert pods.changed_pods(None)[0] == {first.uid, second.uid}, "their deadline came"
        clock.now = 399.0
        assert pods.changed_pods(None)[0] == set()
        name = server.job_controller("first", index=0)
        server.changed.add(first.uid)  # what the Pod watch journals
        assert pods.changed_pods(None)[0] == {first.uid}
        assert pods.observe(row, first).handle is None  # its Binding goes to the pool
        settle(pods)
        # The gang's first pod exists: the second's deadline is 30 s away now.
        assert second.uid in pods.changed_pods(None)[0]
        assert pods.observe(row, first).handle == name
        clock.now += 30.0
        lost = pods.observe(row, second)
        assert lost.state == "lost" and lost.message.startswith("not bound within 30 s")
    finally:
        pods.foreground()


def test_an_integer_priority_no_tenant_lists_names_the_class_below_and_is_asked_once_a_minute(
        world: tuple[Server, KubePods, JobRow, Clock]) -> None:
    from shoal.runtime.kubernetes.pods import ABSENT_S

    server, pods, _, clock = world
    klass, missing = pods.class_for(37)
    assert klass == "shoal-low"  # the built-in class below 37, made first
    assert missing is not None and missing["metadata"]["name"] == "shoal-low"
    assert server.gets == ["PriorityClass shoal-priority-37"]
    assert pods.class_for(37)[0] == "shoal-low" and len(server.gets) == 1  # not asked again
    assert pods.class_for(-5) == (None, None)  # below every class: none
    # A Tenant that lists 37 gets its class written: pods name it once it is asked again.
    server.objects[("PriorityClass", "shoal-priority-37")] = {
        "metadata": {"name": "shoal-priority-37"}, "value": 37}
    clock.now += ABSENT_S - 1
    assert pods.class_for(37)[0] == "shoal-low" and len(server.gets) == 2  # -5 was asked
    clock.now += 2
    assert pods.class_for(37) == ("shoal-priority-37", None)
    assert pods.class_for(37) == ("shoal-priority-37", None)
    assert server.gets == ["PriorityClass shoal-priority-37", "PriorityClass shoal-priority-minus-5",
                           "PriorityClass shoal-priority-37"]
