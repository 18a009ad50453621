"""InferenceServices on a real embedded control plane: real replica processes behind the
real router, called with the real ``tritonclient`` — apply, infer, tenancy, a canary whose
model cannot load, delete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.errors import InputError, NotFoundError
from tests.control.conftest import admin, job, plane, wait_for

__all__ = ["admin", "plane"]  # the embedded control plane fixtures

http = pytest.importorskip("tritonclient.http")
joblib = pytest.importorskip("joblib")
datasets = pytest.importorskip("sklearn.datasets")
linear = pytest.importorskip("sklearn.linear_model")

TIMEOUT = 120.0  # a replica imports scikit-learn and loads its model: slow on a busy machine


def service(name: str, model: Path | str, *, canary: int | None = None, tenant: str = "team-a",
            replicas: str = "{min: 1, max: 1}") -> str:
    """A service's manifest; ``model``: a file, or a ``from`` mapping (a str)."""
    rollout = f"\n  canary: {{trafficPercent: {canary}}}" if canary is not None else ""
    source = f"{{from: {model}}}" if isinstance(model, str) else f"{{path: {model}}}"
    return f"""
apiVersion: shoal.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  tenant: {tenant}
  framework: sklearn
  model: {source}
  resources: {{cpu: 250m, memory: 512Mi}}
  replicas: {replicas}{rollout}
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, np.ndarray]:
    folder = tmp_path_factory.mktemp("models")
    folder.chmod(0o755)
    x, y = datasets.load_digits(return_X_y=True)
    model = linear.LogisticRegression(max_iter=2000, random_state=0).fit(x, y)
    path = folder / "digits.joblib"
    joblib.dump(model, path)
    path.chmod(0o644)
    return path, model, x[:3].astype(np.float32)


def get(admin: ShoalClient, name: str) -> dict[str, Any]:
    return dict(admin._call("GET", f"/v1/services/{name}"))


@pytest.fixture
def served(plane: launch.Running, admin: ShoalClient,
           digits: tuple[Path, Any, np.ndarray]) -> Iterator[dict[str, Any]]:
    admin.apply_text(service("digits", digits[0]), "digits.yaml")
    view = wait_for(lambda: (v := get(admin, "digits"))["phase"] == "Ready" and v, TIMEOUT)
    yield view
    admin._call("DELETE", "/v1/services/digits")
    wait_for(lambda: not any(j["name"].startswith("digits-r") and j["phase"] == "Running"
                             for j in admin.jobs()), TIMEOUT)


def client_for(view: dict[str, Any]) -> Any:
    return http.InferenceServerClient(view["url"].removeprefix("http://"), network_timeout=60)


def infer(client: Any, rows: np.ndarray, token: str | None) -> Any:
    tensor = http.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return client.infer("digits", [tensor], headers=headers)


def test_a_service_answers_its_tenant_through_the_router(
        served: dict[str, Any], admin: ShoalClient, digits: tuple[Path, Any, np.ndarray]) -> None:
    _, model, rows = digits
    assert served["url"].startswith("http://127.0.0.1:")
    assert served["traffic"] == {"digits-r1": 100}
    assert served["replicas"]["digits-r1"]["ready"] == 1
    token = admin.create_token("team-a")
    result = infer(client_for(served), rows, token)
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    predicted = next(v for v in outputs.values() if v.shape[0] == 3 and v.ndim == 1)
    assert predicted.tolist() == model.predict(rows).tolist()
    replica = next(j for j in admin.jobs() if j["name"] == "digits-r1-0")
    assert replica["tenant"] == "team-a" and replica["phase"] == "Running"


def test_only_the_services_tenant_may_call_it(served: dict[str, Any], admin: ShoalClient,
                                              digits: tuple[Path, Any, np.ndarray]) -> None:
    client = client_for(served)
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as anonymous:
        infer(client, digits[2], None)
    assert anonymous.value.status() == "401"
    with pytest.raises(InferenceServerException) as stranger:
        infer(client, digits[2], admin.create_token("team-b"))
    assert stranger.value.status() == "403"
    assert "belongs to another tenant" in stranger.value.message()
    assert "team-a" not in stranger.value.message(), "the owner is not revealed"


def test_a_canary_that_cannot_load_rolls_back_and_traffic_stays(
        served: dict[str, Any], admin: ShoalClient, digits: tuple[Path, Any, np.ndarray],
        tmp_path: Path) -> None:
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a model")
    broken.chmod(0o644)
    admin.apply_text(service("digits", broken, canary=50), "digits.yaml")
    view = wait_for(lambda: (v := get(admin, "digits"))["revisions"][-1]["phase"] == "Failed"
                    and v, TIMEOUT)
    assert view["traffic"] == {"digits-r1": 100} and view["canary"] is None
    assert view["revisions"][-1]["name"] == "digits-r2"
    kinds = [e["kind"] for e in view["events"]]
    assert "revision-failed" in kinds and "rolled-back" in kinds
    result = infer(client_for(view), digits[2], admin.create_token("team-a"))
    assert result.get_response()["model_name"] == "digits"
    with pytest.raises(InputError, match="no canary to promote"):
        admin._call("POST", "/v1/services/digits/rollout", json={"action": "promote"})


def test_another_tenants_service_reads_as_missing(served: dict[str, Any], admin: ShoalClient,
                                                  plane: launch.Running) -> None:
    with ShoalClient(plane.url, admin.create_token("team-b")) as other:
        with pytest.raises(NotFoundError):
            other._call("GET", "/v1/services/digits")
        assert other._call("GET", "/v1/services")["services"] == []


def test_metrics_show_requests_replicas_and_autoscaler(
        served: dict[str, Any], admin: ShoalClient, plane: launch.Running,
        digits: tuple[Path, Any, np.ndarray]) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    infer(client_for(served), digits[2], admin.create_token("team-a"))
    text = httpx.get(f"{plane.url}/metrics", headers={"Authorization": f"Bearer {plane.token}"},
                     timeout=30).text
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(text) for s in f.samples}
    revision = (("revision", "digits-r1"), ("service", "digits"))
    assert found[("shoal_service_requests_total", (("code", "200"), *revision))] >= 1
    assert found[("shoal_service_request_duration_seconds_count", revision)] >= 1
    assert found[("shoal_service_replicas_ready", (*revision, ("tenant", "team-a")))] == 1
    assert found[("shoal_autoscaler_desired_replicas", (*revision, ("tenant", "team-a")))] >= 1
    assert found[("shoal_autoscaler_panic", (*revision, ("tenant", "team-a")))] == 0


def test_the_service_view_shows_the_recent_p95(served: dict[str, Any], admin: ShoalClient,
                                               digits: tuple[Path, Any, np.ndarray]) -> None:
    assert served["p95_s"] is None, "no request answered yet"
    infer(client_for(served), digits[2], admin.create_token("team-a"))
    p95 = get(admin, "digits")["p95_s"]
    assert p95 is not None and 0 < p95 < 60



SANDBOXED_TENANT = """
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-s}
spec: {isolation: sandbox, quota: {cpu: {nominal: 2}, memory: {nominal: 4Gi}}}
"""

TRAIN = """
import joblib, os, sys
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
x, y = load_digits(return_X_y=True)
model = LogisticRegression(max_iter=2000, random_state=0).fit(x, y)
joblib.dump(model, os.path.join(os.environ["SHOAL_CHECKPOINT_DIR"], "model.joblib"))
"""


@pytest.fixture
def sandboxed(admin: ShoalClient) -> Iterator[list[str]]:
    """The sandbox tenant team-s; the services a test lists are deleted after it."""
    import shutil

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    admin.apply_text(SANDBOXED_TENANT, "t.yaml")
    made: list[str] = []
    yield made
    for name in made:
        admin._call("DELETE", f"/v1/services/{name}")
    wait_for(lambda: not any(j["name"].startswith(tuple(f"{n}-r" for n in made))
                             and j["phase"] == "Running" for j in admin.jobs()), TIMEOUT)


def answers(view: dict[str, Any], name: str, rows: np.ndarray, token: str) -> list[int]:
    tensor = http.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    result = client_for(view).infer(name, [tensor], headers={"Authorization": f"Bearer {token}"})
    outputs = [result.as_numpy(o["name"]) for o in result.get_response()["outputs"]]
    predicted = next(v for v in outputs if v.shape[0] == rows.shape[0] and v.ndim == 1)
    return [int(v) for v in predicted.tolist()]


def test_a_sandboxed_replica_is_shown_its_model_file_read_only(
        admin: ShoalClient, sandboxed: list[str],
        digits: tuple[Path, Any, np.ndarray]) -> None:
    """The sandbox hides /tmp and the jobs root: a replica of a sandbox tenant is shown
    the one model file its service names, and serves on the socket the plane hands it
    from inside its own network namespace."""
    path, model, rows = digits
    sandboxed.append("boxed")
    admin.apply_text(service("boxed", path, tenant="team-s"), "boxed.yaml")
    view = wait_for(lambda: (v := get(admin, "boxed"))["phase"] == "Ready" and v, TIMEOUT)
    assert answers(view, "boxed", rows, admin.create_token("team-s")) == \
        model.predict(rows).tolist()


def test_a_sandboxed_replica_serves_what_its_tenants_job_trained(
        admin: ShoalClient, sandboxed: list[str],
        digits: tuple[Path, Any, np.ndarray]) -> None:
    _, model, rows = digits
    import sys

    admin.apply_text(job("train-boxed", "team-s", [sys.executable, "-c", TRAIN], gpus=0,
                         memory="1Gi"), "train.yaml")
    sandboxed.append("trained")
    admin.apply_text(service("trained", "{trainingJob: train-boxed, path: model.joblib}",
                             tenant="team-s"), "svc.yaml")
    view = wait_for(lambda: (v := get(admin, "trained"))["phase"] == "Ready" and v, 2 * TIMEOUT)
    assert admin.job("train-boxed")["phase"] == "Succeeded"
    assert answers(view, "trained", rows, admin.create_token("team-s")) == \
        model.predict(rows).tolist()


def test_the_model_annotation_is_shoals_alone(admin: ShoalClient) -> None:
    manifest = job("sneaky", "team-a", ["true"], gpus=0,
                   annotations=", annotations: {shoal.dev/model-source: /etc}")
    with pytest.raises(InputError, match=r"metadata\.annotations\.shoal\.dev/model-source"):
        admin.apply_text(manifest, "j.yaml")


def test_a_sandboxed_replica_is_never_shown_the_state_folder(
        plane: launch.Running, admin: ShoalClient, sandboxed: list[str],
        digits: tuple[Path, Any, np.ndarray]) -> None:
    """Attack: a sandbox tenant's service names a file in another tenant's job folder
    (where the planes keeps every tenant's checkpoints): the replica is not started
    with it shown, and says why; nothing there is read."""
    victim = plane.plane.state_dir / "jobs" / "team-a" / "secret" / "checkpoints"
    victim.mkdir(parents=True, exist_ok=True)
    target = victim / "model.joblib"
    target.write_bytes(digits[0].read_bytes())
    sandboxed.append("thief")
    admin.apply_text(service("thief", target, tenant="team-s"), "thief.yaml")
    replica = wait_for(lambda: next((j for j in admin.jobs() if j["name"] == "thief-r1-0"
                                     and j["phase"] == "Failed"), None), TIMEOUT)
    assert "which the sandbox hides" in replica["reason"], replica["reason"]
    assert get(admin, "thief")["phase"] != "Ready"
