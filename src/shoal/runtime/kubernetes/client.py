"""The operator's one seam to the API server: plain dicts in and out, Shoal's errors.

``Kube`` reads and writes any kind by name (``kube.get("NetworkPolicy",
"shoal-default-deny", "team-a")``) through the official ``kubernetes``
client: core kinds through ``CoreV1Api``, every other group through
``CustomObjectsApi`` (which serves any ``/apis/<group>/<version>`` path, so
a version the client library has no class for, such as ``policy/v1beta1``,
works too).  Which group version each kind uses is chosen by discovery
(``discovery.py``).  Bodies are the JSON the server sends, never the
client's models, so what is compared and written back is exactly what the
server stored.

``configuration(kubeconfig, context)`` says where the server is and who
Shoal is there: a kubeconfig, or, without one, the pod's own service
account (in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the token and
CA that Kubernetes mounts, the token re-read as the kubelet rotates it).

Every request is counted by verb and kind (``Kube.calls``: ``get``,
``list``, ``create``, ``replace``, ``replace_status``, ``delete``, ``bind``,
``discover``, and ``watch`` per stream opened; a 409 is also counted as
``conflict``), so a benchmark can say what a job costs and a test can show
that an idle operator makes no calls but its watches.

Writes (create, replace, replace_status, delete, bind) are sent as JSON
straight through the client's connection pool, with its authentication:
the generated methods' validation and model plumbing cost more CPU than the
request itself when the control loop writes thousands of objects.

API errors become ``shoal.errors`` with the server's message and the cause
chained: 409 -> ``ConflictError`` (``AlreadyExistsError`` for a name in
use), 404 -> ``NotFoundError``, 400/422 -> ``ManifestError``, 401/403 ->
``Forbidden``, anything else (5xx, 429, no answer) -> ``UnavailableError``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from shoal.errors import (
    AlreadyExistsError,
    ConflictError,
    Forbidden,
    ManifestError,
    NotFoundError,
    ShoalError,
    UnavailableError,
    UnreachableError,
)
from shoal.runtime.kubernetes.discovery import ApiKind, Discovery

Body = dict[str, Any]
Keys = list[tuple[str, str]]
"""``(namespace, name)`` of objects; the namespace is "" for cluster-scoped kinds."""

TIMEOUT_S = 30.0
"""Per request; a watch sets its own."""
_TIMEOUT = urllib3.Timeout(total=TIMEOUT_S)
AUTH_REUSE_S = 1.0
"""How long a request's credentials are reused before the client library is asked again
(a token that expired meanwhile gets 401, and the request is sent once more, asked anew)."""
CONNECTIONS = 32
"""Kept open to the server at most: the watch streams and the requests sent side by side."""
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where Kubernetes mounts a pod's service account token and the cluster's CA."""

# The client's functions are untyped or typed as the models that
# ``_preload_content=False`` skips: used through these names.
_load_kube_config: Callable[..., None] = k8s_config.load_kube_config
_InCluster: Callable[..., Any] = InClusterConfigLoader
_lines: Callable[[Any], Iterator[str]] = iter_resp_lines


def configuration(kubeconfig: str | None, context: str | None = None, *,
                  service_account: str = SERVICE_ACCOUNT,
                  environ: Mapping[str, str] | None = None) -> k8s.Configuration:
    """How to reach the API server: from ``kubeconfig``, or in-cluster when it is None.

    In-cluster reads ``KUBERNETES_SERVICE_HOST`` and ``KUBERNETES_SERVICE_PORT``
    from ``environ`` (default: the process's) and the token and CA under
    ``service_account``.  ManifestError when neither can be used.
    """
    config = k8s.Configuration()
    try:
        if kubeconfig is not None:
            _load_kube_config(config_file=kubeconfig, context=context,
                              client_configuration=config)
            return config
        _InCluster(token_filename=os.path.join(service_account, "token"),
                   cert_filename=os.path.join(service_account, "ca.crt"),
                   environ=os.environ if environ is None else environ,
                   ).load_and_set(config)
    except (OSError, yaml.YAMLError, k8s_config.ConfigException) as exc:
        if kubeconfig is not None:
            raise ManifestError(f"cannot use kubeconfig {kubeconfig}: {exc}") from exc
        raise ManifestError(f"cannot use the in-cluster service account: {exc}",
                            hint="outside a cluster, pass --kubeconfig") from exc
    return config


def bearer_token(config: k8s.Configuration) -> str | None:
    """The bearer token ``config`` sends, without its scheme (None: it sends none)."""
    auth: Any = config.auth_settings()  # names the header's value alike in every client version
    value = str((auth.get("BearerToken") or {}).get("value") or "").strip()
    scheme, _, token = value.partition(" ")
    return (token.strip() if scheme.lower() == "bearer" else value) or None


_CUSTOM_VERBS = {
    "read": "get_{scope}_custom_object",
    "list": "list_{scope}_custom_object",
    "create": "create_{scope}_custom_object",
    "replace": "replace_{scope}_custom_object",
    "replace_status": "replace_{scope}_custom_object_status",
    "delete": "delete_{scope}_custom_object",
}


class Calls:
    """Requests made, by ``(verb, kind)``: cheap, thread-safe counters."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, verb: str, kind: str) -> None:
        with self._lock:
            self._counts[(verb, kind)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def by_verb(self) -> dict[str, int]:
        verbs: Counter[str] = Counter()
        for (verb, _), n in self.snapshot().items():
            verbs[verb] += n
        return dict(verbs)

    def requests(self) -> int:
        """Every request but the watch streams (and 409s, already counted as their verb)."""
        return sum(n for (verb, _), n in self.snapshot().items()
                   if verb not in ("watch", "conflict"))


class Kube:
    """Get, list, create, replace and delete objects of any served kind, as dicts."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client: Any = api_client
        self.calls = Calls()
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self.discovery = Discovery(self._resources)
        self._kept_headers: tuple[float, dict[str, str], str] | None = None

    @classmethod
    def from_kubeconfig(cls, path: str, context: str | None = None) -> Kube:
        return cls.connect(path, context)

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None = None, **where: Any) -> Kube:
        """A client from ``kubeconfig``, or in-cluster when it is None (see ``configuration``)."""
        config = configuration(kubeconfig, context, **where)
        # The library's default (5 per core) is fewer than the watches and the
        # operator's parallel requests: connections beyond would be dropped after use.
        config.connection_pool_maxsize = max(config.connection_pool_maxsize, CONNECTIONS)
        return cls(k8s.ApiClient(configuration=config))

    def close(self) -> None:
        self.api_client.close()

    # --- reads -------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        """The object, or None when there is none."""
        try:
            return self._call("read", kind, namespace, name=name)
        except NotFoundError:
            return None

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        """Objects of ``kind`` (in ``namespace``, or everywhere), optionally by label selector."""
        items: list[Body] = self.listing(kind, namespace, labels).get("items", [])
        return items

    def listing(self, kind: str, namespace: str | None = None, labels: str = "",
                fields: str = "") -> Body:
        """The whole list object, whose ``metadata.resourceVersion`` a watch resumes from."""
        return self._call("list", kind, namespace, label_selector=labels, field_selector=fields)

    def changes(self, kind: str, mark: object) -> tuple[Keys | None, object] | None:
        """Which objects of ``kind`` changed since ``mark`` (a value an earlier answer gave;
        None at first): ``(keys, next mark)``, keys None when every object must be read
        again.  None when this client cannot tell (no watch-fed cache: the default)."""
        return None

    def watch(self, kind: str, namespace: str | None = None, *, since: str, timeout_s: float,
              labels: str = "", fields: str = "", bookmarks: bool = False
              ) -> Iterator[tuple[str, Body]]:
        """``(type, object)`` events after resourceVersion ``since``, for up to ``timeout_s``.

        Types are ADDED, MODIFIED, DELETED and ERROR (the object is then a
        Status; 410 means ``since`` is too old: list again), and with
        ``bookmarks`` BOOKMARK (only ``metadata.resourceVersion`` is meant:
        where to resume from).  Events are parsed as JSON, never as the
        client's models.
        """
        target = self.discovery.kind(kind)
        method, args, where = self._method("list", target, namespace)
        selectors: dict[str, Any] = {
            k: v for k, v in (("label_selector", labels), ("field_selector", fields)) if v}
        if bookmarks:
            selectors["allow_watch_bookmarks"] = True
        self.calls.count("watch", kind)
        with errors(f"watch {kind}"):
            response = method(*args, watch=True, resource_version=since,
                              timeout_seconds=max(1, int(timeout_s)), _preload_content=False,
                              _request_timeout=timeout_s + TIMEOUT_S, **where, **selectors)
            try:
                for line in _lines(response):
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind_of = str(event.get("type", ""))
                    if kind_of == "BOOKMARK" and not bookmarks:
                        continue
                    yield kind_of, dict(event.get("object") or {})
            finally:
                response.close()
                response.release_conn()

    # --- writes ------------------------------------------------------------------

    def create(self, body: Body) -> Body:
        return self._send("create", "POST", body["kind"], _namespace(body), body=body)

    def replace(self, body: Body, dry_run: bool = False) -> Body:
        """PUT ``body``; fenced by its ``metadata.resourceVersion`` when it has one.

        ``dry_run``: the server validates, defaults and answers with what it
        would store, and stores nothing.
        """
        return self._send("replace", "PUT", body["kind"], _namespace(body),
                          name=body["metadata"]["name"], body=body,
                          query={"dryRun": "All"} if dry_run else None)

    def replace_status(self, body: Body) -> Body:
        """PUT the status subresource (custom kinds); fenced by the resourceVersion."""
        return self._send("replace_status", "PUT", body["kind"], _namespace(body),
                          name=body["metadata"]["name"], body=body, sub="status")

    def delete(self, kind: str, name: str, namespace: str | None = None,
               grace_seconds: int | None = None) -> bool:
        """Ask for deletion (dependents in the background); False when it was already gone.

        ``grace_seconds``: how long the kubelet waits between SIGTERM and
        SIGKILL (pods; None: the pod's own ``terminationGracePeriodSeconds``).
        """
        options: Body = {"apiVersion": "v1", "kind": "DeleteOptions",
                         "propagationPolicy": "Background"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            self._send("delete", "DELETE", kind, namespace, name=name, body=options)
        except NotFoundError:
            return False
        return True

    def bind(self, pod: str, namespace: str, node: str) -> None:
        """Bind an unscheduled pod to ``node`` (the Binding subresource, as schedulers do)."""
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self._send("bind", "POST", "Pod", namespace, name=pod, body=body, sub="binding",
                   doing=f"bind Pod {namespace}/{pod} to {node}")

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the server serves ``plural`` at ``api_version`` now (asks, never cached)."""
        listing = self._resources(api_version) or {}
        return any(r.get("name") == plural for r in listing.get("resources", []))

    # --- plumbing ----------------------------------------------------------------

    def _send(self, verb: str, method: str, kind: str, namespace: str | None, *,
              name: str = "", body: Body | None = None, sub: str = "",
              query: dict[str, str] | None = None, doing: str = "") -> Body:
        """One request as JSON through the client's pool and authentication; the answer."""
        target = self.discovery.kind(kind)
        if target.namespaced and namespace is None:
            raise ManifestError(f"{kind} is namespaced: name its namespace")
        path = _path(target, namespace, name, sub)
        data = json.dumps(body) if body is not None else None
        self.calls.count(verb, kind)
        try:
            with errors(doing or f"{verb} {kind} {name}".rstrip()):
                response = self._request(method, path, data, query)
                if response.status == 401:  # credentials that expired since: once more
                    response = self._request(method, path, data, query, fresh=True)
                if not 200 <= response.status <= 299:
                    failed = k8s.ApiException(status=response.status, reason=response.reason)
                    failed.body = response.data.decode("utf-8", "replace")
                    raise failed
        except ConflictError as exc:
            if not isinstance(exc, AlreadyExistsError):
                self.calls.count("conflict", kind)
            raise
        decoded: Body = json.loads(response.data) if response.data else {}
        return decoded

    def _request(self, method: str, path: str, data: str | None,
                 query: dict[str, str] | None, fresh: bool = False) -> Any:
        headers, host = self._headers(fresh)
        url = host + path + (f"?{urlencode(query)}" if query else "")
        return self.api_client.rest_client.pool_manager.request(
            method, url, body=data, headers=dict(headers), timeout=_TIMEOUT,
            preload_content=True)

    def _headers(self, fresh: bool) -> tuple[dict[str, str], str]:
        """The headers of a request, credentials included, and the server's URL.

        Worked out again at most every ``AUTH_REUSE_S``: the client library
        asks its refresh hook on every call (reloading the kubeconfig's
        credentials), which cost a request about a third of its CPU.
        """
        kept = self._kept_headers
        now = time.monotonic()
        if fresh or kept is None or now - kept[0] > AUTH_REUSE_S:
            headers = {**self.api_client.default_headers, "Accept": "application/json",
                       "Content-Type": "application/json"}
            self.api_client.update_params_for_auth(headers, [], ["BearerToken"], "", "", None)
            kept = self._kept_headers = (now, headers, self.api_client.configuration.host)
        return kept[1], kept[2]

    def _call(self, verb: str, kind: str, namespace: str | None, **kwargs: Any) -> Body:
        target = self.discovery.kind(kind)
        if target.namespaced and namespace is None and verb != "list":
            raise ManifestError(f"{kind} is namespaced: name its namespace")
        method, args, where = self._method(verb, target, namespace)
        kwargs = {k: v for k, v in {**kwargs, **where}.items() if v not in ("", None)}
        self.calls.count("get" if verb == "read" else verb, kind)
        try:
            with errors(f"{verb} {kind} {kwargs.get('name', '')}".rstrip()):
                response = method(*args, **kwargs, _preload_content=False,
                                  _request_timeout=TIMEOUT_S)
                raw = response.data
        except ConflictError as exc:
            if not isinstance(exc, AlreadyExistsError):
                self.calls.count("conflict", kind)
            raise
        decoded: Body = json.loads(raw) if raw else {}
        return decoded

    def _method(self, verb: str, target: ApiKind, namespace: str | None
                ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The client method for ``verb`` on ``target``, its leading arguments and namespace.

        Core methods take the namespace by keyword (after the name); custom
        object methods take group, version, namespace and plural first.
        """
        scoped = target.namespaced and namespace is not None
        everywhere = verb == "list" and target.namespaced and namespace is None
        if target.group == "":
            name = (f"list_{target.snake}_for_all_namespaces" if everywhere else
                    f"{verb}_{'namespaced_' if scoped else ''}{target.snake}")
            return getattr(self._core, name), (), ({"namespace": namespace} if scoped else {})
        gvp = (target.group, target.version)
        if everywhere:
            return self._custom.list_custom_object_for_all_namespaces, (*gvp, target.plural), {}
        name = _CUSTOM_VERBS[verb].format(scope="namespaced" if scoped else "cluster")
        where = (namespace,) if scoped else ()
        return getattr(self._custom, name), (*gvp, *where, target.plural), {}

    def _resources(self, group_version: str) -> Body | None:
        """The server's resource list of one group version; None when it is not served."""
        group, _, version = group_version.rpartition("/")
        response: Any
        self.calls.count("discover", group_version)
        with errors(f"discover {group_version}"):
            try:
                if group == "":
                    response = self._core.get_api_resources(_preload_content=False)
                else:
                    response = self._custom.get_api_resources(
                        group, version, _preload_content=False, _request_timeout=TIMEOUT_S)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        found: Body = json.loads(response.data)
        return found


def _path(target: ApiKind, namespace: str | None, name: str, sub: str) -> str:
    """``/api/v1/namespaces/<ns>/pods/<name>/<sub>`` and the like."""
    parts = ["/api/v1" if target.group == "" else f"/apis/{target.group}/{target.version}"]
    if target.namespaced and namespace is not None:
        parts.append(f"/namespaces/{quote(namespace, safe='')}")
    parts.append(f"/{target.plural}")
    if name:
        parts.append(f"/{quote(name, safe='')}")
    if sub:
        parts.append(f"/{sub}")
    return "".join(parts)


def _namespace(body: Body) -> str | None:
    namespace: str | None = body.get("metadata", {}).get("namespace")
    return namespace


@contextmanager
def errors(doing: str) -> Iterator[None]:
    """Turn the client's exceptions into Shoal's, naming what was being done."""
    try:
        yield
    except k8s.ApiException as exc:
        raise api_error(exc, doing) from exc
    except HTTPError as exc:
        raise UnreachableError(f"{doing}: the API server does not answer ({exc})") from exc


def api_error(exc: k8s.ApiException, doing: str) -> ShoalError:
    status, reason, message = _status(exc)
    text = f"{doing}: {message}"
    kinds: dict[int, type[ShoalError]] = {
        404: NotFoundError, 400: ManifestError, 422: ManifestError,
        401: Forbidden, 403: Forbidden,
    }
    if status == 409:
        return AlreadyExistsError(text) if reason == "AlreadyExists" else ConflictError(text)
    return kinds.get(status, UnavailableError)(text)


def _status(exc: k8s.ApiException) -> tuple[int, str, str]:
    """HTTP status, the Status object's reason and message (the body may not be JSON)."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") or exc.reason or f"HTTP {exc.status}"
    return int(exc.status or 0), str(body.get("reason", "")), str(message)
