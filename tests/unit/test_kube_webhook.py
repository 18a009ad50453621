"""The admission webhook refuses what ``shoal apply`` refuses, in the same words (no server)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from shoal.domain.manifest import parse_manifests
from shoal.errors import ManifestError
from shoal.runtime.kubernetes.webhook import review


def job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": "team-a", "uid": "x", "resourceVersion": "1",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"tenant": "team-a", "podSets": [{"count": 1}], **spec},
    }


def _apply_error(obj: dict[str, Any]) -> str:
    meta = {k: v for k, v in obj["metadata"].items() if k in ("name", "labels")}
    text = yaml.safe_dump({**obj, "metadata": meta}, sort_keys=False)
    with pytest.raises(ManifestError) as caught:
        parse_manifests(text, "job.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [
        {"podSets": [{"count": 1, "resources": {"gpu": {"fraction": 1.5}}}]},
        {"podSets": [{"name": "w", "count": 1}, {"name": "w", "count": 2}]},
        {"priority": "urgent"},
        {"env": {"1BAD": "x"}},
        {"podSets": [{"count": 0}], "maxRetries": -1},
    ],
    ids=["fraction", "duplicate-pod-sets", "priority-class", "env-name", "two-errors"],
)
def test_the_same_words_as_shoal_apply(spec: dict[str, Any]) -> None:
    obj = job(**spec)
    refused = review(obj)
    assert refused is not None
    strip_apply = re.compile(r"job\.yaml(:\d+)?: ")
    strip_hook = re.compile(r"TrainingJob team-a/train: ")
    assert strip_hook.sub("", refused) == strip_apply.sub("", _apply_error(obj))


def test_a_valid_job_passes_and_tool_annotations_do_not_count() -> None:
    assert review(job()) is None


def test_a_job_outside_its_tenants_namespace_is_refused() -> None:
    obj = job()
    obj["spec"]["tenant"] = "team-b"
    assert review(obj) == (
        "TrainingJob team-a/train: spec.tenant: a TrainingJob lives in its tenant's "
        "namespace: expected 'team-a', got 'team-b'"
    )


def test_a_tenant_lending_more_than_it_has_is_refused() -> None:
    tenant = {"kind": "Tenant", "metadata": {"name": "team-a"},
              "spec": {"quota": {"gpus": {"A100": {"nominal": 1, "lendingLimit": 2}}}}}
    assert review(tenant) == (
        "Tenant team-a: spec: quota gpu/A100: lendingLimit (2000) cannot exceed nominal (1000)"
    )


def service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "digits", "namespace": "team-a", "uid": "x",
                     "resourceVersion": "1",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"tenant": "team-a", "framework": "sklearn",
                 "model": {"path": "/models/digits.joblib", "version": "1"}, **spec},
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"replicas": {"min": 3, "max": 2}},
        {"autoscaling": {"metric": "latency", "sloP95Ms": 100}},
        {"autoscaling": {"policy": "shoal", "metric": "latency"}},
        {"model": {"version": "1"}},
        {"model": {"path": "/m.pt", "entryPoint": "net:Net"}},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
        {"autoscaling": {"metric": "latency"}, "replicas": {"min": 3, "max": 2}},
    ],
    ids=["min-above-max", "latency-without-shoal", "latency-without-slo", "no-model",
         "entry-point-not-pytorch", "duplicate-tensor", "two-errors"],
)
def test_a_service_is_refused_in_the_same_words_as_shoal_apply(spec: dict[str, Any]) -> None:
    obj = service(**spec)
    refused = review(obj)
    assert refused is not None
    strip_apply = re.compile(r"job\.yaml(:\d+)?: ")
    strip_hook = re.compile(r"InferenceService team-a/digits: ")
    assert strip_hook.sub("", refused) == strip_apply.sub("", _apply_error(obj))


def test_a_valid_service_passes() -> None:
    assert review(service()) is None


def test_a_service_outside_its_tenants_namespace_is_refused() -> None:
    obj = service(tenant="team-b")
    assert review(obj) == (
        "InferenceService team-a/digits: spec.tenant: an InferenceService lives in its "
        "tenant's namespace: expected 'team-a', got 'team-b'"
    )


def test_an_object_being_deleted_is_let_through() -> None:
    # Stored while the webhook was away, it must still lose its finalizer.
    obj = service(replicas={"min": 3, "max": 2})
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert review(obj) is None
    obj["metadata"].pop("deletionTimestamp")
    assert review(obj) is not None
