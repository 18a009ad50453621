"""Turn one pydantic error into ``(line, field path, message)`` a user can act on.

A pydantic ``loc`` uses the aliases the user wrote (camelCase), list indexes
and, for unions, the member's type (``int``, ``constrained-str``).  Walking it
along the YAML node tree gives the line of the offending key; type tags are
dropped because they are not part of what the user wrote.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from shoal.domain.base import _NAME

Loc = Sequence[str | int]

_TYPE_TAGS = {"int", "float", "str", "bool", "bytes", "none", "list", "dict", "tuple", "set"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Messages where pydantic already says what it got, or where the input is a whole object.
_PARSE_DETAIL = re.compile(
    r", (unable to parse string as an? \w+|got a number with a fractional part)$"
)
_SHOULD_HAVE = re.compile(
    r"^(?:String|List|Dictionary|Tuple|Value) should have (.*?)"
    r"(?: after validation)?(?:, not \d+)?$"
)
_NO_GOT = {"missing", "extra_forbidden", "value_error", "assertion_error", "inconsistent"}


def describe(error: Any, root: yaml.Node, model: type[BaseModel]) -> tuple[int, str, str, str]:
    """``(line, dotted path, message, got)`` for one entry of ``ValidationError.errors()``.

    ``got`` is the offending value as YAML shows it, or "" when the message
    already says (or there is nothing to show); it is kept apart so that the
    alternatives of a union can share it.
    """
    line, parts = locate(root, error["loc"])
    if error["type"] == "extra_forbidden" and parts:
        message = _unknown_field(str(parts[-1]), _fields_at(model, parts[:-1]))
        return line, format_path(parts), message, ""
    message = _clean(error["msg"])
    got = ""
    if error["type"] not in _NO_GOT and "got " not in message:
        got = _show(error.get("input"))
    return line, format_path(parts), message, got


def locate(root: yaml.Node, loc: Loc) -> tuple[int, list[str | int]]:
    """The 1-based line of the deepest node ``loc`` reaches, and ``loc`` minus type tags."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    parts: list[str | int] = []
    for part in loc:
        child = _child(node, part) if node is not None else None
        if child is not None:
            marker, node = child
            line = marker.start_mark.line + 1
            parts.append(part)
        elif not _is_type_tag(part):
            node = None  # a missing field: keep its name, stay on the parent's line
            parts.append(part)
    return line, parts


def format_path(parts: Sequence[str | int]) -> str:
    """``spec.podSets[0].resources`` ; keys that are not identifiers are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(document)"


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """``(node whose line to report, node to descend into)``, or None."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item, item
    return None


def _is_type_tag(part: str | int) -> bool:
    # Union members show up as 'int', 'constrained-str', 'list[int]' or a model name;
    # the user's own keys are camelCase and never look like that.
    if not isinstance(part, str):
        return False
    return part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()


def _clean(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = _PARSE_DETAIL.sub("", message)  # the value itself is shown instead
    if message == "Field required":
        return "required field is missing"
    if message.startswith("String should match pattern"):
        if _NAME in message:
            return (
                "expected a lowercase name: letters a-z, digits, '-' and '.', "
                "starting and ending with a letter or digit"
            )
        return "expected text matching " + message.removeprefix("String should match pattern ")
    if message.startswith("Input should be a valid dictionary"):
        return "expected a mapping of fields (key: value)"
    if message.startswith("Input should be "):
        rest = message.removeprefix("Input should be ")
        if rest.startswith(("greater", "less", "a multiple")):
            rest = "a value " + rest
        return "expected " + rest
    match = _SHOULD_HAVE.match(message)
    if match:
        return "expected " + match.group(1)
    return message


def _show(value: object) -> str:
    """A value as it would look in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "[]"
    # Strings are quoted so that '' and ' 1' show; dates and numbers as YAML wrote them.
    return repr(value) if isinstance(value, str) else str(value)


def _unknown_field(field: str, known: list[str]) -> str:
    message = f"unknown field {field!r}"
    close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    if known:
        return f"{message}; expected one of {', '.join(known)}"
    return message


def _fields_at(model: type[BaseModel], parts: Sequence[str | int]) -> list[str]:
    """The keys (aliases) the model accepts at ``parts``; empty when it cannot tell."""
    annotation: Any = model
    for part in parts:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            annotation = next(
                (f.annotation for name, f in fields.items() if (f.alias or name) == part), None
            )
        else:
            args = get_args(annotation)
            if get_origin(annotation) in (list, tuple) and args:
                annotation = args[0]
            elif get_origin(annotation) is dict and len(args) == 2:
                annotation = args[1]
            else:
                return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [field.alias or name for name, field in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> X (the first model of a wider union)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if not models and len(members) != 1:
                return annotation
            annotation = models[0] if models else members[0]
        else:
            return annotation
