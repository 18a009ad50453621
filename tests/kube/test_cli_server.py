"""``shoal apply/get/describe/logs/delete --kubeconfig`` against the real API server.

The CLI runs as a user runs it (``python -m shoal ...`` in a subprocess, so
its error boundary and exit codes are the real ones), with the plane's
kubeconfig; ``shoal operator`` runs beside it and admits the job.  Waits
follow watches with deadlines.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shoal.runtime.kubernetes.client import Kube
from tests.kube.conftest import ROOT, ControlPlane, free_port
from tests.kube.operator_process import running_operator
from tests.kube.test_control_server import label_gpu_model
from tests.kube.waiting import wait_gone, wait_until

pytestmark = pytest.mark.kube

# As a user writes them for the embedded runtime: the GPU shorthand and a
# bare fractional CPU, which the CRD schemas alone would refuse.
MANIFESTS = """\
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: cli-team}
spec:
  quota:
    cpu: {nominal: 16}
    memory: {nominal: 64Gi}
    gpus: {A100: {nominal: 4}}
---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: cli-train}
spec:
  tenant: cli-team
  podSets:
    - count: 1
      resources: {cpu: 0.5, memory: 1Gi, gpu: 1}
"""

BAD_JOB = """\
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: cli-never}
spec:
  quota: {gpus: {A100: {nominal: 1}}}
---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: too-much}
spec:
  tenant: cli-never
  podSets:
    - resources: {gpu: {fraction: 1.5}}
"""

UNKNOWN_TENANT = """\
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: cli-never}
spec:
  quota: {gpus: {A100: {nominal: 1}}}
---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: orphan}
spec:
  tenant: cli-nobody
  podSets:
    - resources: {gpu: 1}
"""


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def on(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return shoal(*args, "--kubeconfig", str(plane.kubeconfig))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error line; fails unless stderr is exactly one line and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def as_member(plane: ControlPlane, tenant: str, path: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound to the tenant's member Role ``shoal-member``."""
    from tests.kube.test_deploy_server import kubeconfig_for, service_account_token

    with plane.http() as http:
        http.post(f"/api/v1/namespaces/{tenant}/serviceaccounts",
                  json={"metadata": {"name": "member"}}).raise_for_status()
        http.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{tenant}/rolebindings", json={
            "metadata": {"name": "cli-member"},
            "subjects": [{"kind": "ServiceAccount", "name": "member", "namespace": tenant}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "shoal-member"}}).raise_for_status()
    return kubeconfig_for(plane, service_account_token(plane, tenant, "member"), path)


@contextmanager
def kubelet_on_loopback(plane: ControlPlane, node: str) -> Iterator[int]:
    """The node's kubelet address set to a closed loopback port while the block runs.

    The fake nodes' addresses are placeholders (10.250.x.x): the API server
    would try to reach them for a pod's log.  This keeps it on 127.0.0.1,
    where nothing listens on the port, and puts the addresses back after.
    """
    port = free_port()
    path = f"/api/v1/nodes/{node}/status"
    merge = {"Content-Type": "application/merge-patch+json"}
    with plane.http() as http:
        status = http.get(path).raise_for_status().json()["status"]
        http.patch(path, headers=merge, json={"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}).raise_for_status()
        try:
            yield port
        finally:
            http.patch(path, headers=merge, json={"status": {
                "addresses": status.get("addresses") or [],
                "daemonEndpoints": status.get("daemonEndpoints") or {
                    "kubeletEndpoint": {"Port": 0}}}}).raise_for_status()


class LogKubelet:
    """What the kubelet of ``serving_logs`` was asked, and when to write more."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.more = threading.Event()


@contextmanager
def serving_logs(port: int, folder: Path) -> Iterator[LogKubelet]:
    """A kubelet's log endpoint on 127.0.0.1:``port`` (HTTPS, a certificate of its own).

    Every log reads ``step 1``; a followed one then waits for ``more`` and adds
    ``step 2`` before it ends (not if ``step 1`` was held back until the end).
    """
    kubelet = LogKubelet()
    key, cert = folder / "kubelet.key", folder / "kubelet.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    class Logs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            kubelet.paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"step 1\n")
            self.wfile.flush()
            if "follow=true" in self.path:
                # Only a client that got step 1 while the log was open asks for more.
                more = kubelet.more.wait(120)
                self.wfile.write(b"step 2\n" if more else b"step 1 never came through\n")

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Logs)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield kubelet
    finally:
        kubelet.more.set()
        server.shutdown()
        server.server_close()


def follow(plane: ControlPlane, kubelet: LogKubelet, job: str) -> None:
    """``shoal logs JOB -f`` prints what the log has, then what it gets, and ends with it."""
    follower = subprocess.Popen(
        [sys.executable, "-m", "shoal", "logs", job, "-f", "--kubeconfig", str(plane.kubeconfig)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "step 1\n"  # printed while the log is open
        kubelet.more.set()
        rest, err = follower.communicate(timeout=120)
        assert (follower.returncode, rest) == (0, "step 2\n"), err
    finally:
        if follower.poll() is None:
            follower.kill()


@pytest.fixture
def operator(control_plane: ControlPlane, crds: Kube, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "operator.log"
    with running_operator(control_plane.kubeconfig, log):
        yield log


def test_apply_get_describe_logs_delete_on_a_cluster(
    control_plane: ControlPlane, crds: Kube, operator: Path, tmp_path: Path,
) -> None:
    label_gpu_model(crds)
    manifest = tmp_path / "team.yaml"
    manifest.write_text(MANIFESTS)
    try:
        applied = on(control_plane, "apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.splitlines() == ["tenant/cli-team created",
                                               "trainingjob/cli-train created"]
        stored = crds.get("TrainingJob", "cli-train", "cli-team")
        assert stored is not None  # in its tenant's namespace, as the CRD takes it
        assert stored["spec"]["podSets"][0]["resources"] == {
            "cpu": "500m", "memory": "1024Mi", "gpu": {"count": 1}}
        again = on(control_plane, "apply", "-f", str(manifest))
        assert again.stdout.splitlines() == ["tenant/cli-team unchanged",
                                             "trainingjob/cli-train unchanged"], again.stderr

        # A changed Tenant is replaced (the labels others put on it kept); the job unchanged.
        tenant = crds.get("Tenant", "cli-team")
        assert tenant is not None
        tenant["metadata"]["labels"] = {"owner": "ops"}
        crds.replace({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", **tenant})
        more = tmp_path / "more.yaml"
        more.write_text(MANIFESTS.replace("nominal: 16}", "nominal: 24}"))
        configured = on(control_plane, "apply", "-f", str(more))
        assert configured.stdout.splitlines() == ["tenant/cli-team configured",
                                                  "trainingjob/cli-train unchanged"]
        tenant = crds.get("Tenant", "cli-team")
        assert tenant is not None and tenant["spec"]["quota"]["cpu"] == {"nominal": "24000m"}
        assert tenant["metadata"]["labels"] == {"owner": "ops"}

        # A changed job spec is refused in the embedded runtime's words; nothing changes.
        changed = tmp_path / "changed.yaml"
        changed.write_text(MANIFESTS.replace("gpu: 1}", "gpu: 2}"))
        refused = on(control_plane, "apply", "-f", str(changed))
        assert refused.returncode == 2
        assert one_line_error(refused) == (
            "error: TrainingJob cli-train: jobs are immutable; delete it first "
            "(shoal delete job cli-train) to apply a changed spec")

        wait_until(crds, "TrainingJob",
                   lambda jobs: (jobs.get("cli-team/cli-train", {}).get("status") or {}
                                 ).get("phase") == "Running",
                   namespace="cli-team", what=f"cli-train Running (log: {operator})")
        wait_until(crds, "Event", lambda events: any(
                       e.get("reason") == "Admitted" for e in events.values()),
                   namespace="cli-team", what="the Admitted event")

        listed = on(control_plane, "get", "jobs", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        [job] = [j for j in json.loads(listed.stdout) if j["tenant"] == "cli-team"]
        assert (job["name"], job["phase"], job["pods"], job["pod_count"], job["attempts"]) == (
            "cli-train", "Running", 1, 1, 1)
        assert "manifest" not in job and job["deleted"] is False

        table = on(control_plane, "get", "jobs", "cli-train")
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["NAME", "TENANT", "PHASE", "PODS", "ATTEMPTS", "PREEMPTED",
                                  "AGE", "REASON"]
        assert rows[0].split()[:6] == ["cli-train", "cli-team", "Running", "1/1", "1", "0"]

        tenants = on(control_plane, "get", "tenants", "-o", "json")
        [team] = [t for t in json.loads(tenants.stdout) if t["name"] == "cli-team"]
        assert team["nominal"]["gpu/A100"] == 4000 and team["nominal"]["cpu"] == 24000
        assert team["usage"]["gpu/A100"] == 1000 and team["usage"]["cpu"] == 500
        assert (team["running"], team["pending"], team["borrowed"]) == (1, 0, {})

        described = on(control_plane, "describe", "job", "cli-train")
        assert described.returncode == 0, described.stderr
        assert "Phase: Running" in described.stdout and "Tenant: cli-team" in described.stdout
        assert re.search(r"pod 0: node=fake-node-[\w-]+ gpus=\(\d\,\) state=running",
                         described.stdout), described.stdout
        assert re.search(r"admitted +attempt=1, nodes=\['fake-node-[\w-]+'\]", described.stdout)
        detail = json.loads(on(control_plane, "describe", "job", "cli-train", "-o", "json").stdout)
        pod = detail["pods"][0]
        assert pod["node"].startswith("fake-node-") and pod["handle"].startswith("cli-train-")
        assert detail["events"][0]["kind"] == "admitted"
        assert detail["events"][0]["data"]["attempt"] == "1"

        # The nodes that take pods, each a pool of one; the Events of every TrainingJob.
        nodes = json.loads(on(control_plane, "get", "nodes", "-o", "json").stdout)
        mine = nodes["nodes"][pod["node"]]
        assert (mine["count"], mine["cpu"], mine["gpus"]) == (1, "32", {"count": 8,
                                                                        "model": "A100"})
        assert nodes["node_count"] == len(nodes["nodes"]) >= 4
        assert nodes["capacity"]["gpu/A100"] == 1000 * sum(
            n["gpus"]["count"] for n in nodes["nodes"].values()
            if (n.get("gpus") or {}).get("model") == "A100")
        assert pod["node"] in on(control_plane, "get", "nodes").stdout
        events = json.loads(on(control_plane, "get", "events", "-o", "json").stdout)
        assert {"kind": "admitted", "job": "cli-train", "tenant": "cli-team"}.items() <= next(
            e for e in events if e["job"] == "cli-train").items()
        assert [e["time"] for e in events] == sorted(e["time"] for e in events)

        # The fake kubelet serves no logs: the API server's refusal, in one line.
        with kubelet_on_loopback(control_plane, pod["node"]) as port:
            logs = on(control_plane, "logs", "cli-train")
        assert logs.returncode == 1
        assert one_line_error(logs).startswith(
            f"error: the cluster did not serve the log of Pod cli-team/{pod['handle']}: ")
        assert f"127.0.0.1:{port}" in logs.stderr and "connection refused" in logs.stderr
        # A kubelet that serves logs (HTTPS on loopback: this API server checks no kubelet
        # certificate): `logs` prints the log, `logs -f` follows it as it grows, to its end.
        with kubelet_on_loopback(control_plane, pod["node"]) as port, \
                serving_logs(port, tmp_path) as kubelet:
            whole = on(control_plane, "logs", "cli-train")
            assert (whole.returncode, whole.stdout) == (0, "step 1\n"), whole.stderr
            follow(control_plane, kubelet, "cli-train")
        assert kubelet.paths == [
            f"/containerLogs/cli-team/{pod['handle']}/worker",
            f"/containerLogs/cli-team/{pod['handle']}/worker?follow=true"]
        no_pod = on(control_plane, "logs", "cli-train", "--pod", "3")
        assert no_pod.returncode == 2
        assert one_line_error(no_pod) == "error: job 'cli-train' has no pod 3 (pods: 0)"

        # A member of the tenant (its Role: TrainingJobs in its namespace, no Tenants).
        member = as_member(control_plane, "cli-team", tmp_path / "member")
        second = tmp_path / "second.yaml"
        second.write_text(MANIFESTS.split("---\n")[1].replace("cli-train", "cli-second"))
        by_member = shoal("apply", "-f", str(second), "--kubeconfig", str(member))
        assert by_member.returncode == 0, by_member.stderr
        assert by_member.stdout.strip() == "trainingjob/cli-second created"
        mine = shoal("get", "jobs", "--tenant", "cli-team", "-o", "json",
                     "--kubeconfig", str(member))
        assert mine.returncode == 0, mine.stderr
        assert sorted(j["name"] for j in json.loads(mine.stdout)) == ["cli-second", "cli-train"]
        nodes_seen = shoal("get", "nodes", "--kubeconfig", str(member))  # its Role has none
        assert nodes_seen.returncode == 1
        assert "forbidden" in one_line_error(nodes_seen)
        everyone = shoal("get", "jobs", "--kubeconfig", str(member))
        assert everyone.returncode == 1
        line = one_line_error(everyone)
        assert line.startswith(f"error: the API server at {control_plane.server}")
        assert "refused" in line and "forbidden" in line
        tenants_too = shoal("apply", "-f", str(manifest), "--kubeconfig", str(member))
        assert tenants_too.returncode == 1 and "forbidden" in one_line_error(tenants_too)

        deleted = on(control_plane, "delete", "job", "cli-train")
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.strip() == "job/cli-train deleted"
        wait_gone(crds, "TrainingJob", "cli-train", "cli-team")
        missing = on(control_plane, "describe", "job", "cli-train")
        assert (missing.returncode, one_line_error(missing)) == (
            2, "error: job 'cli-train' not found")

        by_file = on(control_plane, "delete", "-f", str(manifest))
        assert by_file.returncode == 0, by_file.stderr
        assert by_file.stdout.splitlines() == [
            "trainingjob/cli-train not found",
            "tenant/cli-team deleted (its namespace and the jobs in it go with it)"]
        wait_gone(crds, "Namespace", "cli-team")
    finally:
        crds.delete("Tenant", "cli-team")


@pytest.mark.parametrize("text", [BAD_JOB, UNKNOWN_TENANT], ids=["invalid", "unknown-tenant"])
def test_a_bad_manifest_reads_as_in_the_embedded_runtime_and_creates_nothing(
    control_plane: ControlPlane, crds: Kube, tmp_path: Path, text: str,
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    refused = on(control_plane, "apply", "-f", str(manifest))
    assert refused.returncode == 2
    line = one_line_error(refused)
    if text is BAD_JOB:
        # Refused before any control plane is asked: the embedded CLI's exact line.
        embedded = shoal("apply", "-f", str(manifest), "--server", "http://127.0.0.1:9")
        assert (embedded.returncode, embedded.stderr.strip()) == (2, line)
        assert "spec.podSets[0].resources.gpu.fraction" in line
    else:
        assert line.startswith(
            "error: TrainingJob orphan: tenant 'cli-nobody' does not exist (tenants: ")
    # Nothing half-applied: the valid Tenant of the same file was not created.
    assert crds.get("Tenant", "cli-never") is None


def test_a_wrong_context_a_dead_server_or_a_stranger_get_one_clear_line(
    control_plane: ControlPlane, crds: Kube, tmp_path: Path,
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    wrong = shoal("get", "jobs", "--kubeconfig", kubeconfig, "--context", "nope")
    assert wrong.returncode == 2
    assert re.fullmatch(rf"error: kubeconfig {re.escape(kubeconfig)} has no context 'nope' "
                        r"\(contexts: [^)]+\)", one_line_error(wrong))

    text = control_plane.kubeconfig.read_text()
    port = free_port()
    dead = tmp_path / "dead"
    dead.write_text(re.sub(r"https://127\.0\.0\.1:\d+", f"https://127.0.0.1:{port}", text))
    away = shoal("get", "jobs", "--kubeconfig", str(dead))
    assert away.returncode == 1
    assert one_line_error(away).startswith(
        f"error: cannot reach the API server at https://127.0.0.1:{port} "
        f"(kubeconfig {dead}, context ")
    assert "Connection refused" in away.stderr

    assert control_plane.token in text
    stranger = tmp_path / "stranger"
    stranger.write_text(text.replace(control_plane.token, "not-a-token"))
    refused = shoal("get", "tenants", "--kubeconfig", str(stranger))
    assert refused.returncode == 1
    assert one_line_error(refused).startswith(f"error: the API server at {control_plane.server}")
    assert "Unauthorized" in refused.stderr


def test_get_watch_on_a_cluster_prints_again_as_the_watch_brings_changes(
    control_plane: ControlPlane, crds: Kube,
) -> None:
    """``get jobs -w --kubeconfig`` follows a watch of TrainingJobs: a job created, then
    deleted, each shows up; Ctrl-C ends it with 130 and says the jobs keep running."""
    import queue
    import signal
    import threading

    from tests.kube.test_control_server import training_job

    namespace = "cli-watch"
    crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    watcher = subprocess.Popen(
        [sys.executable, "-m", "shoal", "get", "jobs", "-w", "--tenant", namespace,
         "--kubeconfig", str(control_plane.kubeconfig)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    stdout = watcher.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()

    def until(wanted: str) -> None:
        seen = []
        while True:
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} in {seen}") from None
            seen.append(line)
            if wanted in line:
                return

    try:
        until("No jobs.")  # the first listing is out: it is watching
        crds.create(training_job("watched", namespace, pods=1, gpus=1))
        until("watched")
        assert crds.delete("TrainingJob", "watched", namespace)
        until("No jobs.")
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 130, err
        assert "the jobs keep running" in err and "Traceback" not in err
    finally:
        if watcher.poll() is None:
            watcher.kill()
        for job in crds.list("TrainingJob", namespace):
            crds.replace({**job, "metadata": {**job["metadata"], "finalizers": []}})
            crds.delete("TrainingJob", job["metadata"]["name"], namespace)
        crds.delete("Namespace", namespace)
