"""The "same decisions" scenario on a real API server, against the simulator's run.

The scenario of ``tests/control/test_same_decisions.py`` (two A100 nodes, one
H100 node, one CPU node; three tenants in a cohort; a two-pod gang, a
fractional-GPU job and a reclaim with a grace period) runs here on the
Kubernetes runtime:

* the pools become Node objects of the same shapes, in the same order, named
  ``fake-node-<pool node>`` so that the fake kubelet runs their pods; the
  session's own fake nodes are cordoned meanwhile;
* the tenants are Tenant objects, the jobs TrainingJobs in their tenants'
  namespaces, created at the scenario's times;
* ``KubeControl`` runs on a manual clock, its passes called by the test (no
  loop thread): time stands still while the API server and the fake kubelet
  catch up, so only the scenario decides what happens when.  A job's work
  ends when the test marks its pods Succeeded (pods run until then); a
  preempted pod is deleted by Shoal and at once by the fake kubelet.

What the runtime recorded (its Kubernetes Events) must equal the simulator's
decisions: the same jobs admitted at the same times on the same nodes and GPU
indices, the same victims preempted, the same work lost.  The Pods must be
bound where the admissions say, and the victim must name its preemptor.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from shoal.domain.nodes import HOSTNAME, NodePool, expand_pool
from shoal.domain.nodes import Node as PoolNode
from shoal.testing import FakeClock
from tests.control.test_same_decisions import (
    CLUSTER,
    GRACE,
    JOBS,
    POLICY,
    SEED,
    decisions,
    manifest,
    scenario,
    simulated,
)
from tests.kube.claims import release_claims
from tests.kube.conftest import ControlPlane
from tests.kube.waiting import State, wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl

pytestmark = pytest.mark.kube

PREFIX = "fake-node-"
"""The fake kubelet runs the pods of every node whose name starts with this."""
T0 = 1_700_000_000.0
"""The control clock at the scenario's time 0: whole seconds, as Events keep them."""
WAIT_S = 120.0
"""For the API server and the fake kubelet to catch up (2 busy cores)."""
TENANTS = sorted({tenant for _, tenant, *_ in JOBS})
NAMESPACE = {name: tenant for name, tenant, *_ in JOBS}
HOLDING = ("Running", "Preempting", "Stopping")


def merge_patch(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = http.patch(path, content=json.dumps(body),
                          headers={"Content-Type": "application/merge-patch+json"})
    assert response.status_code == 200, f"PATCH {path}: {response.text}"


# -- the cluster ----------------------------------------------------------------------------


def pool_nodes(done_dir: Path) -> list[PoolNode]:
    """The scenario's nodes, in the embedded inventory's order (pools by name)."""
    pools = sorted((m for m in scenario(done_dir) if isinstance(m, NodePool)),
                   key=lambda m: m.metadata.name)
    return [n for m in pools for n in expand_pool(m.metadata.name, m.spec)]


def make_node(kube: Kube, http: httpx.Client, node: PoolNode) -> str:
    """A Node object of ``node``'s shape, Ready and untainted, as a GPU node reports itself."""
    from shoal.runtime.kubernetes.convert import GPU, GPU_MODEL_LABEL

    name = PREFIX + node.name
    labels = {**node.labels, HOSTNAME: name, "shoal.dev/pool": node.pool}
    allocatable = {"cpu": f"{node.cpu}m", "memory": f"{node.memory}Mi", "pods": "110"}
    if node.gpu_count:
        labels[GPU_MODEL_LABEL] = node.gpu_model
        allocatable[GPU] = str(node.gpu_count)
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    merge_patch(http, f"/api/v1/nodes/{name}/status", {"status": {
        "capacity": allocatable, "allocatable": allocatable,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
    # Admission taints a new node not-ready; the node lifecycle controller (off
    # here) would lift it.  The pool's own taints take its place.
    taints = [t.model_dump(mode="json") for t in node.taints]
    merge_patch(http, f"/api/v1/nodes/{name}", {"spec": {"taints": taints or None}})
    return name


@pytest.fixture
def http(control_plane: ControlPlane) -> Iterator[httpx.Client]:
    with control_plane.http() as client:
        yield client


@pytest.fixture
def cluster(crds: Kube, http: httpx.Client, tmp_path: Path) -> Iterator[list[PoolNode]]:
    """The scenario's nodes on the server, the session's other nodes cordoned meanwhile."""
    nodes = pool_nodes(tmp_path)
    others = {n["metadata"]["name"]: n["spec"].get("unschedulable") for n in crds.list("Node")}
    made: list[str] = []
    try:
        for name in others:
            merge_patch(http, f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True}})
        made.extend(make_node(crds, http, node) for node in nodes)
        yield nodes
    finally:
        for name in made:
            crds.delete("Node", name)
        for name, was in others.items():
            merge_patch(http, f"/api/v1/nodes/{name}", {"spec": {"unschedulable": was}})


@pytest.fixture
def tenants(crds: Kube) -> Iterator[None]:
    """The scenario's tenants and their namespaces; everything in them deleted afterwards."""
    for doc in yaml.safe_load_all(CLUSTER):
        if doc["kind"] == "Tenant":  # as written for the embedded runtime
            name = doc["metadata"]["name"]
            crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            crds.create(doc)
    try:
        yield
    finally:
        for name in TENANTS:
            for job in crds.list("TrainingJob", name):
                crds.replace({**job, "metadata": {**job["metadata"], "finalizers": []}})
                crds.delete("TrainingJob", job["metadata"]["name"], name)
            crds.delete("Tenant", name)
            release_claims(crds, name)  # the jobs' checkpoint claims: no pvc-protection here
            crds.delete("Namespace", name)
        wait_until(crds, "Namespace", lambda found: not set(TENANTS) & set(found),
                   what=f"namespaces {TENANTS} gone", timeout_s=WAIT_S)


@pytest.fixture
def control(crds: Kube, cluster: list[PoolNode], tenants: None
            ) -> tuple[KubeControl, FakeClock]:
    from shoal.control.controller import ControlConfig
    from shoal.control.machine import RetryPolicy
    from shoal.runtime.kubernetes.loop import KubeControl

    clock = FakeClock(T0)
    config = ControlConfig(policy=POLICY, seed=SEED, retry=RetryPolicy(grace_seconds=GRACE))
    return KubeControl(crds, config, grace_seconds=GRACE, clock=clock), clock


# -- driving the scenario ---------------------------------------------------------------------


def submit(kube: Kube, name: str, done_dir: Path) -> None:
    """Create the TrainingJob, submitted now by the control clock.

    The embedded test hands its store each job's submit time; here the store
    reads it from ``status.control.submitTime`` when set (else from the
    whole-second, wall-clock ``creationTimestamp``), so the test sets it, as
    a status write between submission and the first pass.  Pods need no
    command: the fake kubelet runs them until the test ends them.
    """
    _, tenant, priority, pods, resources, at, _ = next(j for j in JOBS if j[0] == name)
    body = yaml.safe_load(manifest(name, tenant, priority, pods, resources, done_dir))
    body["metadata"]["namespace"] = tenant
    del body["spec"]["command"]
    created = kube.create(body)
    kube.replace_status({**created, "status": {"control": {"submitTime": T0 + at}}})


def job_pods(kube: Kube, name: str) -> list[dict[str, Any]]:
    job = kube.get("TrainingJob", name, NAMESPACE[name])
    assert job is not None
    entries: list[dict[str, Any]] = (job.get("status") or {}).get("pods") or []
    return entries


def finish(kube: Kube, http: httpx.Client, name: str) -> None:
    """The job's work is done: its pods exit 0 (once the fake kubelet has them Running)."""
    namespace = NAMESPACE[name]
    names = {f"{namespace}/{p['name']}" for p in job_pods(kube, name)}
    assert names, f"{name} has no pods to finish"
    wait_until(kube, "Pod", lambda pods: all(
        (pods.get(n, {}).get("status") or {}).get("phase") == "Running" for n in names),
        namespace=namespace, what=f"the pods of {name} Running", timeout_s=WAIT_S)
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    ended = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                            "finishedAt": now}}
    for pod in names:
        short = pod.split("/", 1)[1]
        merge_patch(http, f"/api/v1/namespaces/{namespace}/pods/{short}/status", {"status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": False,
                                   "restartCount": 0, "state": ended}]}})


def settle(control: KubeControl, finishing: set[str]) -> None:
    """Pass until nothing changes and no pod Shoal stopped or we ended is still there.

    The clock stands still meanwhile: the fake kubelet may take as long as
    it likes to delete a preempted pod without changing any decision.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        control.settle()
        rows = control.store.list_jobs()
        exiting = {r.name.rpartition("/")[2]: r for r in rows if r.phase in HOLDING and (
            r.phase != "Running" or r.name.rpartition("/")[2] in finishing)}
        if not exiting:
            return
        assert time.monotonic() < deadline, f"pods of {sorted(exiting)} did not stop"
        alive = {f"{NAMESPACE[n]}/{p.handle}" for n, r in exiting.items()
                 for p in r.pods if not p.done and p.handle}

        def gone(pods: State, alive: set[str] = alive) -> bool:
            return not any(
                n in pods and (pods[n].get("status") or {}).get("phase")
                not in ("Succeeded", "Failed") for n in alive)

        wait_until(control.kube, "Pod", gone, what=f"pods of {sorted(exiting)} gone",
                   timeout_s=max(1.0, deadline - time.monotonic()))


_FIELD = re.compile(r", (?=[a-z_]+=)")


def event_data(message: str) -> dict[str, Any]:
    """An Event's message (``k=v, k=v``, as the store writes it) as the event's data."""
    data: dict[str, Any] = {}
    for part in _FIELD.split(message) if "=" in message else ():
        field, _, text = part.partition("=")
        try:
            data[field] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            data[field] = text
    return data


def new_events(kube: Kube, seen: set[str]) -> list[dict[str, Any]]:
    """Shoal's Events on the scenario's TrainingJobs not read before, in the order written."""
    found = [e for ns in TENANTS for e in kube.list("Event", ns)
             if (e.get("source") or {}).get("component") == "shoal"
             and e["metadata"]["uid"] not in seen]
    found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    out = []
    for e in found:
        seen.add(e["metadata"]["uid"])
        kind = e["reason"].lower()
        assert kind != "error", f"the control loop failed on {e['involvedObject']}: {e['message']}"
        stamp = datetime.fromisoformat(e["firstTimestamp"].replace("Z", "+00:00")).timestamp()
        out.append({"kind": kind, "time": stamp - T0, "job": e["involvedObject"]["name"],
                    **event_data(e["message"])})
    return out


def check_bound(kube: Kube, name: str, placement: list[list[Any]]) -> None:
    """The job's pods exist, Shoal's, bound to the nodes and GPUs its admission chose."""
    for entry in job_pods(kube, name):
        pod = kube.get("Pod", entry["name"], NAMESPACE[name])
        assert pod is not None, f"pod {entry['name']} of {name} was not created"
        node, gpus = placement[entry["index"]]
        assert pod["spec"]["schedulerName"] == "shoal"
        assert pod["spec"].get("nodeName") == node, (name, entry)
        annotations = pod["metadata"].get("annotations") or {}
        assert annotations.get("shoal.dev/gpu-index", "") == ",".join(map(str, gpus))


def on_kube(control: KubeControl, clock: FakeClock, http: httpx.Client,
            done_dir: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Play the scenario; returns the events recorded and each (victim, preemptor)."""
    kube = control.kube
    arrivals = sorted(((at, name) for name, *_, at, _ in JOBS), reverse=True)
    work_left = {name: work for name, *_, work in JOBS}
    finish_at: dict[str, float] = {}
    events: list[dict[str, Any]] = []
    victims: list[tuple[str, str]] = []
    seen: set[str] = set()
    while arrivals or finish_at:
        now = min(([arrivals[-1][0]] if arrivals else []) + list(finish_at.values()))
        clock.set(T0 + now)
        while arrivals and arrivals[-1][0] == now:
            submit(kube, arrivals.pop()[1], done_dir)
        finishing = {name for name, at in finish_at.items() if at == now}
        for name in finishing:
            finish(kube, http, name)
            del finish_at[name]
        settle(control, finishing)
        # Follow the attempts as the scenario would: admitted -> when its work is done.
        for event in new_events(kube, seen):
            name = event["job"]
            if event["kind"] == "admitted":
                check_bound(kube, name, event["placement"])
                finish_at[name] = event["time"] + work_left[name]
            elif event["kind"] == "preempted":
                job = kube.get("TrainingJob", name, NAMESPACE[name]) or {}
                preemptor = job["status"]["control"]["preemptor"]
                victims.append((name, preemptor.rpartition("/")[2]))
            elif event["kind"] == "requeued":
                work_left[name] -= event["kept_seconds"]
                finish_at.pop(name, None)
            events.append(event)
    return events, victims


def without_prefix(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with the pools' node names (``fake-node-a100-000`` -> ``a100-000``)."""
    return [{**e, "placement": [[node.removeprefix(PREFIX), gpus]
                                for node, gpus in e.get("placement", [])]} for e in events]


# -- the test -----------------------------------------------------------------------------------


def test_the_kubernetes_runtime_takes_the_simulated_decisions(
        control: tuple[KubeControl, FakeClock], cluster: list[PoolNode],
        http: httpx.Client, tmp_path: Path) -> None:
    kube_control, clock = control
    # The same shapes in the same order: ClusterState indexes nodes as listed.
    listed = kube_control.controller.inventory.nodes().nodes
    assert [n.name for n in listed] == [PREFIX + n.name for n in cluster]
    assert [n.model_dump(exclude={"name", "labels"}) for n in listed] == [
        n.model_dump(exclude={"name", "labels"}) for n in cluster]
    assert not kube_control.store.list_jobs(), "TrainingJobs of another test are left over"

    expected = simulated(tmp_path)
    events, victims = on_kube(kube_control, clock, http, tmp_path)
    assert decisions(without_prefix(events)) == expected
    assert victims == [("a-gang", "b-reclaim")]
    jobs = {j["metadata"]["name"]: j["status"]
            for ns in TENANTS for j in kube_control.kube.list("TrainingJob", ns)}
    assert {name: s["phase"] for name, s in jobs.items()} == dict.fromkeys(NAMESPACE, "Succeeded")
    assert jobs["a-gang"]["preemptions"] == 1
    assert jobs["a-gang"]["control"]["lostSeconds"] == 2.0
