"""CustomResourceDefinitions of Shoal's kinds, generated from the pydantic models.

``crd("TrainingJob")`` is the ``apiextensions.k8s.io/v1`` manifest that the
operator installs (or ``deploy/`` ships): group ``shoal.dev``, version
``v1alpha1``, the spec schema from ``shoal.domain.schema.kind_schema`` made
structural (``structural.py``), the status schema from ``status.py``, a status
subresource and the printer columns of ``kubectl get``.  One source of
truth: nothing here restates a field of a model.

Unknown fields.  A structural CRD makes the API server *prune* unknown fields
(drop them, silently), never reject them; the schema cannot see them, since
pruning happens when the request is decoded, before validation and before
admission webhooks.  They are refused only by strict field validation:
server-side from Kubernetes 1.25 (``fieldValidation=Strict``, kubectl's
default ``--validate=strict`` from 1.27) and, on older servers, by kubectl's
client-side validation against the published OpenAPI.  The one server-side
way on 1.20 would be ``x-kubernetes-preserve-unknown-fields`` on the spec plus
a webhook, which is exactly what the schema must not do.

``narrowings(kind)`` lists what the models accept and these schemas refuse
(a bare ``cpu: 2.5``, the ``gpu: 2`` shorthand): OpenAPI v3.0 cannot type
"number or string" or "integer or object" structurally.  Rules that pydantic
validators check in code (``fraction <= 1``, unique pod set names,
``lendingLimit <= nominal``, priority class names) are in no JSON schema:
1.20 has no CEL, so they need the validating webhook.

``render()`` is the YAML of every CRD, as ``deploy/crds.yaml`` holds it
(``python -m shoal.runtime.kubernetes.crds > deploy/crds.yaml``; a unit
test checks that the file is current) and ``shoal operator crds`` prints.

Pure: no I/O, no ``kubernetes`` import.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from shoal.domain.base import API_VERSION
from shoal.domain.schema import inline_refs, kind_schema
from shoal.runtime.kubernetes.serving_status import InferenceServiceStatus
from shoal.runtime.kubernetes.status import TenantStatus, TrainingJobStatus
from shoal.runtime.kubernetes.structural import Narrowing, Schema, to_structural

GROUP, VERSION = API_VERSION.split("/")
CATEGORY = "shoal"


@dataclass(frozen=True)
class Kind:
    """How one model becomes a resource."""

    kind: str
    plural: str
    scope: str
    status: type[BaseModel]
    columns: tuple[Schema, ...]
    short_names: tuple[str, ...] = ()


def _column(name: str, kind: str, path: str, priority: int = 0, **extra: str) -> Schema:
    column: Schema = {"name": name, "type": kind, "jsonPath": path, **extra}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", "date", ".metadata.creationTimestamp")

KINDS: dict[str, Kind] = {
    "Tenant": Kind(
        "Tenant", "tenants", "Cluster", TenantStatus,
        (
            _column("Cohort", "string", ".spec.cohort"),
            _column("Weight", "number", ".spec.weight"),
            _column("GPUs", "number", ".status.gpusInUse", description="GPUs in use"),
            _column("Pending", "integer", ".status.pendingJobs"),
            _AGE,
            _column("Namespace", "string", ".status.namespace", priority=1),
        ),
    ),
    "TrainingJob": Kind(
        "TrainingJob", "trainingjobs", "Namespaced", TrainingJobStatus,
        (
            _column("Tenant", "string", ".spec.tenant"),
            _column("Phase", "string", ".status.phase"),
            _column("Admitted", "boolean", ".status.admitted"),
            _column("GPUs", "number", ".status.gpus", description="GPUs of all its pods"),
            _AGE,
            _column("Priority", "string", ".spec.priority", priority=1),
            _column("Reason", "string", ".status.reason", priority=1),
        ),
        short_names=("tj",),
    ),
    "InferenceService": Kind(
        "InferenceService", "inferenceservices", "Namespaced", InferenceServiceStatus,
        (
            _column("Tenant", "string", ".spec.tenant"),
            _column("Phase", "string", ".status.phase"),
            _column("Ready", "string", ".status.ready",
                    description="ready/desired replicas of the revisions taking traffic"),
            _column("Latest", "string", ".status.latestRevision"),
            _column("Traffic", "string", ".status.trafficSplit"),
            _column("URL", "string", ".status.url"),
            _AGE,
            _column("Reason", "string", ".status.reason", priority=1),
        ),
        # Not "isvc": KServe's InferenceService (serving.kserve.io) has that short name.
        short_names=("shoalsvc",),
    ),
}
"""The kinds that become CRDs (NodePool and Simulation do not: nodes are Nodes)."""


def crd_name(kind: str) -> str:
    return f"{KINDS[kind].plural}.{GROUP}"


def crd(kind: str) -> Schema:
    """The CustomResourceDefinition of ``kind``; KeyError for a kind that has none."""
    spec = KINDS[kind]
    names: Schema = {
        "kind": kind, "listKind": f"{kind}List", "plural": spec.plural,
        "singular": kind.lower(), "categories": [CATEGORY],
    }
    if spec.short_names:  # never an empty list: the server drops it, so kubectl apply
        names["shortNames"] = list(spec.short_names)  # would see a change every time
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name(kind), "labels": {"app.kubernetes.io/part-of": "shoal"}},
        "spec": {
            "group": GROUP,
            "scope": spec.scope,
            "names": names,
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
                "subresources": {"status": {}},
                "additionalPrinterColumns": copy.deepcopy(list(spec.columns)),
            }],
        },
    }


def all_crds() -> list[Schema]:
    return [crd(kind) for kind in KINDS]


HEADER = """\
# Shoal's CustomResourceDefinitions, generated from the pydantic models: do not edit.
# Regenerate: python -m shoal.runtime.kubernetes.crds > deploy/crds.yaml
# (shoal operator crds prints the same; the operator installs them when it may).
"""


def render() -> str:
    """Every CRD as one multi-document YAML text, with a header saying how it was made."""
    documents = [yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=100)
                 for manifest in all_crds()]
    return HEADER + "---\n" + "---\n".join(documents)


def openapi_schema(kind: str) -> Schema:
    """The structural ``openAPIV3Schema`` of ``kind``: spec from the model, status, metadata."""
    return _built(kind)[0]


def narrowings(kind: str) -> list[Narrowing]:
    """What the model of ``kind`` accepts that its CRD schema refuses."""
    return _built(kind)[1]


def _built(kind: str) -> tuple[Schema, list[Narrowing]]:
    model = kind_schema(kind)
    spec, lost = to_structural(model["properties"]["spec"], "spec")
    status, _ = to_structural(_status_schema(KINDS[kind].status), "status")
    lost.append(Narrowing("metadata", "names, labels and annotations Kubernetes refuses "
                          "(it validates metadata itself)"))
    schema: Schema = {
        "description": model.get("description", ""),
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    return schema, lost


def _status_schema(model: type[BaseModel]) -> Schema:
    raw: dict[str, Any] = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    return inline_refs(raw, defs)


if __name__ == "__main__":
    print(render(), end="")
