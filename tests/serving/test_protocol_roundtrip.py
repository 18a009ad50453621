"""Property: any tensor of any datatype survives encoding as a response and decoding as a
request, in JSON and in the binary extension (no HTTP here: the codec alone)."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shoal.serving.loaders import tensor
from shoal.serving.protocol import (
    NUMPY,
    InferRequest,
    RequestedOutput,
    encode_response,
    parse_request,
)
from tests.serving.replicas import DATATYPES


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        items = draw(st.lists(st.text(max_size=6), min_size=int(np.prod(shape)),
                              max_size=int(np.prod(shape))))
        array = np.empty(len(items), dtype=np.object_)
        array[:] = [item.encode() for item in items]
        return datatype, array.reshape(shape)
    elements = None
    if datatype.startswith("FP"):  # finite values: NaN is not equal to itself
        width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
        elements = st.floats(allow_nan=False, allow_infinity=False, width=width)
    return datatype, draw(hnp.arrays(NUMPY[datatype], shape, elements=elements))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(tensors(), st.booleans())
def test_a_response_tensor_reads_back_as_the_same_request_tensor(
        case: tuple[str, np.ndarray], binary: bool) -> None:
    datatype, array = case
    spec = tensor("t", datatype, [-1] * array.ndim)
    request = InferRequest(id="r", parameters={}, inputs={},
                           outputs=[RequestedOutput("t", binary)])
    body, json_length = encode_response("m", "1", request, {"t": array}, ["t"])
    head = json.loads(body[:json_length] if json_length is not None else body)
    (output,) = head["outputs"]
    assert output["shape"] == list(array.shape) and output["datatype"] == datatype
    # The response's tensor, sent back as a request's input:
    again = {"name": "t", "shape": output["shape"], "datatype": datatype}
    if binary:
        again["parameters"] = output["parameters"]
        assert json_length is not None
        raw = json.dumps({"inputs": [again]}).encode()
        decoded = parse_request(raw + body[json_length:], str(len(raw)), [spec], [spec])
    else:
        again["data"] = output["data"]
        decoded = parse_request(json.dumps({"inputs": [again]}).encode(), None, [spec], [spec])
    result = decoded.inputs["t"]
    assert result.shape == array.shape
    assert result.dtype == NUMPY[datatype]
    assert result.tolist() == array.tolist()
