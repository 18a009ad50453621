"""JSON schemas per kind: checked in and current, closed, inlined, and true to the models.

``jsonschema`` is not a dependency, so a small validator below covers exactly
the keywords the generated schemas use (an unknown keyword fails the test, so
the validator cannot silently skip a constraint).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, BeforeValidator

from shoal.domain.quantity import parse_cpu_milli, parse_memory_mib
from shoal.domain.schema import (
    SchemaError,
    _ShoalSchema,
    inline_refs,
    kind_schema,
    known_kinds,
    schema_text,
)
from shoal.domain.simulation import _parse_seeds

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/**/*.yaml"))

_ANNOTATIONS = {"description", "default", "$schema", "$id", "title"}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Every place where ``value`` breaks ``schema`` (draft 2020-12 subset)."""
    where = path or "<root>"
    unknown = set(schema) - _ANNOTATIONS - {
        "type", "const", "enum", "properties", "required", "additionalProperties", "items",
        "minItems", "anyOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "pattern",
    }
    assert not unknown, f"the test validator does not know {unknown} (at {where})"
    if "anyOf" in schema and all(errors(option, value, path) for option in schema["anyOf"]):
        return [f"{where}: matches no alternative"]
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{where}: expected {kind}, got {value!r}"]
    found: list[str] = []
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        checks = (
            ("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
            ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b),
        )
        found += [f"{where}: {key} {schema[key]}" for key, ok in checks
                  if key in schema and not ok(schema[key])]
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
            found.append(f"{where}: length")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            found.append(f"{where}: does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            found.append(f"{where}: too few items")
        for index, item in enumerate(value):
            found += errors(schema.get("items", {}), item, f"{path}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        found += [f"{where}: {key} is required" for key in schema.get("required", ())
                  if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in properties:
                found += errors(properties[key], item, sub)
            elif extra is False:
                found.append(f"{sub}: unknown field")
            elif isinstance(extra, dict):
                found += errors(extra, item, sub)
    return found


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in EXAMPLES:
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.relative_to(ROOT)}#{index}", doc))
    return docs


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema object (keyword positions only) with its location."""
    if not isinstance(node, dict):
        return []
    found = [(path, node)]
    for key in ("items", "additionalProperties"):
        found += walk(node.get(key), f"{path}/{key}")
    for index, option in enumerate(node.get("anyOf", [])):
        found += walk(option, f"{path}/anyOf/{index}")
    for name, sub in node.get("properties", {}).items():
        found += walk(sub, f"{path}/{name}")
    return found


@pytest.mark.parametrize("kind", known_kinds())
def test_the_checked_in_schema_is_current(kind: str) -> None:
    path = ROOT / "schemas" / f"{kind}.json"
    assert path.is_file(), f"{path} is missing: run python scripts/gen_reference.py"
    assert path.read_text() == schema_text(kind), (
        f"{path} is out of date with the models: run python scripts/gen_reference.py"
    )


@pytest.mark.parametrize("kind", known_kinds())
def test_schemas_are_closed_and_inlined(kind: str) -> None:
    schema = kind_schema(kind)
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    objects = [(path, node) for path, node in walk(schema) if "properties" in node]
    assert len(objects) >= 3
    for path, node in objects:
        assert node["additionalProperties"] is False, path
        assert path == "" or "title" not in node, path
    assert schema["properties"]["kind"]["const"] == kind


def test_the_examples_cover_every_kind() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert kinds == set(known_kinds())


@pytest.mark.parametrize(("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_example_document_is_valid(name: str, doc: dict[str, Any]) -> None:
    assert errors(kind_schema(doc["kind"]), doc) == [], name


def _training_job() -> dict[str, Any]:
    return next(doc for _, doc in documents() if doc["kind"] == "TrainingJob")


def test_a_typo_is_rejected_where_it_is() -> None:
    doc = _training_job()
    resources = doc["spec"]["podSets"][0]["resources"]
    resources["gpus"] = resources.pop("gpu", 1)
    assert errors(kind_schema("TrainingJob"), doc) == ["spec.podSets[0].resources.gpus: unknown field"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["spec"].update(podSet=d["spec"].pop("podSets")), "spec"),
        (lambda d: d["metadata"].update(name="Not_A_Name"), "metadata.name"),
        (lambda d: d["spec"].update(podSets=[]), "spec.podSets"),
        (lambda d: d["spec"]["podSets"][0]["resources"].update(cpu="4 cores"), "cpu"),
        (lambda d: d["spec"]["podSets"][0]["resources"].update(memory="16GB"), "memory"),
        (lambda d: d["spec"]["podSets"][0]["resources"].update(gpu={"fraction": 0}), "resources.gpu"),
        (lambda d: d["spec"].update(gang="maybe"), "spec.gang"),
        (lambda d: d["spec"]["affinity"].update(pack="galaxy"), "pack"),
        (lambda d: d.update(kind="NodePool"), "kind"),
    ],
)
def test_invalid_documents_fail_both_schema_and_model(change: Any, where: str) -> None:
    from shoal.domain.job import TrainingJob

    doc = _training_job()
    doc["spec"].setdefault("affinity", {})
    change(doc)
    found = errors(kind_schema("TrainingJob"), doc)
    assert found and any(where in line for line in found), found
    with pytest.raises(ValueError):
        TrainingJob.model_validate(doc)


def test_gpu_shorthand_and_fraction_both_validate() -> None:
    doc = _training_job()
    resources = doc["spec"]["podSets"][0]["resources"]
    for gpu in (2, {"fraction": 0.5, "memory": "10Gi"}, {"count": 4, "models": ["A100"]}):
        resources["gpu"] = gpu
        assert errors(kind_schema("TrainingJob"), doc) == []


def _member(schema: dict[str, Any], value: Any) -> bool:
    return not errors(schema, value)


def _accepts(parse: Any, value: Any) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


SAMPLES = [0, 4, 0.5, -1, "4", "0.5", "250m", " 250m ", "-1", "1.5m", "16Gi", "512Mi", "1G",
           "16 Gi", "16gi", "1e3", "", "m", "4 cores", "1Ti", "2K", True]


@pytest.mark.parametrize("value", SAMPLES)
def test_quantity_schemas_accept_what_the_parsers_accept(value: Any) -> None:
    nodes = kind_schema("NodePool")["properties"]["spec"]["properties"]
    jobs = kind_schema("TrainingJob")["properties"]["spec"]["properties"]
    resources = jobs["podSets"]["items"]["properties"]["resources"]["properties"]
    assert _member(resources["cpu"], value) == _accepts(parse_cpu_milli, value)
    assert _member(resources["memory"], value) == _accepts(parse_memory_mib, value)
    # NodePool capacity is gt=0: zero is refused by the schema as by the model
    if value in (0, "0") and not isinstance(value, bool):
        assert not _member(nodes["cpu"], value)


@pytest.mark.parametrize(
    "value", [42, "42", "42-51", " 42 - 51 ", [42, "44-45"], [], "x", -1, "51-42", True, 1.5]
)
def test_seed_schema_matches_the_parser_on_form(value: Any) -> None:
    seeds = kind_schema("Simulation")["properties"]["spec"]["properties"]["seeds"]
    # The parser also refuses backwards ranges, repeats and huge ranges: the
    # schema checks only the form, so it may accept more but never less.
    if _accepts(_parse_seeds, value):
        assert _member(seeds, value)
    elif value not in ("51-42",):
        assert not _member(seeds, value)


def test_recursive_definitions_are_refused() -> None:
    defs = {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}}
    with pytest.raises(SchemaError, match="Node -> Node"):
        inline_refs({"$ref": "#/$defs/Node"}, defs)


def test_ref_siblings_override_the_definition() -> None:
    defs = {"A": {"type": "object", "description": "class doc"}}
    out = inline_refs({"properties": {"a": {"$ref": "#/$defs/A", "description": "field"}}}, defs)
    assert out == {"properties": {"a": {"type": "object", "description": "field"}}}


def test_an_unknown_before_validator_is_an_error_not_a_wrong_schema() -> None:
    class Odd(BaseModel):
        value: Annotated[int, BeforeValidator(lambda v: v)]

    with pytest.raises(SchemaError, match="no JSON schema known"):
        Odd.model_json_schema(schema_generator=_ShoalSchema)
