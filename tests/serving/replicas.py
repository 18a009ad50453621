"""Helpers for the replica tests: a replica app on 127.0.0.1 in a thread, models built
in the test (nothing downloaded), and a deadline-bounded wait."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from shoal.serving.app import MAX_BODY_BYTES, ModelSlot, create_app
from shoal.serving.loaders import LoadedModel

DEADLINE_S = 120.0
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")


def wait_until(check: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """``check()``'s first truthy answer, polled until ``timeout`` (generous: busy CI)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def serving(slot: ModelSlot, max_body_bytes: int = MAX_BODY_BYTES) -> Iterator[str]:
    """The replica app for ``slot`` on a free port of 127.0.0.1; yields ``host:port``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(create_app(slot, max_body_bytes),
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the replica server to start")
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE_S)
        sock.close()


def ready_slot(name: str, model: LoadedModel, version: str = "1") -> ModelSlot:
    slot = ModelSlot(name, version)
    slot.ready(model)
    return slot


# --- models ---------------------------------------------------------------------


def train_digits(path: Path) -> Any:
    """A scikit-learn digits classifier (fixed seed), saved with joblib at ``path``."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0))
    model.fit(x, y)
    joblib.dump(model, path)
    return model


def identity_onnx(path: Path) -> None:
    """An ONNX graph with one Identity per protocol datatype: ``x_T`` -> ``y_T``."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
            "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64,
            "INT8": TensorProto.INT8, "INT16": TensorProto.INT16, "INT32": TensorProto.INT32,
            "INT64": TensorProto.INT64, "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT,
            "FP64": TensorProto.DOUBLE, "BYTES": TensorProto.STRING}
    inputs = [helper.make_tensor_value_info(f"x_{t}", elem[t], ["n", 3]) for t in DATATYPES]
    outputs = [helper.make_tensor_value_info(f"y_{t}", elem[t], ["n", 3]) for t in DATATYPES]
    nodes = [helper.make_node("Identity", [f"x_{t}"], [f"y_{t}"]) for t in DATATYPES]
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def sample(datatype: str) -> np.ndarray:
    """A [2, 3] tensor of ``datatype`` that uses its range (extremes, signs, text)."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", "\u00e9t\u00e9".encode()], [b"x y", b"42", b"z"]],
                        dtype=np.object_)
    if datatype.startswith("FP"):
        dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
        return np.array([[0.5, -1.25, 3.0], [65504.0, -0.0, 1e-3]], dtype=dtype)
    dtype = np.dtype(datatype.lower())
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)


def tiny_net() -> Any:
    """The entry point of the state-dict tests: a 4 -> 2 linear layer (``module:callable``)."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(4, 2))


class GatedEstimator:
    """A scikit-learn-like model whose ``predict`` announces itself in ``folder/started``
    and waits for ``folder/release``: a request held in flight, for shutdown tests."""

    n_features_in_ = 2

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def predict(self, x: np.ndarray) -> np.ndarray:
        Path(self.folder, "started").touch()
        wait_until(lambda: Path(self.folder, "release").exists(), "the release file")
        return np.zeros(len(x), dtype=np.int64)
