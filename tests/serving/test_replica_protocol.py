"""The replica's Open Inference Protocol v2, spoken to by the real ``tritonclient.http``
client, over 127.0.0.1, for each model framework; bad requests by raw HTTP.

Each server is the replica app run by uvicorn in a thread on a free port; the
models are trained or built here (fixed seeds).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shoal.serving.app import ModelSlot
from shoal.serving.loaders import LoadedModel, LoadError, load_model, tensor
from tests.serving.replicas import (
    DATATYPES,
    identity_onnx,
    ready_slot,
    sample,
    serving,
    tiny_net,
    train_digits,
)

http = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    train_digits(folder / "digits.joblib")
    identity_onnx(folder / "echo.onnx")
    return folder


@pytest.fixture(scope="module")
def digits(models: Path) -> Iterator[str]:
    model = load_model("sklearn", models / "digits.joblib")
    with serving(ready_slot("digits", model, "3"), max_body_bytes=MAX_BODY) as url:
        yield url


@pytest.fixture(scope="module")
def echo(models: Path) -> Iterator[str]:
    with serving(ready_slot("echo", load_model("onnx", models / "echo.onnx"))) as url:
        yield url


def client(url: str) -> Any:
    return http.InferenceServerClient(url)


def digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target


# --- health and metadata ------------------------------------------------------------


def test_health_server_and_model_metadata(digits: str) -> None:
    triton = client(digits)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("digits") and triton.is_model_ready("digits", "3")
    assert not triton.is_model_ready("digits", "4")
    assert not triton.is_model_ready("other")
    server = triton.get_server_metadata()
    assert server["name"] == "shoal-replica"
    assert server["extensions"] == ["binary_tensor_data"]
    metadata = triton.get_model_metadata("digits", "3")
    assert metadata == {
        "name": "digits", "versions": ["3"], "platform": "sklearn_joblib",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP64", "shape": [-1, 10]}],
    }


# --- scikit-learn digits: FP32 [1, 64] --------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_digits_classifier_answers_like_the_model(digits: str, models: Path, binary: bool) -> None:
    import joblib

    reference = joblib.load(models / "digits.joblib")
    images, targets = digit_images()
    triton = client(digits)
    for index in (0, 7, 123):
        one = images[index:index + 1]
        given = http.InferInput("input", [1, 64], "FP32")
        given.set_data_from_numpy(one, binary_data=binary)
        wanted = [http.InferRequestedOutput("label", binary_data=binary),
                  http.InferRequestedOutput("probabilities", binary_data=binary)]
        result = triton.infer("digits", [given], outputs=wanted, request_id=f"r{index}")
        assert result.get_response()["id"] == f"r{index}"
        assert result.get_response()["model_version"] == "3"
        assert result.as_numpy("label").tolist() == reference.predict(one).tolist()
        assert result.as_numpy("label")[0] == targets[index]
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference.predict_proba(one))


def test_a_batch_and_only_the_requested_output(digits: str) -> None:
    images, targets = digit_images()
    batch = images[:16]
    given = http.InferInput("input", [16, 64], "FP32")
    given.set_data_from_numpy(batch, binary_data=False)
    result = client(digits).infer("digits", [given], model_version="3",
                                  outputs=[http.InferRequestedOutput("label", binary_data=False)])
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["label"]
    assert (result.as_numpy("label") == targets[:16]).mean() > 0.9


def test_no_requested_outputs_gives_all_of_them(digits: str) -> None:
    given = http.InferInput("input", [2, 64], "FP32")
    given.set_data_from_numpy(digit_images()[0][:2], binary_data=True)
    result = client(digits).infer("digits", [given])  # tritonclient asks for binary outputs
    assert result.as_numpy("label").shape == (2,)
    assert result.as_numpy("probabilities").shape == (2, 10)


# --- every datatype, both encodings -----------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(echo: str, datatype: str, binary: bool) -> None:
    triton = client(echo)
    metadata = triton.get_model_metadata("echo")
    assert {"name": f"x_{datatype}", "datatype": datatype, "shape": [-1, 3]} in metadata["inputs"]
    given = []
    for name in DATATYPES:  # the echo model needs all its inputs
        tensor_in = http.InferInput(f"x_{name}", [2, 3], name)
        tensor_in.set_data_from_numpy(sample(name), binary_data=binary and name == datatype)
        given.append(tensor_in)
    wanted = [http.InferRequestedOutput(f"y_{datatype}", binary_data=binary)]
    result = triton.infer("echo", given, outputs=wanted)
    out = result.as_numpy(f"y_{datatype}")
    expected = sample(datatype)
    assert out.shape == (2, 3)
    if datatype == "BYTES":
        got = [x if isinstance(x, bytes) else x.encode() for x in out.reshape(-1)]
        assert got == list(expected.reshape(-1))
    else:
        assert out.dtype == expected.dtype
        assert out.tolist() == expected.tolist()


# --- PyTorch: TorchScript and state dict + entry point ----------------------------------


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    net = tiny_net()
    with warnings.catch_warnings():  # torch >= 2.10: TorchScript is deprecated, still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(folder / "net.pt"))
    torch.save(net.state_dict(), str(folder / "net.state.pt"))
    return folder, net


@pytest.mark.parametrize("kind", ["torchscript", "state_dict"])
def test_pytorch_models(torch_models: tuple[Path, Any], kind: str) -> None:
    import torch

    folder, net = torch_models
    if kind == "torchscript":
        model = load_model("pytorch", folder / "net.pt")
    else:
        model = load_model("pytorch", folder / "net.state.pt",
                           entry_point="tests.serving.replicas:tiny_net",
                           inputs=[tensor("features", "FP32", [-1, 4])],
                           outputs=[tensor("scores", "FP32", [-1, 2])])
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    with serving(ready_slot("net", model)) as url:
        metadata = client(url).get_model_metadata("net")
        assert metadata["platform"] == f"pytorch_{kind}"
        name_in, name_out = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]
        given = http.InferInput(name_in, [3, 4], "FP32")
        given.set_data_from_numpy(x, binary_data=False)
        result = client(url).infer("net", [given])
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.as_numpy(name_out), expected, rtol=1e-6)


def test_a_state_dict_of_another_shape_fails_to_load(torch_models: tuple[Path, Any],
                                                      tmp_path: Path) -> None:
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 3)).state_dict(), str(tmp_path / "other.pt"))
    with pytest.raises(LoadError, match=r"cannot load .*other\.pt as a pytorch model: "
                       r"RuntimeError: .*size mismatch for 0\.weight"):
        load_model("pytorch", tmp_path / "other.pt", entry_point="tests.serving.replicas:tiny_net")


# --- ONNX metadata from the session ---------------------------------------------------


def test_onnx_metadata_comes_from_the_session(echo: str) -> None:
    metadata = client(echo).get_model_metadata("echo")
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [t["datatype"] for t in metadata["inputs"]] == list(DATATYPES)
    assert all(t["shape"] == [-1, 3] for t in metadata["outputs"])


# --- bad input: one clear error each ---------------------------------------------------------


def infer_raw(url: str, body: Any, path: str = "/v2/models/digits/infer",
              headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"http://{url}{path}", content=content, headers=headers, timeout=60)


def digits_body(**changes: Any) -> dict[str, Any]:
    tensor_in = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    tensor_in.update(changes)
    return {"inputs": [tensor_in]}


BAD = {
    "not json": (b"{inputs: [", "malformed request body: not JSON"),
    "not an object": ([1, 2], "expected a JSON object"),
    "no inputs": ({"inputs": []}, "inputs: expected a non-empty list"),
    "unknown field": ({**digits_body(), "input": []}, "unknown field 'input'"),
    "wrong shape": (digits_body(shape=[1, 63], data=[0.0] * 63),
                    "input 'input': expected shape [-1, 64] (-1: any size), got [1, 63]"),
    "wrong rank": (digits_body(shape=[64]), "expected shape [-1, 64]"),
    "negative dim": (digits_body(shape=[-1, 64]), "shape must be a list of sizes >= 0"),
    "wrong datatype": (digits_body(datatype="FP64"),
                       "input 'input': expected datatype FP32, got 'FP64'"),
    "unknown datatype": (digits_body(datatype="FLOAT"), "expected datatype FP32, got 'FLOAT'"),
    "shape/data mismatch": (digits_body(data=[0.0] * 60),
                            "shape [1, 64] holds 64 elements, data has 60"),
    "text for numbers": (digits_body(data=["a"] * 64), "FP32 data must be numbers"),
    "unknown input": (digits_body(name="pixels"), "the model has no such input"),
    "no data": ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]},
                "expected data (or binary_data_size)"),
    "unknown output": ({**digits_body(), "outputs": [{"name": "logits"}]},
                       "output 'logits': the model has no such output"),
    "bad id": ({**digits_body(), "id": 7}, "id: expected a string"),
}


def test_nested_data_is_read_in_row_major_order(digits: str) -> None:
    images, targets = digit_images()
    rows = images[5].reshape(8, 8).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [rows]}],
            "outputs": [{"name": "label"}]}
    response = infer_raw(digits, body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [int(targets[5])]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_infer_bodies_are_400_with_a_clear_error(digits: str, case: str) -> None:
    body, message = BAD[case]
    response = infer_raw(digits, body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_bad_binary_parts_are_400(digits: str) -> None:
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    short = infer_raw(digits, head + b"\0" * 100,
                      headers={"Inference-Header-Content-Length": str(len(head))})
    assert short.status_code == 400
    assert "runs past the end of the body" in short.json()["error"]
    extra = infer_raw(digits, head + b"\0" * 300,
                      headers={"Inference-Header-Content-Length": str(len(head))})
    assert extra.status_code == 400 and "belong to no input" in extra.json()["error"]
    wrong = infer_raw(digits, head, headers={"Inference-Header-Content-Length": "9999"})
    assert wrong.status_code == 400 and "Inference-Header-Content-Length" in wrong.json()["error"]


def test_integer_range_and_types_are_checked(echo: str) -> None:
    body = {"inputs": [{"name": f"x_{t}", "shape": [1, 3], "datatype": t,
                        "data": sample(t)[0].tolist() if t != "BYTES" else ["a", "b", "c"]}
                       for t in DATATYPES]}
    assert infer_raw(echo, body, "/v2/models/echo/infer").status_code == 200
    body["inputs"][1]["data"] = [256, 0, 0]  # UINT8
    response = infer_raw(echo, body, "/v2/models/echo/infer")
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x_UINT8': UINT8 holds 0 to 255"
    body["inputs"][1]["data"] = [1.5, 0, 0]
    response = infer_raw(echo, body, "/v2/models/echo/infer")
    assert response.json()["error"] == "input 'x_UINT8': UINT8 data must be integers"


@pytest.mark.parametrize(("path", "message"), [
    ("/v2/models/other/infer", "unknown model 'other'; this replica serves 'digits'"),
    ("/v2/models/digits/versions/9/infer", "model 'digits' has no version '9' (versions: 3)"),
])
def test_unknown_model_or_version_is_404(digits: str, path: str, message: str) -> None:
    response = infer_raw(digits, digits_body(), path)
    assert response.status_code == 404
    assert response.json() == {"error": message}
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client(digits).get_model_metadata("other")


def test_unknown_path_and_method_answer_json_errors(digits: str) -> None:
    missing = httpx.get(f"http://{digits}/v3/nothing", timeout=60)
    assert missing.status_code == 404 and "no such path" in missing.json()["error"]
    wrong = httpx.get(f"http://{digits}/v2/models/digits/infer", timeout=60)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_an_oversized_body_is_413(digits: str) -> None:
    big = digits_body(shape=[1, 64], data=[0.5] * 100_000)
    response = infer_raw(digits, big)
    assert response.status_code == 413
    assert response.json() == {"error": f"request body over {MAX_BODY} bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"inputs": ['
        for _ in range(100):
            yield b" " * 4096
        yield b"]}"

    streamed = httpx.post(f"http://{digits}/v2/models/digits/infer", content=chunks(),
                          timeout=60)
    assert streamed.status_code == 413


def test_a_model_that_raises_is_a_400_naming_the_model(models: Path) -> None:
    model = load_model("sklearn", models / "digits.joblib",
                       inputs=[tensor("input", "FP32", [-1, -1])])
    with serving(ready_slot("digits", model)) as url:
        response = infer_raw(url, digits_body(shape=[1, 3], data=[0.0] * 3))
    assert response.status_code == 400
    assert response.json()["error"].startswith("model 'digits' failed on this input: ValueError")


# --- loading and failed loads -----------------------------------------------------------


def test_while_loading_and_after_a_failed_load_the_replica_is_not_ready(tmp_path: Path) -> None:
    slot = ModelSlot("digits", "1")
    with serving(slot) as url:
        triton = client(url)
        assert triton.is_server_live()
        assert not triton.is_server_ready() and not triton.is_model_ready("digits")
        loading = infer_raw(url, digits_body())
        assert loading.status_code == 503
        assert loading.json() == {"error": "model 'digits' is loading"}
        (tmp_path / "broken.joblib").write_bytes(b"not a pickle")
        with pytest.raises(LoadError) as failure:
            load_model("sklearn", tmp_path / "broken.joblib")
        slot.failed(str(failure.value))
        ready = httpx.get(f"http://{url}/v2/health/ready", timeout=60)
        assert ready.status_code == 503
        assert ready.json()["error"].startswith(
            f"model 'digits' failed to load: cannot load {tmp_path / 'broken.joblib'} "
            "as a sklearn model: ")
        metadata = httpx.get(f"http://{url}/v2/models/digits", timeout=60)
        assert metadata.status_code == 503 and "failed to load" in metadata.json()["error"]
        assert triton.is_server_live()


@pytest.mark.parametrize(("framework", "content", "message"), [
    ("sklearn", None, "model file not found: "),
    ("onnx", b"not onnx", "as a onnx model: "),
    ("pytorch", b"not torch", "as a pytorch model: "),
])
def test_loaders_explain_a_bad_file(tmp_path: Path, framework: str, content: bytes | None,
                                    message: str) -> None:
    path = tmp_path / "model.bin"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LoadError, match=message):
        load_model(framework, path)


def test_a_non_estimator_pickle_is_refused(tmp_path: Path) -> None:
    import joblib

    joblib.dump({"weights": [1, 2]}, tmp_path / "dict.joblib")
    with pytest.raises(LoadError, match="holds a dict, not an estimator with predict"):
        load_model("sklearn", tmp_path / "dict.joblib")


def test_declared_tensors_must_match_the_model(models: Path) -> None:
    with pytest.raises(LoadError, match="2 inputs declared, the model has 1"):
        load_model("sklearn", models / "digits.joblib",
                   inputs=[tensor("a", "FP32", [-1, 64]), tensor("b", "FP32", [-1, 64])])
    renamed = load_model("sklearn", models / "digits.joblib",
                         inputs=[tensor("pixels", "FP64", [-1, 64])],
                         outputs=[tensor("digit", "INT32", [-1]),
                                  tensor("p", "FP32", [-1, 10])])
    x = digit_images()[0][:2].astype(np.float64)
    out = renamed.run({"pixels": x}, ["digit", "p"])
    assert out["digit"].dtype == np.int32 and out["p"].dtype == np.float32


def test_a_replica_bug_is_a_500_without_a_traceback() -> None:
    def complex_result(tensors: Any, wanted: Any) -> dict[str, np.ndarray]:
        return {"y": np.ones(2, dtype=np.complex128)}

    def missing_result(tensors: Any, wanted: Any) -> dict[str, np.ndarray]:
        return {}

    spec = ([tensor("x", "FP32", [-1])], [tensor("y", "FP32", [-1])])
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    for run, message in ((complex_result, "the model returned a tensor of numpy type complex128"),
                         (missing_result, "internal error in the replica: KeyError")):
        with serving(ready_slot("bug", LoadedModel("test", *spec, run))) as url:
            response = infer_raw(url, body, "/v2/models/bug/infer")
        assert response.status_code == 500
        assert message in response.json()["error"]
        assert "Traceback" not in response.text


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(digits: str, algorithm: str) -> None:
    images, targets = digit_images()
    given = http.InferInput("input", [1, 64], "FP32")
    given.set_data_from_numpy(images[9:10], binary_data=True)
    result = client(digits).infer("digits", [given], request_compression_algorithm=algorithm)
    assert result.as_numpy("label").tolist() == [targets[9]]


def test_compression_is_bounded_and_checked(digits: str) -> None:
    import gzip

    bomb = gzip.compress(b" " * (MAX_BODY + 10))
    assert len(bomb) < MAX_BODY
    response = infer_raw(digits, bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert response.json() == {"error": f"request body over {MAX_BODY} bytes once decompressed"}
    garbage = infer_raw(digits, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert garbage.status_code == 400 and "not valid gzip data" in garbage.json()["error"]
    other = infer_raw(digits, b"{}", headers={"Content-Encoding": "br"})
    assert other.status_code == 415 and "Content-Encoding 'br' is not supported" in other.text
