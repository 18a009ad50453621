"""The replica's HTTP API: the Open Inference Protocol v2 for the one model it serves.

Paths: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server
metadata), ``GET /v2/models/{m}[/versions/{v}]`` (model metadata),
``GET /v2/models/{m}[/versions/{v}]/ready``, ``POST .../infer``.

Every error is ``{"error": "..."}``: 400 for a body the model cannot take,
404 for another model or version (or another path), 405 for a wrong method,
413 for a body over ``max_body_bytes`` (before or after decompression), 415
for a ``Content-Encoding`` other than gzip or deflate, 503 while the model loads or after it
failed to load (the loader's error is the message).  Nothing answers a
traceback: an unexpected exception is a 500 whose message names its type.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

import shoal
from shoal.serving.loaders import LoadedModel, ModelError
from shoal.serving.protocol import HEADER_LENGTH, ProtocolError, encode_response, parse_request

SERVER_NAME = "shoal-replica"
EXTENSIONS = ["binary_tensor_data"]
"""Protocol extensions this server implements (what ``GET /v2`` lists)."""
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Default largest request body, in bytes (``--max-body-bytes``)."""


@dataclass
class ModelSlot:
    """The one model of a replica: loading, ready or failed (with the loader's error)."""

    name: str
    version: str
    model: LoadedModel | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def ready(self, model: LoadedModel) -> None:
        with self._lock:
            self.model, self.error = model, None

    def failed(self, error: str) -> None:
        with self._lock:
            self.model, self.error = None, error

    def loaded(self) -> LoadedModel:
        """The model, or ProtocolError 503 saying why there is none."""
        model, error = self.model, self.error
        if model is not None:
            return model
        if error is not None:
            raise ProtocolError(f"model {self.name!r} failed to load: {error}", status=503)
        raise ProtocolError(f"model {self.name!r} is loading", status=503)


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    headers = {"Connection": "close"} if close else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(slot: ModelSlot, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The replica's ASGI app for the model in ``slot``."""
    app = FastAPI(title=SERVER_NAME, openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(ProtocolError)
    async def _protocol(request: Request, exc: ProtocolError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, f"no such path: {request.method} {request.url.path}")
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"bad request: {exc.errors()[0].get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error in the replica: {type(exc).__name__}")

    def find(model: str, version: str | None) -> None:
        if model != slot.name:
            raise ProtocolError(f"unknown model {model!r}; this replica serves {slot.name!r}",
                                status=404)
        if version is not None and version != slot.version:
            raise ProtocolError(f"model {model!r} has no version {version!r} "
                                f"(versions: {slot.version})", status=404)

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        slot.loaded()
        return {"ready": True}

    @app.get("/v2")
    def server() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": shoal.__version__, "extensions": EXTENSIONS}

    def metadata(model: str, version: str | None) -> dict[str, Any]:
        find(model, version)
        loaded = slot.loaded()
        return {
            "name": slot.name, "versions": [slot.version], "platform": loaded.platform,
            "inputs": [t.model_dump() for t in loaded.inputs],
            "outputs": [t.model_dump() for t in loaded.outputs],
        }

    def model_ready(model: str, version: str | None) -> dict[str, Any]:
        find(model, version)
        slot.loaded()
        return {"name": slot.name, "ready": True}

    async def infer(request: Request, model: str, version: str | None) -> Response:
        find(model, version)
        loaded = slot.loaded()
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return _error(413, f"request body over {max_body_bytes} bytes", close=True)
        body = _decompress(body, request.headers.get("content-encoding"), max_body_bytes)
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH),
                               loaded.inputs, loaded.outputs)
        names = [t.name for t in loaded.outputs]
        wanted = names if parsed.outputs is None else [o.name for o in parsed.outputs]
        try:
            results = await run_in_threadpool(loaded.run, parsed.inputs, wanted)
        except ModelError as exc:
            raise ProtocolError(f"model {slot.name!r} failed on this input: {exc}") from exc
        content, json_length = encode_response(slot.name, slot.version, parsed, results, names)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})

    @app.get("/v2/models/{model}")
    def get_metadata(model: str) -> dict[str, Any]:
        return metadata(model, None)

    @app.get("/v2/models/{model}/versions/{version}")
    def get_version_metadata(model: str, version: str) -> dict[str, Any]:
        return metadata(model, version)

    @app.get("/v2/models/{model}/ready")
    def get_ready(model: str) -> dict[str, Any]:
        return model_ready(model, None)

    @app.get("/v2/models/{model}/versions/{version}/ready")
    def get_version_ready(model: str, version: str) -> dict[str, Any]:
        return model_ready(model, version)

    @app.post("/v2/models/{model}/infer")
    async def post_infer(request: Request, model: str) -> Response:
        return await infer(request, model, None)

    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def post_version_infer(request: Request, model: str, version: str) -> Response:
        return await infer(request, model, version)

    return app


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate, as tritonclient
    sends with ``request_compression_algorithm``); at most ``limit`` bytes once
    decompressed, so a small compressed body cannot expand without bound."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; send the body "
                            "uncompressed, gzip or deflate", status=415)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if name == "gzip" else zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"malformed request body: not valid {name} data ({exc})") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"request body over {limit} bytes once decompressed", status=413)
    return plain


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
