"""The serving example as a user runs it: ``shoal apply -f examples/serving/digits.yaml``
trains the digits classifier in a TrainingJob, the InferenceService serves what it wrote,
and ``shoal infer`` gets answers through the service's router.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.conftest import ROOT, Shell
from tests.control.conftest import CLUSTER, wait_for

pytest.importorskip("sklearn")
pytest.importorskip("tritonclient.http")

EXAMPLE = ROOT / "examples" / "serving" / "digits.yaml"
TIMEOUT = 180.0  # the job trains, then a replica imports scikit-learn: slow on a busy machine


def services(sh: Shell) -> dict[str, dict[str, object]]:
    result = sh("get", "services", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)}


def test_train_then_serve_the_digits_classifier(sh: Shell, tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    assert sh("apply", "-f", str(cluster)).returncode == 0
    applied = sh("apply", "-f", str(EXAMPLE))
    assert applied.returncode == 0, applied.stderr
    assert "inferenceservice/digits created" in applied.stdout
    # Until the job has written its model, the service waits (requests would be held).
    first = services(sh)["digits"]
    assert first["phase"] in ("Loading", "Ready")
    wait_for(lambda: services(sh)["digits"]["phase"] == "Ready", TIMEOUT)
    view = services(sh)["digits"]
    assert str(view["url"]).startswith("http://127.0.0.1:")
    zeros = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                         "data": [0.0] * 128}]}
    answer = sh("infer", "digits", "--data", json.dumps(zeros))
    assert answer.returncode == 0, answer.stderr
    outputs = {o["name"]: o for o in json.loads(answer.stdout)["outputs"]}
    assert outputs["label"]["shape"] == [2] and outputs["probabilities"]["shape"] == [2, 10]
    zero = sh("infer", "digits", "--data", "@examples/serving/digits-request.json")
    assert zero.returncode == 0, zero.stderr
    labels = {o["name"]: o for o in json.loads(zero.stdout)["outputs"]}["label"]
    assert labels["data"] == [0], "the example request is an 8x8 image of a 0"
    table = sh("get", "services")
    assert "digits" in table.stdout and "digits-r1=100%" in table.stdout
    described = sh("describe", "service", "digits")
    assert "digits-r1: Ready" in described.stdout and "revision-ready" in described.stdout


def test_bad_requests_and_rollouts_are_one_clear_line(sh: Shell, tmp_path: Path) -> None:
    model = tmp_path / "model.txt"
    model.write_text("not a model")
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(CLUSTER + """---
apiVersion: shoal.dev/v1alpha1
kind: InferenceService
metadata: {name: broken}
spec: {tenant: team-a, framework: sklearn, model: {path: model.txt},
       resources: {cpu: 250m, memory: 256Mi}}
""")
    assert sh("apply", "-f", str(manifest)).returncode == 0
    # The relative path was resolved against the manifest's folder.
    described = json.loads(sh("describe", "service", "broken", "-o", "json").stdout)
    assert described["spec"]["model"]["path"] == str(model.resolve())
    wait_for(lambda: services(sh)["broken"]["phase"] == "Failed", TIMEOUT)
    failed = json.loads(sh("describe", "service", "broken", "-o", "json").stdout)
    assert "model.txt" in failed["revisions"][0]["reason"]
    bad = sh("infer", "broken", "--data", "{not json")
    assert bad.returncode == 2 and "expected a JSON inference request" in bad.stderr
    promote = sh("rollout", "promote", "broken")
    assert promote.returncode == 2 and "has no canary to promote" in promote.stderr
    missing = sh("infer", "nothing", "--data", "{}")
    assert missing.returncode != 0 and "not found" in missing.stderr
    assert sh("delete", "service", "broken").returncode == 0
    wait_for(lambda: "broken" not in services(sh), TIMEOUT)
