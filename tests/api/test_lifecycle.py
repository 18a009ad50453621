"""What an admin manages through the API: tokens that expire and can be
revoked, and deleting tenants and node pools safely (refused while in use,
all or nothing).  Time is moved by a fake clock, never waited for."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.api.server import create_app
from shoal.app.apply import apply_text
from shoal.app.core import App
from shoal.app.lifecycle import MAX_TTL_SECONDS
from shoal.control.records import Principal
from shoal.errors import (
    Forbidden,
    InUseError,
    NotFoundError,
    Unauthorized,
    UnknownReferenceError,
)
from shoal.runtime.local import store_schema
from shoal.runtime.local.plane import EmbeddedPlane
from shoal.runtime.local.store import SqliteStore
from shoal.testing import FakeClock
from tests.control.conftest import CLUSTER, job, phase, wait_for

SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]
QUICK = ["python", "-c", "print('hello')"]
TOKEN_FIELDS = {"id", "name", "role", "tenant", "created", "expires", "revoked", "status"}
TENANTS = "\n---\n".join(CLUSTER.split("---")[1:])  # team-a and team-b, no node pool


@dataclass
class Clocked:
    """An API over a control plane whose clock only moves when the test says."""

    url: str
    token: str
    clock: FakeClock
    plane: EmbeddedPlane

    def client(self, token: str | None = None) -> ShoalClient:
        return ShoalClient(self.url, token or self.token)


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[Clocked]:
    # No control loop: nothing here runs a job, and the loop would read the clock too.
    clock = FakeClock(1_000_000.0)
    plane = EmbeddedPlane(tmp_path / "state", clock=clock)
    token = launch.admin_token(plane)
    sock = launch.listen("127.0.0.1", 0)
    api = create_app(launch.wire(plane), lambda: {"status": "ok"})
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive())
    assert server.started
    try:
        yield Clocked(f"http://127.0.0.1:{sock.getsockname()[1]}", token, clock, plane)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        plane.stop()


def _call(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, f"{url}{path}", headers=headers, **kwargs)


# -- tokens --------------------------------------------------------------------------


def test_an_expired_token_is_refused_exactly_like_an_unknown_one(clocked: Clocked) -> None:
    with clocked.client() as admin:
        admin.apply_text(TENANTS, "tenants.yaml")
        minted = admin.mint_token("team-a", ttl_seconds=60, name="ci")
        assert minted["created"] == 1_000_000.0 and minted["expires"] == 1_000_060.0
        forever = admin.create_token("team-a")
    with clocked.client(minted["token"]) as ci:
        assert [t["name"] for t in ci.tenant_status()] == ["team-a"]
        clocked.clock.advance(59.5)
        ci.jobs()  # still valid half a second before the end
        clocked.clock.advance(0.5)
        with pytest.raises(Unauthorized):
            ci.jobs()
    expired = _call(clocked.url, minted["token"], "GET", "/v1/jobs")
    unknown = _call(clocked.url, "shoal_0123456789abcdef_nothing", "GET", "/v1/jobs")
    assert expired.status_code == unknown.status_code == 401
    assert expired.json() == unknown.json(), "no hint that the token exists but expired"
    clocked.clock.advance(10 * 365 * 24 * 3600)
    with clocked.client(forever) as team_a:
        team_a.jobs()  # without ttlSeconds a token never expires
    with clocked.client() as admin:
        status = {t["name"]: t["status"] for t in admin.tokens()}
    assert status == {"admin": "active", "ci": "expired", "team-a": "active"}


def test_a_revoked_admin_token_is_minted_again_at_the_next_start(clocked: Clocked) -> None:
    with clocked.client() as admin:
        admin.revoke_token(clocked.token.split("_")[1])
        with pytest.raises(Unauthorized):
            admin.tokens()
    fresh = launch.admin_token(clocked.plane)  # what `shoal server` does when it starts
    assert fresh != clocked.token
    assert (clocked.plane.state_dir / launch.ADMIN_TOKEN_FILE).read_text().strip() == fresh
    with clocked.client(fresh) as admin:
        assert [t["status"] for t in admin.tokens()] == ["revoked", "active"]


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1, 1.5, "3600", True, 10**30])
def test_a_token_lifetime_is_bounded(clocked: Clocked, ttl: object) -> None:
    with clocked.client() as admin:
        admin.apply_text(TENANTS, "tenants.yaml")
    response = _call(clocked.url, clocked.token, "POST", "/v1/tokens",
                     json={"tenant": "team-a", "ttlSeconds": ttl})
    assert response.status_code == 400, response.text
    assert "ttlSeconds" in response.json()["error"]["message"]
    longest = _call(clocked.url, clocked.token, "POST", "/v1/tokens",
                    json={"tenant": "team-a", "ttlSeconds": MAX_TTL_SECONDS})
    assert longest.json()["expires"] == 1_000_000.0 + MAX_TTL_SECONDS


def test_a_revoked_token_stops_working_at_once(plane: launch.Running, admin: ShoalClient) -> None:
    minted = admin.mint_token("team-a", name="laptop")
    other = admin.create_token("team-a")
    with ShoalClient(plane.url, minted["token"]) as laptop:
        laptop.jobs()
        revoked = admin.revoke_token(minted["id"])
        assert revoked["revoked"] is True and revoked["status"] == "revoked"
        with pytest.raises(Unauthorized):
            laptop.jobs()
    assert admin.revoke_token(minted["id"]) == revoked, "revoking twice is not an error"
    with ShoalClient(plane.url, other) as still:
        still.jobs()  # only that one token
    kinds = [e["kind"] for e in admin.events()]
    assert kinds.count("token-revoked") == 1 and kinds.count("token-created") == 2
    for unknown in ("0123456789abcdef", "nope", minted["token"], "x" * 5000):
        with pytest.raises(NotFoundError, match=r"token '.*' not found"):
            admin.revoke_token(unknown)


def test_a_listing_never_shows_a_secret_or_a_digest(
    plane: launch.Running, admin: ShoalClient
) -> None:
    minted = [admin.mint_token("team-a", ttl_seconds=3600), admin.mint_token("team-b"),
              admin.mint_token(None, role="admin", name="ops")]
    response = _call(plane.url, plane.token, "GET", "/v1/tokens")
    listed = response.json()["tokens"]
    assert all(set(t) == TOKEN_FIELDS for t in listed)
    assert [t["id"] for t in listed][-3:] == [m["id"] for m in minted]
    with sqlite3.connect(plane.plane.state_dir / "state.db") as raw:
        digests = [d for (d,) in raw.execute("SELECT digest FROM tokens")]
    secrets = [m["token"].split("_", 2)[2] for m in minted] + [plane.token.split("_", 2)[2]]
    for hidden in digests + secrets:
        assert hidden not in response.text


def test_a_tenant_token_manages_nothing(plane: launch.Running, admin: ShoalClient) -> None:
    victim = admin.mint_token("team-b")
    with ShoalClient(plane.url, admin.create_token("team-a")) as team_a:
        refused = [
            lambda: team_a.create_token("team-a"),
            lambda: team_a.mint_token(None, role="admin"),
            team_a.tokens,
            lambda: team_a.revoke_token(victim["id"]),
            lambda: team_a.revoke_token("0123456789abcdef"),  # unknown: 403 all the same
            lambda: team_a.delete_tenant("team-b"),
            lambda: team_a.delete_tenant("team-a"),
            lambda: team_a.delete_tenant("no-such-tenant"),  # 403, not 404: no hint
            lambda: team_a.delete_nodepool("local"),
            lambda: team_a.delete_nodepool("no-such-pool"),
        ]
        for call in refused:
            with pytest.raises(Forbidden, match="only an admin token"):
                call()
    assert sorted(admin.tenants()) == ["team-a", "team-b"] and list(admin.nodes()) == ["local"]
    assert {t["id"]: t["status"] for t in admin.tokens()}[victim["id"]] == "active"
    with ShoalClient(plane.url, admin.create_token("team-b")) as team_b:
        assert not [e for e in team_b.events() if e["kind"].startswith("token-")], \
            "token events are the admin's"


# -- tenants ---------------------------------------------------------------------------


def test_a_tenant_with_active_jobs_is_not_deleted(plane: launch.Running, admin: ShoalClient) -> None:
    member = admin.create_token("team-a")
    admin.apply_text(job("runs", "team-a", SLEEPER, gpus=4), "a.yaml")
    wait_for(lambda: phase(admin, "runs") == "Running")
    admin.apply_text(job("waits", "team-a", SLEEPER, gpus=1), "b.yaml")
    # Decided about (its reason written), not just applied: nothing moves below.
    wait_for(lambda: any(j["name"] == "waits" and j["phase"] == "Pending" and j.get("reason")
                         for j in admin.jobs()))
    before = (admin.tenants(), admin.jobs(), admin.tokens(), admin.events())
    with pytest.raises(InUseError) as refused:
        admin.delete_tenant("team-a")
    message = str(refused.value)
    assert "tenant 'team-a' still has 2 active jobs" in message
    assert "runs Running" in message and "waits Pending" in message
    assert "nothing was deleted" in message and "shoal delete job runs waits" in message
    response = _call(plane.url, plane.token, "DELETE", "/v1/tenants/team-a")
    assert response.status_code == 409 and response.json()["error"]["code"] == "in_use"
    assert response.json()["error"]["retryable"] is False
    assert (admin.tenants(), admin.jobs(), admin.tokens(), admin.events()) == before
    with ShoalClient(plane.url, member) as still:
        assert [j["name"] for j in still.jobs()] == ["runs", "waits"]
    # Deleted jobs block until they have stopped, then the tenant can go.
    admin.delete("runs")
    admin.delete("waits")
    wait_for(lambda: all(j["phase"] == "Cancelled" for j in admin.jobs()))
    assert admin.delete_tenant("team-a")["result"] == "deleted"


def test_deleting_a_tenant_revokes_its_tokens_and_frees_its_names(
    plane: launch.Running, admin: ShoalClient
) -> None:
    tokens = [admin.create_token("team-b"), admin.mint_token("team-b", ttl_seconds=600)["token"]]
    team_a = admin.create_token("team-a")
    admin.apply_text(job("done", "team-b", QUICK), "b.yaml")
    wait_for(lambda: phase(admin, "done") == "Succeeded")
    assert admin.delete_tenant("team-b") == {
        "kind": "Tenant", "name": "team-b", "result": "deleted", "tokens_revoked": 2,
        "jobs_deleted": 1}
    assert list(admin.tenants()) == ["team-a"]
    for token in tokens:
        with ShoalClient(plane.url, token) as gone, pytest.raises(Unauthorized):
            gone.jobs()
    with ShoalClient(plane.url, team_a) as other:
        other.jobs()  # another tenant's tokens keep working
    assert admin.job("done")["deleted"] is True, "its finished job is deleted, still readable"
    applied = admin.apply_text(job("done", "team-a", QUICK), "a.yaml")
    assert applied[0]["result"] == "created", "the name is free for another tenant"
    event = next(e for e in admin.events() if e["kind"] == "tenant-deleted")
    assert event["tenant"] == "team-b" and event["data"] == {"tokens_revoked": 2,
                                                             "jobs_deleted": 1}
    with pytest.raises(NotFoundError, match="tenant 'team-b' not found"):
        admin.delete_tenant("team-b")
    with pytest.raises(NotFoundError, match="tenant 'team-b' not found"):
        admin.create_token("team-b")


class _RacingWorkspace:
    """Deletes a tenant while a job of it is being checked, as a concurrent admin could."""

    def __init__(self, store: SqliteStore, victim: str) -> None:
        self.store, self.victim = store, victim

    def checkpoint_dir(self, job: str) -> str:
        return f"/nonexistent/{job}"

    def check(self, job: Any, tenant: Any) -> None:
        self.store.delete_tenant(self.victim)

    def forget(self, job: str) -> None:
        raise AssertionError("nothing to forget")

    def read_log(self, job: str, pod: int, offset: int, limit: int) -> tuple[bytes, int]:
        return b"", offset


def test_a_tenant_deleted_while_its_job_is_checked_gets_no_job(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        app = App(store=store, workspace=_RacingWorkspace(store, "team-b"), clock=FakeClock())
        ops = Principal("admin", None, "ops")
        apply_text(app, ops, CLUSTER, "cluster.yaml")
        with pytest.raises(UnknownReferenceError, match="tenant 'team-b' does not exist"):
            apply_text(app, ops, job("late", "team-b", QUICK), "late.yaml")
        assert store.list_jobs() == [] and "team-b" not in store.tenants()


# -- node pools ------------------------------------------------------------------------

POOLS = """
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: small}
spec: {count: 1, cpu: 4, memory: 8Gi, gpus: {model: virtual, count: 4}, labels: {size: small}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: large}
spec: {count: 1, cpu: 4, memory: 8Gi, gpus: {model: virtual, count: 8}, labels: {size: large}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: spare}
spec: {count: 2, cpu: 2, memory: 4Gi}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: solo}
spec: {quota: {cpu: {nominal: 8}, memory: {nominal: 16Gi}, gpus: {virtual: {nominal: 8}}}}
"""


def test_node_pools_are_deleted_only_when_nothing_needs_them(
    plane: launch.Running, admin: ShoalClient
) -> None:
    admin.apply_text(POOLS, "pools.yaml")
    assert admin.delete_nodepool("local")["nodes"] == 1  # nothing ran there
    # "hog" runs on small; "wide" (6 GPUs) fits only on large and waits for quota.
    admin.apply_text(job("hog", "solo", SLEEPER, gpus=4) + "  nodeSelector: {size: small}\n",
                     "hog.yaml")
    wait_for(lambda: phase(admin, "hog") == "Running")
    admin.apply_text(job("wide", "solo", SLEEPER, gpus=6), "wide.yaml")
    # Pending from the moment it is applied: wait until the controller has
    # decided about it too (its reason is written), so nothing moves below.
    wait_for(lambda: any(j["name"] == "wide" and j["phase"] == "Pending" and j.get("reason")
                         for j in admin.jobs()))
    before = (admin.nodes(), admin.jobs(), admin.events())
    with pytest.raises(InUseError, match=r"NodePool 'small' runs pods of 1 job \(solo/hog Running\)"):
        admin.delete_nodepool("small")
    with pytest.raises(InUseError, match=r"without NodePool 'large', 1 active job would fit on "
                                         r"no node and fail \(solo/wide\)"):
        admin.delete_nodepool("large")
    assert (admin.nodes(), admin.jobs(), admin.events()) == before, "nothing changed"
    assert admin.delete_nodepool("spare") == {"kind": "NodePool", "name": "spare",
                                              "result": "deleted", "nodes": 2}
    admin.delete("hog")
    wait_for(lambda: phase(admin, "hog") == "Cancelled")
    assert admin.delete_nodepool("small")["result"] == "deleted"
    wait_for(lambda: phase(admin, "wide") == "Running")
    assert sorted(admin.nodes()) == ["large"]
    deleted = [e["data"]["name"] for e in admin.events() if e["kind"] == "nodepool-deleted"]
    assert deleted == ["local", "spare", "small"]


def test_a_plane_left_without_pools_registers_this_machine_again(tmp_path: Path) -> None:
    first = launch.start(tmp_path / "state")
    try:
        with ShoalClient(first.url, first.token) as admin:
            admin.delete_nodepool("local")
            assert admin.nodes() == {}
    finally:
        first.stop()
    second = launch.start(tmp_path / "state")
    try:
        with ShoalClient(second.url, second.token) as admin:
            assert list(admin.nodes()) == ["local"]
    finally:
        second.stop()


def test_unknown_names_are_404(plane: launch.Running, admin: ShoalClient) -> None:
    with pytest.raises(NotFoundError, match=r"tenant 'nope' not found"):
        admin.delete_tenant("nope")
    with pytest.raises(NotFoundError, match=r"NodePool 'nope' not found \(node pools: local\)"):
        admin.delete_nodepool("nope")
    with pytest.raises(NotFoundError, match=r"it is a node of NodePool 'local'.*"
                                            r"shoal delete nodepool local"):
        admin.delete_nodepool("local-000")
    for name in ("\x00", "x" * 5000, "../tenants", "\u2028", "local-" + "9" * 5000):
        for path in ("/v1/tenants/", "/v1/nodes/", "/v1/tokens/"):
            response = _call(plane.url, plane.token, "DELETE", path + quote(name, safe=""))
            assert response.status_code == 404, (path, name, response.text)
            assert len(response.json()["error"]["message"]) < 300


# -- the store -------------------------------------------------------------------------


def test_tokens_of_a_version_2_store_keep_working_and_never_expire(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    salt, secret = b"\x01" * 32, "old-secret"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    store_schema.migrate(raw, store_schema.MIGRATIONS[:2])
    raw.execute("INSERT INTO meta (key, value) VALUES ('token_salt', ?)", (salt.hex(),))
    raw.execute("INSERT INTO tokens (id, digest, name, role, tenant) VALUES (?, ?, ?, ?, ?)",
                ("00000000000000aa", hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest(),
                 "old", "tenant", "team-a"))
    raw.execute("COMMIT")
    raw.close()
    with SqliteStore(path) as store:  # upgrades to version 3
        old = f"shoal_00000000000000aa_{secret}"
        assert store.resolve_token(old, 10.0**12) is not None, "no expiry: valid forever"
        assert store.resolve_token(old) is not None
        store.put_tenant("team-a", {})
        expiring = store.create_token("new", "tenant", "team-a", now=0.0, expires=5.0)
        assert store.resolve_token(expiring, 4.9) is not None
        assert store.resolve_token(expiring, 5.0) is None
        assert store.resolve_token(expiring) is None, "without a time it fails closed"
        assert [(t["name"], t["created"], t["expires"]) for t in store.tokens()] == [
            ("old", None, None), ("new", 0.0, 5.0)]
