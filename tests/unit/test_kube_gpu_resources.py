"""GPUs on Kubernetes without a server: MIG slices and shared GPUs in, resource names out."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.control.records import PodRecord
from shoal.domain.job import GpuRequest, TrainingJob
from shoal.runtime.kubernetes.convert import (
    JobObject,
    node_of,
    nodes_of,
    pod_manifest,
    row_of,
    worker_job,
)
from shoal.runtime.kubernetes.gpu_resources import (
    GPU,
    mig_model,
    mig_profile,
    offer_of,
    pod_gpus,
    resource_of_model,
    shares_gpus,
)

PRODUCT = "NVIDIA-A100-SXM4-80GB"
SLICE = mig_model(PRODUCT, "1g.10gb")


def k8s_node(name: str, allocatable: dict[str, str], **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": PRODUCT, **labels}},
        "spec": {},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110",
                                   **allocatable},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def foreign_pod(node: str, **requests: str) -> dict[str, Any]:
    return {"metadata": {"name": "other", "labels": {}},
            "spec": {"nodeName": node, "containers": [{"resources": {"limits": requests}}]},
            "status": {"phase": "Running"}}


def test_whole_gpus_are_the_model_its_label_names() -> None:
    node = node_of(k8s_node("n", {GPU: "8"}, **{"nvidia.com/gpu.memory": "81920"}))
    assert node is not None
    assert (node.gpu_model, node.gpu_count, node.gpu_memory) == (PRODUCT, 8, 81920)
    assert "shoal.dev/gpu-sharing" not in node.labels


def test_mig_slices_are_gpus_of_a_model_named_after_their_profile() -> None:
    node = node_of(k8s_node("m", {"nvidia.com/mig-1g.10gb": "7"}))
    assert node is not None
    assert (node.gpu_model, node.gpu_count, node.gpu_memory) == (
        "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb", 7, 10 * 1024)


def test_a_node_of_several_profiles_offers_its_most_numerous_one() -> None:
    offer = offer_of({"nvidia.com/mig-3g.40gb": "2", "nvidia.com/mig-1g.10gb": "4",
                      "nvidia.com/mig-2g.20gb": "4"}, {"nvidia.com/gpu.product": PRODUCT})
    assert offer is not None
    # 1g.10gb and 2g.20gb tie at 4: the first by name.
    assert (offer.model, offer.count, offer.resource) == (SLICE, 4, "nvidia.com/mig-1g.10gb")


def test_whole_gpus_win_over_slices_on_one_node() -> None:
    offer = offer_of({GPU: "2", "nvidia.com/mig-1g.10gb": "7"},
                     {"nvidia.com/gpu.product": PRODUCT})
    assert offer is not None and (offer.model, offer.count) == (PRODUCT, 2)


@pytest.mark.parametrize(("allocatable", "labels"), [
    ({GPU: "80", "nvidia.com/gpumem": "655360"}, {"nvidia.com/gpu.count": "8"}),
    ({GPU: "80", "nvidia.com/gpucores": "800"}, {"nvidia.com/gpu.count": "8",
                                                 "nvidia.com/gpu.memory": "81920"}),
    ({GPU: "8"}, {"shoal.dev/gpu-sharing": "hami", "nvidia.com/gpu.memory": "81920"}),
])
def test_a_sharing_node_offers_its_physical_gpus_marked_for_sharing(
        allocatable: dict[str, str], labels: dict[str, str]) -> None:
    node = node_of(k8s_node("h", allocatable, **labels))
    assert node is not None
    assert (node.gpu_model, node.gpu_count, node.gpu_memory) == (PRODUCT, 8, 81920)
    assert node.labels["shoal.dev/gpu-sharing"] == "hami"


def test_only_a_node_that_shares_its_gpus_makes_the_cluster_share() -> None:
    pytest.importorskip("kopf", reason="the operator needs the 'kube' extra")
    from shoal.runtime.kubernetes.operator import Tenancy

    shared = k8s_node("s", {GPU: "80", "nvidia.com/gpucores": "800"},
                      **{"nvidia.com/gpu.count": "8"})
    whole = k8s_node("w", {GPU: "8"})
    sliced = k8s_node("m", {"nvidia.com/mig-1g.10gb": "7"})
    assert [shares_gpus(n) for n in (shared, whole, sliced, {"metadata": {}})] == [
        True, False, False, False]
    # The operator reconciles every tenant when the answer for the cluster flips.
    tenancy = Tenancy(None)  # type: ignore[arg-type]  # no request is made here
    assert tenancy.sharing_changed(None, "w", whole) is False
    assert tenancy.sharing_changed(None, "s", shared) is True  # the first
    assert tenancy.sharing_changed("MODIFIED", "s", shared) is False
    assert tenancy.sharing_changed(None, "s2", shared) is False  # a second
    assert tenancy.sharing_changed("DELETED", "s", shared) is False
    assert tenancy.sharing_changed("MODIFIED", "s2", whole) is True  # the last one stops


def test_a_malformed_gpu_quantity_counts_as_none() -> None:
    assert offer_of({GPU: "lots", "nvidia.com/mig-1g.10gb": "x"}, {}) is None
    assert mig_profile("nvidia.com/mig-weird") is None


def test_foreign_pods_take_their_slices_or_gpus_off_the_inventory() -> None:
    nodes = [k8s_node("mig", {"nvidia.com/mig-1g.10gb": "7"}),
             k8s_node("hami", {GPU: "80", "nvidia.com/gpumem": "655360"},
                      **{"nvidia.com/gpu.count": "8"}),
             k8s_node("whole", {GPU: "8"})]
    pods = [foreign_pod("mig", **{"nvidia.com/mig-1g.10gb": "2", "nvidia.com/mig-3g.40gb": "1"}),
            # A share of a shared GPU: which GPU, only its plugin knows; one whole is kept.
            foreign_pod("hami", **{GPU: "1", "nvidia.com/gpumem": "4096"}),
            foreign_pod("whole", **{GPU: "3"})]
    counts = {n.name: (n.gpu_model, n.gpu_count) for n in nodes_of(nodes, pods)}
    assert counts == {"mig": (SLICE, 5), "hami": (PRODUCT, 7), "whole": (PRODUCT, 5)}


def job(gpu: dict[str, Any], count: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": "team-a", "uid": "u-1",
                     "resourceVersion": "7", "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"tenant": "team-a", "podSets": [
            {"count": count, "resources": {"cpu": "1", "memory": "1Gi", "gpu": gpu}}]},
    }


def container_of(obj: dict[str, Any], gpus: tuple[int, ...]) -> tuple[dict[str, Any], ...]:
    row = row_of(obj)
    spec = TrainingJob.model_validate(row.manifest).spec
    pod = PodRecord(index=0, node="n", gpus=gpus, uid="0123456789abcdef", started_at=1.0)
    body = worker_job(JobObject(obj), row, pod, spec, 30)["spec"]["template"]
    direct = pod_manifest(JobObject(obj), row, pod, spec, 30)
    assert body["spec"] == direct["spec"], "the worker Job's template is the pod"
    container = body["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    return container["resources"], body["metadata"]["annotations"], env


def test_a_fractional_pod_asks_a_sharing_plugin_for_one_share() -> None:
    resources, annotations, env = container_of(
        job({"count": 1, "fraction": 0.25, "memory": "10Gi"}), (3,))
    shares = {GPU: "1", "nvidia.com/gpucores": "25", "nvidia.com/gpumem": "10240"}
    assert resources["limits"] == shares
    assert resources["requests"] == {"cpu": "1000m", "memory": "1024Mi", **shares}
    assert annotations["shoal.dev/gpu-index"] == "3"
    assert annotations["shoal.dev/gpu-fraction"] == "0.25"
    assert annotations["shoal.dev/gpu-memory"] == "10240"
    assert env["SHOAL_GPU_FRACTION"] == "0.25"
    assert "CUDA_VISIBLE_DEVICES" not in env, "the device plugin picks the devices"


def test_a_share_without_memory_asks_only_for_cores() -> None:
    resources, annotations, _ = container_of(job({"count": 1, "fraction": 0.5}), (0,))
    assert resources["limits"] == {GPU: "1", "nvidia.com/gpucores": "50"}
    assert "shoal.dev/gpu-memory" not in annotations


def test_a_pod_of_mig_slices_asks_for_its_profile() -> None:
    resources, annotations, env = container_of(job({"count": 2, "models": [SLICE]}), (1, 4))
    assert resources["limits"] == {"nvidia.com/mig-1g.10gb": "2"}
    assert annotations["shoal.dev/gpu-index"] == "1,4"
    assert "SHOAL_GPU_FRACTION" not in env


def test_whole_gpus_stay_plain_gpus() -> None:
    resources, annotations, _ = container_of(job({"count": 2}), (0, 1))
    assert resources["limits"] == {GPU: "2"}
    assert "shoal.dev/gpu-fraction" not in annotations


@pytest.mark.parametrize(("models", "resource"), [
    ([SLICE, mig_model("NVIDIA-H100-80GB-HBM3", "1g.10gb")], "nvidia.com/mig-1g.10gb"),
    ([SLICE, mig_model(PRODUCT, "3g.40gb")], GPU),   # two profiles: no one resource
    ([SLICE, PRODUCT], GPU),                          # slices or whole GPUs
    ([], GPU),
])
def test_a_request_asks_for_a_mig_profile_only_when_every_model_is_that_profile(
        models: list[str], resource: str) -> None:
    gpus = pod_gpus(GpuRequest(count=1, models=models), (0,))
    assert gpus.limits == {resource: "1"}


def test_a_model_names_the_resource_that_counts_it() -> None:
    assert resource_of_model(SLICE) == "nvidia.com/mig-1g.10gb"
    assert resource_of_model(PRODUCT) == GPU
    assert resource_of_model("A100-MIG-weird") == GPU
