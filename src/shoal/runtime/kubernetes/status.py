"""What the operator writes under ``status`` of Shoal's custom resources (a proposal).

These models are the status half of the CRDs (``crds.py`` turns them into the
status schema), so the operator and the schema cannot drift apart: the API
server prunes any status field that the schema does not declare, silently.

A TrainingJob's status holds what people read (phase, admitted, GPUs,
conditions, pods) and, under ``control``, the rest of the control core's
``JobRow``, so that the job's whole state lives in its one object and every
write of it is fenced by ``metadata.resourceVersion``.  Times under
``control`` are the control clock's seconds, kept as numbers so that they
round-trip exactly; the others are RFC 3339 for people and ``kubectl``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shoal.domain.base import Spec

Phase = Literal["Pending", "Running", "Preempting", "Stopping", "Succeeded", "Failed", "Cancelled"]
"""``shoal.domain.phases.PHASES`` (a test keeps the two equal)."""

PodState = Literal[
    "starting", "running", "succeeded", "failed", "oom_killed", "signalled", "lost"
]
"""``shoal.control.records.PodState``."""


class Condition(Spec):
    """A Kubernetes-style condition (``metav1.Condition``)."""

    type: str = Field(min_length=1, description="e.g. Admitted, TenantFound, Bound")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", description="one CamelCase word, for programs")
    message: str = Field(default="", description="one sentence, for people")
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(default=None, ge=0)


class PodEntry(Spec):
    """One pod of the current attempt: the control core's ``PodRecord``."""

    index: int = Field(ge=0)
    name: str = Field(default="", description="the Pod object's name (the record's handle)")
    node: str
    gpus: list[int] = Field(default_factory=list, description="GPU indices on the node")
    uid: str = Field(description="Shoal's id of the pod, also a label on the Pod object")
    started_at: float = Field(ge=0)
    state: PodState = "starting"
    exit_code: int | None = None
    message: str = ""


class JobControl(Spec):
    """The state machine's bookkeeping: every ``JobRow`` field not shown elsewhere."""

    stop_cause: Literal["", "preempted", "failed", "deleted", "disrupted"] = ""
    stop_deadline: float | None = None
    preemptor: str = ""
    preemptor_attempts: int | None = Field(default=None, ge=0)
    next_attempt_at: float | None = None
    lost_seconds: float = Field(default=0.0, ge=0)
    ran_seconds: float = Field(default=0.0, ge=0)
    submit_time: float = Field(default=0.0, ge=0)
    start_time: float | None = None
    finish_time: float | None = None
    queued_at: float | None = None
    checkpoint_time: float | None = None
    checkpoint_step: int | None = None
    resumed_from: int | None = None


class TrainingJobStatus(Spec):
    """The status of a TrainingJob, written only by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: Phase | None = None
    admitted: bool = Field(default=False, description="the job holds quota and its pods are bound")
    gpus: float = Field(default=0, ge=0, description="GPUs of all its pods (0.5: half a GPU)")
    reason: str = Field(default="", description="why it waits, was preempted or failed")
    attempts: int = Field(default=0, ge=0)
    preemptions: int = Field(default=0, ge=0)
    failures: int = Field(default=0, ge=0)
    start_time: datetime | None = None
    completion_time: datetime | None = None
    pods: list[PodEntry] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    control: JobControl = Field(default_factory=JobControl)


class TenantStatus(Spec):
    """The status of a Tenant: its namespace and what it uses."""

    observed_generation: int | None = Field(default=None, ge=0)
    namespace: str = Field(default="", description="where the tenant's jobs live")
    admitted_jobs: int = Field(default=0, ge=0)
    pending_jobs: int = Field(default=0, ge=0)
    gpus_in_use: float = Field(default=0, ge=0, description="GPUs of its admitted jobs")
    gpus_borrowed: float = Field(default=0, ge=0, description="of those, beyond its quota")
    conditions: list[Condition] = Field(default_factory=list)
