"""An inference service's replica as a job: its labels and its one-pod TrainingJob manifest.

Each replica of a service is a job of one pod, so it is admitted against its
tenant's quota, placed and preempted like any pod.  The labels below mark
such a job; Shoal sets them and refuses them on a user's TrainingJob.  The
same manifest is checked when a service is applied (so a service whose
replica could never run is refused as a job would be) and created by the
runtime when it scales the service up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shoal.domain.base import API_VERSION
from shoal.domain.service import InferenceServiceSpec

__all__ = [
    "MODEL_ANNOTATION",
    "RESERVED_LABELS",
    "REVISION_LABEL",
    "SERVICE_LABEL",
    "is_replica",
    "replica_job",
]

SERVICE_LABEL = "shoal.dev/service"
"""On a replica's job: the service (its name, without the tenant) it serves."""
REVISION_LABEL = "shoal.dev/revision"
"""On a replica's job: the revision (``<service>-r<N>``) whose model it loads."""
RESERVED_LABELS = (SERVICE_LABEL, REVISION_LABEL)
MODEL_ANNOTATION = "shoal.dev/model-source"
"""On a replica's job: the model file, or the TrainingJob checkpoint folder it is in,
which a sandbox shows the replica read-only.  Shoal's alone, like the labels."""


def is_replica(manifest: Mapping[str, Any]) -> bool:
    labels = (manifest.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, Mapping) and SERVICE_LABEL in labels


def replica_job(service: str, revision: str, index: int, spec: InferenceServiceSpec,
                command: Sequence[str], reads: str | None = None) -> dict[str, Any]:
    """The TrainingJob manifest of replica ``index`` of ``revision`` (``<service>-r<N>``).

    It never retries by itself: a replica that fails is replaced by the
    service's reconciler, or fails its revision when its model cannot load.
    ``reads``: the model's file or folder (``MODEL_ANNOTATION``).
    """
    metadata: dict[str, Any] = {"name": f"{revision}-{index}",
                                "labels": {SERVICE_LABEL: service, REVISION_LABEL: revision}}
    if reads is not None:
        metadata["annotations"] = {MODEL_ANNOTATION: reads}
    return {
        "apiVersion": API_VERSION, "kind": "TrainingJob",
        "metadata": metadata,
        "spec": {
            "tenant": spec.tenant, "command": list(command), "maxRetries": 0,
            "podSets": [{"name": "replica", "count": 1, "resources": spec.resources.model_dump(
                mode="json", by_alias=True, exclude_none=True)}],
        },
    }
