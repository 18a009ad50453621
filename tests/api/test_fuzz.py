"""A bounded, deterministic fuzz of the REST API: hostile requests never get a 5xx.

Random routes, tokens, query parameters, JSON bodies (wrong types, huge,
negative and NaN numbers, long strings, NUL, control characters and lone
surrogates), raw bytes and random YAML through ``/v1/apply``.  Every answer
is under 500, every error has the ``{"error": {"code", "message", ...}}``
shape, and the server still answers ``/healthz`` afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.api import launch
from shoal.api.client import ShoalClient

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

ROUTES = [("GET", "/v1/health"), ("POST", "/v1/apply"), ("GET", "/v1/jobs"),
          ("GET", "/v1/jobs/{name}"), ("DELETE", "/v1/jobs/{name}"),
          ("GET", "/v1/jobs/{name}/logs"), ("GET", "/v1/events"), ("GET", "/v1/tenants"),
          ("GET", "/v1/nodes"), ("POST", "/v1/tokens"), ("GET", "/healthz"),
          ("PUT", "/v1/jobs/{name}"), ("GET", "/v2/{name}")]
PARAMS = ["pod", "offset", "limit", "follow", "since", "tenant", "role"]

# Every character, lone surrogates included (they survive JSON as \ud800).
anything = st.characters(codec=None, categories=None)
texts = st.one_of(st.text(max_size=30), st.text(anything, max_size=30),
                  st.sampled_from(["", "\x00", "a\x00b", "\ud800", "../../etc", "x" * 5000,
                                   "team-a", "one", "-1", "NaN", "1e400"]))
numbers = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 2**62, 2**63, 10**30, float("nan")]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
bodies = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={"source": values, "text": values, "files": values,
                                        "tenant": values, "role": values, "extra": values}),
)
query_values = st.one_of(texts, numbers.map(str), st.sampled_from(["true", "false", "1e3"]))

YAML_WORDS = ["apiVersion: shoal.dev/v1alpha1\n", "kind: TrainingJob\n", "kind: Tenant\n",
              "kind: NodePool\n", "metadata: {name: x}\n", "spec:\n", "  tenant: team-a\n",
              "  podSets: [{count: 1e9}]\n", "  priority: .nan\n", "  weight: .inf\n",
              "---\n", "- [\n", "{", "&a [*a]\n", "!!python/object:os.system\n", "\x00",
              "  quota: {cpu: {nominal: -1}}\n", "  count: 99999999999999999999999\n",
              "metadata: {name: \"\\ud800\"}\n", "key: key\nkey: again\n", "\t", ": :\n"]
yaml_texts = st.one_of(st.text(max_size=200), st.text(anything, max_size=100),
                       st.lists(st.sampled_from(YAML_WORDS), max_size=12).map("".join))


@pytest.fixture
def fuzz_client(plane: launch.Running, admin: ShoalClient) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    tokens = {"admin": plane.token, "tenant": admin.create_token("team-a"),
              "garbage": "not-a-token\x7f"}
    with httpx.Client(base_url=plane.url, timeout=30) as http:
        yield http, tokens
        assert http.get("/healthz").json() == {"status": "ok"}


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), body
        assert {"retryable", "retry_after_s"} <= set(error), body


def _send(http: httpx.Client, method: str, path: str, token: str | None,
          params: dict[str, str] | None = None, content: bytes | None = None) -> None:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    query = "&".join(f"{k}={_quote(v)}" for k, v in (params or {}).items())
    url = f"{path}?{query}" if query else path
    _check(http.request(method, url, content=content, headers=headers))


def _quote(text: str) -> str:
    """Percent-encoded, lone surrogates as the (invalid) UTF-8 bytes they would be."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity as JS literals


@FUZZ
@given(route=st.sampled_from(ROUTES), name=texts, who=st.sampled_from(["admin", "tenant",
                                                                      "garbage", None]),
       params=st.dictionaries(st.sampled_from(PARAMS), query_values, max_size=4),
       body=st.one_of(st.none(), bodies.map(_encode), st.binary(max_size=200)))
def test_any_request(fuzz_client: tuple[httpx.Client, dict[str, str]], route: tuple[str, str],
                     name: str, who: str | None, params: dict[str, str],
                     body: bytes | None) -> None:
    http, tokens = fuzz_client
    method, template = route
    path = template.replace("{name}", _quote(name))
    if method == "GET" and route[1].endswith("/logs"):
        params.pop("follow", None)  # a follow stream of a running job would not end
    _send(http, method, path, tokens.get(who or ""), params, body)


@FUZZ
@given(text=yaml_texts, source=texts, who=st.sampled_from(["admin", "tenant", None]),
       several=st.booleans())
def test_any_yaml_through_apply(fuzz_client: tuple[httpx.Client, dict[str, str]], text: str,
                                source: str, who: str | None, several: bool) -> None:
    http, tokens = fuzz_client
    body: dict[str, Any] = ({"files": [{"source": source, "text": text}, {"text": text}]}
                            if several else {"source": source, "text": text})
    _send(http, "POST", "/v1/apply", tokens.get(who or ""), content=_encode(body))
