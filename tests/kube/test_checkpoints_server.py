"""Checkpoints on a PersistentVolumeClaim per job, on a real API server.

A TrainingJob that checkpoints gets a claim, owned by it, mounted in every pod
at ``$SHOAL_CHECKPOINT_DIR``.  No storage provisioner runs here, so the claim
stays Pending; the fake kubelet mounts nothing and runs the pods all the same.
The job reports the step it saved by Shoal's convention; here the test plays
the workload (the pod annotation ``shoal.dev/checkpoint``) and the kubelet (a
termination message ``{"step": N}`` in the status of a pod that ended).  The
next attempt is admitted resuming from the newest step, on the same claim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.kube.claims import release_claims
from tests.kube.conftest import ControlPlane
from tests.kube.loops import running
from tests.kube.test_control_server import label_gpu_model, tenant, training_job
from tests.kube.waiting import State, wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl

pytestmark = pytest.mark.kube

NS = "ckpt-a"


@pytest.fixture()
def loop(crds: Kube) -> Iterator[KubeControl]:
    from shoal.runtime.kubernetes.loop import KubeControl

    kube = crds
    label_gpu_model(kube)
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    kube.create(tenant(NS, 16))
    control = KubeControl(kube, grace_seconds=1)
    with running(control, join_s=60):
        yield control
    for job in kube.list("TrainingJob", NS):
        kube.replace({**job, "metadata": {**job["metadata"], "finalizers": []}})
        kube.delete("TrainingJob", job["metadata"]["name"], NS)
    kube.delete("Tenant", NS)
    release_claims(kube, NS)
    kube.delete("Namespace", NS)
    wait_until(kube, "Namespace", lambda found: NS not in found,
               what=f"namespace {NS} gone", timeout_s=120)


@pytest.fixture
def http(control_plane: ControlPlane) -> Iterator[httpx.Client]:
    with control_plane.http() as client:
        yield client


def merge_patch(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = http.patch(path, content=json.dumps(body),
                          headers={"Content-Type": "application/merge-patch+json"})
    assert response.status_code == 200, f"PATCH {path}: {response.text}"


def running_pod(kube: Kube, attempt_pods: list[dict[str, Any]]) -> dict[str, Any]:
    names = {p["name"] for p in attempt_pods}
    state = wait_until(kube, "Pod", lambda pods: any(
        key.split("/")[1] in names and (p.get("status") or {}).get("phase") == "Running"
        for key, p in pods.items()), namespace=NS, what=f"pod {names} Running")
    return next(p for key, p in state.items() if key.split("/")[1] in names)


def job_status(jobs: State) -> dict[str, Any]:
    got: dict[str, Any] = jobs.get(f"{NS}/ckpt", {}).get("status") or {}
    return got


def test_a_requeued_job_resumes_from_the_step_its_pods_reported_on_its_claim(
        loop: KubeControl, http: httpx.Client) -> None:
    kube = loop.kube
    body = training_job("ckpt", NS, pods=1, gpus=1)
    body["spec"]["checkpointIntervalSeconds"] = 60
    created = kube.create(body)
    # Saved Running with its pods starting first; their names once they are bound.
    state = wait_until(kube, "TrainingJob", lambda jobs: job_status(jobs).get("phase")
                       == "Running" and bool(job_status(jobs).get("pods")) and all(
                           p.get("state") == "running" and p.get("name", "").startswith("ckpt-")
                           for p in job_status(jobs)["pods"]),
                       namespace=NS, what="ckpt Running, its pod bound")
    first = job_status(state)
    assert "resumedFrom" not in first["control"], "the first attempt starts fresh"

    claim = kube.get("PersistentVolumeClaim", "ckpt-checkpoints", NS)
    assert claim is not None
    assert claim["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["status"]["phase"] == "Pending", "no provisioner here: it is never bound"
    pod = running_pod(kube, first["pods"])
    spec = pod["spec"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ckpt-checkpoints"
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["volumeMounts"][0]["mountPath"] == env["SHOAL_CHECKPOINT_DIR"]

    # The workload reports the step it saved (an annotation on its pod) ...
    name = pod["metadata"]["name"]
    merge_patch(http, f"/api/v1/namespaces/{NS}/pods/{name}", {"metadata": {"annotations": {
        "shoal.dev/checkpoint": json.dumps({"step": 120})}}})
    wait_until(kube, "TrainingJob", lambda jobs: job_status(jobs).get("control", {}).get(
        "checkpointStep") == 120, namespace=NS, what="ckpt's checkpoint step 120 recorded")
    # ... then saves step 300, says so in its termination message and fails.
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    merge_patch(http, f"/api/v1/namespaces/{NS}/pods/{name}/status", {"status": {
        "phase": "Failed", "containerStatuses": [{
            "name": "worker", "image": "", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now,
                                     "finishedAt": now,
                                     "message": json.dumps({"step": 300})}}}]}})

    def second_attempt(jobs: State) -> bool:
        got = job_status(jobs)
        return got.get("attempts") == 2 and got.get("phase") == "Running"

    state = wait_until(kube, "TrainingJob", second_attempt, namespace=NS,
                       what="ckpt's second attempt Running", timeout_s=120)
    second = job_status(state)
    assert second["control"]["resumedFrom"] == 300
    assert second["failures"] == 1
    requeued = next(c for c in second["conditions"] if c["type"] == "Requeued")
    assert requeued["reason"] == "AttemptFailed"
    # The same claim, kept across attempts.
    again = kube.get("PersistentVolumeClaim", "ckpt-checkpoints", NS)
    assert again is not None and again["metadata"]["uid"] == claim["metadata"]["uid"]
    admissions = [e for e in kube.list("Event", NS) if e["reason"] == "Admitted"
                  and e["involvedObject"]["name"] == "ckpt"]
    assert any("resumed_from=300" in e["message"] for e in admissions)

    # The claim goes with the TrainingJob (the garbage collector follows its owner).
    kube.delete("TrainingJob", "ckpt", NS)
    wait_until(kube, "PersistentVolumeClaim", lambda claims: not any(
        not c["metadata"].get("deletionTimestamp") for c in claims.values()),
        namespace=NS, what="ckpt's claim deleted with it", timeout_s=120)
