"""The HTTP client of the control plane: the only way the CLI talks to it.

Error bodies come back as the same error classes the server raised (by their
stable code), so the CLI prints the server's one clear line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shoal import errors

_BY_CODE: dict[str, type[errors.ShoalError]] = {
    cls.code: cls
    for cls in (
        errors.InputError, errors.ManifestError, errors.TraceError,
        errors.UnknownReferenceError, errors.NotFoundError, errors.Unauthorized,
        errors.Forbidden, errors.ConflictError, errors.InternalError,
    )
}


class ShoalClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ShoalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.ShoalError(
                f"cannot reach the control plane at {self.http.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise _error(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/healthz")
        return result

    def apply(self, path: Path) -> list[dict[str, str]]:
        try:
            text = path.read_text()
        except OSError as exc:
            raise errors.InputError(f"{path}: cannot read ({exc.strerror})") from exc
        result = self._call("POST", "/v1/apply", json={"source": str(path), "text": text})
        applied: list[dict[str, str]] = result["applied"]
        return applied

    def apply_text(self, text: str, source: str) -> list[dict[str, str]]:
        result = self._call("POST", "/v1/apply", json={"source": source, "text": text})
        applied: list[dict[str, str]] = result["applied"]
        return applied

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._call("GET", "/v1/jobs")["jobs"]
        return jobs

    def job(self, name: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/v1/jobs/{name}")
        return job

    def delete(self, name: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("DELETE", f"/v1/jobs/{name}")
        return job

    def logs(self, name: str, pod: int = 0) -> str:
        text: str = self._call("GET", f"/v1/jobs/{name}/logs", params={"pod": pod})
        return text

    def follow_logs(self, name: str, pod: int = 0) -> Iterator[str]:
        params: dict[str, str | int] = {"pod": pod, "follow": "true"}
        with self.http.stream("GET", f"/v1/jobs/{name}/logs", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                raise _error(r)
            yield from r.iter_text()

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._call("GET", "/v1/events", params={"since": since})[
            "events"
        ]
        return events

    def tenants(self) -> dict[str, Any]:
        tenants: dict[str, Any] = self._call("GET", "/v1/tenants")["tenants"]
        return tenants

    def nodes(self) -> dict[str, Any]:
        nodes: dict[str, Any] = self._call("GET", "/v1/nodes")["nodes"]
        return nodes

    def create_token(self, tenant: str | None, role: str = "tenant") -> str:
        token: str = self._call("POST", "/v1/tokens", json={"tenant": tenant, "role": role})[
            "token"
        ]
        return token


_BY_CODE["already_exists"] = errors.InputError


def _error(response: httpx.Response) -> errors.ShoalError:
    try:
        body = response.json()["error"]
        cls = _BY_CODE.get(body["code"], errors.ShoalError)
        return cls(body["message"])
    except (ValueError, KeyError, TypeError):
        return errors.ShoalError(f"HTTP {response.status_code}: {response.text[:200]}")
