"""The validating webhook on the real API server: refusals in ``shoal apply``'s words.

``shoal operator --webhook-port`` serves the webhook on loopback; kopf
registers it with the API server.  A TrainingJob the schema accepts but the
model refuses (a GPU fraction above 1, two pod sets of one name, a job outside
its tenant's namespace) is then refused at ``create``, with the message the
embedded runtime gives (``webhook.review``), and a valid one is stored.  So is
an InferenceService (``replicas.min`` above ``max``, metric latency without
policy shoal, a service outside its tenant's namespace), through the client
seam and through ``kubectl apply``, whose refusal carries the words
``shoal apply`` gives for the same file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.domain.manifest import parse_manifests
from shoal.errors import ConflictError, ManifestError, ShoalError
from shoal.runtime.kubernetes.client import Kube
from tests.kube.conftest import ControlPlane, free_port
from tests.kube.operator_process import running_operator
from tests.kube.waiting import wait_gone, wait_until

pytestmark = pytest.mark.kube

CONFIGURATION = "validate.shoal.dev"
PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane, crds: Kube,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One operator serving the webhook for this module's tests; yields its log."""
    log = tmp_path_factory.mktemp("webhook") / "operator.log"
    with running_operator(control_plane.kubeconfig, log, "--webhook-port", str(free_port())):
        crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hooked"}})
        try:
            with control_plane.http() as http:
                wait_until(crds, "Namespace", lambda _: http.get(f"{PATH}/{CONFIGURATION}")
                           .status_code == 200, what=f"the webhook registered (log: {log})")
                # The API server takes a registered webhook in asynchronously: wait
                # until it calls it (a dry run that only the webhook refuses; a
                # refusal is checked again on each watch event or every 30 s).
                probe = job("probe", podSets=[{"name": "w", "count": 1},
                                              {"name": "w", "count": 1}])
                url = "/apis/shoal.dev/v1alpha1/namespaces/hooked/trainingjobs?dryRun=All"
                wait_until(crds, "Namespace", lambda _: "denied the request" in
                           http.post(url, json=probe).text,
                           what=f"the API server calling the webhook (log: {log})")
            yield log
        finally:
            for kind in ("TrainingJob", "InferenceService"):
                for item in crds.list(kind, "hooked"):
                    # Deleted first: the operator puts its finalizer back only on objects
                    # that are not being deleted; it may write their status meanwhile.
                    name = item["metadata"]["name"]
                    crds.delete(kind, name, "hooked")
                    for _ in range(5):
                        found = crds.get(kind, name, "hooked")
                        if found is None:
                            break
                        try:
                            crds.replace({**found, "metadata": {**found["metadata"],
                                                                "finalizers": []}})
                            break
                        except ConflictError:
                            continue
            crds.delete("Namespace", "hooked")
    # Never leave a webhook behind for the session's other tests.
    with control_plane.http() as http:
        http.delete(f"{PATH}/{CONFIGURATION}")
    wait_gone(crds, "Namespace", "hooked")


def job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "hooked"},
        "spec": {"tenant": "hooked", "podSets": [{"count": 1}], **spec},
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"podSets": [{"count": 1, "resources": {"gpu": {"fraction": 1.5}}}]},
         "TrainingJob hooked/bad: spec.podSets[0].resources.gpu.fraction: a GPU fraction "
         "must be at most 1, got 1.5; ask for count: N whole GPUs"),
        ({"podSets": [{"name": "w", "count": 1}, {"name": "w", "count": 1}]},
         "TrainingJob hooked/bad: spec: pod set names must be unique"),
        ({"tenant": "elsewhere"},
         "TrainingJob hooked/bad: spec.tenant: a TrainingJob lives in its tenant's "
         "namespace: expected 'hooked', got 'elsewhere'"),
    ],
    ids=["fraction", "duplicate-pod-sets", "namespace"],
)
def test_the_webhook_refuses_what_the_models_refuse(crds: Kube, webhook: Path,
                                                    spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ShoalError) as refused:
        crds.create(job("bad", **spec))
    assert message in str(refused.value), f"{refused.value}\n(log: {webhook})"
    assert crds.get("TrainingJob", "bad", "hooked") is None


def test_the_webhook_lets_a_valid_job_through(crds: Kube, webhook: Path) -> None:
    created = crds.create(job("good"))
    assert created["metadata"]["name"] == "good"
    assert "denied" not in webhook.read_text()


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "hooked"},
        "spec": {"tenant": "hooked", "framework": "sklearn",
                 "model": {"path": "/models/digits.joblib", "version": "1"},
                 "replicas": {"min": 1, "max": 2}, **spec},
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replicas": {"min": 3, "max": 2}},
         "InferenceService hooked/bad: spec.replicas: min (3) cannot exceed max (2)"),
        ({"autoscaling": {"metric": "latency", "sloP95Ms": 100}},
         "InferenceService hooked/bad: spec.autoscaling: metric latency is for policy shoal "
         "(policy kpa scales on concurrency or rps)"),
        ({"tenant": "elsewhere"},
         "InferenceService hooked/bad: spec.tenant: an InferenceService lives in its "
         "tenant's namespace: expected 'hooked', got 'elsewhere'"),
    ],
    ids=["min-above-max", "latency-without-shoal", "namespace"],
)
def test_the_webhook_refuses_services_the_model_refuses(
        crds: Kube, webhook: Path, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ShoalError) as refused:
        crds.create(service("bad", **spec))
    assert message in str(refused.value), f"{refused.value}\n(log: {webhook})"
    assert "shoal-inferenceservices.validate.shoal.dev" in str(refused.value)
    assert crds.get("InferenceService", "bad", "hooked") is None


def test_kubectl_apply_of_a_bad_service_is_refused_in_shoal_applys_words(
        control_plane: ControlPlane, crds: Kube, webhook: Path, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    # One file for both: no metadata.namespace (a Shoal manifest has none; kubectl -n).
    body = service("applied", replicas={"min": 4, "max": 1})
    del body["metadata"]["namespace"]
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(yaml.safe_dump(body, sort_keys=False))
    with pytest.raises(ManifestError) as embedded:  # what shoal apply says of the same file
        parse_manifests(manifest.read_text(), str(manifest))
    words = re.sub(rf"^{re.escape(str(manifest))}:\d+: ", "", str(embedded.value))
    assert words == "spec.replicas: min (4) cannot exceed max (1)"
    applied = subprocess.run(
        [kubectl, "--kubeconfig", str(control_plane.kubeconfig), "apply", "-n", "hooked",
         "-f", str(manifest)], capture_output=True, text=True, timeout=120, check=False)
    assert applied.returncode != 0, applied.stdout
    assert f"InferenceService hooked/applied: {words}" in applied.stderr, applied.stderr
    assert crds.get("InferenceService", "applied", "hooked") is None


def test_the_webhook_lets_a_valid_service_through(crds: Kube, webhook: Path) -> None:
    created = crds.create(service("served"))
    assert created["metadata"]["name"] == "served"
    assert crds.get("InferenceService", "served", "hooked") is not None
    assert "denied" not in webhook.read_text()
