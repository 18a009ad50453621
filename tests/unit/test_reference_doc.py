"""docs/reference.md: generated from the models, current, and complete."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.domain.reference import ANNOTATIONS, KUBERNETES_KEYS, field_rows, render
from shoal.domain.schema import known_kinds

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"


def test_the_reference_is_current() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/reference.md is out of date with the models: "
        "run python -m shoal.domain.reference > docs/reference.md"
    )


def test_the_module_prints_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shoal.domain.reference"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render()


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("TrainingJob", "spec.podSets"),
        ("TrainingJob", "spec.podSets[].resources.gpu.fraction"),
        ("TrainingJob", "spec.env"),
        ("TrainingJob", "spec.nodeSelector"),
        ("Tenant", "spec.allowedPriorities"),
        ("Tenant", "spec.quota.gpus.<gpuModel>.borrowingLimit"),
        ("Simulation", "spec.replay.failures[].atSeconds"),
        ("NodePool", "spec.topology.nodesPerRack"),
    ],
)
def test_fields_users_look_for_are_listed(kind: str, path: str) -> None:
    section = REFERENCE.read_text().split(f"## {kind}\n", 1)[1].split("\n## ", 1)[0]
    assert f"| `{path}` |" in section


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every key path of a document, written as the reference writes them."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}{key}"
            found.append(path)
            found += _paths(item, f"{path}.")
    elif isinstance(value, list):
        for item in value:
            found += _paths(item, f"{prefix.rstrip('.')}[].")
    return found


def test_every_key_of_every_example_is_documented() -> None:
    documented = {kind: {row.path for row in field_rows(kind)} for kind in known_kinds()}
    free_maps = {
        kind: tuple(f"{row.path}." for row in field_rows(kind) if row.type.startswith("map of string to string"))
        for kind in known_kinds()
    }
    seen = 0
    for path in ROOT.glob("examples/**/*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            for key in _paths(doc):
                key = re.sub(r"quota\.gpus\.[^.]+", "quota.gpus.<gpuModel>", key)
                if key.startswith(free_maps[doc["kind"]]):
                    continue  # a user's own key inside labels, env, ...
                assert key in documented[doc["kind"]], f"{path.name}: {key} is not in the reference"
                seen += 1
    assert seen > 100


def test_every_spec_field_has_a_description() -> None:
    # apiVersion, kind, metadata and spec themselves are explained in the intro.
    missing = [
        f"{kind}: {row.path}"
        for kind in known_kinds()
        for row in field_rows(kind)
        if row.path.startswith("spec.") and not row.description
        and not row.path.endswith(("operator", "minWorkers", "maxWorkers"))
    ]
    assert missing == []


def test_every_annotation_read_in_the_code_is_documented() -> None:
    key = re.compile(r"""["'](shoal\.dev/[a-z0-9-]+)["']""")
    used = {
        match
        for path in (ROOT / "src").rglob("*.py")
        for match in key.findall(path.read_text())
        if match != "shoal.dev/v1alpha1"
    }
    assert "shoal.dev/submit-after" in used
    documented = {annotation.key for annotation in ANNOTATIONS}
    documented |= {key for key, _, _ in KUBERNETES_KEYS}
    assert used <= documented, f"document these in shoal.domain.reference: {used - documented}"
    assert all(f"`{key}`" in render() for key in documented)
