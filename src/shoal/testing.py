"""Fakes of every control port, for testing control logic (and your own policies).

``FakeClock`` only moves when told; ``MemoryStore`` fences writes like the
SQLite store; ``FakePods`` records what the controller asked for and lets the
test decide when each pod ends (and whether it honours SIGTERM);
``FakeCheckpoints`` reports what the test says a job saved;
``FakeInventory`` serves a fixed list of nodes.  For services,
``MemoryServices`` stores them, ``FakeReplicas`` lets the test say how each
replica stands and ``FakeTraffic`` plays the router (the load it reports,
the routes it was given).  ``fake_controller`` wires the job ports to a real
``Controller``::

    from shoal.testing import fake_controller
    world = fake_controller(nodes, tenants)
    world.submit(manifest)
    world.controller.step()
    world.pods.finish("job", 0)        # its pod exits 0
    world.clock.advance(10)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.control.controller import ControlConfig, Controller
from shoal.control.machine import RetryPolicy
from shoal.control.ports import NodeSet
from shoal.control.records import (
    FINAL_PHASES,
    Checkpoint,
    EventRecord,
    JobRow,
    PodRecord,
    PodStatus,
)
from shoal.control.services import ReplicaStatus, RevisionLoad, ServiceRecord
from shoal.domain.nodes import Node
from shoal.errors import AlreadyExistsError, ConflictError, NotFoundError
from shoal.policy.rollout import RevisionWindow

__all__ = [
    "FakeCheckpoints",
    "FakeClock",
    "FakeInventory",
    "FakePods",
    "FakeReplicas",
    "FakeTraffic",
    "FakeWorld",
    "MemoryServices",
    "MemoryStore",
    "fake_controller",
]


class FakeClock:
    """A clock that stands still until ``advance`` or ``set``."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds

    def set(self, time: float) -> None:
        self.time = time


class FakeInventory:
    def __init__(self, nodes: Sequence[Node]) -> None:
        self.set(nodes)

    def set(self, nodes: Sequence[Node]) -> None:
        key = "|".join(node.model_dump_json() for node in nodes)
        self._nodes = NodeSet(key, tuple(nodes))

    def nodes(self) -> NodeSet:
        return self._nodes


class MemoryStore:
    """Jobs, tenants and events in memory, with the SQLite store's fencing rules."""

    def __init__(self, tenants: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._tenants = dict(tenants or {})
        self.jobs: dict[str, JobRow] = {}
        self.events: list[dict[str, Any]] = []

    def tenants(self) -> dict[str, dict[str, Any]]:
        return dict(self._tenants)

    def create_job(self, name: str, tenant: str, manifest: Mapping[str, Any],
                   now: float) -> JobRow:
        live = self.jobs.get(name)
        if live is not None and not (live.deleted and live.phase in FINAL_PHASES):
            raise AlreadyExistsError(f"job '{name}' already exists")
        job = JobRow(name=name, tenant=tenant, manifest=dict(manifest), phase="Pending",
                     version=1, submit_time=now)
        self.jobs[name] = job
        return job

    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> list[JobRow]:
        return [
            job for job in sorted(self.jobs.values(), key=lambda j: (j.submit_time, j.name))
            if (tenant is None or job.tenant == tenant) and (phases is None or job.phase in phases)
        ]

    def get_job(self, name: str) -> JobRow:
        try:
            return self.jobs[name]
        except KeyError:
            raise NotFoundError(f"job {name!r} not found") from None

    def jobs_named(self, name: str) -> list[JobRow]:
        return [job for key, job in sorted(self.jobs.items()) if key.endswith("/" + name)]

    def save_job(self, job: JobRow, events: Sequence[EventRecord] = ()) -> JobRow:
        current = self.get_job(job.name)
        if current.version != job.version:
            raise ConflictError(f"job {job.name!r} changed since it was read")
        # As the SQLite store: identity and submit time never change.
        saved = replace(job, version=job.version + 1, tenant=current.tenant,
                        submit_time=current.submit_time, manifest=current.manifest)
        self.jobs[job.name] = saved
        for event in events:
            self.append_event(event.time, event.kind, job.name, job.tenant, dict(event.data))
        return saved

    def request_delete(self, name: str, tenant: str | None = None) -> JobRow:
        """Mark deleted (idempotent); another tenant's job reads as missing."""
        job = self.get_job(name)
        if tenant is not None and job.tenant != tenant:
            raise NotFoundError(f"job {name!r} not found")
        return job if job.deleted else self.save_job(replace(job, deleted=True))

    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int:
        self.events.append({"id": len(self.events) + 1, "time": time, "kind": kind, "job": job,
                            "tenant": tenant, "data": data})
        return len(self.events)


class SimulatedCrash(BaseException):
    """The control plane dies here (a BaseException: nothing in the loop catches it)."""


@dataclass
class _FakePod:
    job: str
    index: int
    status: PodStatus = field(default_factory=lambda: PodStatus("running", None, "running"))
    terminated: bool = False
    killed: bool = False


class FakePods:
    """Pods that run until the test ends them; SIGTERM ends them unless told otherwise."""

    def __init__(self) -> None:
        self.pods: dict[str, _FakePod] = {}
        self.started: list[tuple[str, int]] = []
        self.released: list[str] = []
        self.ignore_sigterm: set[str] = set()
        """Jobs whose pods keep running after SIGTERM (killed at the deadline)."""
        self.fail_start: dict[str, str] = {}
        """Jobs whose pods cannot start, with the reason (an InputError)."""
        self.transient_start: dict[str, str] = {}
        """Jobs whose pods fail to start for a passing reason (an OSError, retried)."""
        self.linger: set[str] = set()
        """Jobs whose pods take their time to exit even after SIGKILL (until ``finish``)."""
        self.crash_before_start: set[str] = set()
        """Jobs whose next start finds the control plane dead before the pod starts."""
        self.crash_after_start: set[str] = set()
        """Jobs whose next start kills the control plane right after the pod starts."""
        self.ever: set[str] = set()  # every uid ever started: the rest never ran
        self.background: set[str] = set()
        """Jobs whose pods start in the background (as on Kubernetes): ``start`` gives no
        handle, ``observe`` says ``starting`` until ``up`` (the test), then the handle."""
        self._coming: set[str] = set()
        self.tracks_changes = False
        """Whether ``changed_pods`` tells (``control.ports.PodChanges``) or says None."""
        self._journal: list[str] = []  # uids, as each pod's state moved

    def changed_pods(self, mark: object) -> tuple[set[str] | None, object]:
        if not self.tracks_changes:
            return None, None
        at = len(self._journal)
        if not isinstance(mark, int):
            return None, at
        return set(self._journal[mark:]), at

    def start(self, job: JobRow, pod: PodRecord) -> str | None:
        from shoal.errors import InputError

        if job.name in self.crash_before_start:
            self.crash_before_start.discard(job.name)
            raise SimulatedCrash(f"control plane died before starting {job.name}")
        if job.name in self.fail_start:
            raise InputError(self.fail_start[job.name])
        if job.name in self.transient_start:
            raise OSError(self.transient_start[job.name])
        self.pods[pod.uid] = _FakePod(job.name, pod.index)
        self._journal.append(pod.uid)
        self.started.append((job.name, pod.index))
        self.ever.add(pod.uid)
        if job.name in self.crash_after_start:
            self.crash_after_start.discard(job.name)
            raise SimulatedCrash(f"control plane died right after starting {job.name}")
        if job.name in self.background:
            self._coming.add(pod.uid)
            return None
        return f"fake:{pod.uid}"

    def observe(self, job: JobRow, pod: PodRecord) -> PodStatus:
        if pod.uid in self._coming:
            return PodStatus("starting", None, "")
        found = self.pods.get(pod.uid)
        if found is None:
            if pod.uid not in self.ever:
                return PodStatus("absent", None, "never started")
            return PodStatus("lost", None, "no such pod")
        return found.status

    def stop(self, job: JobRow, pod: PodRecord, grace_seconds: float) -> None:
        self._coming.discard(pod.uid)  # stopped while starting: it never comes up
        self._journal.append(pod.uid)
        found = self.pods.get(pod.uid)
        if found is None or found.status.state != "running":
            return
        found.terminated = True
        if job.name not in self.ignore_sigterm:
            found.status = PodStatus("signalled", 143, "killed by signal SIGTERM")

    def kill(self, job: JobRow, pod: PodRecord) -> None:
        self._coming.discard(pod.uid)
        self._journal.append(pod.uid)
        found = self.pods.get(pod.uid)
        if found is not None and found.status.state == "running":
            found.killed = True
            if job.name not in self.linger:
                found.status = PodStatus("signalled", 137, "killed by signal SIGKILL")

    def release(self, job: JobRow, pods: Sequence[PodRecord]) -> None:
        self.released.append(job.name)

    # -- for the test ------------------------------------------------------------------

    def up(self, job: str, index: int) -> None:
        """A pod started in the background is running now (its handle comes with it)."""
        pod = self._current(job, index)
        uid = next(u for u, p in self.pods.items() if p is pod)
        if uid not in self._coming:
            return  # stopped before it came up
        self._coming.discard(uid)
        self._journal.append(uid)
        pod.status = PodStatus("running", None, "running", handle=f"fake:{uid}")

    def _current(self, job: str, index: int) -> _FakePod:
        for pod in reversed(list(self.pods.values())):
            if pod.job == job and pod.index == index:
                return pod
        raise KeyError(f"{job}[{index}] was never started")

    def finish(self, job: str, index: int, code: int = 0) -> None:
        """The pod's process exits with ``code``."""
        pod = self._current(job, index)
        self._journal.extend(u for u, p in self.pods.items() if p is pod)
        pod.status = (PodStatus("succeeded", 0, "exited with code 0") if code == 0
                      else PodStatus("failed", code, f"exited with code {code}"))

    def running(self, job: str, index: int) -> bool:
        return self._current(job, index).status.state == "running"


class FakeCheckpoints:
    def __init__(self) -> None:
        self.follows_pods = False
        """Set by a test that marks a job's pods changed whenever it saves (``Checkpoints``)."""
        self.saved: dict[str, Checkpoint] = {}
        self.broken: dict[str, Exception] = {}
        """Jobs whose checkpoint folder cannot be read, and the error that raises."""

    def save(self, job: str, time: float, step: int | None = None) -> None:
        self.saved[job] = Checkpoint(time, step)

    def latest(self, job: JobRow) -> Checkpoint | None:
        if job.name in self.broken:
            raise self.broken[job.name]
        return self.saved.get(job.name)


@dataclass
class FakeWorld:
    """A controller over fakes, with the fakes at hand."""

    controller: Controller
    store: MemoryStore
    pods: FakePods
    clock: FakeClock
    checkpoints: FakeCheckpoints
    inventory: FakeInventory

    def submit(self, manifest: Mapping[str, Any]) -> JobRow:
        metadata, spec = manifest["metadata"], manifest["spec"]
        return self.store.create_job(metadata["name"], spec["tenant"], manifest, self.clock.now())

    def settle(self, max_steps: int = 50) -> None:
        """Step until nothing changes."""
        for _ in range(max_steps):
            if not self.controller.step():
                return
        raise AssertionError(f"the controller kept changing things after {max_steps} steps")

    def phase(self, job: str) -> str:
        return self.store.get_job(job).phase

    def restart(self) -> None:
        """A new controller over the same store and pods: the plane died and came back."""
        old = self.controller
        self.controller = Controller(self.store, self.inventory, self.pods, self.checkpoints,
                                     self.clock, old.config, new_uid=old.new_uid)

    def event_kinds(self, job: str | None = None) -> list[str]:
        return [e["kind"] for e in self.store.events if job is None or e["job"] == job]


def fake_controller(
    nodes: Iterable[Node],
    tenants: Mapping[str, dict[str, Any]],
    *,
    policy: str = "most-allocated",
    seed: int = 0,
    grace_seconds: float = 10.0,
    start: float = 0.0,
) -> FakeWorld:
    """A real ``Controller`` over fakes of every port."""
    store, pods, clock = MemoryStore(tenants), FakePods(), FakeClock(start)
    checkpoints, inventory = FakeCheckpoints(), FakeInventory(list(nodes))
    config = ControlConfig(policy=policy, seed=seed,
                           retry=RetryPolicy(grace_seconds=grace_seconds))
    counter = iter(range(1, 1 << 62))
    controller = Controller(store, inventory, pods, checkpoints, clock, config,
                            new_uid=lambda: f"uid-{next(counter)}")
    return FakeWorld(controller, store, pods, clock, checkpoints, inventory)


# -- services ---------------------------------------------------------------------


class MemoryServices:
    """``control.services.ServiceStore`` in memory, fenced by version like the others."""

    def __init__(self) -> None:
        self.records: dict[str, ServiceRecord] = {}
        self.events: list[dict[str, Any]] = []

    def put(self, record: ServiceRecord) -> ServiceRecord:
        """Create or replace a service's spec (as ``apply`` does); keeps its row."""
        old = self.records.get(record.row.name)
        if old is not None:
            record = replace(record, row=old.row, version=old.version + 1)
        self.records[record.row.name] = record
        return record

    def list_services(self) -> list[ServiceRecord]:
        return [self.records[name] for name in sorted(self.records)]

    def save_service(self, record: ServiceRecord,
                     events: Sequence[EventRecord] = ()) -> ServiceRecord:
        current = self.records.get(record.row.name)
        if current is None:
            raise NotFoundError(f"service {record.row.name} not found")
        if current.version != record.version:
            raise ConflictError(f"service {record.row.name} changed since it was read")
        saved = replace(record, version=record.version + 1)
        self.records[record.row.name] = saved
        for event in events:
            self.events.append({"time": event.time, "kind": event.kind,
                                "service": record.row.name, "data": dict(event.data)})
        return saved

    def forget_service(self, record: ServiceRecord) -> None:
        self.records.pop(record.row.name, None)


class FakeReplicas:
    """``control.services.Replicas``: remembers the count asked per revision; the test
    says how replicas stand (``set``), by default each asked one is ``starting``."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.states: dict[tuple[str, str, int], ReplicaStatus] = {}

    def scale(self, record: ServiceRecord, revision: str, count: int) -> None:
        self.counts[(record.row.name, revision)] = count

    def set(self, service: str, revision: str, index: int, state: str, *,
            endpoint: str | None = None, message: str = "", load_failed: bool = False) -> None:
        self.states[(service, revision, index)] = ReplicaStatus(
            f"{revision}-{index}", revision, state, endpoint, message, load_failed)  # type: ignore[arg-type]

    def observe(self, record: ServiceRecord) -> list[ReplicaStatus]:
        found = []
        for (service, revision), count in sorted(self.counts.items()):
            if service != record.row.name:
                continue
            for index in range(count):
                found.append(self.states.get((service, revision, index),
                                             ReplicaStatus(f"{revision}-{index}", revision,
                                                           "starting")))
        return found


class FakeTraffic:
    """``control.services.Traffic``: reports the load the test queues; keeps the routes."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[dict[str, int], dict[str, list[str]], list[str]]] = {}
        self.loads: dict[tuple[str, str], list[RevisionLoad]] = {}
        self.in_flight: dict[tuple[str, str], int] = {}
        self.windows: dict[tuple[str, str], RevisionWindow] = {}

    def route(self, record: ServiceRecord, split: Mapping[str, int],
              endpoints: Mapping[str, Sequence[str]], activating: Sequence[str],
              now: float) -> None:
        self.routes[record.row.name] = (dict(split), {k: list(v) for k, v in endpoints.items()},
                                        list(activating))

    def close(self, service: str) -> None:
        self.routes.pop(service, None)

    def load(self, service: str, revision: str, now: float) -> RevisionLoad:
        queued = self.loads.get((service, revision))
        if queued:
            return queued.pop(0)
        return RevisionLoad(in_flight=self.in_flight.get((service, revision), 0))

    def window(self, service: str, revision: str, now: float, seconds: float) -> RevisionWindow:
        return self.windows.get((service, revision), RevisionWindow(0, 0, None))
