"""Applying InferenceServices to the embedded control plane: what is refused, and a
service its tenant's quota cannot hold waits with the reason."""

from __future__ import annotations

import pytest

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.errors import Forbidden, InputError, UnknownReferenceError
from tests.control.conftest import job, wait_for

SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]


def service(name: str, *, cpu: str = "250m", memory: str = "256Mi", tenant: str = "team-a",
            model: str = "/nonexistent/model.joblib", extra: str = "") -> str:
    return f"""
apiVersion: shoal.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  tenant: {tenant}
  framework: sklearn
  model: {extra or f"{{path: {model}}}"}
  resources: {{cpu: {cpu}, memory: {memory}}}
"""


def test_a_replica_larger_than_any_node_is_refused_naming_the_service(admin: ShoalClient) -> None:
    with pytest.raises(InputError, match="InferenceService huge: one replica: ") as refused:
        admin.apply_text(service("huge", cpu="64"), "huge.yaml")
    assert "TrainingJob" not in refused.value.message
    assert admin._call("GET", "/v1/services")["services"] == []


def test_bad_references_and_paths_are_refused(admin: ShoalClient) -> None:
    with pytest.raises(UnknownReferenceError, match="tenant 'team-z' does not exist"):
        admin.apply_text(service("svc", tenant="team-z"), "svc.yaml")
    with pytest.raises(InputError, match=r"spec\.model\.path: expected an absolute path"):
        admin.apply_text(service("svc", model="models/a.joblib"), "svc.yaml")
    with pytest.raises(UnknownReferenceError, match="has no TrainingJob 'nowhere'"):
        admin.apply_text(service("svc", extra="{from: {trainingJob: nowhere, path: m.joblib}}"),
                         "svc.yaml")


def test_tenants_apply_only_their_own_and_never_replica_labels(
        plane: launch.Running, admin: ShoalClient) -> None:
    with ShoalClient(plane.url, admin.create_token("team-b")) as b:
        with pytest.raises(Forbidden, match="not 'team-a'"):
            b.apply_text(service("svc"), "svc.yaml")
        fake = job("fake", "team-b", SLEEPER).replace(
            "metadata: {name: fake}", "metadata: {name: fake, labels: {shoal.dev/service: svc}}")
        with pytest.raises(InputError, match=r"metadata\.labels\.shoal\.dev/service: "
                                             r"the label is Shoal's"):
            b.apply_text(fake, "fake.yaml")


def test_a_replica_the_quota_cannot_hold_waits_with_the_reason(admin: ShoalClient) -> None:
    # team-b runs on its own 2 GPUs (not borrowed: nothing to reclaim); team-a's replica
    # asks for 3 of the cohort's 4, more than is free to it now.
    admin.apply_text(job("own", "team-b", SLEEPER, gpus=2), "own.yaml")
    wait_for(lambda: admin.job("own", "team-b")["phase"] == "Running")
    admin.apply_text(service("waits", extra="{path: /nonexistent/model.joblib}")
                     .replace("resources: {cpu: 250m, memory: 256Mi}",
                              "resources: {cpu: 250m, memory: 256Mi, gpu: 3}"), "waits.yaml")
    view = wait_for(lambda: (v := admin._call("GET", "/v1/services/waits"))["replicas"]
                    .get("waits-r1", {}).get("waiting") and v, 60)
    assert view["phase"] == "Loading"
    assert "gpu/virtual" in view["replicas"]["waits-r1"]["waiting"]
    replica = admin.job("waits-r1-0", "team-a")
    assert replica["phase"] == "Pending" and replica["reason"]
    assert admin.job("own", "team-b")["phase"] == "Running", "nothing was preempted for it"
    admin._call("DELETE", "/v1/services/waits")
    wait_for(lambda: all(j["name"] != "waits-r1-0" or j["phase"] == "Cancelled"
                         for j in admin.jobs()), 60)


def test_a_service_whose_training_job_fails_fails_with_the_reason(admin: ShoalClient) -> None:
    failing = job("trainer", "team-a", ["python", "-c", "raise SystemExit(3)"], gpus=0)
    admin.apply_text(failing + "---" + service(
        "from-job", extra="{from: {trainingJob: trainer, path: model.joblib}}"), "both.yaml")
    view = wait_for(lambda: (v := admin._call("GET", "/v1/services/from-job"))["phase"]
                    == "Failed" and v, 60)
    assert view["revisions"][0]["reason"] == "TrainingJob trainer ended Failed: no model"
    assert not any(j["name"].startswith("from-job-r") for j in admin.jobs()), \
        "no replica was started for a model that does not exist"
