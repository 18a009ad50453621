"""The error tree: stable codes, HTTP statuses, retry semantics, and the trip across the API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from shoal import errors
from shoal.api import launch
from shoal.api.client import ShoalClient, error_from
from shoal.api.server import create_app
from shoal.app.core import App
from shoal.testing import FakeClock

CLASSES = errors.error_classes()


def test_every_class_has_its_own_code() -> None:
    codes = [cls.code for cls in CLASSES]
    assert len(codes) == len(set(codes))
    assert errors.ConflictError in CLASSES and errors.StoreBusyError in CLASSES


@pytest.mark.parametrize("cls", CLASSES, ids=[c.code for c in CLASSES])
def test_every_code_comes_back_as_its_class(cls: type[errors.ShoalError]) -> None:
    body = {"error": {"code": cls.code, "message": "boom", "retryable": cls.retry == "after",
                      "retry_after_s": 2.0 if cls.retry == "after" else None}}
    error = error_from(httpx.Response(cls.http_status, json=body))
    assert type(error) is cls and error.message == "boom"
    assert error.retryable == (cls.retry == "after")


def test_an_unknown_code_falls_back_on_the_status() -> None:
    body = {"error": {"code": "from_a_newer_server", "message": "later"}}
    assert type(error_from(httpx.Response(503, json=body))) is errors.UnavailableError
    assert type(error_from(httpx.Response(409, json=body))) is errors.ConflictError


def test_retry_semantics() -> None:
    assert errors.ConflictError("x").retryable
    assert not errors.AlreadyExistsError("x").retryable
    assert errors.StoreBusyError("x").retry_after_s == 1.0
    assert not errors.InputError("x").retryable and errors.InputError.exit_code == 2
    with pytest.raises(errors.ConflictError):  # callers catch by type
        raise errors.ImmutableError("x")


class _BusyStore:
    def resolve_token(self, token: str, now: float | None = None) -> Any:
        raise errors.StoreBusyError("the state store is busy", retry_after_s=3.0)


@pytest.fixture
def busy_url() -> Iterator[str]:
    core = App(store=_BusyStore(), workspace=None, clock=FakeClock())  # type: ignore[arg-type]
    sock = launch.listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(core, lambda: {"status": "ok"}),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    tick = threading.Event()
    while not server.started:
        assert thread.is_alive()
        tick.wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_a_temporary_error_is_503_with_retry_after(busy_url: str) -> None:
    response = httpx.get(f"{busy_url}/v1/jobs", headers={"Authorization": "Bearer t"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert response.json() == {"error": {"code": "store_busy", "message": "the state store is busy",
                                         "retryable": True, "retry_after_s": 3.0}}
    with ShoalClient(busy_url, "t") as api, pytest.raises(errors.StoreBusyError) as caught:
        api.jobs()
    assert caught.value.retryable and caught.value.retry_after_s == 3.0


def test_an_unreachable_plane_is_a_temporary_error() -> None:
    url = f"http://127.0.0.1:{launch.free_port()}"
    with ShoalClient(url, None, timeout=2) as api, pytest.raises(errors.UnreachableError) as caught:
        api.health()
    assert caught.value.retryable
