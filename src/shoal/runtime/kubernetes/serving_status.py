"""What the operator writes under ``status`` of an InferenceService.

The status half of the InferenceService CRD (``crds.py`` turns this model
into the status schema, so the operator and the schema cannot drift apart:
the API server prunes any field the schema does not declare).  People and
``kubectl get`` read the top fields (phase, ready, latest revision, traffic,
URL); ``control`` holds the control core's whole ``ServiceRow``
(``service_machine.row_to_json``), so that the service's state lives in its
one object and every write is fenced by ``metadata.resourceVersion``.
Revision names under ``control`` are the control core's keys
(``<tenant>/<service>-r<N>``); the top fields name revisions without the
tenant, as the Deployments do.
"""

from __future__ import annotations

from pydantic import Field

from shoal.domain.base import Spec
from shoal.runtime.kubernetes.status import Condition


class RevisionEntry(Spec):
    """One revision of the service: a model, and the Deployment that serves it."""

    name: str = Field(description="<tenant>/<service>-r<N>")
    number: int = Field(ge=1)
    model: str = Field(description="what makes the revision: framework, source, version, digest")
    phase: str = Field(description="Loading, Ready, Failed or Retired")
    created_at: float = Field(ge=0, description="the control clock's seconds")
    reason: str = ""


class ReplicaCount(Spec):
    """What the autoscaler asked of one revision and how many replicas are ready."""

    desired: int = Field(ge=0)
    ready: int = Field(ge=0)
    waiting: str = Field(default="", description="why a replica waits, if one does")


class ServiceControl(Spec):
    """The control core's ``ServiceRow`` as ``service_machine.row_to_json`` writes it."""

    name: str
    tenant: str
    revisions: list[RevisionEntry] = Field(default_factory=list)
    stable: str | None = None
    canary: str | None = None
    canary_percent: int = Field(default=0, ge=0, le=100)
    canary_healthy_since: float | None = None
    phase: str = ""
    traffic: dict[str, int] = Field(default_factory=dict)
    replicas: dict[str, ReplicaCount] = Field(default_factory=dict)


class InferenceServiceStatus(Spec):
    """The status of an InferenceService, written only by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: str = Field(default="", description="Pending, Ready, Failed, or why it is left out")
    reason: str = Field(default="", description="why it waits or is left out")
    ready: str = Field(default="", description="ready/desired replicas of the revisions "
                       "taking traffic, e.g. 1/2")
    latest_revision: str = Field(default="", description="the newest revision (<service>-r<N>)")
    traffic_split: str = Field(default="", description="percent per revision, e.g. "
                               "digits-r1=90,digits-r2=10")
    url: str = Field(default="", description="the router's Service, inside the cluster")
    conditions: list[Condition] = Field(default_factory=list)
    control: ServiceControl | None = None
