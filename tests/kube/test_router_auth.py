"""The router's verifier on Kubernetes, over a fake pair of reviews and a fake
clock (verdicts kept and expired, one review for concurrent first requests,
the API server failing), and the router's pod and access objects.

The same reviews against the real API server: ``test_router_server.py``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("kubernetes", reason="the kube extra is not installed")

from shoal.errors import Forbidden, UnavailableError, UnreachableError
from shoal.runtime.kubernetes.router_auth import (
    Identity,
    Member,
    ReviewVerifier,
)
from shoal.runtime.kubernetes.serving_objects import (
    METRICS_PORT,
    router_access,
    router_deployment,
)

OWNER = {"metadata": {"name": "digits", "namespace": "team-a", "uid": "u-1"}}


class FakeReviews:
    """Tokens -> users, and which users may call; counts what was asked."""

    def __init__(self) -> None:
        self.users = {"alice-token": "alice", "bob-token": "bob"}
        self.allowed_users = {"alice"}
        self.asked: list[tuple[str, str]] = []
        self.failing: Exception | None = None
        self.gate: threading.Event | None = None

    def identity(self, token: str) -> Identity | None:
        self.asked.append(("token", token))
        if self.gate is not None:
            assert self.gate.wait(60)
        if self.failing is not None:
            raise self.failing
        user = self.users.get(token)
        return None if user is None else Identity(user, f"uid-{user}", ("g",), {})

    def allowed(self, who: Identity, service: str, tenant: str) -> bool:
        self.asked.append(("access", f"{who.user} {service} {tenant}"))
        return who.user in self.allowed_users


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def verifier(reviews: FakeReviews, clock: Clock) -> ReviewVerifier:
    return ReviewVerifier(reviews, "digits", "team-a", ttl_s=10.0, clock=clock)  # type: ignore[arg-type]


def test_verdicts_are_kept_for_their_ttl_both_ways() -> None:
    reviews, clock = FakeReviews(), Clock()
    check = verifier(reviews, clock)

    async def scenario() -> None:
        assert await check("alice-token") == Member("team-a", "alice")
        with pytest.raises(Forbidden) as denied:
            await check("bob-token")
        assert str(denied.value) == (
            "this token may not call service 'digits': it needs 'create' on "
            "inferenceservices/predict (shoal.dev) named 'digits'")
        assert "team-a" not in str(denied.value)  # the owner is not said
        assert await check("garbage") is None
        asked = len(reviews.asked)
        assert asked == 5  # two reviews per known token, one for the unknown one
        clock.now += 9.9  # still kept: no review
        assert await check("alice-token") == Member("team-a", "alice")
        with pytest.raises(Forbidden):
            await check("bob-token")
        assert await check("garbage") is None
        assert len(reviews.asked) == asked
        reviews.allowed_users = {"bob"}  # rights changed: seen once the verdicts expire
        clock.now += 0.2
        assert await check("bob-token") == Member("team-a", "bob")
        with pytest.raises(Forbidden):
            await check("alice-token")

    asyncio.run(scenario())
    assert ("access", "alice digits team-a") in reviews.asked


def test_concurrent_first_requests_share_one_review() -> None:
    reviews, clock = FakeReviews(), Clock()
    reviews.gate = threading.Event()
    check = verifier(reviews, clock)

    async def scenario() -> None:
        calls = [asyncio.create_task(check("alice-token")) for _ in range(5)]
        while not reviews.asked:  # the first review is in its worker thread
            await asyncio.sleep(0.01)
        assert reviews.gate is not None
        reviews.gate.set()
        assert await asyncio.gather(*calls) == [Member("team-a", "alice")] * 5

    asyncio.run(scenario())
    assert reviews.asked == [("token", "alice-token"), ("access", "alice digits team-a")]


def test_an_api_server_failure_is_503_and_not_kept() -> None:
    reviews, clock = FakeReviews(), Clock()
    reviews.failing = UnreachableError("create TokenReview: the API server does not answer")
    check = verifier(reviews, clock)

    async def scenario() -> None:
        with pytest.raises(UnavailableError, match="does not answer"):
            await check("alice-token")
        reviews.failing = Forbidden("create TokenReview: forbidden")  # the router's own rights
        with pytest.raises(UnavailableError) as failed:
            await check("alice-token")
        assert failed.value.http_status == 503
        assert str(failed.value).startswith("the router cannot check tokens: ")
        reviews.failing = None
        assert await check("alice-token") == Member("team-a", "alice")

    asyncio.run(scenario())


def test_the_router_pod_runs_the_kube_entry_point_as_the_router_account() -> None:
    pod = router_deployment(OWNER, "shoal:1")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shoal-router"
    assert pod["automountServiceAccountToken"] is True
    (container,) = pod["containers"]
    assert container["command"] == [
        "python", "-m", "shoal.api.kube_router", "--service", "digits", "--tenant", "team-a",
        "--routes", "/etc/shoal/routes/routes.json", "--port", "8080", "--metrics-port",
        str(METRICS_PORT)]
    assert container["livenessProbe"] == {"httpGet": {"path": "/healthz",
                                                      "port": METRICS_PORT}}
    account, binding = router_access("team-a")
    assert (account["kind"], account["metadata"]["name"], account["metadata"]["namespace"]) == (
        "ServiceAccount", "shoal-router", "team-a")
    assert binding["metadata"]["name"] == "shoal-router-team-a"
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shoal-router",
                                    "namespace": "team-a"}]

