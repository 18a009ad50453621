"""The router as a program: ``serving.router.program.serve`` in front of a real
replica process, called with ``tritonclient.http``; and the Kubernetes entry
point ``python -m shoal.api.kube_router`` as a real process (bad arguments,
its health and metrics ports, SIGTERM, an API server that does not answer).

Callers checked by a real API server: ``tests/kube/test_router_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shoal.serving.router.program import build_parser, check_args, serve
from tests.serving.replicas import DEADLINE_S, train_digits, wait_until

http = pytest.importorskip("tritonclient.http")
ROOT = Path(__file__).resolve().parents[2]


# --- helpers (also used by tests/kube/test_router_server.py) ------------------------


def start_replica(tmp_path: Path, model: Path, name: str = "digits",
                  version: str = "1") -> tuple[subprocess.Popen[str], str]:
    """A replica server process for ``model``; its base URL once ready."""
    ready = tmp_path / f"replica-{name}-{version}.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.serving.replica", "--port", "0", "--ready-file",
         str(ready), "--model", str(model), "--framework", "sklearn", "--name", name,
         "--version", version],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: ready.exists() or process.poll() is not None, "the replica's ready file")
    assert ready.exists(), process.communicate(timeout=DEADLINE_S)
    line = json.loads(ready.read_text())
    return process, f"http://127.0.0.1:{line['port']}"


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate(timeout=DEADLINE_S)


class Mount:
    """A ConfigMap folder as the kubelet writes it (a new folder, ``..data`` swapped)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.generation = folder, 0
        folder.mkdir()
        (folder / "routes.json").symlink_to("..data/routes.json")

    @property
    def path(self) -> Path:
        return self.folder / "routes.json"

    def write(self, revisions: list[dict[str, Any]], activating: list[str] | None = None) -> None:
        self.generation += 1
        stamp = self.folder / f"..gen_{self.generation}"
        stamp.mkdir()
        (stamp / "routes.json").write_text(json.dumps(
            {"revisions": revisions, "activating": activating or []}))
        (self.folder / "..data_tmp").symlink_to(stamp.name)
        os.replace(self.folder / "..data_tmp", self.folder / "..data")


def router_command(service: str, tenant: str, routes: Path, ready: Path,
                   *extra: str) -> list[str]:
    return [sys.executable, "-m", "shoal.api.kube_router", "--service", service,
            "--tenant", tenant, "--routes", str(routes), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--poll-s", "0.1",
            "--ready-file", str(ready), *extra]


def start_router(command: list[str], ready: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until(lambda: ready.exists() or process.poll() is not None, "the router's ready file")
    assert ready.exists(), stop(process)
    line: dict[str, Any] = json.loads(ready.read_text())
    return process, line


def digits_input() -> tuple[Any, list[int]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    given = http.InferInput("input", [4, 64], "FP32")
    given.set_data_from_numpy(data.data[:4].astype(np.float32))
    return given, data.target[:4].tolist()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.joblib"
    train_digits(path)
    return path


@pytest.fixture
def replica(tmp_path: Path, digits_model: Path) -> Iterator[str]:
    process, url = start_replica(tmp_path, digits_model)
    try:
        yield url
    finally:
        stop(process)


@dataclass
class Member:
    tenant: str
    role: str = "member"


@contextmanager
def serving_in_thread(tmp_path: Path, routes: Path, tokens: dict[str, Member]
                      ) -> Iterator[dict[str, Any]]:
    """``serve`` on its own loop in a thread (a verifier over ``tokens``); its ready line."""
    ready = tmp_path / "router-ready.json"
    parser = build_parser("router")
    args = parser.parse_args(["--service", "digits", "--tenant", "team-a", "--routes",
                              str(routes), "--host", "127.0.0.1", "--port", "0",
                              "--metrics-port", "0", "--poll-s", "0.05",
                              "--ready-file", str(ready)])
    check_args(parser, args)
    held: dict[str, Any] = {}

    async def main() -> int:
        held["loop"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        return await serve(args, tokens.get, held["stop"])

    thread = threading.Thread(target=lambda: held.update(status=asyncio.run(main())),
                              daemon=True)
    thread.start()
    try:
        wait_until(lambda: ready.exists() or not thread.is_alive(), "the router's ready file")
        assert ready.exists(), held
        yield json.loads(ready.read_text())
    finally:
        if "loop" in held:
            held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(DEADLINE_S)
    assert held.get("status") == 0


def revision(name: str, weight: int, *replicas: str) -> dict[str, Any]:
    return {"name": name, "weight": weight, "replicas": list(replicas), "model": "digits"}


# --- in process ---------------------------------------------------------------------------


def test_serve_routes_to_the_replica_of_its_table_and_follows_changes(
        tmp_path: Path, replica: str) -> None:
    mount = Mount(tmp_path / "routes")
    mount.write([revision("digits-r1", 100)], ["digits-r1"])  # no replica yet: held
    with serving_in_thread(tmp_path, mount.path, {"good": Member("team-a"),
                                                  "other": Member("team-b")}) as line:
        triton = http.InferenceServerClient(f"127.0.0.1:{line['port']}")
        given, labels = digits_input()
        auth = {"Authorization": "Bearer good"}
        assert triton.is_server_live()
        assert triton.is_server_ready()  # a revision takes traffic (held until a replica)

        # The next table names the replica (a request that comes first waits for it).
        mount.write([revision("digits-r1", 100, replica)])
        result = triton.infer("digits", [given], headers=auth)
        assert result.as_numpy("label").tolist() == labels
        assert triton.get_model_metadata("digits", "digits-r1", headers=auth)["name"] == "digits"

        with pytest.raises(http.InferenceServerException) as refused:
            triton.infer("digits", [given], headers={"Authorization": "Bearer other"})
        assert refused.value.status() == "403"
        with pytest.raises(http.InferenceServerException) as unknown:
            triton.infer("digits", [given], headers={"Authorization": "Bearer nope"})
        assert unknown.value.status() == "401"

        # A bad table is refused and the last good one keeps serving.
        mount.write([revision("digits-r1", 100, "not-a-url")])
        health = f"http://127.0.0.1:{line['metrics_port']}"
        wait_until(lambda: (httpx.get(f"{health}/healthz").json().get("error") or "")
                   .endswith("is not an http://<host>:<port> base URL"), "the bad table seen")
        assert triton.infer("digits", [given], headers=auth).as_numpy("label").tolist() == labels

        # Moved to a revision with no replica: the router has no replica to send to.
        mount.write([revision("digits-r2", 100)], ["digits-r2"])
        wait_until(lambda: httpx.get(f"{health}/healthz").json()["weights"] == {"digits-r2": 100},
                   "the new table taken")
        with pytest.raises(http.InferenceServerException) as gone:
            triton.infer("digits", [given], model_version="digits-r1", headers=auth)
        assert gone.value.status() == "404"

        metrics = httpx.get(f"{health}/metrics")
        assert metrics.status_code == 200
        assert ('shoal_service_requests_total{code="200",revision="digits-r1",service="digits"} '
                '3.0')  # two inferences and the metadata in metrics.text
        assert httpx.get(f"{health}/nothing").status_code == 404


# --- the entry point as a process ------------------------------------------------------


@pytest.fixture
def unreachable_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming a loopback port nothing listens on (the API server down)."""
    import socket

    import yaml

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--tenant", "t", "--routes", "r"], "the following arguments are required: --service"),
    (["--service", "Bad_Name", "--tenant", "t", "--routes", "r"],
     "--service: expected a lowercase DNS name, got 'Bad_Name'"),
    (["--service", "s", "--tenant", "t", "--routes", "r", "--port", "70000"],
     "--port: expected 0 to 65535, got 70000"),
    (["--service", "s", "--tenant", "t", "--routes", "r", "--port", "80",
      "--metrics-port", "80"], "--metrics-port: must differ from --port"),
    (["--service", "s", "--tenant", "t", "--routes", "r", "--kubeconfig", "/nonexistent"],
     "cannot use kubeconfig /nonexistent"),
])
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str) -> None:
    pytest.importorskip("kubernetes")
    done = subprocess.run([sys.executable, "-m", "shoal.api.kube_router", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_process_serves_health_and_metrics_and_stops_on_sigterm(
        tmp_path: Path, replica: str, unreachable_kubeconfig: Path) -> None:
    """Without an API server to ask, a caller gets 503 (never a 5xx traceback or a 401)."""
    pytest.importorskip("kubernetes")
    mount = Mount(tmp_path / "routes")
    mount.write([revision("digits-r1", 100, replica)])
    ready = tmp_path / "ready.json"
    process, line = start_router(router_command(
        "digits", "team-a", mount.path, ready, "--kubeconfig", str(unreachable_kubeconfig)),
        ready)
    try:
        assert line["ready"] is True and line["pid"] == process.pid
        triton = http.InferenceServerClient(f"127.0.0.1:{line['port']}")
        assert triton.is_server_ready()
        health = httpx.get(f"http://127.0.0.1:{line['metrics_port']}/healthz").json()
        assert health == {"ok": True, "table": "loaded", "weights": {"digits-r1": 100},
                          "error": None}
        given, _ = digits_input()
        with pytest.raises(http.InferenceServerException) as down:
            triton.infer("digits", [given], headers={"Authorization": "Bearer t"})
        assert down.value.status() == "503"
        assert "TokenReview" in str(down.value)
    finally:
        _, err = stop(process)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "routing table taken: digits-r1=100% (1 replicas)" in err
