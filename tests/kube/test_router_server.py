"""``python -m shoal.api.kube_router`` checking its callers with the real API server.

The router runs as a process on 127.0.0.1 with the token of the ServiceAccount
``shoal-router`` that the operator's objects (``serving_objects.router_access``)
make and bind to ``system:auth-delegator`` — so the test shows that binding is
enough — and a routing table pointing at a real replica process.  Callers are
ServiceAccounts of the tenant's namespace: one granted ``create`` on
``inferenceservices/predict`` named ``digits`` by a Role gets its answer, one
granted it for another service and one with no grant get 403, no token and a
garbage token get 401 (``tritonclient.http`` as the client).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.serving_objects import router_access
from tests.kube.conftest import ControlPlane
from tests.kube.test_deploy_server import kubeconfig_for, service_account_token
from tests.serving.replicas import train_digits
from tests.serving.test_router_program import (
    Mount,
    digits_input,
    router_command,
    start_replica,
    start_router,
    stop,
)

http = pytest.importorskip("tritonclient.http")
NS = "router-tenant"
RBAC = "rbac.authorization.k8s.io"


def _account(kube: Kube, name: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": name, "namespace": NS}})


def _grant(control_plane: ControlPlane, account: str, service: str) -> None:
    """A Role and RoleBinding: ``account`` may call ``service`` (create on its predict)."""
    role = {"apiVersion": f"{RBAC}/v1", "kind": "Role",
            "metadata": {"name": f"call-{account}", "namespace": NS},
            "rules": [{"apiGroups": ["shoal.dev"], "resources": ["inferenceservices/predict"],
                       "resourceNames": [service], "verbs": ["create"]}]}
    binding = {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
               "metadata": {"name": f"call-{account}", "namespace": NS},
               "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": f"call-{account}"},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}]}
    with control_plane.http() as client:
        for plural, body in (("roles", role), ("rolebindings", binding)):
            answer = client.post(f"/apis/{RBAC}/v1/namespaces/{NS}/{plural}", json=body)
            assert answer.status_code == 201, answer.text


@pytest.fixture(scope="module")
def tenant(control_plane: ControlPlane, kube: Kube) -> Iterator[dict[str, str]]:
    """The namespace, the router's account and binding (as the operator makes them), and
    the callers' tokens."""
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    for body in router_access(NS):
        kube.create(body)
    for name in ("caller", "other-caller", "stranger"):
        _account(kube, name)
    _grant(control_plane, "caller", "digits")
    _grant(control_plane, "other-caller", "another-service")
    try:
        yield {name: service_account_token(control_plane, NS, name)
               for name in ("shoal-router", "caller", "other-caller", "stranger")}
    finally:
        kube.delete("ClusterRoleBinding", f"shoal-router-{NS}")
        kube.delete("Namespace", NS)


def test_callers_are_checked_by_token_review_and_subject_access_review(
        control_plane: ControlPlane, tenant: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "digits.joblib"
    train_digits(model)
    replica, url = start_replica(tmp_path, model)
    try:
        mount = Mount(tmp_path / "routes")
        mount.write([{"name": "digits-r1", "weight": 100, "replicas": [url],
                      "model": "digits"}])
        config = kubeconfig_for(control_plane, tenant["shoal-router"],
                                tmp_path / "router.kubeconfig")
        ready = tmp_path / "router-ready.json"
        router, line = start_router(
            router_command("digits", NS, mount.path, ready, "--kubeconfig", str(config)),
            ready)
        try:
            triton = http.InferenceServerClient(f"127.0.0.1:{line['port']}")
            given, labels = digits_input()

            def status(headers: dict[str, str]) -> str:
                with pytest.raises(http.InferenceServerException) as refused:
                    triton.infer("digits", [given], headers=headers)
                return f"{refused.value.status()} {refused.value.message()}"

            allowed = {"Authorization": f"Bearer {tenant['caller']}"}
            result = triton.infer("digits", [given], headers=allowed)
            assert result.as_numpy("label").tolist() == labels
            assert triton.get_model_metadata("digits", headers=allowed)["name"] == "digits"

            needed = ("this token may not call service 'digits': it needs 'create' on "
                      "inferenceservices/predict (shoal.dev) named 'digits'")
            for name in ("stranger", "other-caller"):
                said = status({"Authorization": f"Bearer {tenant[name]}"})
                assert said == f"403 {needed}", name
            assert status({}).startswith("401 missing token")
            assert status({"Authorization": "Bearer not-a-token"}) == (
                "401 unknown, expired or revoked token")
            # The router's own token is a valid identity with no right to call.
            assert status({"Authorization": f"Bearer {tenant['shoal-router']}"}).startswith(
                "403 ")
        finally:
            _, err = stop(router)
        assert router.returncode == 0, err
        assert "Traceback" not in err
    finally:
        stop(replica)
