"""``shoal schema KIND`` and ``shoal explain KIND[.FIELD]``: the manifest format.

``schema`` prints a kind's JSON schema (the same as ``schemas/<KIND>.json``);
``explain`` prints the fields of a kind, or of one field and what is inside
it, as docs/reference.md lists them.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from shoal.domain.reference import FieldRow, field_rows
from shoal.domain.schema import kind_schema, known_kinds
from shoal.errors import InputError

out = Console()


def _kind(text: str) -> str:
    """The kind named by ``text`` (case-insensitive), or an InputError listing them."""
    for kind in known_kinds():
        if kind.lower() == text.lower():
            return kind
    raise InputError(f"unknown kind {text!r}; known kinds: {', '.join(known_kinds())}")


def schema(
    kind: Annotated[str, typer.Argument(help="NodePool, Tenant, TrainingJob or Simulation")],
    output: Annotated[str, typer.Option("--output", "-o", help="json or yaml")] = "json",
) -> None:
    """Print the JSON schema of a manifest kind (unknown keys are rejected)."""
    if output not in ("json", "yaml"):
        raise InputError(f"--output: expected json or yaml, got {output!r}")
    document = kind_schema(_kind(kind))
    if output == "json":
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), end="")


def explain(
    field: Annotated[
        str, typer.Argument(help="KIND or KIND.FIELD.PATH, e.g. TrainingJob.spec.podSets")
    ],
) -> None:
    """Describe the fields of a manifest kind, or of one field and those inside it."""
    kind_text, _, path = field.partition(".")
    kind = _kind(kind_text)
    rows = field_rows(kind)
    if path:
        wanted = path.replace("[]", "")
        rows = [row for row in rows if _under(row.path.replace("[]", ""), wanted)]
        if not rows:
            raise InputError(
                f"{kind} has no field {path!r}; run shoal explain {kind} for its fields"
            )
    out.print(f"[bold]{kind}[/]", highlight=False)
    for row in rows:
        out.print(_line(row), highlight=False, soft_wrap=True)


def _under(path: str, wanted: str) -> bool:
    return path == wanted or path.startswith(f"{wanted}.")


def _line(row: FieldRow) -> str:
    facts = [row.type]
    if row.default:
        default = row.default.strip("`")
        facts.append("required" if default == "required" else f"default {default}")
    if row.constraints:
        facts.append(row.constraints)
    text = f"  [cyan]{escape(row.path)}[/]  ({escape(', '.join(facts))})"
    if row.description:
        text += f"\n      {escape(row.description)}"
    return text


def register(app: typer.Typer) -> None:
    """Add ``schema`` and ``explain`` to the ``shoal`` command."""
    app.command("schema")(schema)
    app.command("explain")(explain)
