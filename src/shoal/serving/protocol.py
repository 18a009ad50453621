"""Open Inference Protocol v2 bodies <-> numpy tensors, with the binary tensor extension.

A request is JSON (``{id?, parameters?, inputs, outputs?}``), optionally
followed by raw tensor bytes: the ``Inference-Header-Content-Length`` header
then says how long the JSON part is, and each input carried in binary has
``parameters.binary_data_size`` instead of ``data``.  Binary tensors are
little-endian, row-major; a BYTES element is a 4-byte little-endian length
and its bytes.  Responses use the same layout for the outputs requested with
``binary_data`` (or all of them, with the request parameter
``binary_data_output``).

Every problem with a body is a ``ProtocolError`` with the HTTP status and a
message that names the tensor and what was expected; nothing here raises
anything else on bad input.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.domain.service import DATATYPES, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The header that says how many bytes of the body are JSON (binary extension)."""

NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
"""The numpy dtype each datatype is held in (BYTES: an object array of ``bytes``)."""

_INTEGERS = {name for name in DATATYPES if "INT" in name}
_NARROW = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}
"""Largest finite magnitude of the float types narrower than JSON's numbers."""
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}
_OUTPUT_KEYS = {"name", "parameters"}


class ProtocolError(Exception):
    """A request the replica cannot answer; ``status`` is the HTTP status to send."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded request: tensors by name, in the order they were sent."""

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_outputs: bool = False


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of a numpy array; ProtocolError for one it has none for."""
    kind = array.dtype
    if kind == np.object_ or kind.kind in ("S", "U"):
        return "BYTES"
    for name, dtype in NUMPY.items():
        if name != "BYTES" and kind == dtype:
            return name
    raise ProtocolError(f"the model returned a tensor of numpy type {kind}, which the "
                        "protocol cannot carry", status=500)


# --- requests ------------------------------------------------------------------


def parse_request(body: bytes, header_length: str | None,
                  inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> InferRequest:
    """Decode and check ``body`` against the model's declared tensors."""
    json_part, binary = _split(body, header_length)
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed request body: not JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("malformed request body: JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise ProtocolError("malformed request body: expected a JSON object with 'inputs'")
    _no_unknown(document, _REQUEST_KEYS, "request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id: expected a string")
    parameters = _parameters(document.get("parameters"), "parameters")
    declared = {spec.name: spec for spec in inputs}
    tensors = _inputs(document.get("inputs"), declared, binary)
    requested = _requested(document.get("outputs"), {spec.name for spec in outputs})
    return InferRequest(
        id=request_id, parameters=parameters, inputs=tensors, outputs=requested,
        binary_outputs=parameters.get("binary_data_output") is True,
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH}: expected the length of the JSON part (at most {len(body)}), "
            f"got {header_length!r}")
    length = int(text)
    return body[:length], body[length:]


def _no_unknown(document: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(document) - known)
    if unknown:
        raise ProtocolError(f"{where}: unknown field {unknown[0]!r}; expected "
                            f"{', '.join(sorted(known))}")


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected an object")
    return value


def _inputs(value: object, declared: Mapping[str, TensorSpec],
            binary: bytes) -> dict[str, np.ndarray]:
    if not isinstance(value, list) or not value:
        raise ProtocolError("inputs: expected a non-empty list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(value):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where}: expected an object with name, shape, datatype, data")
        _no_unknown(item, _INPUT_KEYS, where)
        name = item.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{where}.name: expected a string")
        spec = declared.get(name)
        if spec is None:
            raise ProtocolError(f"input {name!r}: the model has no such input "
                                f"(inputs: {', '.join(declared)})")
        if name in tensors:
            raise ProtocolError(f"input {name!r} is given twice")
        shape = _shape(item.get("shape"), spec)
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            raise ProtocolError(f"input {name!r}: expected datatype {spec.datatype}, "
                                f"got {datatype!r}")
        parameters = _parameters(item.get("parameters"), f"input {name!r} parameters")
        size = parameters.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise ProtocolError(f"input {name!r}: both data and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the "
                                    f"end of the body ({len(binary) - offset} bytes left)")
            tensors[name] = _from_binary(binary[offset:offset + size], spec.datatype, shape, name)
            offset += size
        elif "data" in item:
            tensors[name] = _from_json(item["data"], spec.datatype, shape, name)
        else:
            raise ProtocolError(f"input {name!r}: expected data (or binary_data_size)")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [name for name in declared if name not in tensors]
    if missing:
        raise ProtocolError(f"input {missing[0]!r} is missing")
    return tensors


def _shape(value: object, spec: TensorSpec) -> tuple[int, ...]:
    where = f"input {spec.name!r}"
    if not isinstance(value, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value):
        raise ProtocolError(f"{where}: shape must be a list of sizes >= 0, got {value!r}")
    if len(value) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, value, strict=True)):
        raise ProtocolError(f"{where}: expected shape {spec.shape} (-1: any size), got {value}")
    return tuple(value)


def _from_json(data: object, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    flat = _flatten(data, name)
    count = math.prod(shape)
    if len(flat) != count:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} holds {count} elements, "
                            f"data has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        array = np.empty(count, dtype=np.object_)
        array[:] = [x.encode("utf-8") for x in flat]
        return array.reshape(shape)
    if datatype == "BOOL":
        if not all(isinstance(x, bool) for x in flat):
            raise ProtocolError(f"input {name!r}: BOOL data must be true or false")
    elif datatype in _INTEGERS:
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
            raise ProtocolError(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(NUMPY[datatype])
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise ProtocolError(f"input {name!r}: {datatype} holds {info.min} to {info.max}")
    elif not all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat):
        raise ProtocolError(f"input {name!r}: {datatype} data must be numbers")
    if datatype not in _NARROW:  # values are checked to fit: a direct conversion
        return np.array(flat, dtype=NUMPY[datatype]).reshape(shape)
    wide = np.array(flat, dtype=np.float64)
    if np.any(np.abs(wide[np.isfinite(wide)]) > _NARROW[datatype]):
        raise ProtocolError(f"input {name!r}: {datatype} holds magnitudes up to "
                            f"{_NARROW[datatype]:g}")
    return wide.astype(NUMPY[datatype]).reshape(shape)


def _flatten(data: object, name: str) -> list[Any]:
    """Row-major elements of ``data``, which may be flat or nested lists."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_binary(raw: bytes, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _unpack_bytes(raw, name)
        if len(items) != count:
            raise ProtocolError(f"input {name!r}: shape {list(shape)} holds {count} elements, "
                                f"binary data has {len(items)}")
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    dtype = NUMPY[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} of {datatype} takes "
                            f"{count * dtype.itemsize} bytes, binary data has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _unpack_bytes(raw: bytes, name: str) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element length cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {name!r}: a BYTES element runs past its data")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def _requested(value: object, known: set[str]) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError("outputs: expected a list of {name, parameters?}")
    requested: list[RequestedOutput] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{index}]: expected an object with a name")
        _no_unknown(item, _OUTPUT_KEYS, f"outputs[{index}]")
        name = item["name"]
        if name not in known:
            raise ProtocolError(f"output {name!r}: the model has no such output "
                                f"(outputs: {', '.join(sorted(known))})")
        parameters = _parameters(item.get("parameters"), f"output {name!r} parameters")
        requested.append(RequestedOutput(name, parameters.get("binary_data") is True))
    return requested


# --- responses -----------------------------------------------------------------


def encode_response(
    model: str, version: str, request: InferRequest, results: Mapping[str, np.ndarray],
    order: Sequence[str],
) -> tuple[bytes, int | None]:
    """``(body, JSON length or None)``: None when the body is JSON only."""
    if request.outputs is None:
        wanted = [RequestedOutput(name, request.binary_outputs) for name in order]
    else:
        wanted = request.outputs
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in wanted:
        array = np.asarray(results[output.name])
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": output.name, "datatype": datatype,
                                  "shape": list(array.shape)}
        if output.binary:
            blob = _to_binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = _to_json(array, datatype, output.name)
        outputs.append(tensor)
    document = {"model_name": model, "model_version": version,
                "id": request.id if request.id is not None else uuid.uuid4().hex,
                "outputs": outputs}
    head = json.dumps(document, allow_nan=True, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_json(array: np.ndarray, datatype: str, name: str) -> list[Any]:
    flat = array.reshape(-1)
    if datatype != "BYTES":
        values: list[Any] = flat.tolist()
        return values
    try:
        return [_as_bytes(x).decode("utf-8") for x in flat]
    except UnicodeDecodeError:
        raise ProtocolError(f"output {name!r} holds bytes that are not UTF-8 text; request "
                            "it with parameters {\"binary_data\": true}") from None


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=NUMPY[datatype]).tobytes()
    parts = []
    for item in array.reshape(-1):
        raw = _as_bytes(item)
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    return str(item).encode("utf-8")


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
