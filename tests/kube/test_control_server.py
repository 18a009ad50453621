"""The control core on a real API server: TrainingJobs admitted, bound, run and preempted.

The operator's loop (``KubeControl``) runs in a thread against the session's
control plane (``conftest.control_plane``: fake GPU nodes whose fake kubelet
runs any pod bound to them).  Tests wait on watches with deadlines, never
on sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.kube.loops import running
from tests.kube.waiting import wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl


def tenant(name: str, gpus: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"cohort": "all",
                 "quota": {"cpu": {"nominal": 64}, "memory": {"nominal": "512Gi"},
                           "gpus": {"A100": {"nominal": gpus}}},
                 **spec},
    }


def training_job(name: str, owner: str, pods: int, gpus: int, priority: int = 0,
                 run_seconds: int | None = None) -> dict[str, Any]:
    annotations = {} if run_seconds is None else {"fake-kubelet/run-seconds": str(run_seconds)}
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": owner, "annotations": annotations},
        "spec": {"tenant": owner, "priority": priority,
                 "podSets": [{"count": pods, "resources": {
                     "cpu": "1", "memory": "1Gi", "gpu": {"count": gpus}}}]},
    }


def phase(kube: Kube, name: str, namespace: str, wanted: str) -> dict[str, Any]:
    state = wait_until(
        kube, "TrainingJob",
        lambda jobs: (jobs.get(f"{namespace}/{name}", {}).get("status") or {}).get("phase")
        == wanted,
        what=f"TrainingJob {namespace}/{name} {wanted}", namespace=namespace,
    )
    return state[f"{namespace}/{name}"]


def label_gpu_model(kube: Kube, model: str = "A100") -> None:
    """What NVIDIA's GPU feature discovery sets on a GPU node: the model Shoal's quotas name."""
    from shoal.errors import ConflictError

    for node in kube.list("Node"):
        for _ in range(10):  # the fake kubelet's heartbeats change the node too
            labels = node["metadata"].get("labels") or {}
            if labels.get("nvidia.com/gpu.product") == model:
                break
            node["metadata"]["labels"] = {**labels, "nvidia.com/gpu.product": model}
            node.update(apiVersion="v1", kind="Node")
            try:
                kube.replace(node)
                break
            except ConflictError:
                node = kube.get("Node", node["metadata"]["name"]) or node


@pytest.fixture()
def loop(crds: Kube) -> Iterator[KubeControl]:
    """The control loop in a thread, with two tenants in one cohort and their namespaces."""
    from shoal.runtime.kubernetes.loop import KubeControl

    kube = crds
    label_gpu_model(kube)
    for name, gpus in (("ka", 16), ("kb", 16)):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        kube.create(tenant(name, gpus))
    control = KubeControl(kube, grace_seconds=1)
    with running(control, join_s=30):
        yield control
    for name in ("ka", "kb"):
        for job in kube.list("TrainingJob", name):
            meta = job["metadata"]
            kube.replace({**job, "metadata": {**meta, "finalizers": []}})
            kube.delete("TrainingJob", meta["name"], name)
        kube.delete("Tenant", name)
        kube.delete("Namespace", name)
    for name in ("ka", "kb"):
        wait_until(kube, "Namespace", lambda ns, n=name: n not in ns,
                   what=f"namespace {name} gone", timeout_s=120)


def test_a_gang_is_admitted_bound_by_shoal_run_and_succeeds(loop: KubeControl) -> None:
    kube = loop.kube
    kube.create(training_job("gang", "ka", pods=2, gpus=8, run_seconds=2))
    running = phase(kube, "gang", "ka", "Running")
    assert running["status"]["admitted"] is True
    assert running["status"]["gpus"] == 16
    # Saved Running with its pods starting first, then the pods are made and bound.
    bound = wait_until(
        kube, "Pod",
        lambda found: sum(bool(p["spec"].get("nodeName")) for p in found.values()) == 2,
        what="two bound pods of ka/gang", namespace="ka",
    )
    pods = list(bound.values())
    # Shoal placed them: its scheduler name, bound to two distinct whole nodes.
    assert {p["spec"]["schedulerName"] for p in pods} == {"shoal"}
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2
    assert {p["metadata"]["annotations"]["shoal.dev/rank"] for p in pods} == {"0", "1"}
    # As stored by the API server (after its ServiceAccount admission): no API
    # token is mounted into the tenant's containers, and they run as nobody.
    for pod in pods:
        mounts = [m["mountPath"] for c in pod["spec"]["containers"]
                  for m in c.get("volumeMounts") or []]
        assert not any("serviceaccount" in path for path in mounts), mounts
        assert pod["spec"]["securityContext"]["runAsUser"] == 65534
    done = phase(kube, "gang", "ka", "Succeeded")
    assert done["status"]["attempts"] == 1
    assert "admitted" not in done["status"] or done["status"]["admitted"] is False


def test_a_job_that_does_not_fit_waits_with_a_reason(loop: KubeControl) -> None:
    kube = loop.kube
    kube.create(training_job("huge", "ka", pods=1, gpus=16))
    wait_until(
        kube, "TrainingJob",
        lambda jobs: bool((jobs.get("ka/huge", {}).get("status") or {}).get("reason")),
        what="a reason on ka/huge", namespace="ka",
    )
    status = kube.get("TrainingJob", "huge", "ka")["status"]  # type: ignore[index]
    assert status["phase"] in ("Failed", "Pending")
    assert "16" in status["reason"] or "GPU" in status["reason"] or "capacity" in status["reason"]


def test_reclaiming_quota_preempts_a_borrower_which_is_requeued(loop: KubeControl) -> None:
    kube = loop.kube
    # kb borrows the whole cluster (4 nodes x 8 GPUs, 16 of them lent by ka) ...
    for i in range(4):
        kube.create(training_job(f"b{i}", "kb", pods=1, gpus=8))
    for i in range(4):
        phase(kube, f"b{i}", "kb", "Running")
    # ... until ka wants its 16 back: two of kb's jobs are evicted for it.
    kube.create(training_job("mine", "ka", pods=2, gpus=8, run_seconds=600))
    phase(kube, "mine", "ka", "Running")
    jobs = {j["metadata"]["name"]: j["status"] for j in kube.list("TrainingJob", "kb")}
    assert sum(s.get("preemptions", 0) for s in jobs.values()) == 2
    assert sorted(s["phase"] for s in jobs.values()) == ["Pending", "Pending", "Running",
                                                          "Running"]
