"""``--kubeconfig`` on the verbs without a cluster: what is refused before or instead of one.

The verbs against a real API server are in ``tests/kube/test_cli_server.py``;
here the kubeconfig points at a closed loopback port, so every answer below
is the CLI's own (run as a user runs it, in a subprocess).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shoal.domain.manifest import parse_manifests

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("kubernetes", reason="the kube extra is not installed")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "here",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u"}},
                     {"name": "there", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def shoal(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home")}
    env.pop("SHOAL_SERVER", None)
    return subprocess.run([sys.executable, "-m", "shoal", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_an_unreachable_cluster_is_one_line_naming_it(tmp_path: Path, kubeconfig: Path) -> None:
    result = shoal(tmp_path, "get", "jobs", "--kubeconfig", str(kubeconfig), "--context", "there")
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith("error: cannot reach the API server at http://127.0.0.1:")
    assert f"(kubeconfig {kubeconfig}, context there): Connection refused" in line
    assert not (tmp_path / "home").exists()  # no local control plane was started


def test_a_missing_context_and_mixed_flags_are_bad_input(tmp_path: Path,
                                                         kubeconfig: Path) -> None:
    missing = shoal(tmp_path, "get", "jobs", "--kubeconfig", str(kubeconfig), "--context", "x")
    assert missing.returncode == 2
    assert error_line(missing) == (f"error: kubeconfig {kubeconfig} has no context 'x' "
                                   "(contexts: here, there)")
    alone = shoal(tmp_path, "get", "jobs", "--context", "here")
    assert alone.returncode == 2
    assert error_line(alone) == ("error: --context: names a context of a kubeconfig; "
                                 "pass --kubeconfig too")
    mixed = shoal(tmp_path, "describe", "job", "j", "--kubeconfig", str(kubeconfig),
                  "--server", "http://127.0.0.1:9")
    assert mixed.returncode == 2
    assert error_line(mixed).startswith("error: --server: not used with --kubeconfig")


def test_an_unreadable_kubeconfig_is_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("- just\n- a list\n")
    result = shoal(tmp_path, "get", "tenants", "--kubeconfig", str(broken))
    assert result.returncode == 2
    assert error_line(result) == (f"error: cannot use kubeconfig {broken}: expected a mapping "
                                  "(apiVersion: v1, kind: Config)")


def test_a_bad_manifest_is_refused_before_the_cluster_is_asked(tmp_path: Path,
                                                               kubeconfig: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text("apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\n"
                        "metadata: {name: j}\nspec: {tenant: t, podSets: [{count: 0}]}\n")
    on_cluster = shoal(tmp_path, "apply", "-f", str(manifest), "--kubeconfig", str(kubeconfig))
    embedded = shoal(tmp_path, "apply", "-f", str(manifest), "--server", "http://127.0.0.1:9")
    assert on_cluster.returncode == embedded.returncode == 2
    assert error_line(on_cluster) == error_line(embedded)
    assert str(manifest) in error_line(on_cluster)


def test_what_a_cluster_keeps_elsewhere_is_refused_in_one_line(tmp_path: Path,
                                                                kubeconfig: Path) -> None:
    tokens = shoal(tmp_path, "get", "tokens", "--kubeconfig", str(kubeconfig))
    assert tokens.returncode == 2
    assert error_line(tokens) == ("error: tokens: not available with --kubeconfig "
                                  "(a cluster's users and their rights are Kubernetes')")
    watched = shoal(tmp_path, "get", "tokens", "-w", "--kubeconfig", str(kubeconfig))
    assert watched.returncode == 2
    assert error_line(watched) == ("error: shoal get tokens --watch: not available with "
                                   "--kubeconfig (a cluster keeps them elsewhere)")


def test_manifests_are_sent_as_the_crd_schemas_take_them() -> None:
    from shoal.runtime.kubernetes.cluster import body_of

    tenant, job = parse_manifests(
        "apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\n"
        "spec: {quota: {cpu: {nominal: 2.5}}, defaultRequests: null}\n---\n"
        "apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\n"
        "metadata: {name: j, annotations: {a: b}}\n"
        "spec: {tenant: t, podSets: [{resources: {cpu: 0.5, memory: 1.5Gi, gpu: 2}}]}\n",
        "m.yaml")
    assert body_of(tenant) == {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                               "metadata": {"name": "t"},
                               "spec": {"quota": {"cpu": {"nominal": "2500m"}}}}
    assert body_of(job) == {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "j", "annotations": {"a": "b"}, "namespace": "t"},
        "spec": {"tenant": "t", "podSets": [{"resources": {
            "cpu": "500m", "memory": "1536Mi", "gpu": {"count": 2}}}]}}


def test_events_read_back_in_the_embedded_stores_shape() -> None:
    from shoal.runtime.kubernetes.cluster import event_view

    event = {"reason": "PodFailed", "type": "Warning",
             "message": "code=1, nodes=['a', 'b'], reason=out of memory, retry",
             "lastTimestamp": "2026-01-02T03:04:05Z",
             "involvedObject": {"name": "j", "namespace": "t"}}
    assert event_view(event) == {
        "time": 1767323045.0, "kind": "pod_failed", "job": "j", "tenant": "t",
        "data": {"code": "1", "nodes": "['a', 'b']", "reason": "out of memory, retry"},
        "type": "Warning"}
    assert event_view({"reason": "Submitted", "message": "submitted"})["data"] == {}
    assert event_view({"reason": "Note", "message": "free text"})["data"] == {
        "message": "free text"}


def test_a_cluster_without_shoals_kinds_or_that_refuses_is_named(kubeconfig: Path) -> None:
    from shoal.errors import Forbidden, UnavailableError
    from shoal.runtime.kubernetes.cluster import Cluster

    cluster = Cluster.connect(kubeconfig)  # no request yet
    try:
        with pytest.raises(UnavailableError) as missing, cluster.reaching():
            raise UnavailableError("the API server serves TrainingJob at none of "
                                   "shoal.dev/v1alpha1", hint="install Shoal's CRDs")
        with pytest.raises(Forbidden) as refused, cluster.reaching():
            raise Forbidden("list TrainingJob: trainingjobs.shoal.dev is forbidden")
    finally:
        cluster.close()
    where = f"the API server at {cluster.kube.api_client.configuration.host} " \
            f"(kubeconfig {kubeconfig}, context here)"
    assert str(missing.value) == (
        f"{where} serves no Shoal kinds (the API server serves TrainingJob at none of "
        "shoal.dev/v1alpha1) (install the CRDs: kubectl apply -f deploy/crds.yaml, or run "
        "shoal operator)")
    assert str(refused.value) == (
        f"{where} refused: list TrainingJob: trainingjobs.shoal.dev is forbidden")
