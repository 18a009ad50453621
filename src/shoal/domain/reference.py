"""The manifest reference (docs/reference.md), generated from the JSON schemas.

Every field of every kind becomes one row: its path as the user writes it
(``spec.podSets[].resources.gpu.fraction``), type, default, constraints and
description (the pydantic ``Field`` descriptions and class docstrings).  The
annotations Shoal reads and the labels it puts on nodes are listed too.

``render()`` is pure; regenerate the file with::

    python -m shoal.domain.reference > docs/reference.md

(or ``python scripts/gen_reference.py``, which also writes ``schemas/``).
tests/unit/test_reference_doc.py fails when the file is out of date.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from shoal.domain import base, nodes, priority
from shoal.domain.schema import CPU_QUANTITY, MEMORY_QUANTITY, JsonSchema, kind_schema
from shoal.domain.schema import MODELS as KINDS


@dataclass(frozen=True)
class Annotation:
    """A ``metadata.annotations`` key that Shoal reads."""

    key: str
    kinds: tuple[str, ...]
    read_by: str
    meaning: str


ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(
        key="shoal.dev/submit-after",
        kinds=("TrainingJob",),
        read_by="`shoal run`",
        meaning='Seconds after the start of the run (or after its `submit-when` condition was '
        'met) at which the job is submitted ("8", "2.5"); jobs without either are submitted at '
        "once. Other commands ignore it.",
    ),
    Annotation(
        key="shoal.dev/submit-when",
        kinds=("TrainingJob",),
        read_by="`shoal run`",
        meaning='Submit the job on an event, not a timer: "<job> <condition>", where <job> is '
        "another TrainingJob of the scenario and <condition> is `running`, `checkpointed` (it "
        "saved a checkpoint), `succeeded` or `finished`. A condition that can no longer be met "
        "(the job ended without it) fails the run.",
    ),
    # ANNOTATIONS: add a new annotation here when code starts reading it;
    # tests/unit/test_reference_doc.py checks that every "shoal.dev/..." key
    # found in src/ is listed.
)

NODE_LABELS: tuple[tuple[str, str], ...] = (
    (nodes.HOSTNAME, "the node's name, `<pool>-<index>`"),
    (nodes.ZONE, "`spec.topology.zone` of the pool, when set"),
    (nodes.RACK, "`<pool>-rack-<n>`, when `spec.topology.nodesPerRack` is set"),
    (
        nodes.NVLINK,
        "`<pool>-nvl-<n>`, groups of `spec.topology.nodesPerNvlinkDomain` nodes (default 1)",
    ),
)

KUBERNETES_KEYS: tuple[tuple[str, str, str], ...] = (
    ("shoal.dev/job", "label on Pods", "the TrainingJob the pod belongs to (Shoal writes it)"),
    ("shoal.dev/pod-uid", "label on Pods",
     "Shoal's id of the pod, by which the operator finds it again after a restart"),
    ("shoal.dev/rank", "annotation on Pods", "the pod's rank in its job (also `RANK`)"),
    ("shoal.dev/gpu-index", "annotation on Pods",
     "the GPU indices Shoal's placement chose on the node, comma-separated"),
    ("shoal.dev/gpu-fraction", "annotation on Pods",
     "the share of one GPU a fractional pod may use, for a GPU-sharing device plugin"),
    ("shoal.dev/gpu-memory", "annotation on Pods",
     "the GPU memory (MiB) a fractional pod may use, when its job names it"),
    ("shoal.dev/gpu-sharing", "label on Nodes (read)",
     "`hami`: a sharing device plugin splits the node's GPUs; fractional jobs select "
     "such nodes with it (Shoal's view also has it on nodes with `nvidia.com/gpumem` "
     "or `nvidia.com/gpucores` allocatable)"),
    ("shoal.dev/stop", "finalizer on TrainingJobs",
     "keeps a deleted job until its pods are stopped and its quota is released"),
    ("shoal.dev/tenant", "label on the objects made for a Tenant", "the tenant's name"),
    ("shoal.dev/role", "label on Namespaces (read)",
     "`router`: the tenants' network policies let traffic in from this namespace"),
    ("shoal.dev/pool", "label on Nodes (read)",
     "the node's pool name in Shoal's views (default `kubernetes`)"),
    ("shoal.dev/checkpoint", "annotation on Pods (read)",
     "`{\"step\": N}`: the newest checkpoint the pod saved (or the same JSON as its "
     "container's termination message); the next attempt resumes from it"),
    ("shoal.dev/checkpoint-size", "annotation on TrainingJobs (read)",
     "the size of the job's checkpoint PersistentVolumeClaim (default `10Gi`)"),
    ("shoal.dev/checkpoint-storage-class", "annotation on TrainingJobs (read)",
     "the storage class of the job's checkpoint PersistentVolumeClaim (default: the "
     "cluster's)"),
    ("shoal.dev/service", "label on an InferenceService's replica jobs, Deployments and pods",
     "the service the replica serves (set by Shoal; a user's TrainingJob may not carry it)"),
    ("shoal.dev/revision", "label on an InferenceService's replica jobs, Deployments and pods",
     "the revision whose model the replica loads (set by Shoal, like `shoal.dev/service`)"),
    ("shoal.dev/model-source", "annotation on an InferenceService's replica jobs "
     "(embedded runtime)",
     "the model file, or the TrainingJob checkpoint folder it is in, that a sandbox shows "
     "the replica read-only (set by Shoal; a user's TrainingJob may not carry it)"),
    ("shoal.dev/serving", "finalizer on InferenceServices",
     "keeps a deleted service until its replicas are scaled to zero"),
    ("shoal.dev/router", "label on an InferenceService's router pods",
     "the service the router serves; the service's Service selects its pods by it"),
)
"""Labels, annotations and finalizers of the Kubernetes runtime (docs/kubernetes.md)."""

_MEMORY = MEMORY_QUANTITY[1]["pattern"]
_MAP_KEYS = {"gpus": "<gpuModel>"}
"""Placeholder for the keys of a map field, by the field's name; otherwise ``<key>``."""


@dataclass(frozen=True)
class FieldRow:
    """One field of a kind, as the reference and ``shoal explain`` show it."""

    path: str
    type: str
    default: str
    constraints: str
    description: str


def field_rows(kind: str) -> list[FieldRow]:
    """Every field of ``kind``, depth first in declaration order."""
    rows: list[FieldRow] = []
    _walk(kind_schema(kind), "", rows)
    return rows


def _walk(schema: JsonSchema, prefix: str, rows: list[FieldRow]) -> None:
    required = set(schema.get("required", ()))
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        rows.append(
            FieldRow(
                path=path,
                type=_type_name(sub),
                default="required" if name in required else _default(sub),
                constraints=_constraints(sub),
                description=_description(sub),
            )
        )
        nested = _object_inside(sub, name)
        if nested is not None:
            _walk(nested[1], f"{path}{nested[0]}.", rows)


def _branches(schema: JsonSchema) -> tuple[list[JsonSchema], bool]:
    """The non-null alternatives of ``schema`` and whether null is allowed."""
    options: list[JsonSchema] = schema.get("anyOf", [schema])
    rest = [option for option in options if option.get("type") != "null"]
    return rest, len(rest) != len(options)


def _object_inside(schema: JsonSchema, name: str = "") -> tuple[str, JsonSchema] | None:
    """``(path suffix, object schema)`` of the one object reachable from field ``name``."""
    for option in _branches(schema)[0]:
        if "properties" in option:
            return "", option
        items = option.get("items")
        if isinstance(items, dict) and "properties" in items:
            return "[]", items
        values = option.get("additionalProperties")
        if isinstance(values, dict) and "properties" in values:
            return "", {"properties": {_MAP_KEYS.get(name, "<key>"): values}}
    return None


def _type_name(schema: JsonSchema) -> str:
    options, nullable = _branches(schema)
    kinds = [(o.get("type"), o.get("pattern")) for o in options]
    if kinds == [("number", None), ("string", CPU_QUANTITY[1]["pattern"])]:
        name = "CPU quantity"
    elif kinds == [("number", None), ("string", MEMORY_QUANTITY[1]["pattern"])]:
        name = "memory quantity"
    else:
        name = " or ".join(_one_type(option) for option in options)
    return f"{name} or null" if nullable else name


def _one_type(schema: JsonSchema) -> str:
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items", {})
        return "list of objects" if "properties" in items else f"list of {_type_name(items)}"
    if kind == "object" and "properties" not in schema:
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            value = "object" if "properties" in values else _type_name(values)
            return f"map of string to {value}"
    return str(kind) if kind else "any"


def _default(schema: JsonSchema) -> str:
    if "default" not in schema:
        return ""
    value = schema["default"]
    if value is None:
        return "unset"
    if value == "":
        return '`""`'
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _constraints(schema: JsonSchema) -> str:
    parts: list[str] = []
    for option in _branches(schema)[0]:
        parts.extend(_one_constraint(option))
    return "; ".join(dict.fromkeys(parts))


def _one_constraint(schema: JsonSchema) -> list[str]:
    if schema.get("type") == "array":
        least = schema.get("minItems")
        parts = [f"at least {least} item" + ("s" if least != 1 else "")] if least else []
        items = schema.get("items", {})
        return parts + ([] if "properties" in items else _one_constraint(items))
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    bounds = (
        ("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")
    )
    parts.extend(f"{symbol} {schema[key]}" for key, symbol in bounds if key in schema)
    pattern = schema.get("pattern")
    if pattern == base._NAME:
        parts.append("a DNS-1123 name: lowercase letters, digits, `-` and `.`")
    elif pattern is not None and pattern not in (CPU_QUANTITY[1]["pattern"], _MEMORY):
        parts.append(f"matches `{pattern}`")
    if "maxLength" in schema:
        parts.append(f"{schema.get('minLength', 0)} to {schema['maxLength']} characters")
    elif schema.get("minLength"):
        parts.append("not empty")
    return parts


def _description(schema: JsonSchema) -> str:
    text = schema.get("description")
    if text is None:
        nested = _object_inside(schema)
        text = nested[1].get("description") if nested and nested[0] == "[]" else None
        if text is None:
            found = [o.get("description") for o in _branches(schema)[0] if o.get("description")]
            text = found[0] if found else ""
    return _inline_text(str(text))


def _inline_text(text: str) -> str:
    """A docstring as one markdown table cell."""
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[FieldRow]) -> list[str]:
    lines = [
        "| Field | Type | Default | Constraints | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = (f"`{row.path}`", row.type, row.default, row.constraints, row.description)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


_INTRO = """\
# Manifest reference

<!-- Generated from the models in src/shoal/domain/ by
     `python -m shoal.domain.reference > docs/reference.md`; do not edit by hand.
     tests/unit/test_reference_doc.py fails when this file is out of date. -->

Every Shoal manifest is a YAML document with `apiVersion: shoal.dev/v1alpha1`,
a `kind`, `metadata` and a `spec`. Keys are camelCase; an unknown key is an
error (`shoal validate FILE` names its line), never silently ignored. A file
may hold several documents separated by `---`. `shoal explain KIND[.FIELD]`
prints the rows below in a terminal, and `shoal schema KIND` prints the JSON
schema of a kind (checked in under [`schemas/`](../schemas/)).

How to read the tables:

* **Field** is the path as written in YAML: `a.b` is key `b` inside `a`,
  `a[]` is every item of the list `a`, and `<key>` stands for a key you
  choose in a map (`<gpuModel>` is a GPU model such as `A100`).
* **CPU quantity**: cores as a number (`4`, `0.5`) or millicores as a string
  (`"500m"`). **Memory quantity**: `"16Gi"`, `"512Mi"`, `"1G"` (suffixes
  `Ki Mi Gi Ti` and `K M G T`), or a bare number of MiB.
* **unset** means the field is absent (or `null`) unless written.
* Priorities are an integer or a built-in class: {priorities}.
"""


def render() -> str:
    """The whole of docs/reference.md."""
    classes = ", ".join(f"`{name}` ({value})" for name, value in priority.BUILTIN_CLASSES.items())
    lines = _INTRO.format(priorities=classes).splitlines()
    lines += ["", "Kinds: " + ", ".join(f"[{k}](#{k.lower()})" for k in KINDS) + "."]
    for kind in KINDS:
        schema = kind_schema(kind)
        lines += ["", f"## {kind}", ""]
        if schema.get("description"):
            lines += [_inline_text(schema["description"]), ""]
        lines += _table(field_rows(kind))
    lines += [
        "",
        "## Annotations",
        "",
        "Keys under `metadata.annotations` that Shoal reads; every other annotation",
        "is kept and ignored.",
        "",
        "| Annotation | Kinds | Read by | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for note in ANNOTATIONS:
        cells = (f"`{note.key}`", ", ".join(note.kinds), note.read_by, note.meaning)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += [
        "",
        "## Node labels",
        "",
        "Labels Shoal sets on every node of a pool, besides the pool's own",
        "`spec.labels`; use them in `spec.nodeSelector` and",
        "`spec.affinity.required` of a TrainingJob.",
        "",
        "| Label | Value |",
        "| --- | --- |",
    ]
    lines += [f"| `{key}` | {_cell(value)} |" for key, value in NODE_LABELS]
    lines += [
        "",
        "## Kubernetes labels and annotations",
        "",
        "What the operator writes on (or reads from) cluster objects",
        "(see docs/kubernetes.md).",
        "",
        "| Key | On | Meaning |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{key}` | {on} | {_cell(text)} |" for key, on, text in KUBERNETES_KEYS]
    return "\n".join(lines) + "\n"


def _main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    _main()
