"""``shoal operator`` serves InferenceServices, under the ClusterRole of ``deploy/rbac.yaml``.

The operator runs as a process with the token of a ServiceAccount bound to
the ClusterRole ``shoal-operator`` as ``deploy/rbac.yaml`` writes it (not as
admin): an applied InferenceService gets its Deployment, router, Service,
routing table and PodDisruptionBudget from the operator's serving thread;
its pod, bound to a fake node as a scheduler would, makes it Ready; deleted,
it and its objects go.  No request is refused in the operator's log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.kube.conftest import ROOT, ControlPlane
from tests.kube.operator_process import running_operator
from tests.kube.test_deploy_server import kubeconfig_for, service_account_token
from tests.kube.test_serving_server import manifest
from tests.kube.waiting import State, wait_gone, wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube

pytestmark = pytest.mark.kube

NS, ACCOUNT, BINDING = "serve-op", "shoal-serving-test", "shoal-serving-test"


def _role() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    role: dict[str, Any] = next(d for d in docs if d["kind"] == "ClusterRole")
    return role


RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _grant(control_plane: ControlPlane) -> None:
    """The ClusterRole as the file has it, bound to a ServiceAccount of the test's namespace."""
    role = _role()
    name = role["metadata"]["name"]
    with control_plane.http() as http:
        live = http.get(f"{RBAC}/clusterroles/{name}")
        if live.status_code == 404:
            assert http.post(f"{RBAC}/clusterroles", json=role).status_code == 201
        else:
            version = live.json()["metadata"]["resourceVersion"]
            body = {**role, "metadata": {**role["metadata"], "resourceVersion": version}}
            assert http.put(f"{RBAC}/clusterroles/{name}", json=body).status_code == 200
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": ACCOUNT, "namespace": NS}}
        assert http.post(f"/api/v1/namespaces/{NS}/serviceaccounts",
                         json=account).status_code == 201
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": BINDING},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NS}],
        }
        assert http.post(f"{RBAC}/clusterrolebindings", json=binding).status_code in (201, 409)


def _status(name: str, key: str, wanted: str) -> Any:
    def check(services: State) -> bool:
        return bool((services.get(f"{NS}/{name}", {}).get("status") or {}).get(key) == wanted)
    return check


def test_the_operator_serves_a_service_under_its_cluster_role(
        control_plane: ControlPlane, crds: Kube, tmp_path: Path) -> None:
    kube = crds
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    try:
        _grant(control_plane)
        token = service_account_token(control_plane, NS, ACCOUNT)
        config = kubeconfig_for(control_plane, token, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        with running_operator(config, log):
            kube.create(manifest("op", NS))
            wait_until(kube, "Deployment", lambda found: {f"{NS}/op-r1", f"{NS}/op-router"}
                       <= set(found), namespace=NS, what=f"op's Deployments (log: {log})")
            for kind, name in (("Service", "op"), ("ConfigMap", "op-routes"),
                               ("PodDisruptionBudget", "op-r1")):
                wait_until(kube, kind, lambda found, n=name: f"{NS}/{n}" in found,
                           namespace=NS, what=f"{kind} {name} (log: {log})")

            def bound(pods: State) -> bool:
                for pod in pods.values():
                    labels = pod["metadata"].get("labels") or {}
                    if labels.get("shoal.dev/revision") == "op-r1" \
                            and not pod["spec"].get("nodeName"):
                        kube.bind(pod["metadata"]["name"], NS, "fake-node-1")
                        return False
                return any((p["metadata"].get("labels") or {}).get("shoal.dev/revision")
                           == "op-r1" and p["spec"].get("nodeName") for p in pods.values())

            wait_until(kube, "Pod", bound, namespace=NS, what="op-r1's pod bound")
            wait_until(kube, "InferenceService", _status("op", "phase", "Ready"), namespace=NS,
                       what=f"op Ready (log: {log})")
            wait_until(kube, "InferenceService", _status("op", "ready", "1/1"), namespace=NS,
                       what=f"op 1/1 (log: {log})")
            assert kube.delete("InferenceService", "op", NS)
            wait_gone(kube, "InferenceService", "op", NS)
            for kind, name in (("Deployment", "op-r1"), ("Deployment", "op-router")):
                wait_gone(kube, kind, name, NS)
        text = log.read_text()
        refused = [line for line in text.splitlines()
                   if re.search(r"\b403\b|forbidden", re.sub(r"^\[[^]]*\]", "", line), re.I)]
        assert refused == [], "\n".join(refused[:20])
        assert "serving pass failed" not in text, text[-4000:]
    finally:
        for item in kube.list("InferenceService", NS):
            kube.replace({**item, "metadata": {**item["metadata"], "finalizers": []}})
        with control_plane.http() as http:
            http.delete(f"{RBAC}/clusterrolebindings/{BINDING}")
        kube.delete("Namespace", NS)
