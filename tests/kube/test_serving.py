"""The objects of an InferenceService and its status, without a server.

``test_serving_server.py`` applies them to a real API server.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from shoal.control.service_machine import RevisionRow, ServiceRow, row_from_json
from shoal.domain.service import InferenceServiceSpec
from shoal.runtime.kubernetes.crds import openapi_schema
from shoal.runtime.kubernetes.serving import KubeReplicas
from shoal.runtime.kubernetes.serving_objects import (
    LOAD_FAILED,
    disruption_budget,
    replica_deployment,
    router_deployment,
    routes_of,
)
from shoal.runtime.kubernetes.serving_store import status_of
from shoal.serving import replica
from tests.kube.test_crds import strict_draft4

OWNER = {"apiVersion": "shoal.dev/v1alpha1", "kind": "InferenceService",
         "metadata": {"name": "digits", "namespace": "team-b", "uid": "u-1", "generation": 3}}


def spec(**extra: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({
        "tenant": "team-b", "framework": "sklearn", "model": {"path": "/m/digits.joblib"},
        "resources": {"cpu": "500m", "memory": "1Gi"}, **extra})


def test_the_load_failure_code_is_the_replica_servers() -> None:
    assert LOAD_FAILED == replica.LOAD_FAILED


def test_a_revision_deployment_runs_the_replica_server_with_its_resources() -> None:
    body = replica_deployment(OWNER, spec(resources={"cpu": 1, "gpu": 2}), "digits-r2", 0,
                              "shoal:1", "/m/digits.joblib")
    assert body["spec"]["replicas"] == 0  # scaled to zero is a Deployment of none
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[command.index("--version") + 1] == "digits-r2"
    assert command[command.index("--port") + 1] == "8080"
    assert container["resources"] == {
        "requests": {"cpu": "1000m", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert body["spec"]["selector"]["matchLabels"] == {
        "shoal.dev/service": "digits", "shoal.dev/revision": "digits-r2"}


def test_a_model_from_a_training_job_is_read_from_its_claim() -> None:
    body = replica_deployment(OWNER, spec(model={"from": {"trainingJob": "t", "path": "m.pt"}},
                                          framework="pytorch"),
                              "digits-r1", 1, "shoal:1", "/shoal/model-source/m.pt", "t-ckpt")
    pod = body["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "model", "persistentVolumeClaim": {
        "claimName": "t-ckpt", "readOnly": True}}]
    assert pod["containers"][0]["volumeMounts"][0]["readOnly"] is True


def test_the_budget_takes_the_version_it_is_given() -> None:
    for version in ("policy/v1", "policy/v1beta1"):
        budget = disruption_budget(OWNER, "digits-r1", version)
        assert budget["apiVersion"] == version
        assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {
            "shoal.dev/service": "digits", "shoal.dev/revision": "digits-r1"}}}


def test_the_routing_table_holds_split_and_endpoints_by_short_name() -> None:
    table = routes_of("digits", {"team-b/digits-r1": 90, "team-b/digits-r2": 10},
                      {"team-b/digits-r1": ["http://10.0.0.2:8080", "http://10.0.0.1:8080"]},
                      ["team-b/digits-r2"])
    assert table == {"activating": ["digits-r2"], "revisions": [
        {"name": "digits-r1", "weight": 90, "model": "digits",
         "replicas": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]},
        {"name": "digits-r2", "weight": 10, "model": "digits", "replicas": []}]}
    router = router_deployment(OWNER, "shoal:1")
    assert router["spec"]["template"]["spec"]["volumes"] == [
        {"name": "routes", "configMap": {"name": "digits-routes"}}]


def test_the_status_round_trips_the_row_and_fits_the_schema() -> None:
    row = ServiceRow(
        "team-b/digits", "team-b",
        revisions=(RevisionRow("team-b/digits-r1", 1, "m1", "Ready", 10.0),
                   RevisionRow("team-b/digits-r2", 2, "m2", "Ready", 20.0)),
        stable="team-b/digits-r1", canary="team-b/digits-r2", canary_percent=10,
        replicas=(("team-b/digits-r1", 2, 2, ""), ("team-b/digits-r2", 1, 0, "no room")),
    )
    status = status_of(row, OWNER)
    assert (status["ready"], status["latestRevision"], status["trafficSplit"]) == (
        "2/3", "digits-r2", "digits-r1=90,digits-r2=10")
    assert status["reason"] == "no room"
    assert status["observedGeneration"] == 3
    assert row_from_json(status["control"]) == row
    assert "" not in json.dumps(status).split('"')[1::2]  # 1.20 reads "" as null
    doc = {**OWNER, "spec": spec().model_dump(mode="json", by_alias=True, exclude_none=True),
           "status": status}
    schema = strict_draft4(openapi_schema("InferenceService"))
    assert list(jsonschema.Draft4Validator(schema).iter_errors(doc)) == []


def pod(phase: str, *, node: str | None = "n", ready: bool = False,
        ended: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits-r1-abc", "labels": {"shoal.dev/revision": "digits-r1"}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "podIP": "10.1.2.3",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                                  {"type": "PodScheduled", "status": "False",
                                   "message": "0/4 nodes are available"}],
                   "containerStatuses": [{"lastState": {"terminated": ended}}] if ended else []},
    }


def test_pods_become_replica_states() -> None:
    seen = KubeReplicas._pod
    assert seen("t", pod("Pending", node=None)).message == "0/4 nodes are available"
    assert seen("t", pod("Pending", node=None)).state == "pending"
    assert seen("t", pod("Running")).state == "starting"
    ready = seen("t", pod("Running", ready=True))
    assert (ready.state, ready.endpoint, ready.revision) == (
        "ready", "http://10.1.2.3:8080", "t/digits-r1")
    failed = seen("t", pod("Running", ended={"exitCode": 1, "message": "no such file\n"}))
    assert (failed.state, failed.load_failed, failed.message) == ("failed", True, "no such file")
    crashed = seen("t", pod("Running", ended={"exitCode": 137, "reason": "OOMKilled"}))
    assert crashed.state == "starting"  # the kubelet restarts it; not the model's fault


class _Waits:
    """The serving loop's wake-up event: records each wait's timeout, ends the loop after three."""

    def __init__(self, done: Any) -> None:
        self.done, self.timeouts = done, []  # type: ignore[var-annotated]

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        if len(self.timeouts) >= 3:
            self.done.set()
        return False

    def clear(self) -> None:
        return None

    def set(self) -> None:
        return None


def test_with_no_service_the_serving_loop_waits_instead_of_spinning() -> None:
    import threading

    from kubernetes.client import ApiClient

    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.serving import ServingLoop

    loop = ServingLoop(Kube(ApiClient()), period_s=0.0)
    assert loop.cache is not None
    loop.cache.answers = lambda kind, labels="": True  # type: ignore[method-assign]
    loop.cache.list = lambda kind, namespace, labels: []  # type: ignore[method-assign]
    done = threading.Event()
    waits = _Waits(done)
    loop.wake = waits  # type: ignore[assignment]
    loop._rest(done)
    assert waits.timeouts == [1.0, 1.0, 1.0], "each wait a whole second, never 0"
    # With a service, the pass comes back after period_s (here at once).
    loop.cache.list = lambda kind, namespace, labels: [{"metadata": {"name": "s"}}]  # type: ignore[method-assign]
    done.clear()
    waits.timeouts.clear()
    loop._rest(done)
    assert waits.timeouts == []
