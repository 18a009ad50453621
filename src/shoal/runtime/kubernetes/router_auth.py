"""Who may call a service's router on Kubernetes: the API server says.

A router pod has no token store of its own; it asks the cluster, as
kube-rbac-proxy does.  The caller's bearer token goes into a ``TokenReview``
(``authentication.k8s.io/v1``): not authenticated -> 401.  The user it
stands for (name, uid, groups, extra) goes into a ``SubjectAccessReview``
(``authorization.k8s.io/v1``) for verb ``create`` on the subresource
``inferenceservices/predict`` of group ``shoal.dev``, named after the
service, in the tenant's namespace: allowed -> a member of the tenant;
denied -> 403 (the message names what is needed, never who owns the
service).  A subresource of its own, so that reading an InferenceService
(``get``) and calling it are granted separately; an RBAC rule such as
``{apiGroups: [shoal.dev], resources: [inferenceservices/predict], verbs:
[create]}`` grants it.

Both answers, positive and negative, are kept ``ttl_s`` seconds (10 by
default) under the token's SHA-256, so a busy caller costs two reviews per
ten seconds and a revoked token or a removed right works at most that long;
concurrent first requests with one token share one review.  The reviews
run in a worker thread (the client is blocking), never on the router's
loop.  The API server not answering is a 503 and is not remembered.

The router's own identity (its pod's ServiceAccount, or ``--kubeconfig``
outside a cluster) needs ``create`` on ``tokenreviews`` and
``subjectaccessreviews``: the built-in ClusterRole ``system:auth-delegator``,
bound per tenant by the operator (``serving_objects.router_access``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from shoal.errors import Forbidden, ShoalError, UnavailableError
from shoal.runtime.kubernetes.client import Body, configuration, errors

GROUP = "shoal.dev"
RESOURCE = "inferenceservices"
SUBRESOURCE = "predict"
VERB = "create"
TTL_S = 10.0
"""How long a verdict is kept."""
MAX_ENTRIES = 4096
"""Verdicts kept at most (a flood of distinct tokens cannot grow the cache)."""


@dataclass(frozen=True)
class Member:
    """A caller allowed to call the service: a member of its tenant for the router."""

    tenant: str
    user: str
    role: str = "member"


@dataclass(frozen=True)
class Identity:
    """What a TokenReview said a token stands for."""

    user: str
    uid: str
    groups: tuple[str, ...]
    extra: dict[str, list[str]]


class Reviews:
    """The two reviews, as blocking calls to the API server."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        # Typed as the client's models, which _preload_content=False skips: used untyped.
        self._token_review: Callable[..., Any] = k8s.AuthenticationV1Api(
            api_client).create_token_review
        self._access_review: Callable[..., Any] = k8s.AuthorizationV1Api(
            api_client).create_subject_access_review

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None = None) -> Reviews:
        """From ``kubeconfig``, or in-cluster (the pod's ServiceAccount) when None."""
        return cls(k8s.ApiClient(configuration=configuration(kubeconfig, context)))

    def identity(self, token: str) -> Identity | None:
        """Who ``token`` stands for; None when the API server does not authenticate it."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}}
        with errors("create TokenReview"):
            status = _answer(self._token_review(
                body, _preload_content=False, _request_timeout=10)).get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        return Identity(str(user.get("username") or ""), str(user.get("uid") or ""),
                        tuple(user.get("groups") or ()),
                        {k: list(v) for k, v in (user.get("extra") or {}).items()})

    def allowed(self, who: Identity, service: str, tenant: str) -> bool:
        """Whether ``who`` may call ``service`` of ``tenant`` (RBAC, or any authorizer)."""
        spec: Body = {"user": who.user, "groups": list(who.groups),
                      "resourceAttributes": {"namespace": tenant, "verb": VERB, "group": GROUP,
                                             "resource": RESOURCE, "subresource": SUBRESOURCE,
                                             "name": service}}
        if who.uid:
            spec["uid"] = who.uid
        if who.extra:
            spec["extra"] = who.extra
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": spec}
        with errors("create SubjectAccessReview"):
            status = _answer(self._access_review(
                body, _preload_content=False, _request_timeout=10)).get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied")

    def close(self) -> None:
        self.api_client.close()


def _answer(response: Any) -> Body:
    decoded: Body = json.loads(response.data or b"{}")
    return decoded


_DENIED = object()


class ReviewVerifier:
    """The router's ``Verifier`` on Kubernetes (see the module's docstring)."""

    def __init__(self, reviews: Reviews, service: str, tenant: str, *, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reviews, self.service, self.tenant = reviews, service, tenant
        self.ttl_s, self.clock = ttl_s, clock
        self._verdicts: dict[str, tuple[float, object]] = {}
        self._pending: dict[str, asyncio.Future[object]] = {}

    async def __call__(self, token: str) -> Member | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._verdicts.get(key)
        if cached is not None and cached[0] > self.clock():
            return self._verdict(cached[1])
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[key] = pending
            try:
                verdict = await asyncio.to_thread(self._review, token)
            except BaseException as exc:
                pending.set_exception(exc if isinstance(exc, Exception) else
                                      UnavailableError("the token's review was cancelled"))
                pending.exception()  # retrieved: no "never retrieved" warning when alone
                raise
            finally:
                self._pending.pop(key, None)
            pending.set_result(verdict)
            if len(self._verdicts) >= MAX_ENTRIES:
                self._verdicts.clear()
            self._verdicts[key] = (self.clock() + self.ttl_s, verdict)
        else:
            verdict = await asyncio.shield(pending)
        return self._verdict(verdict)

    def _verdict(self, verdict: object) -> Member | None:
        if verdict is _DENIED:
            raise Forbidden(f"this token may not call service {self.service!r}: it needs "
                            f"'{VERB}' on {RESOURCE}/{SUBRESOURCE} ({GROUP}) named "
                            f"{self.service!r}")
        assert verdict is None or isinstance(verdict, Member)
        return verdict

    def _review(self, token: str) -> object:
        """None (unknown token), a Member, or _DENIED; UnavailableError when the server fails."""
        try:
            who = self.reviews.identity(token)
            if who is None:
                return None
            if not self.reviews.allowed(who, self.service, self.tenant):
                return _DENIED
            return Member(self.tenant, who.user)
        except UnavailableError:
            raise
        except ShoalError as exc:  # 401/403 to the router itself: its own rights are missing
            raise UnavailableError(f"the router cannot check tokens: {exc}",
                                   retry_after_s=1.0) from exc
