"""Read manifest files and folders for ``apply``, ``run`` and ``validate``.

A folder means every ``*.yaml``/``*.yml`` in it, sorted by name.  Every
syntax or schema error is the located ``ManifestError`` (file, line, field)
before anything is sent; relative ``workingDir`` values (and an
InferenceService's ``model.path``) are made absolute from the manifest's
folder, since the control plane does not know it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from shoal.domain.manifest import Manifest, parse_manifests
from shoal.errors import InputError, ManifestError

SUFFIXES = (".yaml", ".yml")


def manifest_files(path: Path) -> list[Path]:
    """The file itself, or a folder's YAML files in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"{path}: no *.yaml or *.yml files in this folder")
        return files
    if not path.exists():
        raise InputError(f"{path}: file not found")
    return [path]


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def load(path: Path) -> list[Manifest]:
    """Every manifest of a file or folder, validated (located errors)."""
    return [m for file in manifest_files(path) for m in parse_manifests(read_text(file), str(file))]


def resolve_working_dirs(path: Path) -> str:
    """The file's text, checked, with relative ``workingDir`` made absolute."""
    text = read_text(path)
    parse_manifests(text, str(path))  # the located error for malformed YAML or fields
    docs = list(yaml.safe_load_all(text))
    changed = False
    for doc in docs:
        spec = doc.get("spec") if isinstance(doc, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("workingDir"), str):
            folder = Path(spec["workingDir"])
            if not folder.is_absolute():
                spec["workingDir"] = str((path.resolve().parent / folder).resolve())
                changed = True
        model = spec.get("model") if isinstance(spec, dict) else None
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            # An InferenceService's model file, relative to the manifest as written.
            file = Path(model["path"])
            if not file.is_absolute():
                model["path"] = str((path.resolve().parent / file).resolve())
                changed = True
    return yaml.safe_dump_all(docs, sort_keys=False) if changed else text


def request_files(path: Path) -> list[tuple[str, str]]:
    """``(source, text)`` of every file to apply, checked."""
    return [(str(file), resolve_working_dirs(file)) for file in manifest_files(path)]
