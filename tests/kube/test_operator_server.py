"""``shoal operator`` as a process against the real API server: tenancy kept in place.

The operator runs as a subprocess with the plane's kubeconfig; the test
acts like a user (creates a Tenant, deletes a NetworkPolicy by hand) and
waits on watches, with deadlines, for the cluster to show the result.  The
process is stopped with SIGINT, as Ctrl-C would, and must exit cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.kubernetes.client import Kube
from tests.kube.conftest import ControlPlane, free_port
from tests.kube.operator_process import running_operator
from tests.kube.waiting import State, wait_gone, wait_until

pytestmark = pytest.mark.kube



@pytest.fixture
def operator(control_plane: ControlPlane, crds: Kube, tmp_path: Path) -> Iterator[Path]:
    """A running ``shoal operator``; yields its log, which a failure shows."""
    log = tmp_path / "operator.log"
    with running_operator(control_plane.kubeconfig, log, "--verbose"):
        yield log


def ready(name: str) -> object:
    def check(tenants: State) -> bool:
        status = (tenants.get(name, {}).get("status") or {})
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in status.get("conditions") or [])
    return check


def test_the_operator_makes_and_repairs_a_tenants_objects(crds: Kube, operator: Path) -> None:
    crds.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                 "metadata": {"name": "operated"},
                 "spec": {"quota": {"cpu": {"nominal": 4}, "gpus": {"a100": {"nominal": 1}}}}})
    try:
        wait_until(crds, "Tenant", ready("operated"), fields="metadata.name=operated",  # type: ignore[arg-type]
                   what=f"Tenant operated Ready (log: {operator})")
        policies = wait_until(crds, "NetworkPolicy", lambda p: len(p) == 7, namespace="operated",
                              what="the tenant's seven network policies")
        deny = policies["operated/shoal-default-deny"]["metadata"]["uid"]
        assert crds.delete("NetworkPolicy", "shoal-default-deny", "operated")
        wait_until(crds, "NetworkPolicy", lambda p: "operated/shoal-default-deny" in p
                   and p["operated/shoal-default-deny"]["metadata"]["uid"] != deny,
                   namespace="operated", what=f"the deleted policy back (log: {operator})")
    finally:
        crds.delete("Tenant", "operated")
    wait_gone(crds, "Namespace", "operated")


def test_the_operator_drops_the_gpu_count_while_a_node_shares_its_gpus(
        control_plane: ControlPlane, crds: Kube, operator: Path) -> None:
    """The first Node that shares its GPUs reconciles every tenant: the ResourceQuota
    loses ``requests.nvidia.com/gpu`` (a count of shares there); it is back when the
    node goes (docs/kubernetes.md, "No GPU count on a cluster with shared GPUs")."""
    from tests.kube.test_gpu_sharing_server import make_node

    name, node = "sharing", "fake-node-op-shared"
    counted = "requests.nvidia.com/gpu"

    def gpu_count(present: bool) -> object:
        def check(quotas: State) -> bool:
            hard = (quotas.get(f"{name}/shoal-quota", {}).get("spec") or {}).get("hard") or {}
            return bool(hard) and (counted in hard) == present
        return check

    crds.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
                 "spec": {"quota": {"cpu": {"nominal": 4}, "gpus": {"a100": {"nominal": 1}}}}})
    try:
        wait_until(crds, "ResourceQuota", gpu_count(True), namespace=name,
                   what=f"a quota counting GPUs (log: {operator})")
        try:
            with control_plane.http() as http:
                make_node(crds, http, node, {"nvidia.com/gpu.count": "8"},
                          {"nvidia.com/gpu": "80", "nvidia.com/gpucores": "800"})
            wait_until(crds, "ResourceQuota", gpu_count(False), namespace=name,
                       what=f"the quota without a GPU count (log: {operator})")
        finally:
            crds.delete("Node", node)
        wait_until(crds, "ResourceQuota", gpu_count(True), namespace=name,
                   what=f"the GPU count back (log: {operator})")
    finally:
        crds.delete("Tenant", name)
    wait_gone(crds, "Namespace", name)


def test_the_operator_admits_binds_and_finishes_a_training_job(crds: Kube,
                                                                operator: Path) -> None:
    from tests.kube.test_control_server import label_gpu_model, tenant, training_job

    label_gpu_model(crds)
    crds.create(tenant("runs", 8))
    try:
        wait_until(crds, "Tenant", ready("runs"), fields="metadata.name=runs",  # type: ignore[arg-type]
                   what=f"Tenant runs Ready (log: {operator})")
        crds.create(training_job("short", "runs", pods=1, gpus=2, run_seconds=1))
        done = wait_until(
            crds, "TrainingJob",
            lambda jobs: (jobs.get("runs/short", {}).get("status") or {}).get("phase")
            == "Succeeded",
            namespace="runs", what=f"runs/short Succeeded (log: {operator})",
        )
        pod = done["runs/short"]["status"]["pods"][0]
        assert pod["state"] == "succeeded" and len(pod["gpus"]) == 2
        # Its record lets go once it ends: deleting it leaves nothing behind.
        assert crds.delete("TrainingJob", "short", "runs")
        wait_gone(crds, "TrainingJob", "short", "runs")
    finally:
        crds.delete("Tenant", "runs")
    wait_gone(crds, "Namespace", "runs")


def test_the_operator_answers_its_liveness_probe_while_it_operates(
    control_plane: ControlPlane, crds: Kube, tmp_path: Path,
) -> None:
    log, port = tmp_path / "operator.log", free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    with running_operator(control_plane.kubeconfig, log, "--health-port", str(port)):
        crds.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                     "metadata": {"name": "probed"}, "spec": {"quota": {"cpu": {"nominal": 1}}}})
        try:
            # Ready: kopf's handlers, and so the control loop and the service
            # reconciler beside them, run; the probe watches those threads.
            wait_until(crds, "Tenant", ready("probed"), fields="metadata.name=probed",  # type: ignore[arg-type]
                       what=f"Tenant probed Ready (log: {log})")
            answer = httpx.get(url, timeout=30)
            assert (answer.status_code, answer.text) == (200, "ok\n"), log.read_text()[-4000:]
        finally:
            crds.delete("Tenant", "probed")
    with pytest.raises(httpx.ConnectError):  # gone with the process
        httpx.get(url, timeout=30)
    wait_gone(crds, "Namespace", "probed")
