"""The service reconciler: revisions, replicas, autoscaling and rollouts of InferenceServices.

One pass per service, the same in every runtime (load -> decide -> fenced apply):

1. the spec's model becomes a revision (``service_machine.deploy``);
2. what the replicas report moves revisions on: a ready replica makes its
   revision Ready, a replica that could not load the model fails it with the
   loader's error (traffic stays on the last good revision);
3. each revision that takes traffic gets the replica count its autoscaler
   decides every ``tick_seconds`` (the same ``policy.autoscaling`` objects
   the simulator calls), at least one while it loads or is judged as a
   canary; the others get none;
4. a canary is judged on each analysis window (``policy.rollout.judge``),
   with the router's measurements of both revisions;
5. the router gets the split and the ready replicas' endpoints.

The row (``service_machine.ServiceRow``) is stored with its events, fenced by
its version.  The autoscalers' states live in the reconciler (like Knative's
autoscaler, a restarted control plane starts them afresh).  Ports:
``ServiceStore``, ``Replicas`` (jobs in the embedded runtime, a Deployment on
Kubernetes, virtual replicas in simulation) and ``Traffic`` (the router).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from shoal.control import service_machine as machine
from shoal.control.ports import Clock
from shoal.control.records import EventRecord
from shoal.domain.service import InferenceServiceSpec
from shoal.errors import ConflictError, ShoalError
from shoal.policy.autoscaling.base import AutoscalingPolicy, MetricSample
from shoal.policy.autoscaling.runner import Autoscaler
from shoal.policy.rollout import RevisionWindow, RolloutThresholds, judge

__all__ = [
    "ReplicaStatus", "Replicas", "RevisionLoad", "ServiceReconciler", "ServiceRecord",
    "ServiceStore", "Traffic", "model_key",
]


@dataclass(frozen=True)
class ServiceRecord:
    """A service as stored: its spec, its state machine row and a version token."""

    spec: InferenceServiceSpec
    row: machine.ServiceRow
    version: int
    deleted: bool = False
    request: str = ""
    """A rollout asked by hand and not carried out yet: "promote", "abort" or ""."""


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    revision: str
    state: Literal["pending", "starting", "ready", "failed"]
    endpoint: str | None = None
    """How the router reaches it (opaque to the control core); set once ready."""
    message: str = ""
    """Why it waits (pending: the admission reason) or failed (the loader's error)."""
    load_failed: bool = False
    """It failed because the model could not be loaded (not for want of room, not a crash)."""


@dataclass(frozen=True)
class RevisionLoad:
    """What the router measured for one revision."""

    samples: tuple[MetricSample, ...] = ()
    """Metric samples that ended since the last call, oldest first."""
    in_flight: int = 0
    """Requests in the system now, including those the activator holds."""
    service_time_s: float | None = None
    """Mean service time of recent requests, if any were served."""


class ServiceStore(Protocol):
    def list_services(self) -> list[ServiceRecord]: ...

    def save_service(self, record: ServiceRecord,
                     events: Sequence[EventRecord] = ()) -> ServiceRecord:
        """Write ``record.row`` if the stored version is still ``record.version``
        (else ``ConflictError``), with its events, in one transaction."""
        ...

    def forget_service(self, record: ServiceRecord) -> None:
        """A deleted service whose replicas are all gone: remove it."""
        ...


class Replicas(Protocol):
    def observe(self, record: ServiceRecord) -> list[ReplicaStatus]: ...

    def scale(self, record: ServiceRecord, revision: str, count: int) -> None:
        """Make ``revision`` have ``count`` replicas (idempotent)."""
        ...


class Traffic(Protocol):
    def route(self, record: ServiceRecord, split: Mapping[str, int],
              endpoints: Mapping[str, Sequence[str]], activating: Sequence[str],
              now: float) -> None:
        """Send requests per ``split`` (percent per revision) to ``endpoints``;
        ``activating``: revisions with no ready replica whose requests are held."""
        ...

    def close(self, service: str) -> None:
        """The service is gone: stop routing to it."""
        ...

    def load(self, service: str, revision: str, now: float) -> RevisionLoad:
        """Samples since the previous call for this revision, and its requests in flight."""
        ...

    def window(self, service: str, revision: str, now: float, seconds: float) -> RevisionWindow:
        """Requests, server errors and p95 latency over the last ``seconds``."""
        ...


def model_key(spec: InferenceServiceSpec) -> str:
    """What makes a new revision: the model, how it is loaded and what one replica gets."""
    fields = spec.model_dump(mode="json", by_alias=True,
                             include={"framework", "model", "inputs", "outputs", "resources"})
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    source = spec.model.path or (
        f"{spec.model.from_.training_job}:{spec.model.from_.path}" if spec.model.from_ else "packaged"
    )
    return f"{spec.framework}:{source}@{spec.model.version}#{digest}"


def thresholds(spec: InferenceServiceSpec) -> RolloutThresholds:
    rollback = spec.rollback
    return RolloutThresholds(
        max_error_rate_increase=rollback.error_rate_delta,
        max_p95_ratio=rollback.latency_ratio,
        min_requests=rollback.min_requests,
        promote_after_s=rollback.success_window_seconds,
    )


@dataclass
class _Scaling:
    autoscaler: Autoscaler[Any]
    desired: int
    next_at: float


ScalerFactory = Callable[[InferenceServiceSpec], AutoscalingPolicy[Any]]
"""Builds the service's autoscaling policy (a ``policy.autoscaling`` policy, bounded)."""


class ServiceReconciler:
    def __init__(self, store: ServiceStore, replicas: Replicas, traffic: Traffic, clock: Clock,
                 scaler_for: ScalerFactory) -> None:
        self.store, self.replicas, self.traffic, self.clock = store, replicas, traffic, clock
        self.scaler_for = scaler_for
        self._scaling: dict[tuple[str, str], _Scaling] = {}
        self._judged_at: dict[str, float] = {}
        self.errors: dict[str, ShoalError] = {}
        """The services whose last pass failed (the others went on), with the error."""

    def step(self) -> bool:
        """One pass over every service; True when any record changed.

        One service's failure (a refused write, its namespace going away) does
        not stop the others: it is kept in ``errors`` for the caller to report.
        """
        changed = False
        failed: dict[str, ShoalError] = {}
        for record in self.store.list_services():
            try:
                changed |= self.reconcile(record)
            except ConflictError:
                changed = True  # someone wrote it since it was read: read it again
            except ShoalError as exc:
                failed[record.row.name] = exc
        self.errors = failed
        return changed

    def reconcile(self, record: ServiceRecord) -> bool:
        now = self.clock.now()
        spec, row, stored, original = record.spec, record.row, record.row, record
        events: list[machine.Emit] = []
        if record.deleted:
            for name in {r.name for r in row.revisions}:
                self.replicas.scale(record, name, 0)
            if not self.replicas.observe(record):
                self.store.forget_service(record)
                self.traffic.close(row.name)
                self._forget(row.name)
            return False
        canary = spec.canary.traffic_percent if spec.canary is not None else 0
        step = machine.deploy(row, model_key(spec), canary, now)
        row, events = step.service, [*events, *step.events]
        if record.request:
            done = (machine.promote if record.request == "promote" else machine.abort)(row, now)
            if isinstance(done, machine.Refused):
                events.append(machine.Emit("rollout-refused", {"action": record.request,
                                                               "reason": done.reason}))
            else:
                row, events = done.service, [*events, *done.events]
            record = replace(record, request="")
        seen = self.replicas.observe(replace(record, row=row))
        row, more = self._observe(row, seen, now)
        events.extend(more)
        row, more = self._judge(record, row, now)
        events.extend(more)
        record = replace(record, row=row)
        observed = self._scale(record, seen, now)
        row = replace(row, replicas=observed)
        record = replace(record, row=row)
        self._route(record, seen, now)
        if events or row != stored or record.request != original.request:
            self.store.save_service(record, [EventRecord(now, e.kind, dict(e.data)) for e in events])
            return True
        return False

    # -- revisions ------------------------------------------------------------------

    def _observe(self, row: machine.ServiceRow, seen: Sequence[ReplicaStatus],
                 now: float) -> tuple[machine.ServiceRow, list[machine.Emit]]:
        events: list[machine.Emit] = []
        for replica in seen:
            if replica.revision not in {r.name for r in row.revisions}:
                continue
            if replica.state == "ready":
                step = machine.loaded(row, replica.revision, now)
            elif replica.load_failed:
                step = machine.load_failed(row, replica.revision, replica.message, now)
            else:
                continue
            row = step.service
            events.extend(step.events)
        return row, events

    def _judge(self, record: ServiceRecord, row: machine.ServiceRow,
               now: float) -> tuple[machine.ServiceRow, list[machine.Emit]]:
        canary = row.canary
        if canary is None or row.stable is None or row.revision(canary).phase != "Ready":
            self._judged_at.pop(row.name, None)
            return row, []
        window = record.spec.rollback.window_seconds
        since = self._judged_at.setdefault(row.name, now)
        if now - since < window:
            return row, []
        self._judged_at[row.name] = now
        stable = self.traffic.window(row.name, row.stable, now, window)
        tried = self.traffic.window(row.name, canary, now, window)
        verdict = judge(stable, tried, thresholds(record.spec), row.canary_state, now)
        step = machine.judged(row, verdict)
        return step.service, list(step.events)

    # -- replicas ----------------------------------------------------------------

    def _scale(self, record: ServiceRecord, seen: Sequence[ReplicaStatus],
               now: float) -> tuple[tuple[str, int, int, str], ...]:
        """Ask each revision's replicas; returns (revision, desired, ready, why one waits)."""
        row = record.row
        observed: list[tuple[str, int, int, str]] = []
        serving = set(row.serving)
        ready: dict[str, int] = {}
        waiting: dict[str, str] = {}
        for replica in seen:
            if replica.state == "ready":
                ready[replica.revision] = ready.get(replica.revision, 0) + 1
            elif replica.state == "pending" and replica.message:
                waiting.setdefault(replica.revision, replica.message)
        for revision in row.revisions:
            if revision.name not in serving:
                self._scaling.pop((row.name, revision.name), None)
                self.replicas.scale(record, revision.name, 0)
                continue
            count = self._autoscale(record, revision.name, ready.get(revision.name, 0), now)
            if revision.phase == "Loading" or revision.name == row.canary:
                count = max(count, 1)  # a model that loads, or is judged, needs a replica
            self.replicas.scale(record, revision.name, count)
            observed.append((revision.name, count, ready.get(revision.name, 0),
                             waiting.get(revision.name, "")))
        return tuple(observed)

    def _autoscale(self, record: ServiceRecord, revision: str, ready: int, now: float) -> int:
        key = (record.row.name, revision)
        scaling = self._scaling.get(key)
        if scaling is None:
            autoscaler = Autoscaler(self.scaler_for(record.spec), self.clock)
            scaling = self._scaling[key] = _Scaling(autoscaler, record.spec.replicas.min, now)
        tick = now >= scaling.next_at
        if not tick and scaling.desired > 0:
            return scaling.desired
        load = self.traffic.load(record.row.name, revision, now)
        # At zero, a held request scales up at once, not at the next tick
        # (Knative's activator pokes its autoscaler the same way).
        if not tick and load.in_flight == 0 and not any(s.arrivals for s in load.samples):
            return scaling.desired
        decision = scaling.autoscaler.decide(
            desired=scaling.desired, ready=ready, in_flight=load.in_flight,
            samples=load.samples, service_time_s=load.service_time_s)
        scaling.desired = decision.replicas
        if tick:
            scaling.next_at = now + scaling.autoscaler.policy.tick_seconds
        return scaling.desired

    def decisions(self) -> list[tuple[str, str, int, bool]]:
        """Every revision's last autoscaling decision: service, revision, replicas, panic."""
        found = []
        for (service, revision), scaling in sorted(self._scaling.items()):
            last = scaling.autoscaler.last
            if last is not None:
                found.append((service, revision, last.replicas, last.panic))
        return found

    def desired(self, service: str, revision: str) -> tuple[int, str, bool] | None:
        """The last autoscaling decision for a revision: replicas, reason, panic."""
        scaling = self._scaling.get((service, revision))
        if scaling is None or scaling.autoscaler.last is None:
            return None
        last = scaling.autoscaler.last
        return scaling.desired, last.reason, last.panic

    def _route(self, record: ServiceRecord, seen: Sequence[ReplicaStatus], now: float) -> None:
        split = record.row.traffic()
        endpoints: dict[str, list[str]] = {name: [] for name in record.row.serving}
        for replica in seen:
            if replica.state == "ready" and replica.endpoint and replica.revision in endpoints:
                endpoints[replica.revision].append(replica.endpoint)
        activating = [name for name, percent in split.items()
                      if percent > 0 and not endpoints.get(name)]
        self.traffic.route(record, split, endpoints, activating, now)

    def _forget(self, service: str) -> None:
        for key in [k for k in self._scaling if k[0] == service]:
            del self._scaling[key]
        self._judged_at.pop(service, None)
