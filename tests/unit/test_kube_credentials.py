"""The client's credentials: worked out once a while, not per request, and asked anew on 401.

A real HTTP server on 127.0.0.1 plays the API server: it serves the core
resource list and takes a ConfigMap only with the token it holds now, so
that a token rotated under the client is seen the way a cluster shows it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from shoal.runtime.kubernetes import client as client_module
from shoal.runtime.kubernetes.client import AUTH_REUSE_S, Kube


class _Server(ThreadingHTTPServer):
    token = "one"
    posts: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "configmaps", "namespaced": True, "kind": "ConfigMap", "verbs": ["create"]},
        ]})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        given = self.headers.get("Authorization", "")
        self.server.posts.append(given)
        if given != f"Bearer {self.server.token}":
            self._answer(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
            return
        self._answer(201, json.loads(body))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def served() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _kube(server: _Server, asked: list[str]) -> Kube:
    config = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    config.api_key_prefix = {"authorization": "Bearer"}
    config.api_key = {"authorization": "none yet"}

    def refresh(configuration: k8s.Configuration) -> None:
        # What a kubeconfig's exec plugin or a mounted token file gives: the token now.
        asked.append(server.token)
        configuration.api_key = {"authorization": server.token}

    config.refresh_api_key_hook = refresh
    return Kube(k8s.ApiClient(configuration=config))


def _config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "team"}, "data": {"k": "v"}}


def test_credentials_are_worked_out_once_while_fresh_then_again(
    served: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(client_module, "time", clock)
    asked: list[str] = []
    kube = _kube(served, asked)
    kube.discovery.kind("ConfigMap")  # the library's own call asks the hook too
    asked.clear()
    for i in range(20):
        kube.create(_config_map(f"c{i}"))
    assert len(asked) == 1
    clock.now += AUTH_REUSE_S + 0.01
    kube.create(_config_map("later"))
    assert len(asked) == 2
    assert served.posts == ["Bearer one"] * 21


def test_a_token_rotated_meanwhile_gets_401_and_the_request_goes_once_more(
    served: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "time", _Clock())  # never stale by the clock
    asked: list[str] = []
    kube = _kube(served, asked)
    kube.create(_config_map("before"))
    served.token = "two"
    made = kube.create(_config_map("after"))
    assert made["metadata"]["name"] == "after"
    assert served.posts[-2:] == ["Bearer one", "Bearer two"]
    assert asked[-1] == "two"
    assert kube.calls.snapshot()[("create", "ConfigMap")] == 2  # one request as counted
