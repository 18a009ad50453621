"""JSON schema (as ``shoal.domain.schema`` writes it) -> Kubernetes structural OpenAPI v3.

A CRD's ``openAPIV3Schema`` must be *structural*: every node typed, no
``$ref``, no ``type``/``description``/``default``/``nullable`` inside
``anyOf``/``allOf``/``oneOf``/``not``, never ``properties`` beside
``additionalProperties``.  The conversion is exact where OpenAPI can say the
same thing and records a ``Narrowing`` where it cannot:

* ``X or null`` -> ``X`` with ``nullable: true`` (exact), except for objects:
  Kubernetes publishes a nullable object to kubectl without its fields, so
  unknown fields inside it would go unnoticed; ``gpu: null`` is refused instead;
* ``integer or string`` -> ``x-kubernetes-int-or-string`` with the branches'
  constraints hoisted (``minimum`` only binds numbers, ``pattern`` only
  strings: exact);
* ``number or string`` (CPU and memory quantities) -> int-or-string as above:
  a bare fractional number (``cpu: 2.5``) is refused, ``"2.5"`` is not;
* ``scalar or object`` (``gpu: 2`` or ``gpu: {count: 2}``) -> the object;
* ``additionalProperties: false`` beside ``properties`` is dropped: the API
  server prunes unknown fields instead (see ``crds.py`` on rejecting them);
* ``const`` -> one-value ``enum``; numeric ``exclusiveMinimum`` ->
  ``minimum`` + ``exclusiveMinimum: true``; ``default``, ``title``, ``$id``
  and ``$schema`` are dropped (defaults are the models' to apply).

``structural_problems`` checks a schema against those rules without a server.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.domain.schema import SchemaError

Schema = dict[str, Any]

INT_OR_STRING = "x-kubernetes-int-or-string"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
_DROPPED = ("$schema", "$id", "title", "default", "examples")
_SCALARS = {"integer", "number", "string", "boolean"}


@dataclass(frozen=True)
class Narrowing:
    """A value the model accepts at ``path`` that the structural schema refuses."""

    path: str
    refused: str


def to_structural(schema: Schema, path: str = "") -> tuple[Schema, list[Narrowing]]:
    """The structural form of ``schema`` and what it refuses that ``schema`` accepts."""
    narrowings: list[Narrowing] = []
    return _node(schema, path, narrowings), narrowings


def _node(node: Schema, path: str, out: list[Narrowing]) -> Schema:
    node = _scalar_keywords(node)
    if "anyOf" in node:
        node = _union(node, path, out)
    if isinstance(node.get("properties"), dict):
        node["properties"] = {
            name: _node(sub, f"{path}.{name}" if path else name, out)
            for name, sub in node["properties"].items()
        }
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _node(node["additionalProperties"], f"{path}.*", out)
    if isinstance(node.get("items"), dict):
        node["items"] = _node(node["items"], f"{path}[]", out)
    return node


def _scalar_keywords(node: Schema) -> Schema:
    out = {k: v for k, v in node.items() if k not in _DROPPED}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        bound = out.get(exclusive)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            out[inclusive], out[exclusive] = bound, True
    return out


def _union(node: Schema, path: str, out: list[Narrowing]) -> Schema:
    branches = [_scalar_keywords(b) for b in node.pop("anyOf")]
    types = [b.get("type") for b in branches if b.get("type") != "null"]
    if len(types) < len(branches):
        branches = [b for b in branches if b.get("type") != "null"]
        if "object" in types:
            # Kubernetes publishes a nullable object without its fields, so kubectl's
            # client-side validation would no longer see unknown fields inside it.
            out.append(Narrowing(path, "an explicit null (leave the field out)"))
        else:
            node["nullable"] = True
    if len(branches) == 1:
        return {**branches[0], **node}
    if set(types) in ({"integer", "string"}, {"number", "string"}) and len(types) == 2:
        if "number" in types:
            out.append(Narrowing(path, "a bare number with a fraction (write it as a string)"))
        return _int_or_string(node, branches, path)
    objects = [b for b in branches if b.get("type") == "object"]
    if len(objects) == 1 and set(types) - {"object"} <= _SCALARS:
        dropped = sorted(str(t) for t in types if t != "object")
        out.append(Narrowing(path, f"the {' or '.join(dropped)} shorthand (write the object)"))
        return {**objects[0], **node}
    raise SchemaError(f"{path}: no structural form for a union of {types}")


def _int_or_string(node: Schema, branches: list[Schema], path: str) -> Schema:
    hoisted: Schema = {}
    for branch in branches:
        for key, value in branch.items():
            if key == "type":
                continue
            if key == "enum" or key in hoisted:
                # an enum binds every type; a key in both branches binds both
                raise SchemaError(f"{path}: cannot hoist {key!r} out of an int-or-string union")
            hoisted[key] = value
    return {
        **node, **hoisted, INT_OR_STRING: True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }


# --- checking -------------------------------------------------------------------

_KEYWORDS = {
    "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum",
    "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems",
    "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties", "minProperties",
    "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
    "additionalProperties", "nullable", "example", "externalDocs",
    INT_OR_STRING, PRESERVE, "x-kubernetes-embedded-resource", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
}
"""The fields of apiextensions.k8s.io/v1 JSONSchemaProps that a CRD may use."""
_NOT_IN_JUNCTORS = ("type", "description", "default", "additionalProperties", "nullable")
_JUNCTORS = ("allOf", "anyOf", "oneOf")
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_ROOT_WITH_STATUS = {"description", "type", "properties", "required"}


def structural_problems(schema: Schema) -> list[str]:
    """Why ``schema`` is not a structural CRD schema for Shoal (empty: it is).

    Kubernetes' rules, plus Shoal's own: no ``x-kubernetes-preserve-unknown-fields``
    (a spec that keeps unknown fields cannot refuse them).
    """
    problems: list[str] = []
    extra = set(schema) - _ROOT_WITH_STATUS
    if extra:
        problems.append(f"<root>: not allowed at the root with a status subresource: {extra}")
    metadata = schema.get("properties", {}).get("metadata")
    if metadata is not None and set(metadata.get("properties", {})) - {"name", "generateName"}:
        problems.append("metadata: only name and generateName may be constrained")
    _check(schema, "<root>", problems.append)
    return problems


def _check(node: Any, path: str, problem: Callable[[str], None]) -> None:
    if not isinstance(node, dict):
        problem(f"{path}: a schema must be an object, got {node!r}")
        return
    for key in sorted(set(node) - _KEYWORDS):
        problem(f"{path}: {key!r} is not allowed in a CRD schema")
    _check_typed(node, path, problem)
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            problem(f"{path}: {key} must be a boolean in OpenAPI v3.0")
    if node.get("uniqueItems"):
        problem(f"{path}: uniqueItems cannot be true")
    if node.get(PRESERVE):
        problem(f"{path}: {PRESERVE} would keep unknown fields")
    for name, sub in (node.get("properties") or {}).items():
        _check(sub, f"{path}.{name}", problem)
    if isinstance(node.get("additionalProperties"), dict):
        _check(node["additionalProperties"], f"{path}.*", problem)
    if isinstance(node.get("items"), dict):
        _check(node["items"], f"{path}[]", problem)
    for junctor in _JUNCTORS:
        for index, branch in enumerate(node.get(junctor) or []):
            _check_junction(branch, f"{path}.{junctor}[{index}]", node, problem)
    if "not" in node:
        _check_junction(node["not"], f"{path}.not", node, problem)


def _check_typed(node: Schema, path: str, problem: Callable[[str], None]) -> None:
    kind = node.get("type")
    if node.get(INT_OR_STRING):
        if kind is not None:
            problem(f"{path}: an int-or-string node has no type")
        if node.get("anyOf", [{"type": "integer"}, {"type": "string"}]) != [
            {"type": "integer"}, {"type": "string"}
        ]:
            problem(f"{path}: an int-or-string anyOf must be exactly integer, string")
    elif kind not in _TYPES:
        problem(f"{path}: needs a type, one of {sorted(_TYPES)} (got {kind!r})")
    if "properties" in node and "additionalProperties" in node:
        problem(f"{path}: properties and additionalProperties are mutually exclusive")
    if ("properties" in node or "additionalProperties" in node) and kind != "object":
        problem(f"{path}: properties need type object")
    if (kind == "array") != ("items" in node):
        problem(f"{path}: an array needs items, and only an array has them")


def _check_junction(branch: Any, path: str, outer: Schema, problem: Callable[[str], None]) -> None:
    if not isinstance(branch, dict):
        problem(f"{path}: a schema must be an object")
        return
    if outer.get(INT_OR_STRING) and branch in ({"type": "integer"}, {"type": "string"}):
        return
    for key in _NOT_IN_JUNCTORS:
        if key in branch:
            problem(f"{path}: {key} is not allowed inside a junctor")
    for key in sorted(set(branch) - _KEYWORDS):
        problem(f"{path}: {key!r} is not allowed in a CRD schema")
    for name in branch.get("properties") or {}:
        if name not in (outer.get("properties") or {}):
            problem(f"{path}: property {name!r} must also be specified outside the junctor")
