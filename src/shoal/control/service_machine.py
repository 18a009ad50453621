"""The inference service state machine: revisions, traffic and rollouts, as pure transitions.

::

    deploy(model A) --> r1 Loading --loaded--> r1 Ready  (stable, 100 %)
    deploy(model B) --> r2 Loading (canary) --loaded--> r2 Ready, canary N %
        judge: watch ... promote --> r2 stable 100 %, r1 Retired
               rollback         --> r2 RolledBack, r1 keeps 100 %
        load failed             --> r2 Failed (the loader's error), r1 keeps 100 %
    promote / abort: the same, by hand

Every runtime that serves (the embedded control plane, the simulator, the
Kubernetes operator) applies these functions to a ``ServiceRow`` and carries
out the result: replicas for the revisions that take traffic (``serving``),
none for the others, and the router's split (``ServiceRow.traffic``).  Every
transition returns its events (``Emit``); a rollout verdict carries its
evidence.  A change that is not allowed (promoting with no canary) returns a
``Refused`` with the reason instead of a new record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shoal.policy.rollout import CanaryState, Verdict

__all__ = [
    "Emit", "Refused", "RevisionRow", "ServiceRow", "ServiceStep", "abort", "deploy",
    "judged", "load_failed", "loaded", "promote", "row_from_json", "row_to_json",
]

RevisionPhase = Literal["Loading", "Ready", "Failed", "RolledBack", "Retired"]
ServicePhase = Literal["Loading", "Ready", "Failed"]
_LIVE: tuple[RevisionPhase, ...] = ("Loading", "Ready")


@dataclass(frozen=True, slots=True)
class RevisionRow:
    name: str
    number: int
    model: str
    """What tells revisions apart: the model's source and settings, as the caller words them."""
    phase: RevisionPhase
    created_at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ServiceRow:
    name: str
    tenant: str
    revisions: tuple[RevisionRow, ...] = ()
    stable: str | None = None
    """The revision that takes the traffic the canary does not (None: no good one yet)."""
    canary: str | None = None
    canary_percent: int = 0
    """Of requests that name no version, what the canary gets while it is judged (0: it
    takes over as soon as it is ready, with no analysis)."""
    canary_state: CanaryState = field(default_factory=CanaryState)
    version: int = 0
    replicas: tuple[tuple[str, int, int, str], ...] = ()
    """Observed, not decided here: per revision with replicas, (name, desired, ready, why
    a replica waits: its admission's reason, or "")."""

    def revision(self, name: str) -> RevisionRow:
        for revision in self.revisions:
            if revision.name == name:
                return revision
        raise KeyError(name)

    @property
    def phase(self) -> ServicePhase:
        if self.stable is not None and self.revision(self.stable).phase == "Ready":
            return "Ready"
        if self.stable is None and self.revisions and all(
            r.phase not in _LIVE for r in self.revisions
        ):
            return "Failed"
        return "Loading"

    @property
    def serving(self) -> tuple[str, ...]:
        """Revisions that should have replicas: the stable one and the canary."""
        return tuple(name for name in (self.stable, self.canary) if name is not None)

    def traffic(self) -> dict[str, int]:
        """Percent of requests (naming no version) per revision."""
        if self.stable is None:
            return {self.canary: 100} if self.canary is not None else {}
        if self.canary is None or self.revision(self.canary).phase != "Ready":
            return {self.stable: 100}
        return {self.stable: 100 - self.canary_percent, self.canary: self.canary_percent}


@dataclass(frozen=True, slots=True)
class Emit:
    kind: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ServiceStep:
    service: ServiceRow
    events: tuple[Emit, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.events)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


def _emit(kind: str, **data: Any) -> Emit:
    return Emit(kind, {k: v for k, v in data.items() if v is not None and v != ""})


def _set(row: ServiceRow, name: str, phase: RevisionPhase, reason: str = "") -> ServiceRow:
    revisions = tuple(
        replace(r, phase=phase, reason=reason) if r.name == name else r for r in row.revisions
    )
    return replace(row, revisions=revisions)


def deploy(row: ServiceRow, model: str, canary_percent: int, now: float) -> ServiceStep:
    """The spec names ``model``: a new revision unless the newest one has that model.

    With a stable revision the new one is its canary (a canary still being
    judged is superseded: retired); with none it becomes the stable one.
    ``canary_percent`` is kept for the next rollout even when no revision is new.
    """
    row = replace(row, canary_percent=canary_percent)
    newest = row.revisions[-1] if row.revisions else None
    if newest is not None and newest.model == model:
        # Served already, or failed or rolled back: the same model is not tried
        # again until the spec names another (or another version of it).
        return ServiceStep(row)
    number = newest.number + 1 if newest is not None else 1
    revision = RevisionRow(f"{row.name}-r{number}", number, model, "Loading", now)
    events: list[Emit] = []
    if row.canary is not None:
        events.append(_emit("revision-retired", revision=row.canary,
                            reason=f"superseded by {revision.name}"))
        row = replace(_set(row, row.canary, "Retired", f"superseded by {revision.name}"),
                      canary=None, canary_state=CanaryState())
    if row.stable is not None and row.revision(row.stable).phase == "Loading":
        # It never served: nothing to compare a canary with, so it is simply replaced.
        events.append(_emit("revision-retired", revision=row.stable,
                            reason=f"superseded by {revision.name}"))
        row = replace(_set(row, row.stable, "Retired", f"superseded by {revision.name}"),
                      stable=None)
    row = replace(row, revisions=(*row.revisions, revision))
    if row.stable is None:
        row = replace(row, stable=revision.name)
        role = "stable"
    else:
        row = replace(row, canary=revision.name, canary_state=CanaryState())
        role = "canary"
    events.append(_emit("revision-created", revision=revision.name, model=model, role=role))
    return ServiceStep(row, tuple(events))


def loaded(row: ServiceRow, name: str, now: float) -> ServiceStep:
    """A replica of revision ``name`` loaded its model and is ready."""
    if row.revision(name).phase != "Loading":
        return ServiceStep(row)
    row = _set(row, name, "Ready")
    events = [_emit("revision-ready", revision=name)]
    if name == row.canary and row.canary_percent == 0:
        step = _promote(row, "no canary analysis (trafficPercent 0)", {})
        return ServiceStep(step.service, (*events, *step.events))
    if name == row.canary:
        events.append(_emit("canary-started", revision=name, percent=row.canary_percent,
                            stable=row.stable))
    return ServiceStep(row, tuple(events))


def load_failed(row: ServiceRow, name: str, error: str, now: float) -> ServiceStep:
    """Revision ``name`` cannot load its model: it fails, traffic stays on the last good one."""
    revision = row.revision(name)
    if revision.phase not in _LIVE:
        return ServiceStep(row)
    row = _set(row, name, "Failed", error)
    events = [_emit("revision-failed", revision=name, reason=error)]
    if name == row.canary:
        row = replace(row, canary=None, canary_state=CanaryState())
        events.append(_emit("rolled-back", revision=name, stable=row.stable,
                            reason=f"model failed to load: {error}"))
    elif name == row.stable:
        row = replace(row, stable=None)
    return ServiceStep(row, tuple(events))


def judged(row: ServiceRow, verdict: Verdict) -> ServiceStep:
    """Apply a canary verdict (``policy.rollout.judge``) to the canary being judged."""
    if row.canary is None:
        return ServiceStep(row)
    if verdict.action == "promote":
        return _promote(row, verdict.reason, verdict.evidence)
    if verdict.action == "rollback":
        return _roll_back(row, verdict.reason, verdict.evidence)
    return ServiceStep(replace(row, canary_state=verdict.state))


def promote(row: ServiceRow, now: float) -> ServiceStep | Refused:
    """By hand: the canary takes all traffic now."""
    if row.canary is None:
        return Refused(f"service {row.name} has no canary to promote")
    if row.revision(row.canary).phase != "Ready":
        return Refused(f"canary {row.canary} is not ready yet")
    return _promote(row, "promoted by hand", {})


def abort(row: ServiceRow, now: float) -> ServiceStep | Refused:
    """By hand: the canary is rolled back, the stable revision takes all traffic."""
    if row.canary is None:
        return Refused(f"service {row.name} has no canary to abort")
    return _roll_back(row, "aborted by hand", {})


def _promote(row: ServiceRow, reason: str, evidence: Mapping[str, Any]) -> ServiceStep:
    canary, old = row.canary, row.stable
    assert canary is not None
    events = [_emit("promoted", revision=canary, previous=old, reason=reason, **evidence)]
    if old is not None:
        row = _set(row, old, "Retired", f"replaced by {canary}")
    row = replace(row, stable=canary, canary=None, canary_state=CanaryState())
    return ServiceStep(row, tuple(events))


def _roll_back(row: ServiceRow, reason: str, evidence: Mapping[str, Any]) -> ServiceStep:
    canary = row.canary
    assert canary is not None
    row = replace(_set(row, canary, "RolledBack", reason), canary=None,
                  canary_state=CanaryState())
    return ServiceStep(row, (_emit("rolled-back", revision=canary, stable=row.stable,
                                   reason=reason, **evidence),))


def row_to_json(row: ServiceRow) -> dict[str, Any]:
    """The row as stored (JSON); ``version`` is the store's, kept apart."""
    return {
        "name": row.name, "tenant": row.tenant,
        "revisions": [
            {"name": r.name, "number": r.number, "model": r.model, "phase": r.phase,
             "createdAt": r.created_at, "reason": r.reason}
            for r in row.revisions
        ],
        "stable": row.stable, "canary": row.canary, "canaryPercent": row.canary_percent,
        "canaryHealthySince": row.canary_state.healthy_since,
        # Derived, for readers that do not run this module (the API, the CLI):
        "phase": row.phase, "traffic": row.traffic(),
        "replicas": {name: {"desired": desired, "ready": ready, **({"waiting": why} if why else {})}
                     for name, desired, ready, why in row.replicas},
    }


def row_from_json(data: Mapping[str, Any], version: int = 0) -> ServiceRow:
    return ServiceRow(
        name=str(data["name"]), tenant=str(data["tenant"]),
        revisions=tuple(
            RevisionRow(str(r["name"]), int(r["number"]), str(r["model"]), r["phase"],
                        float(r["createdAt"]), str(r.get("reason", "")))
            for r in data.get("revisions", ())
        ),
        stable=data.get("stable"), canary=data.get("canary"),
        canary_percent=int(data.get("canaryPercent", 0)),
        canary_state=CanaryState(data.get("canaryHealthySince")),
        version=version,
        replicas=tuple((str(name), int(seen["desired"]), int(seen["ready"]),
                        str(seen.get("waiting", "")))
                       for name, seen in (data.get("replicas") or {}).items()),
    )
