"""Manifests for the CRD tests: the examples as a cluster takes them, and a job to edit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from shoal.runtime.kubernetes.crds import KINDS

ROOT = Path(__file__).resolve().parents[2]


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(ROOT.glob("examples/**/*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc.get("kind") in KINDS:
                docs.append((f"{path.relative_to(ROOT)}#{index}", doc))
    return docs


def without_shorthands(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as a cluster takes it: ``gpu: N`` written as ``gpu: {count: N}``."""
    doc = copy.deepcopy(doc)
    for pod_set in doc["spec"].get("podSets", []):
        resources = pod_set.get("resources", {})
        if isinstance(resources.get("gpu"), int):
            resources["gpu"] = {"count": resources["gpu"]}
    return doc


def a_job() -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
        "spec": {"tenant": "team-a", "podSets": [{"count": 2, "resources": {
            "cpu": "500m", "memory": "1Gi", "gpu": {"fraction": 0.5, "memory": "10Gi"}}}],
            "affinity": {"pack": "rack"}},
    }


def edit(path: str, value: Any) -> dict[str, Any]:
    doc = a_job()
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return doc
