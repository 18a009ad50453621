"""Manifests: multi-document YAML text -> validated specs, or one clear ManifestError.

Every error names the file, the line of the offending field, the field's path
as the user wrote it (``spec.podSets[0].resources.gpu.fraction``) and what was
expected.  Lines come from the YAML node tree (``compose``), which the
pydantic error location is walked along; the text is parsed once and the
same nodes are then constructed into plain data.

``load_manifest_file`` is the only function here that touches the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from shoal.domain.base import API_VERSION
from shoal.domain.job import TrainingJob
from shoal.domain.manifest_errors import describe, locate
from shoal.domain.nodes import NodePool
from shoal.domain.service import InferenceService
from shoal.domain.simulation import Simulation
from shoal.domain.tenant import Tenant
from shoal.errors import ManifestError

Manifest = NodePool | Tenant | TrainingJob | Simulation | InferenceService

KINDS: dict[str, type[BaseModel]] = {
    "InferenceService": InferenceService,
    "NodePool": NodePool,
    "Simulation": Simulation,
    "Tenant": Tenant,
    "TrainingJob": TrainingJob,
}


def parse_manifests(text: str, source: str) -> list[Manifest]:
    """Every document of ``text`` as a model; ``source`` names the file in errors."""
    manifests: list[Manifest] = []
    for node, data in _documents(text, source):
        if data is None:
            continue  # an empty document, e.g. a trailing '---'
        manifests.append(_validate(node, data, source))
    return manifests


def load_manifest_file(path: Path) -> list[Manifest]:
    """Read and parse one manifest file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a folder, expected a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_manifests(text, str(path))


def _documents(text: str, source: str) -> list[tuple[yaml.Node, Any]]:
    """``(node, data)`` per document; YAML syntax errors become ManifestErrors."""
    try:
        # The reader checks the characters here already (NUL, lone surrogates).
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: invalid YAML: {_one_line(exc)}") from exc
    documents: list[tuple[yaml.Node, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _reject_duplicate_keys(node, source, set())
            _check_expansion(node, source, max(MIN_EXPANDED_LIMIT, 2 * len(text)))
            documents.append((node, loader.construct_document(node)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "malformed YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise ManifestError(f"{where}: invalid YAML: {problem}{context}") from exc
    except yaml.YAMLError as exc:  # reader errors (bad bytes) carry no mark
        raise ManifestError(f"{source}: invalid YAML: {_one_line(exc)}") from exc
    except RecursionError:
        raise ManifestError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return documents


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _reject_duplicate_keys(node: yaml.Node, source: str, done: set[int]) -> None:
    # PyYAML silently keeps the last of two equal keys, which hides typos.
    # ``done``: nodes already checked; an alias names the same node again, so
    # each is checked once however often it is used (no "billion laughs").
    if id(node) in done:
        return
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    line = key.start_mark.line + 1
                    raise ManifestError(f"{source}:{line}: duplicate key {key.value!r}")
                seen.add(key.value)
            _reject_duplicate_keys(value, source, done)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, source, done)


MIN_EXPANDED_LIMIT = 1 << 20
"""Aliases may make a document at most this large (in scalar characters and
items), or twice its own text, whichever is more."""


def _check_expansion(node: yaml.Node, source: str, limit: int) -> None:
    """Refuse a document whose aliases expand it past ``limit`` (or into a cycle).

    Sizes are counted per distinct node (memoised), so the check itself costs
    one pass over the text however large the expansion would be.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in open_:
            line = current.start_mark.line + 1
            raise ManifestError(f"{source}:{line}: invalid YAML: an alias refers to itself")
        open_.add(key)
        if isinstance(current, yaml.ScalarNode):
            total = 1 + len(current.value)
        elif isinstance(current, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in current.value)
        else:
            total = 1 + sum(size(k) + size(v) for k, v in current.value)
        open_.discard(key)
        if total > limit:
            line = current.start_mark.line + 1
            raise ManifestError(
                f"{source}:{line}: invalid YAML: aliases expand the document past {limit:,} "
                "characters", hint="write the values out, or use fewer aliases")
        sizes[key] = total
        return total

    size(node)


def _validate(node: yaml.Node, data: Any, source: str) -> Manifest:
    start = node.start_mark.line + 1
    if not isinstance(data, dict):
        raise ManifestError(
            f"{source}:{start}: expected a mapping with apiVersion, kind, metadata and spec, "
            f"got {type(data).__name__}"
        )
    api_version = data.get("apiVersion")
    if api_version != API_VERSION:
        line = locate(node, ("apiVersion",))[0]
        got = "it is missing" if api_version is None else f"got {api_version!r}"
        raise ManifestError(f"{source}:{line}: apiVersion: expected {API_VERSION!r}, {got}")
    kind = data.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None or not isinstance(kind, str):
        line = locate(node, ("kind",))[0]
        known = ", ".join(KINDS)
        got = "kind is missing" if kind is None else f"unknown kind {kind!r}"
        raise ManifestError(f"{source}:{line}: {got}; expected one of {known}")
    try:
        manifest: Manifest = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise ManifestError(_report(exc, node, model, source, kind, data)) from None
    return manifest


def _report(
    exc: ValidationError,
    node: yaml.Node,
    model: type[BaseModel],
    source: str,
    kind: str,
    data: dict[str, Any],
) -> str:
    """One line per field; the alternatives of a union are merged into one line."""
    fields: dict[tuple[int, str], tuple[list[str], str]] = {}
    for error in exc.errors(include_url=False):
        line, path, message, got = describe(error, node, model)
        messages, _ = fields.setdefault((line, path), ([], got))
        if message not in messages:
            messages.append(message.removeprefix("expected ") if messages else message)
    entries = [
        f"{source}:{line}: {path}: {' or '.join(messages)}" + (f", got {got}" if got else "")
        for (line, path), (messages, got) in sorted(fields.items())
    ]
    if len(entries) == 1:
        return entries[0]
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    what = f"{kind} {name!r}" if isinstance(name, str) else kind
    header = f"{source}: {what} has {len(entries)} errors:"
    return "\n".join([header, *(f"  {entry}" for entry in entries)])
