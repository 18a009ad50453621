"""The HTTP client of the control plane: the only way the CLI talks to it.

Error bodies come back as the same error classes the server raised: the
class is found by its stable code in a table built from the error tree (or,
for a code this client does not know, by the HTTP status), so callers catch
by type and the CLI prints the server's one clear line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from shoal import errors

NEXT_OFFSET = "X-Shoal-Next-Offset"

_BY_CODE: dict[str, type[errors.ShoalError]] = {cls.code: cls for cls in errors.error_classes()}
_BY_STATUS: dict[int, type[errors.ShoalError]] = {}
for _cls in errors.error_classes():  # base classes come first: the most general wins
    _BY_STATUS.setdefault(_cls.http_status, _cls)


class ShoalClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise errors.InputError(f"invalid control plane URL {base_url!r}: {exc}") from exc

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ShoalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, or the error its body (or the failed connection) stands for."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.InvalidURL as exc:
            raise errors.InputError(
                f"invalid control plane URL {self.http.base_url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise errors.UnreachableError(
                f"cannot reach the control plane at {self.http.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise error_from(response)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/healthz")
        return result

    def apply_text(self, text: str, source: str) -> list[dict[str, str]]:
        """Apply every document of ``text`` or none; each item has kind, name and result."""
        result = self._call("POST", "/v1/apply", json={"source": source, "text": text})
        applied: list[dict[str, str]] = result["applied"]
        return applied

    def apply_files(self, files: list[tuple[str, str]]) -> list[dict[str, str]]:
        """Apply every document of every ``(source, text)`` together, or none."""
        body = {"files": [{"source": source, "text": text} for source, text in files]}
        applied: list[dict[str, str]] = self._call("POST", "/v1/apply", json=body)["applied"]
        return applied

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._call("GET", "/v1/jobs")["jobs"]
        return jobs

    def job(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        """A job by name; ``tenant`` when several tenants have one of that name (admin)."""
        job: dict[str, Any] = self._call("GET", f"/v1/jobs/{_segment(name)}",
                                         params=_tenant(tenant))
        return job

    def delete(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        job: dict[str, Any] = self._call("DELETE", f"/v1/jobs/{_segment(name)}",
                                         params=_tenant(tenant))
        return job

    def services(self) -> list[dict[str, Any]]:
        services: list[dict[str, Any]] = self._call("GET", "/v1/services")["services"]
        return services

    def service(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/v1/services/{_segment(name)}",
                                           params=_tenant(tenant))
        return found

    def delete_service(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = self._call("DELETE", f"/v1/services/{_segment(name)}",
                                           params=_tenant(tenant))
        return found

    def rollout(self, name: str, action: str, tenant: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = self._call("POST", f"/v1/services/{_segment(name)}/rollout",
                                           params=_tenant(tenant), json={"action": action})
        return found

    def infer(self, url: str, model: str, body: bytes) -> tuple[int, Any]:
        """POST an OIP v2 infer request to a service's router with this client's token."""
        headers = {"Content-Type": "application/json"}
        token = self.http.headers.get("Authorization")
        if token:
            headers["Authorization"] = token
        try:
            response = httpx.post(f"{url}/v2/models/{_segment(model)}/infer", content=body,
                                  headers=headers, timeout=self.http.timeout)
        except httpx.HTTPError as exc:
            raise errors.UnreachableError(f"cannot reach the service at {url}: {exc}") from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": response.text[:1000]}

    def log_page(self, name: str, pod: int = 0, offset: int = 0,
                 limit: int | None = None, tenant: str | None = None) -> tuple[bytes, int]:
        """One read of a pod's log: its bytes from ``offset`` (at most ``limit``,
        and at most the server's cap) and the offset to read next."""
        params: dict[str, str | int] = {"pod": pod, "offset": offset, **_tenant(tenant)}
        if limit is not None:
            params["limit"] = limit
        response = self._send("GET", f"/v1/jobs/{_segment(name)}/logs", params=params)
        data = response.content
        try:
            following = int(response.headers.get(NEXT_OFFSET, offset + len(data)))
        except ValueError:
            following = offset + len(data)
        return data, following

    def iter_log(self, name: str, pod: int = 0, offset: int = 0,
                 limit_bytes: int | None = None, tenant: str | None = None) -> Iterator[bytes]:
        """A pod's log from ``offset`` to its current end (or ``limit_bytes``),
        page by page: never the whole log in one response."""
        left = limit_bytes
        while left is None or left > 0:
            data, offset = self.log_page(name, pod, offset, left, tenant)
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data

    def logs(self, name: str, pod: int = 0, limit_bytes: int | None = None,
             tenant: str | None = None) -> str:
        """A pod's whole log (or its first ``limit_bytes``), read page by page."""
        pages = self.iter_log(name, pod, 0, limit_bytes, tenant)
        return b"".join(pages).decode(errors="replace")

    def follow_logs(self, name: str, pod: int = 0, tenant: str | None = None) -> Iterator[str]:
        params: dict[str, str | int] = {"pod": pod, "follow": "true", **_tenant(tenant)}
        try:
            with self.http.stream(
                "GET", f"/v1/jobs/{_segment(name)}/logs", params=params, timeout=None
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise error_from(r)
                yield from r.iter_text()
        except httpx.HTTPError as exc:
            raise errors.UnreachableError(
                f"lost the control plane at {self.http.base_url}: {exc}"
            ) from exc

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        result = self._call("GET", "/v1/events", params={"since": since})
        events: list[dict[str, Any]] = result["events"]
        return events

    def tenants(self) -> dict[str, Any]:
        """Tenant specs by name."""
        tenants: dict[str, Any] = self._call("GET", "/v1/tenants")["tenants"]
        return tenants

    def tenant_status(self) -> list[dict[str, Any]]:
        """Per tenant: cohort, nominal quota, usage, borrowed, pending and running jobs."""
        status: list[dict[str, Any]] = self._call("GET", "/v1/tenants")["status"]
        return status

    def nodes(self) -> dict[str, Any]:
        """Node pool specs by name (empty for a tenant's token)."""
        nodes: dict[str, Any] = self._call("GET", "/v1/nodes")["nodes"]
        return nodes

    def node_summary(self) -> dict[str, Any]:
        """Node pools (admin only), node count and total capacity."""
        summary: dict[str, Any] = self._call("GET", "/v1/nodes")
        return summary

    def create_token(self, tenant: str | None, role: str = "tenant") -> str:
        """A new token's plaintext (see ``mint_token`` for a lifetime and a name)."""
        token: str = self.mint_token(tenant, role)["token"]
        return token

    def mint_token(self, tenant: str | None, role: str = "tenant",
                   ttl_seconds: int | None = None, name: str | None = None) -> dict[str, Any]:
        """A new token (admin only): ``token`` (its plaintext, shown only here), ``id``,
        ``name``, ``role``, ``tenant``, ``created`` and ``expires`` (None: never)."""
        body: dict[str, Any] = {"tenant": tenant, "role": role}
        if ttl_seconds is not None:
            body["ttlSeconds"] = ttl_seconds
        if name is not None:
            body["name"] = name
        minted: dict[str, Any] = self._call("POST", "/v1/tokens", json=body)
        return minted

    def tokens(self) -> list[dict[str, Any]]:
        """Every token (admin only), without secrets: id, name, role, tenant, created,
        expires, revoked and status (active, expired or revoked)."""
        tokens: list[dict[str, Any]] = self._call("GET", "/v1/tokens")["tokens"]
        return tokens

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token by its id (admin only; revoking twice is not an error)."""
        token: dict[str, Any] = self._call("DELETE", f"/v1/tokens/{_segment(token_id)}")
        return token

    def delete_tenant(self, name: str) -> dict[str, Any]:
        """Delete a tenant without active jobs and revoke its tokens (admin only)."""
        result: dict[str, Any] = self._call("DELETE", f"/v1/tenants/{_segment(name)}")
        return result

    def delete_nodepool(self, name: str) -> dict[str, Any]:
        """Delete a node pool that runs no pod and strands no job (admin only)."""
        result: dict[str, Any] = self._call("DELETE", f"/v1/nodes/{_segment(name)}")
        return result


def _tenant(tenant: str | None) -> dict[str, str]:
    return {} if tenant is None else {"tenant": tenant}


def _segment(name: str) -> str:
    """A name as one URL path segment: ``a?b`` or ``../x`` cannot reach another route."""
    return quote(name, safe="")


def error_from(response: httpx.Response) -> errors.ShoalError:
    """The error class of the body's code (else of the HTTP status), with its message."""
    try:
        body = response.json()["error"]
        cls = _BY_CODE.get(body["code"]) or _BY_STATUS.get(response.status_code,
                                                          errors.ShoalError)
        error = cls(str(body["message"]), retry_after_s=body.get("retry_after_s"))
    except (ValueError, KeyError, TypeError):
        cls = _BY_STATUS.get(response.status_code, errors.ShoalError)
        return cls(f"HTTP {response.status_code}: {response.text[:200]}")
    return error
