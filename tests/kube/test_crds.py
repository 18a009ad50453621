"""CRDs generated from the models: structural, strict and true to the models (no server).

Validation "as a strict API server would do it" runs the CRD schemas with
``jsonschema``; ``test_crds_server.py`` applies them to a real kube-apiserver.
"""

from __future__ import annotations

import typing
from typing import Any

import jsonschema
import pytest

from shoal.control import records
from shoal.domain.job import TrainingJob
from shoal.domain.phases import PHASES
from shoal.domain.schema import SchemaError
from shoal.domain.service import InferenceService
from shoal.domain.tenant import Tenant
from shoal.runtime.kubernetes import status
from shoal.runtime.kubernetes.crds import KINDS, all_crds, crd, narrowings, openapi_schema
from shoal.runtime.kubernetes.structural import Narrowing, structural_problems, to_structural
from tests.kube.manifests import a_job, edit, example_documents, without_shorthands

MODELS = {"Tenant": Tenant, "TrainingJob": TrainingJob, "InferenceService": InferenceService}


def node_at(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for part in json_path.strip(".").split("."):
        node = node["properties"][part]
    return node


# --- structure -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_schema_is_structural(kind: str) -> None:
    assert structural_problems(openapi_schema(kind)) == []


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"$ref": "#/x"}, "'$ref' is not allowed"),
        ({"description": "untyped"}, "needs a type"),
        ({"type": "object", "properties": {"a": {"type": "string"}},
          "additionalProperties": False}, "mutually exclusive"),
        ({"type": "string", "anyOf": [{"type": "string"}, {"type": "integer"}]},
         "type is not allowed inside a junctor"),
        ({"type": "object", "x-kubernetes-preserve-unknown-fields": True}, "keep unknown"),
        ({"type": "number", "exclusiveMinimum": 0}, "must be a boolean"),
        ({"type": "array"}, "an array needs items"),
        ({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "number"}, {"type": "string"}]},
         "exactly integer, string"),
    ],
)
def test_the_checker_finds_what_kubernetes_refuses(bad: dict[str, Any], problem: str) -> None:
    schema = {"type": "object", "properties": {"spec": bad}}
    assert any(problem in line for line in structural_problems(schema)), structural_problems(schema)


def test_metadata_may_only_constrain_the_name() -> None:
    schema = {"type": "object", "properties": {"metadata": {
        "type": "object", "properties": {"labels": {"type": "object"}}}}}
    assert structural_problems(schema) == ["metadata: only name and generateName may be constrained"]


def keys(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*map(keys, node)) if node else set()
    if isinstance(node, dict):
        return set(node).union(*map(keys, node.values()))
    return set()


def test_no_defaults_and_nothing_kept_unknown_anywhere() -> None:
    # a property could be named "default"; the schemas have none, so plain keys do
    found = keys([version["schema"] for c in all_crds() for version in c["spec"]["versions"]])
    assert not found & {"default", "x-kubernetes-preserve-unknown-fields", "$ref", "const"}


@pytest.mark.parametrize(
    ("union", "expected", "refused"),
    [
        ([{"type": "string"}, {"type": "null"}], {"type": "string", "nullable": True}, None),
        ([{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^a$"}],
         {"minimum": 0, "pattern": "^a$", "x-kubernetes-int-or-string": True,
          "anyOf": [{"type": "integer"}, {"type": "string"}]}, None),
        ([{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}],
         {"minimum": 0, "exclusiveMinimum": True, "x-kubernetes-int-or-string": True,
          "anyOf": [{"type": "integer"}, {"type": "string"}]}, "fraction"),
        ([{"type": "integer"}, {"type": "object", "properties": {}}],
         {"type": "object", "properties": {}}, "integer shorthand"),
        ([{"type": "object", "properties": {}}, {"type": "null"}],
         {"type": "object", "properties": {}}, "explicit null"),
    ],
)
def test_unions_become_structural(
    union: list[dict[str, Any]], expected: dict[str, Any], refused: str | None
) -> None:
    converted, lost = to_structural({"anyOf": union}, "x")
    assert converted == expected
    assert [n.path for n in lost] == (["x"] if refused else [])
    assert refused is None or refused in lost[0].refused


def test_a_union_without_structural_form_is_an_error() -> None:
    with pytest.raises(SchemaError, match="no structural form"):
        to_structural({"anyOf": [{"type": "string"}, {"type": "array", "items": {}}]}, "x")


def test_narrowings_are_listed_where_they_are() -> None:
    job = {(n.path, n.refused.split(" (")[0]) for n in narrowings("TrainingJob")}
    assert ("spec.podSets[].resources.gpu", "the integer shorthand") in job
    assert ("spec.podSets[].resources.cpu", "a bare number with a fraction") in job
    assert all(isinstance(n, Narrowing) for n in narrowings("Tenant"))


# --- the CRD manifests -----------------------------------------------------------


def test_group_version_scope_and_names() -> None:
    tenant, job = crd("Tenant"), crd("TrainingJob")
    assert (tenant["metadata"]["name"], tenant["spec"]["scope"]) == ("tenants.shoal.dev", "Cluster")
    assert (job["metadata"]["name"], job["spec"]["scope"]) == (
        "trainingjobs.shoal.dev", "Namespaced")
    for manifest in (tenant, job):
        (version,) = manifest["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        assert manifest["spec"]["group"] == "shoal.dev"


@pytest.mark.parametrize("kind", list(KINDS))
def test_printer_columns_point_at_typed_fields(kind: str) -> None:
    (version,) = crd(kind)["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = node_at(schema, column["jsonPath"])
        assert column["type"] == node.get("type", "string"), column


def test_trainingjob_columns_are_the_issues() -> None:
    (version,) = crd("TrainingJob")["spec"]["versions"]
    shown = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert shown == ["Tenant", "Phase", "Admitted", "GPUs", "Age"]


def test_status_literals_match_the_control_core() -> None:
    assert typing.get_args(status.Phase) == PHASES
    assert typing.get_args(status.PodState) == typing.get_args(records.PodState)
    assert typing.get_args(status.JobControl.model_fields["stop_cause"].annotation) == (
        typing.get_args(records.StopCause))


# --- validation, as a strict API server would do it --------------------------------


def strict_draft4(node: Any) -> Any:
    """The OpenAPI schema as JSON Schema draft 4, with unknown fields refused.

    Refusing them is what ``fieldValidation=Strict`` (1.25+) and kubectl's
    client-side validation do; a 1.20 server alone prunes them.
    """
    if isinstance(node, list):
        return [strict_draft4(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_draft4(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(strict_draft4(openapi_schema(doc["kind"])))
    return sorted(".".join(map(str, e.absolute_path)) for e in validator.iter_errors(doc))


@pytest.mark.parametrize(("name", "doc"), example_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_examples_pass_once_shorthands_are_written_out(name: str, doc: dict[str, Any]) -> None:
    MODELS[doc["kind"]].model_validate(doc)
    assert crd_errors(without_shorthands(doc)) == [], name


def test_the_gpu_shorthand_is_a_listed_narrowing() -> None:
    doc = next(d for _, d in example_documents() if d != without_shorthands(d))
    assert crd_errors(doc) != []
    assert any(n.path == "spec.podSets[].resources.gpu" for n in narrowings("TrainingJob"))


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (edit("spec.podSets.0.resources.gpu.fration", 0.5), "spec.podSets.0.resources.gpu"),
        (edit("spec.bogus", 1), "spec"),
        (edit("spec.podSets.0.count", 0), "spec.podSets.0.count"),
        (edit("spec.podSets", []), "spec.podSets"),
        (edit("spec.podSets.0.resources.cpu", "4 cores"), "spec.podSets.0.resources.cpu"),
        (edit("spec.podSets.0.resources.memory", "16GB"), "spec.podSets.0.resources.memory"),
        (edit("spec.podSets.0.resources.gpu.count", 65), "spec.podSets.0.resources.gpu.count"),
        (edit("spec.gang", "maybe"), "spec.gang"),
        (edit("spec.affinity.pack", "galaxy"), "spec.affinity.pack"),
        (edit("spec.checkpointIntervalSeconds", 0), "spec.checkpointIntervalSeconds"),
    ],
)
def test_what_the_model_refuses_the_crd_refuses(doc: dict[str, Any], where: str) -> None:
    assert where in crd_errors(doc)
    with pytest.raises(ValueError):
        TrainingJob.model_validate(doc)


@pytest.mark.parametrize(
    "doc",
    [
        edit("spec.podSets.0.resources.gpu.fraction", 1.5),
        edit("spec.priority", "urgent"),
        edit("spec.env", {"1X": "a"}),
        edit("spec.podSets", [{"name": "w"}, {"name": "w"}]),
        edit("spec.affinity.required", [{"key": "k", "operator": "Exists", "values": ["v"]}]),
    ],
)
def test_rules_checked_in_code_need_the_webhook(doc: dict[str, Any]) -> None:
    """Validators written in Python are in no schema: 1.20 has no CEL, so a webhook runs them."""
    assert crd_errors(doc) == []
    with pytest.raises(ValueError):
        TrainingJob.model_validate(doc)


def test_a_full_status_validates() -> None:
    pod = status.PodEntry(index=0, name="j-0", node="n", gpus=[1], uid="u", started_at=1.0)
    full = status.TrainingJobStatus(
        phase="Running", admitted=True, gpus=0.5, attempts=1, pods=[pod],
        conditions=[status.Condition(type="Admitted", status="True")],
        control=status.JobControl(stop_cause="preempted", checkpoint_step=3),
    )
    doc = {**a_job(), "status": full.model_dump(mode="json", by_alias=True)}
    assert crd_errors(doc) == []
