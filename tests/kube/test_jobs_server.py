"""TrainingJobs as batch/v1 Jobs on a real API server: the Job controller makes, Shoal binds.

Each pod of an attempt is a Job of one pod (the real Job controller of
kube-controller-manager creates it); Shoal binds it to the node its placement
chose.  The job's headless Service gives its workers DNS names, and
``MASTER_ADDR`` names the rank-0 pod's.  A pod deleted by hand is lost: the
gang is stopped and requeued (condition ``Requeued``, reason ``PodLost``) and
the Job controller's replacement pod is never bound.  A gang whose pods
cannot all be made and bound within the bind timeout is requeued whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from shoal.errors import AlreadyExistsError
from tests.kube.claims import release_claims
from tests.kube.loops import running
from tests.kube.test_control_server import label_gpu_model, phase, tenant, training_job
from tests.kube.waiting import State, wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl

pytestmark = pytest.mark.kube

NS = "jobs-a"


@pytest.fixture()
def loop(crds: Kube) -> Iterator[KubeControl]:
    """The control loop in a thread, one tenant (16 A100s) and its namespace."""
    from shoal.runtime.kubernetes.loop import KubeControl

    kube = crds
    label_gpu_model(kube)
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    kube.create(tenant(NS, 16))
    control = KubeControl(kube, grace_seconds=1)
    control.pods.bind_timeout_s = 5.0  # short: the failures it meets here are certain
    control.pods.create_timeout_s = 5.0
    with running(control, join_s=60):
        yield control
    for job in kube.list("TrainingJob", NS):
        kube.replace({**job, "metadata": {**job["metadata"], "finalizers": []}})
        kube.delete("TrainingJob", job["metadata"]["name"], NS)
    kube.delete("Tenant", NS)
    release_claims(kube, NS)
    kube.delete("Namespace", NS)
    wait_until(kube, "Namespace", lambda found: NS not in found,
               what=f"namespace {NS} gone", timeout_s=120)


def status(kube: Kube, name: str) -> dict[str, Any]:
    found = kube.get("TrainingJob", name, NS)
    assert found is not None
    got: dict[str, Any] = found.get("status") or {}
    return got


def condition(job_status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in job_status.get("conditions") or [] if c["type"] == kind), None)


def bound_pods(kube: Kube, name: str, count: int, what: str) -> list[dict[str, Any]]:
    state = wait_until(kube, "Pod", lambda pods: sum(
        1 for p in pods.values()
        if (p["metadata"].get("labels") or {}).get("shoal.dev/job") == name
        and p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") == "Running") == count,
        namespace=NS, what=what)
    return [p for p in state.values()
            if (p["metadata"].get("labels") or {}).get("shoal.dev/job") == name
            and p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")]


def test_a_gang_runs_as_jobs_whose_pods_shoal_binds_and_finds_its_master(
        loop: KubeControl) -> None:
    kube = loop.kube
    kube.create(training_job("ddp", NS, pods=2, gpus=8))
    running = phase(kube, "ddp", NS, "Running")
    admitted = condition(running["status"], "Admitted")
    assert admitted is not None and (admitted["status"], admitted["reason"]) == ("True",
                                                                                 "Admitted")
    pods = bound_pods(kube, "ddp", 2, "the two pods of ddp bound and Running")
    jobs = {j["metadata"]["name"]: j for j in kube.list("Job", NS)
            if (j["metadata"].get("labels") or {}).get("shoal.dev/job") == "ddp"}
    assert len(jobs) == 2
    for job in jobs.values():
        assert job["spec"]["backoffLimit"] == 0, "retries are the control core's"
        assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    env_of: dict[str, dict[str, str]] = {}
    for pod in pods:
        # Made by the Job controller (owned by one of ddp's Jobs), scheduled by Shoal only.
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"] in jobs) == ("Job", True)
        assert pod["spec"]["schedulerName"] == "shoal"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        env_of[env["RANK"]] = env
        assert pod["spec"]["hostname"] == f"worker-{env['RANK']}"
        assert pod["spec"]["subdomain"] == "tj-ddp"
    assert sorted(env_of) == ["0", "1"]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    for env in env_of.values():
        assert env["WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == f"worker-0.tj-ddp.{NS}.svc"
        assert env["MASTER_PORT"] == "29500"
    service = kube.get("Service", "tj-ddp", NS)
    assert service is not None and service["spec"]["clusterIP"] == "None"
    # The endpoints controller publishes both workers under their hostnames: the
    # names cluster DNS serves (worker-0.tj-ddp.<namespace>.svc is the master).
    endpoints = wait_until(kube, "Endpoints", lambda found: sorted(
        a.get("hostname", "") for s in (found.get(f"{NS}/tj-ddp") or {}).get("subsets") or []
        for a in [*(s.get("addresses") or []), *(s.get("notReadyAddresses") or [])]
    ) == ["worker-0", "worker-1"], namespace=NS, what="tj-ddp's endpoints name both workers")
    assert f"{NS}/tj-ddp" in endpoints


def test_a_pod_deleted_by_hand_is_lost_and_the_gang_is_requeued(loop: KubeControl) -> None:
    kube = loop.kube
    kube.create(training_job("hand", NS, pods=2, gpus=4))
    phase(kube, "hand", NS, "Running")
    first = bound_pods(kube, "hand", 2, "the two pods of hand Running")
    victim = next(p for p in first if p["metadata"]["annotations"]["shoal.dev/rank"] == "1")
    victim_name = victim["metadata"]["name"]
    first_jobs = {p["metadata"]["ownerReferences"][0]["name"] for p in first}
    kube.delete("Pod", victim_name, NS, grace_seconds=0)

    def again(jobs: State) -> bool:
        got = jobs.get(f"{NS}/hand", {}).get("status") or {}
        return got.get("attempts") == 2 and got.get("phase") == "Running"

    wait_until(kube, "TrainingJob", again, namespace=NS, what="hand running its second attempt")
    got = status(kube, "hand")
    assert got["preemptions"] == 1 and got.get("failures", 0) == 0, "lost: no retry used"
    requeued = condition(got, "Requeued")
    assert requeued is not None
    assert (requeued["status"], requeued["reason"]) == ("True", "PodLost")
    assert victim_name in requeued["message"]
    second = bound_pods(kube, "hand", 2, "the two pods of the second attempt Running")
    assert not {p["metadata"]["ownerReferences"][0]["name"] for p in second} & first_jobs
    # The first attempt's Jobs are deleted with their pods, the replacement the
    # Job controller made for the deleted one included: nothing of it is bound again.
    wait_until(kube, "Job", lambda jobs: not {k.split("/")[1] for k in jobs} & first_jobs,
               namespace=NS, what="the first attempt's Jobs gone")
    wait_until(kube, "Pod", lambda pods: not any(
        p["metadata"]["ownerReferences"][0]["name"] in first_jobs for p in pods.values()),
        namespace=NS, what="the first attempt's pods gone")


def test_a_gang_not_bound_in_time_is_requeued_whole_and_runs_once_it_can(
        loop: KubeControl) -> None:
    kube = loop.kube
    # The namespace takes one pod: the Job controller cannot make the gang's second.
    kube.create({"apiVersion": "v1", "kind": "ResourceQuota",
                 "metadata": {"name": "one-pod", "namespace": NS},
                 "spec": {"hard": {"pods": "1"}}})
    wait_until(kube, "ResourceQuota", lambda q: bool(
        (q.get(f"{NS}/one-pod", {}).get("status") or {}).get("hard")),
        namespace=NS, what="the quota counted")
    kube.create(training_job("wide", NS, pods=2, gpus=8))

    def requeued(jobs: State) -> bool:
        got = jobs.get(f"{NS}/wide", {}).get("status") or {}
        return got.get("phase") == "Pending" and (
            condition(got, "Requeued") or {}).get("reason") == "BindTimeout"

    got = wait_until(kube, "TrainingJob", requeued, namespace=NS,
                     what="wide requeued for not being bound", timeout_s=120)[f"{NS}/wide"]
    got = got["status"]
    message = condition(got, "Requeued")["message"]  # type: ignore[index]
    assert "not bound within 5 s" in message
    assert "exceeded quota" in message, message  # what the Job controller said
    assert got.get("failures", 0) == 0, "a gang that could not be bound used no retry"
    # No partial hold: requeued only once the pod that was bound is seen gone,
    # and holding nothing while it waits.
    assert not got.get("pods") and not got.get("admitted") and not got.get("gpus")
    kube.delete("ResourceQuota", "one-pod", NS)
    done = phase(kube, "wide", NS, "Running")
    wait_until(kube, "TrainingJob", lambda jobs: all(
        p.get("state") == "running" and p.get("name", "").startswith("wide-")
        for p in (jobs.get(f"{NS}/wide", {}).get("status") or {}).get("pods") or [{}]),
        namespace=NS, what="wide's pods all bound", timeout_s=120)
    assert done["status"]["attempts"] >= 2
    bound_pods(kube, "wide", 2, "both pods of wide bound and Running")


@pytest.mark.parametrize(("priority", "klass", "value"), [
    (1000, "shoal-high", 1000), (250, "shoal-priority-250", 250), (37, "shoal-low", 0),
    (-5, None, 0)])
def test_pods_name_the_priority_class_of_their_jobs_priority(
        loop: KubeControl, priority: int, klass: str | None, value: int) -> None:
    """A pod names its priority's class, and the API server sets its ``spec.priority``
    from it (what a kubelet evicts by).  An integer priority has a class of its own
    only where a Tenant listed it (250 here); else the pod names the built-in class
    just below (37: ``shoal-low``), or none below 0: a tenant's choice of priority
    never makes the operator create a cluster-wide object."""
    from shoal.runtime.kubernetes.tenancy import class_object

    kube = loop.kube
    if priority == 250:  # written by the reconcile of a Tenant that lists 250
        made = class_object(250, kube.discovery.api_version)
        assert made is not None
        with contextlib.suppress(AlreadyExistsError):
            kube.create(made)
    name = f"prio-{abs(priority)}" + ("-below-zero" if priority < 0 else "")
    kube.create(training_job(name, NS, pods=1, gpus=1, priority=priority))
    (pod,) = bound_pods(kube, name, 1, f"the pod of {name} bound and Running")
    assert pod["spec"].get("priorityClassName") == klass
    assert pod["spec"].get("priority", 0) == value
    assert kube.get("PriorityClass", "shoal-priority-37") is None
    assert kube.get("PriorityClass", "shoal-priority-minus-5") is None
    if klass is not None:
        found = kube.get("PriorityClass", klass)
        assert found is not None
        assert (found["value"], found["preemptionPolicy"]) == (value, "Never")
