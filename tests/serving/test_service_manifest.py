"""The InferenceService kind: defaults, and one clear error per bad field, with its line."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from shoal.app.apply import apply_manifests
from shoal.domain.manifest import parse_manifests
from shoal.domain.service import InferenceService
from shoal.errors import Forbidden, ManifestError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
apiVersion: shoal.dev/v1alpha1
kind: InferenceService
metadata: {name: digits}
spec:
  tenant: team-a
  framework: sklearn
  model: {path: models/digits.joblib}
"""

FULL = """\
apiVersion: shoal.dev/v1alpha1
kind: InferenceService
metadata: {name: digits}
spec:
  tenant: team-a
  framework: pytorch
  model:
    from: {trainingJob: train, path: out/model.pt}
    entryPoint: mynet.models:build
    version: "2"
  inputs: [{name: pixels, datatype: FP32, shape: [-1, 64]}]
  outputs: [{name: scores, datatype: FP32, shape: [-1, 10]}]
  resources: {cpu: 500m, memory: 1Gi, gpu: {fraction: 0.25, memory: 4Gi}}
  replicas: {min: 0, max: 8}
  autoscaling: {policy: shoal, metric: latency, sloP95Ms: 80}
  canary: {trafficPercent: 20}
  rollback: {errorRateDelta: 0.02, latencyRatio: 1.2, windowSeconds: 30,
             successWindowSeconds: 120, minRequests: 50}
"""


def parse(text: str) -> InferenceService:
    (manifest,) = parse_manifests(text, "svc.yaml")
    assert isinstance(manifest, InferenceService)
    return manifest


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifests(text, "svc.yaml")
    return str(caught.value)


def test_defaults() -> None:
    spec = parse(MINIMAL).spec
    assert spec.model.path == "models/digits.joblib" and spec.model.version == "1"
    assert (spec.replicas.min, spec.replicas.max) == (1, 1)
    assert (spec.autoscaling.policy, spec.autoscaling.metric) == ("kpa", "concurrency")
    assert spec.autoscaling.target is None and spec.canary is None
    assert (spec.rollback.error_rate_delta, spec.rollback.latency_ratio) == (0.05, 1.5)
    assert spec.inputs is None and spec.resources.gpu is None


def test_every_field() -> None:
    spec = parse(FULL).spec
    assert spec.model.from_ is not None and spec.model.from_.training_job == "train"
    assert spec.model.entry_point == "mynet.models:build"
    assert spec.resources.gpu is not None and spec.resources.gpu.milli_per_gpu == 250
    assert spec.resources.cpu == 500 and spec.resources.memory == 1024
    assert spec.replicas.min == 0 and spec.autoscaling.slo_p95_ms == 80
    assert spec.canary is not None and spec.canary.traffic_percent == 20
    assert spec.inputs is not None and spec.inputs[0].shape == [-1, 64]
    dumped = parse(FULL).model_dump(mode="json", by_alias=True)
    assert dumped["spec"]["model"]["from"] == {"trainingJob": "train", "path": "out/model.pt"}
    assert InferenceService.model_validate(dumped) == parse(FULL)


def test_embedding_needs_no_path() -> None:
    text = MINIMAL.replace("framework: sklearn", "framework: embedding").replace(
        "  model: {path: models/digits.joblib}\n", "")
    assert parse(text).spec.model.path is None


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  model: {path: models/digits.joblib}\n", "",
     "svc.yaml:4: spec.model: expected path or from (only framework embedding has a "
     "packaged model)"),
    ("{path: models/digits.joblib}", "{path: a, from: {trainingJob: t, path: m}}",
     "svc.yaml:7: spec.model: expected one of path or from, not both"),
    ("{path: models/digits.joblib}", "{from: {trainingJob: t, path: ../escape}}",
     "svc.yaml:7: spec.model.from.path: expected a relative path inside the job's checkpoint "
     "folder, got '../escape'"),
    ("{path: models/digits.joblib}", "{path: m, entryPoint: net:build}",
     "svc.yaml:7: spec.model.entryPoint: an entry point is for framework pytorch "
     "(state dicts), not sklearn"),
    ("framework: sklearn", "framework: tensorflow",
     "svc.yaml:6: spec.framework: expected 'sklearn', 'pytorch', 'onnx' or 'embedding', "
     "got 'tensorflow'"),
    ("framework: sklearn", "framework: sklearn\n  replicas: {min: 3, max: 2}",
     "svc.yaml:7: spec.replicas: min (3) cannot exceed max (2)"),
    ("framework: sklearn", "framework: sklearn\n  replicas: {min: -1}",
     "svc.yaml:7: spec.replicas.min: expected a value greater than or equal to 0, got -1"),
    ("framework: sklearn", "framework: sklearn\n  autoscaling: {metric: latency}",
     "svc.yaml:7: spec.autoscaling: metric latency needs sloP95Ms, the p95 latency to keep "
     "under"),
    ("framework: sklearn", "framework: sklearn\n  autoscaling: {policy: keda}",
     "svc.yaml:7: spec.autoscaling.policy: expected 'kpa', 'hpa' or 'shoal', got 'keda'"),
    ("framework: sklearn", "framework: sklearn\n  autoscaling: {target: 0}",
     "svc.yaml:7: spec.autoscaling.target: expected a value greater than 0, got 0"),
    ("framework: sklearn", "framework: sklearn\n  canary: {trafficPercent: 120}",
     "svc.yaml:7: spec.canary.trafficPercent: expected a value less than or equal to 100, "
     "got 120"),
    ("framework: sklearn", "framework: sklearn\n  canary: {traffic: 10}",
     "svc.yaml:7: spec.canary.traffic: unknown field 'traffic'; did you mean "
     "'trafficPercent'?"),
    ("framework: sklearn", "framework: sklearn\n  rollback: {latencyRatio: 0.5}",
     "svc.yaml:7: spec.rollback.latencyRatio: expected a value greater than or equal to 1, "
     "got 0.5"),
    ("framework: sklearn", "framework: sklearn\n  inputs: [{name: x, datatype: FLOAT, shape: [1]}]",
     "svc.yaml:7: spec.inputs[0].datatype: expected 'BOOL', 'UINT8', 'UINT16', 'UINT32', "
     "'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32', 'FP64' or 'BYTES', "
     "got 'FLOAT'"),
    ("framework: sklearn", "framework: sklearn\n  inputs: [{name: x, datatype: FP32, shape: [-2]}]",
     "svc.yaml:7: spec.inputs[0].shape: a dimension is a size >= 0 or -1 (any size), got [-2]"),
    ("framework: sklearn",
     "framework: sklearn\n  outputs: [{name: y, datatype: FP32, shape: []},\n"
     "            {name: y, datatype: INT64, shape: []}]",
     "svc.yaml:8: spec.outputs[1].name: tensor 'y' is listed twice"),
    ("framework: sklearn", "framework: sklearn\n  resources: {gpu: 1.5}",
     "svc.yaml:7: spec.resources.gpu: a GPU count must be whole, got 1.5; use gpu: "
     "{fraction: 1.5} for a share of one GPU"),
    ("framework: sklearn", "framework: sklearn\n  replica: {min: 0}",
     "svc.yaml:7: spec.replica: unknown field 'replica'; did you mean 'replicas'?"),
])
def test_bad_fields_are_named_with_their_line(old: str, new: str, message: str) -> None:
    assert old in MINIMAL
    assert error_of(MINIMAL.replace(old, new)) == message


def test_shoal_validate_accepts_the_example() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "validate", "examples/serving/digits.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "InferenceService digits is valid" in done.stdout


def test_shoal_validate_names_a_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(MINIMAL.replace("framework: sklearn", "framework: sklearn\n  replicas: {min: 3, max: 2}"))
    done = subprocess.run([sys.executable, "-m", "shoal", "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert f"{path}:7: spec.replicas: min (3) cannot exceed max (2)" in done.stderr
    assert "Traceback" not in done.stderr


@dataclass(frozen=True)
class _Member:
    role: str = "tenant"
    tenant: str | None = "team-b"
    name: str = "team-b"


def test_a_tenant_may_not_apply_another_tenants_service() -> None:
    manifest = parse(MINIMAL)
    with pytest.raises(Forbidden, match="InferenceService digits: your token belongs to "
                                        "tenant 'team-b', not 'team-a'"):
        apply_manifests(cast(Any, None), _Member(), [manifest])
