"""MIG slices and shared GPUs on a real API server: admitted, bound, asked for by name.

Two fake nodes made through the API (the session's own nodes cordoned
meanwhile): one whose device plugin would advertise seven MIG slices
``nvidia.com/mig-1g.10gb`` (mixed strategy), one whose HAMi-style sharing
plugin would advertise 80 shares of its 8 GPUs with ``nvidia.com/gpumem`` and
``nvidia.com/gpucores``.  No device plugin runs here: what is checked is
where Shoal binds the pods and what they ask for, as the API server stored
them; a pod placed by another scheduler holds slices Shoal then leaves alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.kube.loops import drop, running
from tests.kube.waiting import wait_until

if TYPE_CHECKING:
    import httpx

    from shoal.runtime.kubernetes.client import Kube
    from tests.kube.conftest import ControlPlane

PRODUCT = "NVIDIA-A100-SXM4-80GB"
SLICE = f"{PRODUCT}-MIG-1g.10gb"
MIG_NODE, SHARED_NODE = "fake-node-gpu-mig", "fake-node-gpu-shared"
TENANT = "gpu-share"
WAIT_S = 300.0
"""Generous: on a busy machine the Job controller may miss a bind timeout, and the job runs again."""


def merge_patch(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = http.patch(path, content=json.dumps(body),
                          headers={"Content-Type": "application/merge-patch+json"})
    assert response.status_code == 200, f"PATCH {path}: {response.text}"


def make_node(kube: Kube, http: httpx.Client, name: str, labels: dict[str, str],
              gpus: dict[str, str]) -> None:
    """A Ready, untainted Node with ``gpus`` allocatable, as its kubelet would report it."""
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"kubernetes.io/hostname": name,
                                 "nvidia.com/gpu.product": PRODUCT, **labels}}})
    allocatable = {"cpu": "32", "memory": "256Gi", "pods": "110", **gpus}
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    merge_patch(http, f"/api/v1/nodes/{name}/status", {"status": {
        "capacity": allocatable, "allocatable": allocatable,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
    # Admission taints a new node not-ready; the node lifecycle controller (off here) lifts it.
    merge_patch(http, f"/api/v1/nodes/{name}", {"spec": {"taints": None}})


@pytest.fixture
def http(control_plane: ControlPlane) -> Iterator[httpx.Client]:
    with control_plane.http() as client:
        yield client


@pytest.fixture
def gpu_nodes(crds: Kube, http: httpx.Client) -> Iterator[None]:
    others = {n["metadata"]["name"]: n["spec"].get("unschedulable") for n in crds.list("Node")}
    made: list[str] = []
    try:
        for name in others:
            merge_patch(http, f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True}})
        make_node(crds, http, MIG_NODE, {}, {"nvidia.com/mig-1g.10gb": "7"})
        made.append(MIG_NODE)
        make_node(crds, http, SHARED_NODE,
                  {"nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": "81920"},
                  {"nvidia.com/gpu": "80", "nvidia.com/gpumem": "655360",
                   "nvidia.com/gpucores": "800"})
        made.append(SHARED_NODE)
        yield
    finally:
        crds.delete("Pod", "foreign-mig", "default", grace_seconds=0)
        for name in made:
            crds.delete("Node", name)
        for name, was in others.items():
            merge_patch(http, f"/api/v1/nodes/{name}", {"spec": {"unschedulable": was}})


@pytest.fixture
def tenant(crds: Kube) -> Iterator[None]:
    crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TENANT}})
    crds.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                 "metadata": {"name": TENANT},
                 "spec": {"quota": {"cpu": {"nominal": 64}, "memory": {"nominal": "512Gi"},
                                    "gpus": {PRODUCT: {"nominal": 2}, SLICE: {"nominal": 7}}}}})
    try:
        yield
    finally:
        drop(crds, TENANT)
        wait_until(crds, "Namespace", lambda found: TENANT not in found,
                   what=f"namespace {TENANT} gone", timeout_s=WAIT_S)


def training_job(name: str, gpu: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": TENANT},
            "spec": {"tenant": TENANT, "podSets": [
                {"count": 1, "resources": {"cpu": "1", "memory": "1Gi", "gpu": gpu}}], **spec}}


def foreign_pod(slices: int) -> dict[str, Any]:
    """A pod another scheduler placed on the MIG node (bound at creation, no Shoal label)."""
    limits = {"nvidia.com/mig-1g.10gb": str(slices)}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "foreign-mig", "namespace": "default"},
            "spec": {"nodeName": MIG_NODE, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "busybox:1.36",
                                     "resources": {"limits": limits, "requests": limits}}]}}


def bound_pods(kube: Kube, count: int) -> dict[str, dict[str, Any]]:
    """The tenant's pods once ``count`` of them are bound, by TrainingJob name."""
    try:
        found = wait_until(
            kube, "Pod",
            lambda pods: sum(bool(p["spec"].get("nodeName")) for p in pods.values()) >= count,
            what=f"{count} bound pods in {TENANT}", namespace=TENANT, timeout_s=WAIT_S)
    except pytest.fail.Exception as failed:
        jobs = {j["metadata"]["name"]: (j.get("status") or {}).get("reason", "")
                for j in kube.list("TrainingJob", TENANT)}
        pytest.fail(f"{failed}; the jobs' reasons: {jobs}")
    return {p["metadata"]["labels"]["shoal.dev/job"]: p for p in found.values()
            if p["spec"].get("nodeName")}


def limits_of(pod: dict[str, Any]) -> dict[str, str]:
    limits: dict[str, str] = pod["spec"]["containers"][0]["resources"]["limits"]
    return limits


def test_mig_and_fractional_jobs_are_bound_where_their_gpus_are(
        crds: Kube, gpu_nodes: None, tenant: None) -> None:
    from shoal.runtime.kubernetes.loop import KubeControl

    kube = crds
    kube.create(foreign_pod(slices=5))  # 2 of the node's 7 slices are left
    # One selects the sharing node; the other need not: a fraction goes only where
    # GPUs are shared once a node is.
    shared = {"nodeSelector": {"shoal.dev/gpu-sharing": "hami"}}
    kube.create(training_job("half-a", {"count": 1, "fraction": 0.5, "memory": "20Gi"},
                             **shared))
    kube.create(training_job("half-b", {"count": 1, "fraction": 0.5, "memory": "20Gi"}))
    kube.create(training_job("slices", {"count": 2, "models": [SLICE]}))
    with running(KubeControl(kube, grace_seconds=1)):
        pods = bound_pods(kube, 3)
        assert set(pods) == {"half-a", "half-b", "slices"}
        # The MIG job: on the MIG node, asking for its profile by name.
        assert pods["slices"]["spec"]["nodeName"] == MIG_NODE
        assert limits_of(pods["slices"]) == {"nvidia.com/mig-1g.10gb": "2"}
        # Two halves packed on one GPU of the shared node, each one share of it.
        halves = [pods["half-a"], pods["half-b"]]
        assert {p["spec"]["nodeName"] for p in halves} == {SHARED_NODE}
        indices = {p["metadata"]["annotations"]["shoal.dev/gpu-index"] for p in halves}
        assert len(indices) == 1, f"not on one GPU: {indices}"
        for pod in halves:
            assert limits_of(pod) == {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "50",
                                      "nvidia.com/gpumem": "20480"}
            assert pod["metadata"]["annotations"]["shoal.dev/gpu-fraction"] == "0.5"
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            assert env["SHOAL_GPU_FRACTION"] == "0.5"
        for name in ("half-a", "half-b", "slices"):
            status = (kube.get("TrainingJob", name, TENANT) or {}).get("status") or {}
            assert status.get("phase") == "Running", (name, status)
        # The foreign pod's 5 slices and the job's 2 fill the node: one more slice waits.
        kube.create(training_job("one-more", {"count": 1, "models": [SLICE]}))
        waiting = wait_until(
            kube, "TrainingJob",
            lambda jobs: bool((jobs.get(f"{TENANT}/one-more", {}).get("status") or {})
                              .get("reason")),
            what="a reason on one-more", namespace=TENANT, timeout_s=WAIT_S)
        assert waiting[f"{TENANT}/one-more"]["status"]["phase"] == "Pending"
        # Once the foreign pod is gone, its slices are Shoal's to place.
        kube.delete("Pod", "foreign-mig", "default", grace_seconds=0)
        pods = bound_pods(kube, 4)
        assert pods["one-more"]["spec"]["nodeName"] == MIG_NODE
        assert limits_of(pods["one-more"]) == {"nvidia.com/mig-1g.10gb": "1"}


def share_pod(namespace: str, name: str) -> dict[str, Any]:
    """A pod asking for one share of a GPU, as Shoal's fractional pods do (not bound)."""
    limits = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1", "nvidia.com/gpucores": "30"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"schedulerName": "shoal", "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "busybox:1.36",
                                     "resources": {"limits": limits, "requests": limits}}]}}


def test_with_shared_gpus_the_tenants_quota_lets_in_every_share_shoal_admits(
        crds: Kube, gpu_nodes: None, http: httpx.Client) -> None:
    """Three fractional pods of a tenant with one GPU of quota (0.3 each, as Shoal admits
    them) ask for three shares: the ResourceQuota the tenant's reconcile writes lets the
    API server's quota admission take all three.  Without a sharing node it counts whole
    GPUs again, and a second share is refused."""
    from shoal.errors import Forbidden
    from shoal.runtime.kubernetes.tenant_reconciler import reconcile_tenant

    name = "share-quota"
    crds.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
                 "spec": {"quota": {"cpu": {"nominal": 8}, "memory": {"nominal": "16Gi"},
                                    "gpus": {PRODUCT: {"nominal": 1}}}}})
    try:
        reconcile_tenant(crds, name)
        answer = http.post(f"/api/v1/namespaces/{name}/serviceaccounts",
                           json={"metadata": {"name": "default"}})
        assert answer.status_code in (201, 409), answer.text
        quota = crds.get("ResourceQuota", "shoal-quota", name)
        assert quota is not None
        assert "requests.nvidia.com/gpu" not in quota["spec"]["hard"], quota["spec"]["hard"]
        for i in range(3):
            crds.create(share_pod(name, f"share-{i}"))
        crds.delete("Node", SHARED_NODE)
        reconcile_tenant(crds, name)
        quota = crds.get("ResourceQuota", "shoal-quota", name)
        assert quota is not None
        assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "1"
        # The quota controller counts the three shares already in (its usage), then refuses.
        wait_until(crds, "ResourceQuota",
                   lambda found: ((found.get(f"{name}/shoal-quota", {}).get("status") or {})
                                  .get("used") or {}).get("requests.nvidia.com/gpu") == "3",
                   what="the quota's usage of 3 shares", namespace=name, timeout_s=WAIT_S)
        with pytest.raises(Forbidden, match="exceeded quota"):
            crds.create(share_pod(name, "share-3"))
    finally:
        crds.delete("Tenant", name)
        crds.delete("Namespace", name)
        wait_until(crds, "Namespace", lambda found: name not in found,
                   what=f"namespace {name} gone", timeout_s=WAIT_S)
