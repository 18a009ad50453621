"""deploy/ on the real API server, and the operator run under its ServiceAccount, not as admin.

The base is rendered with kubectl's built-in kustomize and applied with
``kubectl apply -k deploy/`` (without kubectl on PATH, rendering is skipped
with a message and the same objects are applied through the API).  The
Deployment is stored but never runs: no kubelet here runs images.  Then the
ClusterRole is shown to be sufficient: ``shoal operator`` runs as a process
with the token the controller manager made for the ServiceAccount
``shoal-operator`` (v1.20 still writes one into a Secret), finds its CRDs,
makes a Tenant's namespace and objects, repairs one, runs a TrainingJob to
Succeeded (its pod deleted once it ends, its Events written), lets it go,
and cleans up, with no request refused in its (debug) log.  The CRD
install is checked on its own: create, keep, upgrade (a removed field too),
and, for a subject that may not, a warning or a clear error.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL
from tests.kube.conftest import ROOT, ControlPlane
from tests.kube.operator_process import running_operator
from tests.kube.waiting import wait_gone, wait_until
from tests.unit.test_deploy_files import base_documents

pytestmark = pytest.mark.kube

DEPLOY = ROOT / "deploy"
NAMESPACE, ACCOUNT = "shoal-system", "shoal-operator"
TOKEN_TIMEOUT_S = 60.0
COLLECTIONS = {
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
}
"""Where the base's kinds are created when there is no kubectl."""


def kubectl() -> str | None:
    return shutil.which("kubectl")


def _kubectl(*args: str, kubeconfig: Path | None = None) -> str:
    command = [kubectl() or "kubectl", *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []),
               *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def deployed(control_plane: ControlPlane, crds: Kube) -> Iterator[str]:
    """The base applied as admin; yields how (kubectl's output, or what was created)."""
    if kubectl() is not None:
        applied = _kubectl("apply", "-k", str(DEPLOY), kubeconfig=control_plane.kubeconfig)
    else:
        applied = _apply_through_the_api(control_plane)
    yield applied
    with control_plane.http() as http:  # the CRDs stay: the session's other tests use them
        for doc in base_documents():
            if doc["kind"] not in ("CustomResourceDefinition", "Deployment", "ServiceAccount"):
                http.delete(f"{_collection(doc)}/{doc['metadata']['name']}")


def _collection(doc: dict[str, Any]) -> str:
    return COLLECTIONS[doc["kind"]].format(namespace=doc["metadata"].get("namespace"))


def _apply_through_the_api(control_plane: ControlPlane) -> str:
    created = []
    with control_plane.http() as http:
        for doc in base_documents():
            response = http.post(_collection(doc), json=doc)
            assert response.status_code in (201, 409), response.text  # 409: the CRDs
            created.append(f"{doc['kind']} {doc['metadata']['name']} {response.status_code}")
    return "\n".join(created)


def test_kubectl_renders_the_base_as_its_files_say() -> None:
    if kubectl() is None:
        pytest.skip("kubectl is not on PATH (apt-get install kubernetes-client): "
                    "deploy/ is not rendered with kustomize here")
    rendered = [doc for doc in yaml.safe_load_all(_kubectl("kustomize", str(DEPLOY))) if doc]

    def keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(rendered) == keyed(base_documents())


def test_the_base_is_stored_and_a_second_apply_changes_nothing(
        control_plane: ControlPlane, crds: Kube, deployed: str) -> None:
    crd_names = {d["metadata"]["name"] for d in base_documents()
                 if d["kind"] == "CustomResourceDefinition"}
    established = wait_until(crds, "CustomResourceDefinition", lambda found: all(
        any(c["type"] == "Established" and c["status"] == "True"
            for c in (found.get(n, {}).get("status") or {}).get("conditions") or [])
        for n in crd_names), what="deploy/'s CRDs Established")
    assert crd_names <= set(established)
    with control_plane.http() as http:
        deployment = http.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{ACCOUNT}")
        assert deployment.status_code == 200, deployment.text
        pod = deployment.json()["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == ACCOUNT
        assert pod["containers"][0]["command"] == ["shoal", "operator"]
        assert pod["containers"][0]["args"] == ["--health-port", "8081"]
        assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
        role = http.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ACCOUNT}").json()
        wanted = next(d for d in base_documents() if d["kind"] == "ClusterRole")
        assert role["rules"] == wanted["rules"]
    if kubectl() is not None:
        again = _kubectl("apply", "-k", str(DEPLOY), kubeconfig=control_plane.kubeconfig)
        lines = [line for line in again.splitlines() if line.strip()]
        assert lines and all(line.endswith(" unchanged") for line in lines), again


# --- the ServiceAccount's token --------------------------------------------------


def service_account_token(control_plane: ControlPlane, namespace: str, name: str) -> str:
    """The token the controller manager wrote for the ServiceAccount (a Secret, on v1.20)."""
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    selector = {"fieldSelector": f"metadata.name={name}"}
    deadline = time.monotonic() + TOKEN_TIMEOUT_S
    with control_plane.http() as http:
        listing = http.get(path, params=selector).json()
        account = (listing.get("items") or [{}])[0]
        since = listing["metadata"]["resourceVersion"]
        while not account.get("secrets"):  # follow a watch until the token's Secret is named
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no token Secret for ServiceAccount {namespace}/{name} "
                            f"within {TOKEN_TIMEOUT_S:.0f} s")
            params = {**selector, "watch": "1", "resourceVersion": since,
                      "timeoutSeconds": str(max(1, int(left)))}
            with http.stream("GET", path, params=params, timeout=left + 10) as events:
                for line in events.iter_lines():
                    event = json.loads(line)
                    account, since = event["object"], event["object"]["metadata"][
                        "resourceVersion"]
                    if account.get("secrets"):
                        break
        secret = http.get(f"/api/v1/namespaces/{namespace}/secrets/"
                          f"{account['secrets'][0]['name']}").json()
    return base64.b64decode(secret["data"]["token"]).decode()


def kubeconfig_for(control_plane: ControlPlane, token: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "plane", "cluster": {
            "server": control_plane.server, "certificate-authority": str(control_plane.ca)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "plane", "user": "sa"}}],
    }))
    return path


@pytest.fixture(scope="module")
def operator_token(control_plane: ControlPlane, deployed: str) -> str:
    return service_account_token(control_plane, NAMESPACE, ACCOUNT)


@pytest.fixture
def as_operator(control_plane: ControlPlane, operator_token: str,
                tmp_path: Path) -> Iterator[Kube]:
    """The client seam with the operator's ServiceAccount token."""
    kube = Kube.from_kubeconfig(str(kubeconfig_for(control_plane, operator_token,
                                                   tmp_path / "sa.kubeconfig")))
    yield kube
    kube.close()


def _ready(name: str) -> Any:
    def check(tenants: dict[str, Any]) -> bool:
        status = tenants.get(name, {}).get("status") or {}
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in status.get("conditions") or [])
    return check


def test_the_operator_runs_under_its_service_account(
        control_plane: ControlPlane, crds: Kube, operator_token: str, tmp_path: Path) -> None:
    from tests.kube.test_control_server import label_gpu_model, tenant, training_job

    label_gpu_model(crds)
    log = tmp_path / "operator.log"
    config = kubeconfig_for(control_plane, operator_token, tmp_path / "sa.kubeconfig")
    with running_operator(config, log):
        crds.create(tenant("deployed", 8))
        try:
            wait_until(crds, "Tenant", _ready("deployed"), fields="metadata.name=deployed",
                       what=f"Tenant deployed Ready (log: {log})")
            for kind, count in (("NetworkPolicy", 7), ("ResourceQuota", 1), ("LimitRange", 1),
                                ("Role", 1), ("RoleBinding", 1)):
                wait_until(crds, kind, lambda found, n=count: len(found) == n,
                           namespace="deployed", what=f"{count} {kind} in deployed")
            assert crds.delete("NetworkPolicy", "shoal-default-deny", "deployed")
            wait_until(crds, "NetworkPolicy", lambda p: "deployed/shoal-default-deny" in p,
                       namespace="deployed", what=f"the deleted policy back (log: {log})")
            crds.create(training_job("under-sa", "deployed", pods=1, gpus=2, run_seconds=1))
            done = wait_until(
                crds, "TrainingJob",
                lambda jobs: (jobs.get("deployed/under-sa", {}).get("status") or {}).get(
                    "phase") == "Succeeded",
                namespace="deployed", what=f"deployed/under-sa Succeeded (log: {log})")
            assert done["deployed/under-sa"]["status"]["pods"][0]["state"] == "succeeded"
            # A job that ends releases its pods: the operator deletes them.
            wait_until(crds, "Pod", lambda pods: not [
                p for p in pods.values() if p["metadata"]["labels"].get(JOB_LABEL) == "under-sa"
            ], namespace="deployed", what=f"the pod of deployed/under-sa deleted (log: {log})")
            # Events are notes the loop never fails over: check they were written.
            wait_until(crds, "Event", lambda events: any(
                e["involvedObject"]["name"] == "under-sa" and e["source"]["component"] == "shoal"
                for e in events.values()), namespace="deployed", what="the job's Events")
            assert crds.delete("TrainingJob", "under-sa", "deployed")
            wait_gone(crds, "TrainingJob", "under-sa", "deployed")
        finally:
            crds.delete("Tenant", "deployed")
        wait_gone(crds, "Namespace", "deployed")
    text = log.read_text()
    assert "CRD tenants.shoal.dev unchanged" in text, text[-4000:]
    refused = [line for line in text.splitlines()  # a timestamp's milliseconds aside
               if re.search(r"\b403\b|forbidden", re.sub(r"^\[[^]]*\]", "", line), re.I)]
    assert refused == [], "\n".join(refused[:20])


def test_in_cluster_configuration_is_the_service_accounts(
        control_plane: ControlPlane, operator_token: str, tmp_path: Path) -> None:
    from shoal.errors import Forbidden
    from shoal.runtime.kubernetes.operator import login_from

    mounted = tmp_path / "serviceaccount"  # what Kubernetes mounts into the pod
    mounted.mkdir()
    (mounted / "token").write_text(operator_token)
    (mounted / "ca.crt").write_bytes(control_plane.ca.read_bytes())
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    where: dict[str, Any] = {"service_account": str(mounted), "environ": {
        "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}}
    kube = Kube.connect(None, **where)
    try:
        assert isinstance(kube.list("Tenant"), list)
        with pytest.raises(Forbidden):  # not admin: a Node is not the operator's to make
            kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "nope"}})
    finally:
        kube.close()
    connection = login_from(None, None, **where)()
    assert connection.server == control_plane.server
    assert connection.token == operator_token


# --- installing CRDs -------------------------------------------------------------

TEST_GROUP = "install-test.shoal.dev"


def widget_crd(plural: str = "widgets", *fields: str) -> dict[str, Any]:
    """A small CRD of a test group (Shoal's own are the session's: never removed here)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{TEST_GROUP}", "labels": {"app.kubernetes.io/part-of":
                                                                  "shoal-tests"}},
        "spec": {"group": TEST_GROUP, "scope": "Namespaced",
                 "names": {"kind": plural.capitalize().removesuffix("s"), "plural": plural},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                         "type": "object",
                         "properties": {f: {"type": "string"} for f in ("size", *fields)},
                     }}}}}]},
    }


@pytest.fixture
def widgets(crds: Kube) -> Iterator[Kube]:
    yield crds
    for plural in ("widgets", "sprockets", "gadgets"):
        crds.delete("CustomResourceDefinition", f"{plural}.{TEST_GROUP}")


def _properties(kube: Kube, name: str) -> set[str]:
    live = kube.get("CustomResourceDefinition", name) or {}
    schema = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


def test_crds_are_created_kept_and_upgraded(widgets: Kube) -> None:
    from shoal.runtime.kubernetes.install import install_crds

    name = f"widgets.{TEST_GROUP}"
    assert [i.outcome for i in install_crds(widgets, [widget_crd()])] == ["created"]
    assert widgets.serves(f"{TEST_GROUP}/v1", "widgets")
    assert [i.outcome for i in install_crds(widgets, [widget_crd()])] == ["unchanged"]
    live = widgets.get("CustomResourceDefinition", name) or {}
    live["metadata"]["labels"]["someone/else"] = "keep"  # others' labels survive an upgrade
    widgets.replace(live)
    assert [i.outcome for i in install_crds(widgets, [widget_crd("widgets", "color")])] == [
        "upgraded"]
    assert _properties(widgets, name) == {"size", "color"}
    # A field removed from the generated schema is a difference too.
    assert [i.outcome for i in install_crds(widgets, [widget_crd()])] == ["upgraded"]
    assert _properties(widgets, name) == {"size"}
    labels = (widgets.get("CustomResourceDefinition", name) or {})["metadata"]["labels"]
    assert labels["someone/else"] == "keep"


def test_an_operator_that_may_not_install_warns_or_stops(
        control_plane: ControlPlane, widgets: Kube, as_operator: Kube, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from shoal.runtime.kubernetes.crds import all_crds
    from shoal.runtime.kubernetes.install import CrdsMissing, install_crds

    # The operator's role may not touch CRDs of other names: a warning, and it goes on.
    install_crds(widgets, [widget_crd("sprockets")])
    with caplog.at_level(logging.WARNING, logger="shoal.operator"):
        done = install_crds(as_operator, [widget_crd("sprockets", "color")])
    assert [i.outcome for i in done] == ["forbidden"]
    assert "a cluster admin must install them" in caplog.text
    assert _properties(widgets, f"sprockets.{TEST_GROUP}") == {"size"}
    # A subject with no rights at all, and a CRD that is missing: a clear error (exit 1).
    with control_plane.http() as http:
        made = http.post("/api/v1/namespaces/default/serviceaccounts",
                         json={"metadata": {"name": "shoal-nobody"}})
        assert made.status_code in (201, 409), made.text
    token = service_account_token(control_plane, "default", "shoal-nobody")
    nobody = Kube.from_kubeconfig(str(kubeconfig_for(control_plane, token,
                                                     tmp_path / "nobody.kubeconfig")))
    try:
        with pytest.raises(CrdsMissing, match=rf"gadgets\.{TEST_GROUP} are not installed") as err:
            install_crds(nobody, [widget_crd("gadgets")])
        assert err.value.exit_code == 1
        assert [i.outcome for i in install_crds(nobody)] == ["forbidden"] * len(all_crds())
    finally:
        nobody.close()
