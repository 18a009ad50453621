"""JSON schemas of the manifest kinds, generated from the pydantic models.

``kind_schema("TrainingJob")`` is the schema of one manifest document as the
user writes it: camelCase keys, every object closed
(``additionalProperties: false``), every ``$ref`` inlined so the result has no
``$defs`` and can later become a Kubernetes structural CRD schema.

Two things pydantic cannot know are filled in here:

* the *input* forms that ``BeforeValidator`` functions accept: ``cpu: "500m"``,
  ``memory: 16Gi``, ``gpu: 2``, ``seeds: "42-51"``.  Each such function in the
  domain models is mapped to the schema of what it accepts; an unknown one is
  an error, so a new validator cannot silently publish a wrong schema;
* defaults made by ``default_factory`` (``{}``, ``[]``, ``[42]``).

Pure: no I/O.  ``scripts/gen_reference.py`` writes ``schemas/*.json``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from shoal.domain.job import TrainingJob
from shoal.domain.nodes import NodePool
from shoal.domain.service import InferenceService
from shoal.domain.simulation import Simulation
from shoal.domain.tenant import Tenant

JsonSchema = dict[str, Any]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

MODELS: dict[str, type[BaseModel]] = {
    "NodePool": NodePool,
    "Tenant": Tenant,
    "TrainingJob": TrainingJob,
    "Simulation": Simulation,
    "InferenceService": InferenceService,
}
"""Every manifest kind, in the order the reference documents them."""

# What the quantity parsers of shoal.domain.quantity accept (kept in step with
# them by tests/unit/test_schema.py, which feeds both the same samples).
CPU_PATTERN = r"^\s*\d+(\.\d+)?\s*m?\s*$"
MEMORY_PATTERN = r"^\s*\d+(\.\d+)?\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$"
SEED_PATTERN = r"^\s*\d+\s*(-\s*\d+\s*)?$"

CPU_QUANTITY: list[JsonSchema] = [
    {"type": "number", "minimum": 0},
    {"type": "string", "pattern": CPU_PATTERN},
]
"""``cpu: 4``, ``0.5`` or ``"500m"`` (the anyOf branches)."""

MEMORY_QUANTITY: list[JsonSchema] = [
    {"type": "number", "minimum": 0},
    {"type": "string", "pattern": MEMORY_PATTERN},
]
"""``memory: 16Gi``, ``"512Mi"`` or a number of MiB (the anyOf branches)."""

GPU_AMOUNT: list[JsonSchema] = [{"type": "number", "minimum": 0}]
"""A number of GPUs in a quota, e.g. 8 or 0.5."""

_SEED: list[JsonSchema] = [
    {"type": "integer", "minimum": 0},
    {"type": "string", "pattern": SEED_PATTERN},
]


class SchemaError(Exception):
    """The models cannot be expressed as a closed, inlined JSON schema (a bug here)."""


def known_kinds() -> list[str]:
    return list(MODELS)


def kind_schema(kind: str) -> JsonSchema:
    """The inlined JSON schema of one kind; KeyError for an unknown kind."""
    model = MODELS[kind]
    raw = model.model_json_schema(by_alias=True, schema_generator=_ShoalSchema)
    defs: dict[str, JsonSchema] = raw.pop("$defs", {})
    schema = _close(_strip_titles(inline_refs(raw, defs)))
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"https://shoal.dev/schemas/v1alpha1/{kind}.json",
        "title": kind,
        **schema,
    }


def all_schemas() -> dict[str, JsonSchema]:
    return {kind: kind_schema(kind) for kind in MODELS}


def schema_text(kind: str) -> str:
    """The schema as the checked-in ``schemas/<kind>.json`` holds it."""
    return json.dumps(kind_schema(kind), indent=2, ensure_ascii=False) + "\n"


def inline_refs(schema: JsonSchema, defs: Mapping[str, JsonSchema]) -> JsonSchema:
    """``schema`` with every ``#/$defs/X`` replaced by a copy of X; cycles are an error.

    Keys written beside a ``$ref`` (a field's description or default) win over
    the same keys of the definition.
    """
    return _inline(schema, defs, ())  # type: ignore[no-any-return]


def _inline(node: Any, defs: Mapping[str, JsonSchema], stack: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        prefix = "#/$defs/"
        if not isinstance(ref, str) or not ref.startswith(prefix):
            raise SchemaError(f"cannot inline $ref {ref!r}")
        name = ref[len(prefix) :]
        if name in stack:
            cycle = " -> ".join((*stack, name))
            raise SchemaError(f"recursive model cannot be inlined: {cycle}")
        if name not in defs:
            raise SchemaError(f"$ref to a missing definition {name!r}")
        target = _inline(copy.deepcopy(defs[name]), defs, (*stack, name))
        siblings = {k: _inline(v, defs, stack) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    return {key: _inline(value, defs, stack) for key, value in node.items()}


# Keywords whose value is one schema, a list of schemas, or a name -> schema map.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties")


def _children(node: JsonSchema, fix: Callable[[JsonSchema], JsonSchema]) -> JsonSchema:
    """``node`` with ``fix`` applied to each of its direct subschemas."""
    out = dict(node)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = fix(out[key])
    for key in _MANY:
        if isinstance(out.get(key), list):
            out[key] = [fix(item) for item in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: fix(sub) for name, sub in out[key].items()}
    return out


def _strip_titles(node: JsonSchema) -> JsonSchema:
    # pydantic's titles ("Podsets") only repeat the key, badly capitalised.
    return _children({k: v for k, v in node.items() if k != "title"}, _strip_titles)


def _close(node: JsonSchema) -> JsonSchema:
    """Every object with named properties rejects unknown ones."""
    node = _children(node, _close)
    if "properties" in node and node.get("additionalProperties") is not False:
        if "additionalProperties" in node:
            raise SchemaError(f"an object with properties accepts extra keys: {sorted(node)}")
        node["additionalProperties"] = False
    return node


# --- input forms of the domain's BeforeValidator functions -------------------

_Inner = Callable[[], JsonSchemaValue]
_Input = Callable[[_Inner], JsonSchemaValue]


def _fixed(branches: list[JsonSchema]) -> _Input:
    def build(_inner: _Inner) -> JsonSchemaValue:
        return {"anyOf": copy.deepcopy(branches)} if len(branches) > 1 else dict(branches[0])

    return build


def _quantity(branches: list[JsonSchema]) -> _Input:
    """A quantity; the field's sign constraint (``gt=0``) carries over to the number."""

    def build(inner: _Inner) -> JsonSchemaValue:
        bounds = {k: v for k, v in inner().items() if "imum" in k}
        schema = {"anyOf": copy.deepcopy(branches)}
        if bounds == {"exclusiveMinimum": 0}:
            number = schema["anyOf"][0]
            del number["minimum"]
            number["exclusiveMinimum"] = 0
        elif bounds:
            # A bound on millicores or MiB cannot be written for "4" or "16Gi".
            raise SchemaError(f"cannot express the bounds {bounds} of a quantity")
        return schema

    return build


def _with_whole_gpus(inner: _Inner) -> JsonSchemaValue:
    """``gpu: 2`` (whole GPUs) or the full request object (or null)."""
    schema = inner()
    alternatives = schema.pop("anyOf", None) or [schema]
    whole = {"type": "integer", "minimum": 0, "maximum": 64}
    return {"anyOf": [whole, *alternatives]}


def _seeds(_inner: _Inner) -> JsonSchemaValue:
    """A seed, a range ``"42-51"`` or a non-empty list of either."""
    item = {"anyOf": copy.deepcopy(_SEED)}
    return {"anyOf": [*copy.deepcopy(_SEED), {"type": "array", "items": item, "minItems": 1}]}


def _as_written(inner: _Inner) -> JsonSchemaValue:
    """A model-level validator that only fills in defaults: the model's own schema."""
    return inner()


_INPUTS: dict[str, _Input] = {
    "shoal.domain.quantity.parse_cpu_milli": _quantity(CPU_QUANTITY),
    "shoal.domain.quantity.parse_memory_mib": _quantity(MEMORY_QUANTITY),
    "shoal.domain.tenant._gpu_milli": _fixed(GPU_AMOUNT),
    "shoal.domain.job._gpu_request": _with_whole_gpus,
    "shoal.domain.simulation._parse_seeds": _seeds,
    "shoal.domain.simulation.SimulationSpec._replay_defaults_to_trace_tenants": _as_written,
}
_NULLABLE_WRAPPERS = {"shoal.domain.tenant._limit.<locals>.check"}
"""Closures that accept null and hand anything else to the function they wrap."""


def _qualified(function: Any) -> str:
    module = getattr(function, "__module__", "?")
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def _input_schema(function: Any, inner: _Inner) -> JsonSchemaValue:
    name = _qualified(function)
    if name in _INPUTS:
        return _INPUTS[name](inner)
    if name in _NULLABLE_WRAPPERS:
        cells = [cell.cell_contents for cell in function.__closure__ or ()]
        wrapped = [cell for cell in cells if callable(cell)]
        if len(wrapped) == 1:
            schema = _input_schema(wrapped[0], inner)
            alternatives = schema.pop("anyOf", None) or [schema]
            return {"anyOf": [*alternatives, {"type": "null"}]}
    raise SchemaError(
        f"no JSON schema known for the input of validator {name}: "
        "add it to shoal.domain.schema._INPUTS"
    )


class _ShoalSchema(GenerateJsonSchema):
    """pydantic's generator, plus validator input forms and factory defaults."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        function = schema["function"]["function"]
        return _input_schema(function, lambda: self.generate_inner(schema["schema"]))

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return schema.get("default", NoDefault)
        default = factory()  # type: ignore[call-arg]
        if isinstance(default, BaseModel):
            # A nested spec made of its own defaults: written as {} in a manifest.
            if type(default).model_validate({}) != default:
                raise SchemaError(f"default {default!r} is not the same as {{}}")
            return {}
        return default
