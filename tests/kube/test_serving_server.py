"""InferenceServices on a real API server: Deployments per revision, router, Service, PDB.

The control core's ``ServiceReconciler`` runs over the Kubernetes ports
(``serving.py``) with a fake clock, one pass at a time.  The real Deployment
and ReplicaSet controllers of kube-controller-manager make the pods; the test
plane has no kube-scheduler, so the test binds each replica pod to a fake
node as a scheduler would, and the fake kubelet runs it (Running, Ready).
Nothing is sent to pod IPs: the live request path is the embedded runtime's
(``tests/serving``).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from shoal.errors import ConflictError, ManifestError, NotFoundError
from tests.kube.conftest import ControlPlane
from tests.kube.waiting import State, wait_gone, wait_until

if TYPE_CHECKING:
    from shoal.control.services import ServiceReconciler
    from shoal.runtime.kubernetes.client import Kube
    from shoal.testing import FakeClock

pytestmark = pytest.mark.kube

NODE = "fake-node-0"


def manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"tenant": namespace, "framework": "sklearn",
                 "model": {"path": "/models/digits.joblib", "version": "1"},
                 "resources": {"cpu": "500m", "memory": "512Mi"},
                 "replicas": {"min": 1, "max": 3}, **spec},
    }


class Serving:
    """One namespace, the reconciler over the Kubernetes ports, and a fake clock."""

    def __init__(self, kube: Kube, namespace: str, reconciler: ServiceReconciler,
                 clock: FakeClock) -> None:
        self.kube, self.ns, self.reconciler, self.clock = kube, namespace, reconciler, clock

    def step(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        self.reconciler.step()

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = self.kube.get(kind, name, self.ns)
        assert found is not None, f"{kind} {name} not found"
        return found

    def status(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.get("InferenceService", name).get("status") or {}
        return got

    def routes(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = json.loads(self.get("ConfigMap", f"{name}-routes")["data"]
                                           ["routes.json"])
        return table

    def run_pods(self, revision: str, count: int,
                 label: str = "shoal.dev/revision") -> list[dict[str, Any]]:
        """Bind the revision's pods to a fake node (as a scheduler would) until ``count`` run."""
        def mine(pods: State) -> list[dict[str, Any]]:
            return [p for p in pods.values()
                    if (p["metadata"].get("labels") or {}).get(label) == revision
                    and not p["metadata"].get("deletionTimestamp")]

        def bound_all(pods: State) -> bool:
            for pod in mine(pods):
                if not pod["spec"].get("nodeName"):
                    with contextlib.suppress(Exception):  # bound meanwhile: seen next event
                        self.kube.bind(pod["metadata"]["name"], self.ns, NODE)
            found = mine(pods)
            return len(found) == count and all(
                any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions") or [])
                for p in found)

        return mine(wait_until(self.kube, "Pod", bound_all, namespace=self.ns,
                               what=f"{count} pods of {revision} Running and Ready"))


@pytest.fixture()
def serving(crds: Kube, request: pytest.FixtureRequest) -> Iterator[Serving]:
    from shoal.runtime.kubernetes.serving import serving_reconciler
    from shoal.testing import FakeClock

    kube = crds
    namespace = ("serve-" + request.node.name.removeprefix("test_").replace("_", "-"))[:40].rstrip("-")
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    clock = FakeClock(1_000.0)
    yield Serving(kube, namespace, serving_reconciler(kube, clock, image="shoal:test"), clock)
    let_go(kube, namespace)
    kube.delete("Namespace", namespace)


def let_go(kube: Kube, namespace: str) -> None:
    """Take Shoal's finalizer off the namespace's services (no operator runs here to)."""
    for _ in range(10):  # a write of the test's reconciler may have moved one on: read again
        held = [i for i in kube.list("InferenceService", namespace)
                if i["metadata"].get("finalizers")]
        if not held:
            return
        for item in held:
            with contextlib.suppress(ConflictError, NotFoundError):
                kube.replace({**item, "metadata": {**item["metadata"], "finalizers": []}})
    raise AssertionError(f"the services of {namespace} kept their finalizers")


def test_an_applied_service_gets_a_deployment_router_service_and_budget(
        serving: Serving) -> None:
    kube, ns = serving.kube, serving.ns
    kube.create(manifest("digits", ns))
    serving.step()

    deployment = serving.get("Deployment", "digits-r1")
    labels = deployment["metadata"]["labels"]
    assert (labels["shoal.dev/service"], labels["shoal.dev/revision"]) == ("digits", "digits-r1")
    assert deployment["spec"]["replicas"] == 1  # a loading revision gets one replica
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["python", "-m", "shoal.serving.replica"]
    assert container["command"][container["command"].index("--model") + 1] == (
        "/models/digits.joblib")
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"

    # The PDB in the version the server serves: policy/v1beta1 on 1.20 (no policy/v1).
    version = kube.discovery.api_version("PodDisruptionBudget")
    assert version == ("policy/v1" if kube.serves("policy/v1", "poddisruptionbudgets")
                       else "policy/v1beta1")
    budget = serving.get("PodDisruptionBudget", "digits-r1")
    assert budget["apiVersion"] == version
    assert budget["spec"]["selector"]["matchLabels"]["shoal.dev/revision"] == "digits-r1"

    router = serving.get("Deployment", "digits-router")
    assert router["spec"]["replicas"] == 1
    entry = serving.get("Service", "digits")
    assert entry["spec"]["selector"] == {"shoal.dev/router": "digits"}
    assert router["spec"]["template"]["metadata"]["labels"] == {"shoal.dev/router": "digits"}
    # Nothing is ready yet: the revision takes all traffic, held by the activator.
    assert serving.routes("digits") == {
        "activating": ["digits-r1"],
        "revisions": [{"name": "digits-r1", "weight": 100, "replicas": [], "model": "digits"}]}

    status = serving.status("digits")
    assert status["latestRevision"] == "digits-r1"
    assert status["url"] == f"http://digits.{ns}.svc"
    assert status["control"]["revisions"][0]["phase"] == "Loading"
    found = serving.get("InferenceService", "digits")
    assert "shoal.dev/serving" in found["metadata"]["finalizers"]

    # The Deployment controller makes the pod; placed on a fake node it runs and is Ready.
    (pod,) = serving.run_pods("digits-r1", 1)
    (router_pod,) = serving.run_pods("digits", 1, label="shoal.dev/router")
    assert router_pod["spec"]["containers"][0]["command"][:3] == [
        "python", "-m", "shoal.api.kube_router"]
    assert router_pod["spec"]["serviceAccountName"] == "shoal-router"
    serving.step()
    status = serving.status("digits")
    assert status["phase"] == "Ready"
    assert status["ready"] == "1/1"
    assert status["trafficSplit"] == "digits-r1=100"
    assert serving.routes("digits")["revisions"][0]["replicas"] == [
        f"http://{pod['status']['podIP']}:8080"]


def test_a_new_model_is_a_second_deployment_with_the_canary_split(serving: Serving) -> None:
    kube, ns = serving.kube, serving.ns
    kube.create(manifest("canary", ns, canary={"trafficPercent": 20}))
    serving.step()
    serving.run_pods("canary-r1", 1)
    serving.step()
    assert serving.status("canary")["trafficSplit"] == "canary-r1=100"

    live = serving.get("InferenceService", "canary")
    changed = copy.deepcopy(live)
    changed["spec"]["model"]["version"] = "2"
    kube.replace(changed)
    serving.step()
    second = serving.get("Deployment", "canary-r2")
    assert second["spec"]["replicas"] == 1
    assert serving.get("Deployment", "canary-r1")["spec"]["replicas"] == 1
    assert serving.status("canary")["latestRevision"] == "canary-r2"

    serving.run_pods("canary-r2", 1)
    serving.step()
    status = serving.status("canary")
    assert status["trafficSplit"] == "canary-r1=80,canary-r2=20"
    weights = {r["name"]: r["weight"] for r in serving.routes("canary")["revisions"]}
    assert weights == {"canary-r1": 80, "canary-r2": 20}
    kinds = [e["reason"] for e in kube.list("Event", ns)
             if e["involvedObject"]["name"] == "canary"]
    assert "CanaryStarted" in kinds and "RevisionReady" in kinds


def test_replicas_are_written_and_an_idle_service_scales_to_zero(serving: Serving) -> None:
    kube, ns = serving.kube, serving.ns
    kube.create(manifest("idle", ns, replicas={"min": 0, "max": 3},
                         autoscaling={"policy": "kpa"}))
    serving.step()
    assert serving.get("Deployment", "idle-r1")["spec"]["replicas"] == 1
    serving.run_pods("idle-r1", 1)
    serving.step()  # ready, and no request: Knative's autoscaler lets it go to zero
    assert serving.get("Deployment", "idle-r1")["spec"]["replicas"] == 0
    wait_until(kube, "Pod", lambda pods: not any(
        (p["metadata"].get("labels") or {}).get("shoal.dev/revision") == "idle-r1"
        for p in pods.values()), namespace=ns, what="idle-r1's pods gone")
    serving.step()
    status = serving.status("idle")
    assert status["ready"] == "0/0"
    assert serving.routes("idle")["activating"] == ["idle-r1"]

    # minReplicas written by hand (kubectl edit): Shoal writes the new floor.
    live = serving.get("InferenceService", "idle")
    changed = copy.deepcopy(live)
    changed["spec"]["replicas"] = {"min": 2, "max": 3}
    kube.replace(changed)
    serving.reconciler._scaling.clear()  # a restarted operator: autoscalers start afresh
    serving.step()
    assert serving.get("Deployment", "idle-r1")["spec"]["replicas"] == 2


def test_a_deleted_service_scales_down_and_its_objects_go(serving: Serving) -> None:
    kube, ns = serving.kube, serving.ns
    kube.create(manifest("gone", ns))
    serving.step()
    serving.run_pods("gone-r1", 1)
    serving.step()
    kube.delete("InferenceService", "gone", ns)
    assert serving.get("InferenceService", "gone")["metadata"].get("deletionTimestamp")
    serving.step()  # scaled to zero; its pods are still there
    assert serving.get("Deployment", "gone-r1")["spec"]["replicas"] == 0
    wait_until(kube, "Pod", lambda pods: not any(
        (p["metadata"].get("labels") or {}).get("shoal.dev/service") == "gone"
        and "shoal.dev/revision" in (p["metadata"].get("labels") or {})
        for p in pods.values()), namespace=ns, what="gone's replica pods gone")
    serving.step()  # no replica left: the finalizer is removed
    wait_gone(kube, "InferenceService", "gone", ns)
    for kind, name in (("Deployment", "gone-r1"), ("Deployment", "gone-router"),
                       ("Service", "gone"), ("ConfigMap", "gone-routes"),
                       ("PodDisruptionBudget", "gone-r1")):
        wait_gone(kube, kind, name, ns)  # the garbage collector, by owner references


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("framework",), "tensorflow", "spec.framework"),
        (("replicas", "max"), 0, "spec.replicas.max"),
        (("bogus",), 1, None),  # pruned by 1.20; refused by strict field validation
        (("autoscaling", "policy"), "magic", "spec.autoscaling.policy"),
    ],
)
def test_a_bad_manifest_is_refused_by_the_schema(
        crds: Kube, path: tuple[str, ...], value: Any, field: str | None) -> None:
    body = manifest("bad", "default")
    node = body["spec"]
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    if field is None:
        created = crds.create(body)
        try:
            assert "bogus" not in created["spec"]
        finally:
            crds.delete("InferenceService", "bad", "default")
        return
    with pytest.raises(ManifestError) as refused:
        crds.create(body)
    assert field in str(refused.value)


def test_a_rule_beyond_the_schema_is_reported_in_status(serving: Serving) -> None:
    kube, ns = serving.kube, serving.ns
    kube.create(manifest("mixed", ns, replicas={"min": 3, "max": 2}))
    kube.create(manifest("elsewhere", ns, tenant="someone-else"))
    serving.step()
    assert serving.status("mixed")["phase"] == "Invalid"
    assert "min (3) cannot exceed max (2)" in serving.status("mixed")["reason"]
    assert "lives in its tenant's namespace" in serving.status("elsewhere")["reason"]
    assert not kube.list("Deployment", ns)


def test_the_cli_gets_describes_and_deletes_services_on_the_cluster(
        serving: Serving, control_plane: ControlPlane) -> None:
    from tests.kube.test_cli_server import on, one_line_error

    kube, ns = serving.kube, serving.ns
    kube.create(manifest("cli", ns, canary={"trafficPercent": 20}))
    serving.step()
    serving.run_pods("cli-r1", 1)
    serving.step()

    listed = on(control_plane, "get", "services", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    (found,) = [s for s in json.loads(listed.stdout) if s["tenant"] == ns]
    assert (found["name"], found["phase"], found["traffic"], found["replicas"]) == (
        "cli", "Ready", {"cli-r1": 100}, {"cli-r1": {"desired": 1, "ready": 1}})
    assert found["url"] == f"http://cli.{ns}.svc"
    assert (found["minReplicas"], found["maxReplicas"]) == (1, 3)

    described = on(control_plane, "describe", "service", "cli", "--tenant", ns)
    assert described.returncode == 0, described.stderr
    assert "cli-r1: Ready replicas 1/1" in described.stdout
    assert "revision-ready" in described.stdout

    refused = on(control_plane, "rollout", "promote", "cli")
    assert refused.returncode != 0
    assert "not offered with --kubeconfig" in one_line_error(refused)
    missing = on(control_plane, "describe", "service", "nosuch")
    assert "service 'nosuch' not found" in one_line_error(missing)

    deleted = on(control_plane, "delete", "service", "cli", "--tenant", ns)
    assert deleted.returncode == 0, deleted.stderr
    assert "service/cli deleted" in deleted.stdout
    assert serving.get("InferenceService", "cli")["metadata"]["deletionTimestamp"]


def test_a_model_from_a_training_job_waits_for_it_then_mounts_its_claim(
        serving: Serving) -> None:
    from tests.kube.test_control_server import training_job

    kube, ns = serving.kube, serving.ns
    job = training_job("train", ns, pods=1, gpus=0)
    job["spec"]["checkpointIntervalSeconds"] = 60
    kube.create(job)
    kube.create(manifest("trained", ns, model={"from": {"trainingJob": "train",
                                                        "path": "model.joblib"}}))
    serving.step()
    # No model yet: no Deployment, and the status says why.
    assert kube.get("Deployment", "trained-r1", ns) is None
    assert serving.status("trained")["reason"] == "waiting for TrainingJob train to succeed"

    live = serving.get("TrainingJob", "train")  # as the control loop would write it
    kube.replace_status({**live, "status": {"phase": "Succeeded"}})
    serving.step()
    pod = serving.get("Deployment", "trained-r1")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "model", "persistentVolumeClaim": {
        "claimName": "train-checkpoints", "readOnly": True}}]
    command = pod["containers"][0]["command"]
    assert command[command.index("--model") + 1] == "/shoal/model-source/model.joblib"

    # A job that keeps no checkpoints has nothing to serve: the revision fails.
    kube.create(training_job("nockpt", ns, pods=1, gpus=0))
    kube.create(manifest("orphan", ns, model={"from": {"trainingJob": "nockpt",
                                                       "path": "model.joblib"}}))
    serving.step()
    status = serving.status("orphan")
    assert status["phase"] == "Failed"
    assert "keeps no checkpoint folder" in status["control"]["revisions"][0]["reason"]


def test_a_replica_that_cannot_load_its_model_fails_the_revision(serving: Serving) -> None:
    kube, ns = serving.kube, serving.ns
    kube.create(manifest("broken", ns))
    serving.step()
    # The fake kubelet ends the container with the replica server's load-failure code
    # (its annotation, put on the pod template by hand: no process runs here).
    # The cluster's deployment controller writes the Deployment's status meanwhile: a
    # replace made from an older read is refused, so read again and redo it.
    for _ in range(10):
        deployment = serving.get("Deployment", "broken-r1")
        template = deployment["spec"]["template"]
        template["metadata"]["annotations"] = {"fake-kubelet/exit-code": "1",
                                               "fake-kubelet/run-seconds": "0"}
        try:
            kube.replace(deployment)
            break
        except ConflictError:
            continue
    else:
        raise AssertionError("broken-r1 kept changing under ten replaces")

    def ended(pods: State) -> bool:
        for pod in pods.values():
            if (pod["metadata"].get("annotations") or {}).get("fake-kubelet/exit-code") \
                    and not pod["spec"].get("nodeName"):
                with contextlib.suppress(Exception):
                    kube.bind(pod["metadata"]["name"], ns, NODE)
        return any((p.get("status") or {}).get("phase") == "Failed" for p in pods.values())

    wait_until(kube, "Pod", ended, namespace=ns, what="broken-r1's pod Failed")
    serving.step()
    status = serving.status("broken")
    assert status["phase"] == "Failed"
    assert status["control"]["revisions"][0]["phase"] == "Failed"
    kinds = [e["reason"] for e in kube.list("Event", ns)
             if e["involvedObject"]["name"] == "broken"]
    assert "RevisionFailed" in kinds


def test_the_cli_applies_services_to_the_cluster(
        serving: Serving, control_plane: ControlPlane, tmp_path: Any) -> None:
    import yaml

    from tests.kube.test_cli_server import on, one_line_error

    ns = serving.ns
    body = manifest("applied", ns)
    del body["metadata"]["namespace"]  # the file names the tenant, as for shoal apply
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(body))
    first = on(control_plane, "apply", "-f", str(path))
    assert first.returncode == 0, first.stderr
    assert "inferenceservice/applied created" in first.stdout.lower()
    again = on(control_plane, "apply", "-f", str(path))
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr

    body["spec"]["model"]["version"] = "2"
    path.write_text(yaml.safe_dump(body))
    changed = on(control_plane, "apply", "-f", str(path))
    assert changed.returncode == 0 and "configured" in changed.stdout, changed.stderr
    assert serving.get("InferenceService", "applied")["spec"]["model"]["version"] == "2"

    body["spec"]["replicas"] = {"min": 3, "max": 1}
    path.write_text(yaml.safe_dump(body))
    refused = on(control_plane, "apply", "-f", str(path))
    assert refused.returncode == 2
    assert "spec.replicas" in one_line_error(refused) or "replicas" in refused.stderr
    assert serving.get("InferenceService", "applied")["spec"]["replicas"] == {"min": 1, "max": 3}


def test_the_serving_loop_reads_from_its_watches_a_settled_pass_sends_nothing(
        serving: Serving) -> None:
    """No polling: once a service has settled, a pass of the operator's serving loop reads
    everything from its watch-fed cache and writes nothing, so it costs the API server no
    request (the loop passes every 2 s while services exist)."""
    import threading

    from shoal.runtime.kubernetes.serving import ServingLoop

    kube, ns = serving.kube, serving.ns
    own = _counted(kube.api_client, ns)  # the same connection; requests about ``ns`` counted
    loop = ServingLoop(own, image="shoal:test", clock=serving.clock)
    stop = threading.Event()
    assert loop.cache is not None
    loop.cache.start(stop)
    try:
        assert loop.cache.wait_synced(60), "the serving watches never listed"
        kube.create(manifest("digits", ns))
        seen = threading.Event()

        def arrived() -> bool:
            return bool(loop.cache.list("InferenceService", ns, "")) if loop.cache else False

        for _ in range(600):
            if arrived():
                break
            seen.wait(0.1)  # the watch brings it
        assert arrived(), "the service never reached the watch"
        serving.reconciler = loop.reconciler
        serving.step()
        serving.run_pods("digits-r1", 1)
        serving.run_pods("digits", 1, label="shoal.dev/router")

        def ready() -> bool:
            serving.step()
            return bool(serving.status("digits").get("phase") == "Ready")

        for _ in range(600):
            if ready():
                break
            seen.wait(0.1)  # the pods' Ready conditions reach the watch
        assert serving.status("digits")["phase"] == "Ready"
        serving.step()  # the routing table of the ready replica is written once
        # Services other tests left in namespaces being deleted may still cost requests of
        # their own: the requests counted are this namespace's and the cluster-wide ones.
        before = own.mine
        serving.step()
        serving.step()
        assert own.mine == before, own.calls.snapshot()
        assert serving.status("digits")["phase"] == "Ready"
    finally:
        stop.set()


def _counted_kube() -> type:
    from shoal.runtime.kubernetes.client import Kube

    class Counted(Kube):
        """``Kube`` that also counts the requests about one namespace, or about none."""

        def __init__(self, api_client: Any, namespace: str) -> None:
            super().__init__(api_client)
            self.namespace, self.mine = namespace, 0

        def _send(self, verb: str, method: str, kind: str, namespace: str | None,
                  **kwargs: Any) -> Any:
            self.mine += namespace in (None, self.namespace)
            return super()._send(verb, method, kind, namespace, **kwargs)

        def _call(self, verb: str, kind: str, namespace: str | None, **kwargs: Any) -> Any:
            self.mine += namespace in (None, self.namespace)
            return super()._call(verb, kind, namespace, **kwargs)

    return Counted


def _counted(api_client: Any, namespace: str) -> Any:
    return _counted_kube()(api_client, namespace)
