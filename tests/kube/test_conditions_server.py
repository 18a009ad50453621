"""Conditions that say what is wrong, on a real API server, instead of a crash loop.

A TrainingJob of a tenant that has no Tenant object waits, Pending, with the
condition ``Admitted=False`` reason ``TenantNotFound`` (written once), and
runs once the Tenant exists; one outside its tenant's namespace says
``TenantMismatch``.  A Tenant whose quota exceeds what the cluster's nodes
have is reconciled all the same, with ``QuotaFits=False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.kube.loops import running
from tests.kube.test_control_server import label_gpu_model, phase, tenant, training_job
from tests.kube.waiting import State, wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl

pytestmark = pytest.mark.kube

HOME, ORPHAN = "cond-home", "cond-orphan"


@pytest.fixture()
def loop(crds: Kube) -> Iterator[KubeControl]:
    """The loop in a thread; namespace ``HOME`` has its Tenant, ``ORPHAN`` has none (yet)."""
    from shoal.runtime.kubernetes.loop import KubeControl

    kube = crds
    label_gpu_model(kube)
    for name in (HOME, ORPHAN):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kube.create(tenant(HOME, 16))
    control = KubeControl(kube, grace_seconds=1)
    with running(control, join_s=60):
        yield control
    for name in (HOME, ORPHAN):
        for job in kube.list("TrainingJob", name):
            kube.replace({**job, "metadata": {**job["metadata"], "finalizers": []}})
            kube.delete("TrainingJob", job["metadata"]["name"], name)
        kube.delete("Tenant", name)
        kube.delete("Namespace", name)
    wait_until(kube, "Namespace", lambda found: not {HOME, ORPHAN} & set(found),
               what="the test's namespaces gone", timeout_s=120)


def admitted(job: dict[str, Any]) -> dict[str, Any]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Admitted"), {})


def test_a_job_of_a_missing_tenant_waits_with_the_reason_until_the_tenant_exists(
        loop: KubeControl) -> None:
    kube = loop.kube
    kube.create(training_job("early", ORPHAN, pods=1, gpus=1))
    state = wait_until(kube, "TrainingJob", lambda jobs: admitted(
        jobs.get(f"{ORPHAN}/early", {})).get("reason") == "TenantNotFound",
        namespace=ORPHAN, what="early says its tenant is missing")
    early = state[f"{ORPHAN}/early"]
    assert early["status"]["phase"] == "Pending"
    assert admitted(early)["status"] == "False"
    assert f"no Tenant named '{ORPHAN}'" in admitted(early)["message"]
    # Said once, not in a loop: passes for another job's admission leave it as it is.
    kube.create(training_job("other", HOME, pods=1, gpus=1))
    phase(kube, "other", HOME, "Running")
    again = kube.get("TrainingJob", "early", ORPHAN)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == early["metadata"]["resourceVersion"]
    # Once the Tenant exists, the job is admitted like any other.
    kube.create(tenant(ORPHAN, 8))
    running = phase(kube, "early", ORPHAN, "Running")
    assert admitted(running)["reason"] == "Admitted"


def test_a_job_outside_its_tenants_namespace_says_so(loop: KubeControl) -> None:
    kube = loop.kube
    stray = training_job("stray", HOME, pods=1, gpus=1)
    stray["spec"]["tenant"] = ORPHAN
    kube.create(stray)

    def told(jobs: State) -> bool:
        return admitted(jobs.get(f"{HOME}/stray", {})).get("reason") == "TenantMismatch"

    state = wait_until(kube, "TrainingJob", told, namespace=HOME, what="stray says why")
    condition = admitted(state[f"{HOME}/stray"])
    assert condition["status"] == "False"
    assert f"spec.tenant is '{ORPHAN}'" in condition["message"]
    assert state[f"{HOME}/stray"]["status"]["phase"] == "Pending"


def test_a_tenant_whose_quota_exceeds_the_cluster_is_accepted_with_a_warning(
        crds: Kube) -> None:
    from shoal.runtime.kubernetes.tenant_reconciler import reconcile_tenant

    label_gpu_model(crds)
    greedy, modest = "cond-greedy", "cond-modest"
    crds.create(tenant(greedy, 1000))
    crds.create(tenant(modest, 1))
    try:
        outcome = reconcile_tenant(crds, greedy)
        assert outcome.ready is not None and outcome.ready.status == "True", "accepted"
        found = crds.get("Tenant", greedy)
        assert found is not None
        conditions = {c["type"]: c for c in found["status"]["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        fits = conditions["QuotaFits"]
        assert (fits["status"], fits["reason"]) == ("False", "QuotaExceedsCluster")
        assert "1000 A100 GPUs asked" in fits["message"]
        assert crds.get("Namespace", greedy) is not None, "its objects are made all the same"
        reconcile_tenant(crds, modest)
        found = crds.get("Tenant", modest)
        assert found is not None
        conditions = {c["type"]: c for c in found["status"]["conditions"]}
        assert (conditions["QuotaFits"]["status"], conditions["QuotaFits"]["reason"]) == (
            "True", "QuotaFits")
        # A second reconcile that finds the same writes nothing.
        version = found["metadata"]["resourceVersion"]
        reconcile_tenant(crds, modest)
        again = crds.get("Tenant", modest)
        assert again is not None and again["metadata"]["resourceVersion"] == version
    finally:
        for name in (greedy, modest):
            crds.delete("Tenant", name)
            reconcile_tenant(crds, name)  # gone: its namespace is deleted
        wait_until(crds, "Namespace", lambda found: not {greedy, modest} & set(found),
                   what="the tenants' namespaces gone", timeout_s=120)
