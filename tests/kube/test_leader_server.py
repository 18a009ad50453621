"""Leader election on a real API server: one candidate leads, a standby takes over.

Candidates (``leader.LeaderElector``) share a ``coordination.k8s.io/v1`` Lease
with short durations; waits follow the Lease on a watch, with deadlines.  The
last test runs two ``shoal operator`` processes: only the leader acts, and
when it is killed the standby takes over and runs the next job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.kube.loops import drop
from tests.kube.waiting import wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.leader import LeaderElector
    from tests.kube.conftest import ControlPlane

NAMESPACE = "default"
WAIT_S = 240.0
"""Generous: the machine may be busy (the leases themselves are short)."""


def elector(kube: Kube, who: str, name: str, lease_s: int = 5, **clocks: Any) -> LeaderElector:
    from shoal.runtime.kubernetes.leader import LeaderElector

    return LeaderElector(kube, who, name=name, namespace=NAMESPACE, lease_s=lease_s, **clocks)


def lease(kube: Kube, name: str) -> dict[str, Any]:
    found = kube.get("Lease", name, NAMESPACE)
    assert found is not None
    spec: dict[str, Any] = found.get("spec") or {}
    return spec


def wait_lease(kube: Kube, name: str, done: Any, what: str) -> dict[str, Any]:
    state = wait_until(kube, "Lease", lambda leases: f"{NAMESPACE}/{name}" in leases
                       and done(leases[f"{NAMESPACE}/{name}"].get("spec") or {}),
                       namespace=NAMESPACE, what=what, timeout_s=WAIT_S)
    spec: dict[str, Any] = state[f"{NAMESPACE}/{name}"].get("spec") or {}
    return spec


class Standby:
    """``candidate.acquire`` in a thread: ``led`` is set once it leads."""

    def __init__(self, candidate: LeaderElector) -> None:
        self.stop, self.led = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(candidate,), daemon=True)
        self.thread.start()

    def _run(self, candidate: LeaderElector) -> None:
        if candidate.acquire(self.stop):
            self.led.set()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.fixture
def lease_name(request: pytest.FixtureRequest, kube: Kube) -> Iterator[str]:
    name = f"lease-{request.node.name.removeprefix('test_')[:40].replace('_', '-')}".strip("-")
    yield name
    kube.delete("Lease", name, NAMESPACE)


def test_one_leads_while_it_renews_and_a_standby_takes_over_when_it_releases(
        kube: Kube, lease_name: str) -> None:
    # A lease of 8 s: a busy machine stalling the renewing thread for 8 s would hand
    # the Lease over, as it should, and fail this test.
    first, second = (elector(kube, who, lease_name, lease_s=8) for who in ("first", "second"))
    assert first.try_acquire() is True
    assert second.try_acquire() is False and second.holder == "first"
    renewing, lost = threading.Event(), threading.Event()
    keeper = threading.Thread(target=first.keep, args=(renewing, lost.set), daemon=True)
    keeper.start()
    standby = Standby(second)
    try:
        # Renewals spanning more than a lease duration (one every 1/7.5 of it), all by
        # the first candidate: the standby, trying all along, never took the Lease.
        renewals: set[str] = set()

        def renewed_enough(spec: dict[str, Any]) -> bool:
            assert spec.get("holderIdentity") == "first", spec
            renewals.add(str(spec.get("renewTime")))
            return len(renewals) >= 9

        wait_lease(kube, lease_name, renewed_enough, "nine renewals by the first")
        assert not standby.led.is_set() and not lost.is_set()
        renewing.set()
        keeper.join(timeout=60)
        first.release()
        assert standby.led.wait(WAIT_S), "the standby did not take the released Lease"
    finally:
        renewing.set()
        standby.end()
    spec = lease(kube, lease_name)
    assert spec["holderIdentity"] == "second"
    assert spec["leaseTransitions"] == 1
    assert second.leading and not first.leading


def test_a_dead_leaders_lease_expires_and_a_standby_takes_it(
        kube: Kube, lease_name: str) -> None:
    dead = elector(kube, "dead", lease_name, lease_s=2)
    assert dead.try_acquire() is True  # and then nothing: no renewal, no release
    standby = Standby(elector(kube, "heir", lease_name, lease_s=2))
    try:
        assert standby.led.wait(WAIT_S), "the standby did not take the expired Lease"
    finally:
        standby.end()
    spec = lease(kube, lease_name)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("heir", 1)


class ReadBefore:
    """A client whose reads answer what was read earlier: a candidate that read the
    Lease just before another one wrote it."""

    def __init__(self, kube: Kube, read: dict[str, Any]) -> None:
        self.kube, self.read = kube, read

    def get(self, *_: Any) -> dict[str, Any]:
        return self.read

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.replace(body)


def test_of_two_candidates_taking_an_expired_lease_at_once_one_wins(
        kube: Kube, lease_name: str) -> None:
    now = [0.0]
    clock = {"monotonic": lambda: now[0]}
    elector(kube, "gone", lease_name, lease_s=1).try_acquire()
    stale = kube.get("Lease", lease_name, NAMESPACE)
    assert stale is not None
    left = elector(kube, "left", lease_name, **clock)
    right = elector(ReadBefore(kube, stale), "right", lease_name, **clock)  # type: ignore[arg-type]
    assert left.try_acquire() is False and right.try_acquire() is False  # seen just now
    now[0] += 60  # unchanged for a minute, as both see it: expired
    assert left.try_acquire() is True
    # The second write is fenced by the version both read: refused (409), not taken.
    assert right.try_acquire() is False and not right.leading
    assert lease(kube, lease_name)["holderIdentity"] == "left"


def test_a_leader_that_finds_another_holder_stops_acting(
        kube: Kube, lease_name: str) -> None:
    from shoal.errors import UnavailableError
    from shoal.runtime.kubernetes.leader import leading

    candidate = elector(kube, "deposed", lease_name)
    stop = threading.Event()
    with pytest.raises(UnavailableError, match=r"lost the lease .* to intruder"), \
            leading(candidate, stop) as acting:
        assert acting is True and not stop.is_set()
        held = kube.get("Lease", lease_name, NAMESPACE)
        assert held is not None and held["spec"]["holderIdentity"] == "deposed"
        held["spec"]["holderIdentity"] = "intruder"
        kube.replace({**held, "apiVersion": "coordination.k8s.io/v1", "kind": "Lease"})
        assert stop.wait(WAIT_S), "the leader went on acting under another holder"
    assert lease(kube, lease_name)["holderIdentity"] == "intruder", "not released: not its"


def test_a_stop_while_standby_returns_without_acting(kube: Kube, lease_name: str) -> None:
    from shoal.runtime.kubernetes.leader import leading

    assert elector(kube, "holder", lease_name).try_acquire()
    stop = threading.Event()
    stop.set()
    with leading(elector(kube, "waiting", lease_name), stop) as acting:
        assert acting is False
    assert lease(kube, lease_name)["holderIdentity"] == "holder"


# -- two operator processes -------------------------------------------------------------------


def start_operator(kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", "operator", "--kubeconfig", str(kubeconfig),
             "--leader-elect", "--leader-elect-namespace", NAMESPACE,
             "--leader-elect-lease-seconds", "6"], stdout=out, stderr=subprocess.STDOUT)


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    """Polls the log with a deadline (a process's output has no watch)."""
    deadline = time.monotonic() + WAIT_S
    while text not in log.read_text():
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S:.0f} s: {text!r} in {log}:\n{log.read_text()}")
        time.sleep(0.2)


def held_by(process: subprocess.Popen[bytes]) -> Any:
    return lambda spec: str(spec.get("holderIdentity", "")).endswith(f"_{process.pid}")


def job_succeeds(kube: Kube, name: str, log: Path) -> None:
    from tests.kube.test_control_server import training_job

    kube.create(training_job(name, "led", pods=1, gpus=1, run_seconds=1))
    wait_until(kube, "TrainingJob",
               lambda jobs: (jobs.get(f"led/{name}", {}).get("status") or {}).get("phase")
               == "Succeeded", namespace="led", what=f"led/{name} Succeeded (log: {log})",
               timeout_s=WAIT_S)


def test_two_operators_one_acts_and_the_standby_takes_over_when_it_is_killed(
        control_plane: ControlPlane, crds: Kube, tmp_path: Path) -> None:
    from tests.kube.test_control_server import label_gpu_model, tenant

    kube = crds
    label_gpu_model(kube)
    kube.delete("Lease", "shoal-operator", NAMESPACE)
    logs = {who: tmp_path / f"{who}.log" for who in ("first", "second")}
    first = start_operator(control_plane.kubeconfig, logs["first"])
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_lease(kube, "shoal-operator", held_by(first), "the first operator leads")
        second = start_operator(control_plane.kubeconfig, logs["second"])
        wait_for_line(logs["second"], "standby: the lease default/shoal-operator is held by",
                      second)
        kube.create(tenant("led", 8))
        # The leader's tenancy handler makes the tenant's namespace: a job can go in then.
        wait_until(kube, "Namespace", lambda found: "led" in found,
                   what=f"namespace led (log: {logs['first']})", timeout_s=WAIT_S)
        job_succeeds(kube, "before", logs["first"])
        # The standby did nothing: no handler ran in it, no CRD install, and it still waits.
        standby_log = logs["second"].read_text()
        assert "tenant led" not in standby_log and "Handler" not in standby_log
        assert "CRD " not in standby_log and second.poll() is None
        assert held_by(first)(lease(kube, "shoal-operator"))
        first.send_signal(signal.SIGKILL)  # no release: the Lease must expire
        first.wait(timeout=30)
        spec = wait_lease(kube, "shoal-operator", held_by(second), "the standby leads")
        assert spec["leaseTransitions"] >= 1
        job_succeeds(kube, "after", logs["second"])
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0, logs["second"].read_text()[-4000:]
        # A clean stop releases the Lease: no holder, so a standby need not wait.
        assert "holderIdentity" not in lease(kube, "shoal-operator")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        drop(kube, "led")
        wait_until(kube, "Namespace", lambda found: "led" not in found,
                   what="namespace led gone", timeout_s=WAIT_S)


# -- the operator's role ----------------------------------------------------------------------


def test_the_operators_cluster_role_lets_it_take_only_its_lease(
        control_plane: ControlPlane, kube: Kube) -> None:
    """deploy/rbac.yaml's ClusterRole, as the API server's authorizer reads it."""
    import json

    import yaml

    role = next(doc for doc in yaml.safe_load_all(
        (Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml").read_text())
        if doc and doc["kind"] == "ClusterRole")
    name, user = "shoal-operator-lease-check", "system:serviceaccount:shoal-system:lease-check"
    role["metadata"] = {"name": name}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": name},
               "subjects": [{"kind": "User", "name": user,
                             "apiGroup": "rbac.authorization.k8s.io"}]}
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    with control_plane.http() as http:
        for path, body in ((f"{rbac}/clusterroles", role),
                           (f"{rbac}/clusterrolebindings", binding)):
            made = http.post(path, content=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            assert made.status_code == 201, made.text

        def allowed(verb: str, lease: str = "") -> bool:
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": {"user": user, "resourceAttributes": {
                          "group": "coordination.k8s.io", "resource": "leases", "verb": verb,
                          "namespace": "shoal-system", "name": lease}}}
            answer = http.post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                               content=json.dumps(review),
                               headers={"Content-Type": "application/json"})
            assert answer.status_code == 201, answer.text
            return bool(answer.json()["status"].get("allowed"))

        try:
            # The authorizer reads RBAC from its informer: wait until it sees the binding.
            deadline = time.monotonic() + WAIT_S
            while not allowed("get", "shoal-operator"):
                assert time.monotonic() < deadline, "the binding never took effect"
                time.sleep(0.2)
            assert allowed("update", "shoal-operator") and allowed("create")
            assert not allowed("update", "kube-controller-manager")
            assert not allowed("delete", "shoal-operator") and not allowed("list")
        finally:
            http.delete(f"{rbac}/clusterrolebindings/{name}")
            http.delete(f"{rbac}/clusterroles/{name}")


# -- without a server ----------------------------------------------------------------------


def test_the_lease_lives_in_the_pods_namespace_in_cluster(tmp_path: Path) -> None:
    from shoal.runtime.kubernetes.leader import default_namespace, identity

    (tmp_path / "namespace").write_text("shoal-system\n")
    assert default_namespace(True, service_account=str(tmp_path)) == "shoal-system"
    assert default_namespace(True, service_account=str(tmp_path / "absent")) == "default"
    assert default_namespace(False, service_account=str(tmp_path)) == "default"
    assert identity().endswith(f"_{os.getpid()}")


def test_a_lease_shorter_than_a_second_is_refused() -> None:
    from shoal.runtime.kubernetes.leader import LeaderElector

    with pytest.raises(ValueError, match="at least 1 s"):
        LeaderElector(None, "x", lease_s=0)  # type: ignore[arg-type]
