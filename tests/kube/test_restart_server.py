"""``shoal operator`` killed (SIGKILL) in the middle of a burst, then started again.

Forty one-pod TrainingJobs of 2 GPUs each arrive at once for a tenant whose
quota is 16 GPUs (8 at a time fit); each pod runs 2 s on the fake kubelet.
Once some jobs run, the operator is killed without warning and a new one
started.  Recorders follow the cluster on watches all along:

* no double admission: each job's pod is bound once, to one node, and no
  job ever had a second pod or a second attempt;
* the quota is never exceeded: at no point of the TrainingJobs' history do
  the admitted jobs hold more than 16 GPUs, nor do the bound, unfinished
  pods request more;
* no lost job: every one reaches Succeeded.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL
from tests.kube.conftest import ControlPlane
from tests.kube.test_cache_server import default_account
from tests.kube.test_control_server import label_gpu_model, training_job
from tests.kube.waiting import wait_gone, wait_until

pytestmark = pytest.mark.kube

TENANT, QUOTA, JOBS, GPUS = "burst", 16, 40, 2
DEADLINE_S = 300.0


@contextlib.contextmanager
def operator(plane: ControlPlane, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``shoal operator`` as a process; SIGINT at the end unless the test killed it."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal", "operator", "--kubeconfig", str(plane.kubeconfig)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Recorder:
    """Follows TrainingJobs and Pods of a namespace on watches, keeping their history."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.stop = threading.Event()
        self.held: dict[str, float] = {}
        self.most_held = 0.0
        self.pods: dict[str, set[str]] = {}
        """Job name -> names of every pod ever seen for it."""
        self.nodes: dict[str, set[str]] = {}
        """Pod name -> every node it was seen bound to."""
        self.running: dict[str, int] = {}
        self.most_running = 0
        self.threads = [threading.Thread(target=self._follow, args=(kind,), daemon=True)
                        for kind in ("TrainingJob", "Pod")]
        for thread in self.threads:
            thread.start()

    def _follow(self, kind: str) -> None:
        since = self.kube.listing(kind, self.namespace)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for event, body in self.kube.watch(kind, self.namespace, since=since,
                                                   timeout_s=30):
                    if event == "ERROR":
                        return
                    since = body["metadata"]["resourceVersion"]
                    (self._job if kind == "TrainingJob" else self._pod)(event, body)

    def _job(self, event: str, body: dict[str, Any]) -> None:
        status = body.get("status") or {}
        name = body["metadata"]["name"]
        self.held[name] = 0.0 if event == "DELETED" or not status.get("admitted") else float(
            status.get("gpus") or 0)
        self.most_held = max(self.most_held, sum(self.held.values()))

    def _pod(self, event: str, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body.get("spec") or {}
        job = (meta.get("labels") or {}).get(JOB_LABEL, "")
        self.pods.setdefault(job, set()).add(meta["name"])
        if spec.get("nodeName"):
            self.nodes.setdefault(meta["name"], set()).add(spec["nodeName"])
        done = (body.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        live = spec.get("nodeName") and not done and event != "DELETED"
        self.running[meta["name"]] = GPUS if live else 0
        self.most_running = max(self.most_running, sum(self.running.values()))


def succeeded(jobs: dict[str, dict[str, Any]]) -> int:
    return sum((j.get("status") or {}).get("phase") == "Succeeded" for j in jobs.values())


def test_killing_the_operator_mid_burst_admits_nothing_twice_and_loses_no_job(
        control_plane: ControlPlane, crds: Kube, tmp_path: Path) -> None:
    label_gpu_model(crds)
    crds.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                 "metadata": {"name": TENANT},
                 "spec": {"quota": {"cpu": {"nominal": 64}, "memory": {"nominal": "512Gi"},
                                    "gpus": {"A100": {"nominal": QUOTA}}}}})
    log = tmp_path / "operator.log"
    recorder: Recorder | None = None
    try:
        with operator(control_plane, log) as first:
            wait_until(crds, "Namespace", lambda ns: TENANT in ns, what=f"namespace {TENANT}",
                       timeout_s=DEADLINE_S)
            default_account(control_plane, TENANT)
            recorder = Recorder(crds, TENANT)
            for i in range(JOBS):
                crds.create(training_job(f"j{i:02}", TENANT, pods=1, gpus=GPUS,
                                         run_seconds=2))
            wait_until(crds, "TrainingJob",
                       lambda jobs: sum(bool((j.get("status") or {}).get("admitted"))
                                        for j in jobs.values()) >= 4,
                       namespace=TENANT, what=f"some jobs running (log: {log})",
                       timeout_s=DEADLINE_S)
            first.kill()  # SIGKILL: no cleanup, mid-burst
            first.wait()
        before = succeeded({str(i): j for i, j in enumerate(crds.list("TrainingJob", TENANT))})
        assert before < JOBS, "the burst was over before the operator was killed"
        with operator(control_plane, log):
            done = wait_until(crds, "TrainingJob", lambda jobs: succeeded(jobs) == JOBS,
                              namespace=TENANT, what=f"all {JOBS} jobs Succeeded (log: {log})",
                              timeout_s=DEADLINE_S)
            for job in done.values():
                status = job["status"]
                assert status["attempts"] == 1, (job["metadata"]["name"], status)
                assert len(status["pods"]) == 1 and status["pods"][0]["state"] == "succeeded"
            assert set(recorder.pods) == {f"j{i:02}" for i in range(JOBS)}
            twice = {job: pods for job, pods in recorder.pods.items() if len(pods) != 1}
            assert not twice, f"jobs with more than one pod: {twice}"
            moved = {pod: nodes for pod, nodes in recorder.nodes.items() if len(nodes) != 1}
            assert not moved and len(recorder.nodes) == JOBS, moved
            assert 0 < recorder.most_held <= QUOTA
            assert 0 < recorder.most_running <= QUOTA
            for key in done:
                crds.delete("TrainingJob", key.split("/")[1], TENANT)
            wait_until(crds, "TrainingJob", lambda jobs: not jobs, namespace=TENANT,
                       what="the jobs let go", timeout_s=DEADLINE_S)
    finally:
        if recorder is not None:
            recorder.stop.set()
        crds.delete("Tenant", TENANT)
    wait_gone(crds, "Namespace", TENANT, timeout_s=DEADLINE_S)
