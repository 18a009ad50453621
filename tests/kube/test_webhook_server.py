"""The validating webhook on the real API server: refusals in ``shoal apply``'s words.

``shoal operator --webhook-port`` serves the webhook on loopback; kopf
registers it with the API server.  A TrainingJob the schema accepts but the
model refuses (a GPU fraction above 1, two pod sets of one name, a job outside
its tenant's namespace) is then refused at ``create``, with the message the
embedded runtime gives (``webhook.review``), and a valid one is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import ConflictError, ShoalError
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
            yield log
        finally:
            for item in crds.list("TrainingJob", "hooked"):
                # Deleted first: the operator puts its finalizer back only on jobs
                # that are not being deleted; it may write their status meanwhile.
                name = item["metadata"]["name"]
                crds.delete("TrainingJob", name, "hooked")
                for _ in range(5):
                    found = crds.get("TrainingJob", name, "hooked")
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
