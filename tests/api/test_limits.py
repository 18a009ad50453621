"""What a hostile caller cannot make the server do: read a huge log whole,
or buffer a huge body before its token is checked."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.api import launch, server
from shoal.api.client import ShoalClient
from shoal.app.queries import MAX_LOG_CHUNK
from shoal.domain.phases import FINAL_PHASES
from shoal.errors import InputError
from tests.control.conftest import job, phase, wait_for

QUICK = ["python", "-c", "print('hello')"]
MiB = 1024 * 1024


def _finished_job(plane: launch.Running, admin: ShoalClient, name: str, content: bytes) -> Path:
    """A finished job whose pod 0 log is ``content`` (written where the workspace reads it)."""
    admin.apply_text(job(name, "team-a", QUICK), "j.yaml")
    wait_for(lambda: phase(admin, name) in FINAL_PHASES, timeout=60)
    path = plane.plane.log_path(f"team-a/{name}", 0)  # the job's key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _pattern(size: int) -> bytes:
    # Multibyte characters and invalid UTF-8 straddle the page boundaries.
    unit = "é€😀 line\n".encode() + b"\xff\xfe"
    return (unit * (size // len(unit) + 1))[:size]


def test_a_20_mb_log_comes_in_capped_pages(plane: launch.Running, admin: ShoalClient) -> None:
    size = 20 * MiB
    content = os.urandom(size)
    expected = hashlib.sha256(content).hexdigest()
    _finished_job(plane, admin, "big", content)
    del content
    headers = {"Authorization": f"Bearer {plane.token}"}
    digest, offset, pages = hashlib.sha256(), 0, 0
    with httpx.Client(base_url=plane.url, headers=headers, timeout=30) as http:
        tracemalloc.start()
        try:
            while True:
                # Asking for more than the cap gets the cap.
                response = http.get("/v1/jobs/big/logs", params={"offset": offset,
                                                                  "limit": 10**12})
                assert response.status_code == 200, response.text
                assert len(response.content) <= MAX_LOG_CHUNK
                if not response.content:
                    break
                digest.update(response.content)
                offset += len(response.content)
                assert int(response.headers[server.NEXT_OFFSET]) == offset
                pages += 1
                del response
                gc.collect()  # httpx's responses are freed by the collector
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert offset == size and digest.hexdigest() == expected
    assert pages == size // MAX_LOG_CHUNK
    # Server and client together held a few pages at most, never the log.
    assert peak < 6 * MiB, f"peak {peak} bytes allocated while paging"


def test_limit_and_offset(plane: launch.Running, admin: ShoalClient) -> None:
    _finished_job(plane, admin, "small", b"0123456789")
    headers = {"Authorization": f"Bearer {plane.token}"}
    url = f"{plane.url}/v1/jobs/small/logs"
    part = httpx.get(url, params={"offset": 3, "limit": 4}, headers=headers)
    assert part.content == b"3456" and part.headers[server.NEXT_OFFSET] == "7"
    end = httpx.get(url, params={"offset": 10}, headers=headers)
    assert end.content == b"" and end.headers[server.NEXT_OFFSET] == "10", "nothing new yet"
    # Past the end: the log was rotated (truncated) since; it is read from its new start.
    past = httpx.get(url, params={"offset": 100}, headers=headers)
    assert past.content == b"0123456789" and past.headers[server.NEXT_OFFSET] == "10"
    for params in ({"offset": -1}, {"offset": 10**30}, {"limit": 0}, {"limit": "x"}):
        bad = httpx.get(url, params=params, headers=headers)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["code"] == "invalid_input"


def test_the_client_reassembles_pages(plane: launch.Running, admin: ShoalClient) -> None:
    content = _pattern(3 * MiB + 12345)
    _finished_job(plane, admin, "paged", content)
    pages = list(admin.iter_log("paged"))
    assert len(pages) == 4 and all(len(p) <= MAX_LOG_CHUNK for p in pages)
    assert b"".join(pages) == content
    assert admin.logs("paged") == content.decode(errors="replace")
    assert admin.logs("paged", limit_bytes=10) == content[:10].decode(errors="replace")
    followed = "".join(admin.follow_logs("paged"))  # the job has ended: stops at the end
    assert followed == content.decode(errors="replace")


def test_shoal_logs_pages(plane: launch.Running, admin: ShoalClient,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from shoal.cli import jobs

    content = _pattern(2 * MiB + 7)
    _finished_job(plane, admin, "printed", content)
    jobs.logs("printed", server=plane.url, token=plane.token)
    assert capsys.readouterr().out == content.decode(errors="replace")
    jobs.logs("printed", limit_bytes=5, server=plane.url, token=plane.token)
    assert capsys.readouterr().out == content[:5].decode(errors="replace")
    with pytest.raises(InputError, match="limit-bytes"):
        jobs.logs("printed", follow=True, limit_bytes=5, server=plane.url, token=plane.token)


# -- bodies ---------------------------------------------------------------------------


def _raw(plane: launch.Running, head: str) -> bytes:
    """Send only a request's head (declaring a body it never sends); the answer."""
    host, port = plane.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)  # times out (fails) if the server waits for the body
            if not data:
                break
            answer += data
        return answer


@pytest.mark.parametrize("auth", ["", "Authorization: Bearer not-a-token\r\n",
                                  "Authorization: Basic abc\r\n"])
def test_no_token_is_401_before_the_body(plane: launch.Running, auth: str) -> None:
    answer = _raw(plane, f"POST /v1/apply HTTP/1.1\r\nHost: x\r\n{auth}"
                         "Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_declared_body_over_the_limit_is_413_before_reading(plane: launch.Running) -> None:
    answer = _raw(plane, f"POST /v1/apply HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {plane.token}\r\n"
                         "Content-Type: application/json\r\n"
                         f"Content-Length: {server.MAX_BODY_BYTES + 1}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


class _Body:
    """100 MB of chunks, counting what the server made us send."""

    def __init__(self, total: int = 100 * MiB) -> None:
        self.total, self.sent = total, 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"x" * (256 * 1024)
        while self.sent < self.total:
            self.sent += len(chunk)
            yield chunk


def _post_streamed(plane: launch.Running, token: str | None) -> tuple[int | None, _Body]:
    body = _Body()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.post(f"{plane.url}/v1/apply", content=iter(body), headers=headers,
                              timeout=30)
    except httpx.TransportError:
        return None, body  # the server answered and closed the connection mid-body
    return response.status_code, body


def test_a_streamed_body_without_a_token_stops_early(plane: launch.Running) -> None:
    status, body = _post_streamed(plane, None)
    assert status in (401, None)
    assert body.sent < body.total


def test_a_streamed_body_over_the_limit_stops_early(plane: launch.Running) -> None:
    status, body = _post_streamed(plane, plane.token)
    assert status in (413, None)
    assert body.sent < body.total


def test_an_authenticated_small_body_still_works(plane: launch.Running) -> None:
    headers = {"Authorization": f"Bearer {plane.token}"}
    response = httpx.post(f"{plane.url}/v1/apply", json={"text": ""}, headers=headers)
    assert response.status_code == 200 and response.json() == {"applied": []}
    assert httpx.get(f"{plane.url}/healthz").status_code == 200


@pytest.mark.parametrize("text", [
    "\n".join(
        ["apiVersion: shoal.dev/v1alpha1", "kind: TrainingJob", "metadata: {name: t}", "spec:",
         "  tenant: team-a", "  podSets: [{count: 1}]", "  command:", '    - &x0 ["xxxxxxxx"]']
        + [f"    - &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, 13)]),
    "a: &a [*a]\n",
    "[" * 5000 + "]" * 5000,
    "a: \0b\n",
    "a: \ud800\n",
])
def test_hostile_yaml_is_a_400_not_a_busy_server(plane: launch.Running, text: str) -> None:
    """An alias bomb (9**12 strings), a self-reference, deep nesting, NUL, a lone surrogate."""
    headers = {"Authorization": f"Bearer {plane.token}"}
    # json.dumps escapes a lone surrogate (\ud800), as a hostile client may send it.
    body = json.dumps({"text": text, "source": "hostile.yaml"}).encode()
    headers["Content-Type"] = "application/json"
    with httpx.Client(base_url=plane.url, headers=headers, timeout=30) as http:
        answer = http.post("/v1/apply", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] in ("invalid_manifest", "invalid_input"), answer.text
        assert http.get("/v1/jobs").json() == {"jobs": []}, "nothing applied"
