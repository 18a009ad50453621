"""The REST API over a real control plane: apply semantics, tenancy, bad requests."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.errors import Forbidden, ImmutableError, InputError, NotFoundError
from tests.control.conftest import CLUSTER, job, phase, wait_for

SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]
QUICK = ["python", "-c", "print('hello')"]


def results(applied: list[dict[str, str]]) -> dict[str, str]:
    return {f"{a['kind']}/{a['name']}": a["result"] for a in applied}


def test_apply_says_created_configured_or_unchanged(admin: ShoalClient) -> None:
    assert set(results(admin.apply_text(CLUSTER, "c.yaml")).values()) == {"unchanged"}
    changed = CLUSTER.replace("team-b}\nspec: {cohort: lab", "team-b}\nspec: {cohort: lab, weight: 2")
    assert results(admin.apply_text(changed, "c.yaml")) == {
        "NodePool/local": "unchanged", "Tenant/team-a": "unchanged", "Tenant/team-b": "configured"}
    text = job("steady", "team-a", SLEEPER)
    assert results(admin.apply_text(text, "j.yaml")) == {"TrainingJob/steady": "created"}
    assert results(admin.apply_text(text, "j.yaml")) == {"TrainingJob/steady": "unchanged"}
    assert [e["kind"] for e in admin.job("steady")["events"]].count("submitted") == 1


def test_a_changed_job_is_refused_and_nothing_applied(admin: ShoalClient) -> None:
    admin.apply_text(job("fixed", "team-a", SLEEPER), "j.yaml")
    tenant = "---\n" + CLUSTER.split("---")[1].replace("name: team-a", "name: team-c")
    with pytest.raises(ImmutableError, match="immutable; delete it first"):
        admin.apply_text(tenant + "---\n" + job("fixed", "team-a", SLEEPER, gpus=2), "j.yaml")
    assert "team-c" not in admin.tenants()


def test_a_rejected_apply_leaves_no_folder(plane: launch.Running, admin: ShoalClient) -> None:
    bad = job("lost", "team-z", SLEEPER)
    with pytest.raises(InputError, match="team-z"):
        admin.apply_text(job("innocent", "team-a", SLEEPER) + "---\n" + bad, "bad.yaml")
    assert not (plane.plane.state_dir / "jobs" / "team-a" / "innocent").exists()
    assert admin.jobs() == []


def _get(plane: launch.Running, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{plane.url}{path}", params=params,
                     headers={"Authorization": f"Bearer {plane.token}"})


@pytest.mark.parametrize("since", ["-1", "abc", str(10**30)])
def test_bad_event_ids_are_400_naming_the_field(plane: launch.Running, since: str) -> None:
    response = _get(plane, "/v1/events", since=since)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert "since" in response.json()["error"]["message"]


def test_bad_pod_indexes(plane: launch.Running, admin: ShoalClient) -> None:
    admin.apply_text(job("one", "team-a", QUICK), "j.yaml")
    huge = _get(plane, "/v1/jobs/one/logs", pod=str(10**30))
    assert huge.status_code == 400 and "pod" in huge.json()["error"]["message"]
    with pytest.raises(NotFoundError, match=r"no pod 5 \(pods: 0\)"):
        admin.logs("one", pod=5)


def test_a_tenant_token_needs_a_tenant(plane: launch.Running) -> None:
    response = httpx.post(f"{plane.url}/v1/tokens", json={},
                          headers={"Authorization": f"Bearer {plane.token}"})
    assert response.status_code == 400
    assert "needs a tenant" in response.json()["error"]["message"]


def test_unknown_routes_and_bodies_answer_in_the_error_shape(plane: launch.Running) -> None:
    assert _get(plane, "/v2/nothing").json()["error"]["code"] == "not_found"
    response = httpx.post(f"{plane.url}/v1/apply", content=b"{not json",
                          headers={"Authorization": f"Bearer {plane.token}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["retryable"] is False


def test_usage_borrowed_and_pending_per_tenant(plane: launch.Running, admin: ShoalClient) -> None:
    admin.apply_text(job("big", "team-a", SLEEPER, gpus=3), "a.yaml")
    wait_for(lambda: phase(admin, "big") == "Running")
    admin.apply_text(job("waits", "team-a", SLEEPER, gpus=2), "b.yaml")
    wait_for(lambda: phase(admin, "waits") == "Pending")
    status = {t["name"]: t for t in admin.tenant_status()}
    assert status["team-a"]["usage"]["gpu/virtual"] == 3000
    assert status["team-a"]["borrowed"] == {"gpu/virtual": 1000}
    assert status["team-a"]["pending"] == 1 and status["team-b"]["usage"] == {}


def test_what_a_tenant_token_sees(plane: launch.Running, admin: ShoalClient) -> None:
    with ShoalClient(plane.url, admin.create_token("team-a")) as a:
        assert [t["name"] for t in a.tenant_status()] == ["team-a"]
        summary = a.node_summary()
        assert summary["nodes"] == {} and summary["capacity"]["gpu/virtual"] == 4000
        admin.apply_text(job("b-job", "team-b", SLEEPER), "b.yaml")
        assert all(e["tenant"] == "team-a" for e in a.events())
        assert a.jobs() == []
        # Its own job: how it runs, but not on which node nor for whom it was preempted.
        a.apply_text(job("a-job", "team-a", SLEEPER), "a.yaml")
        wait_for(lambda: phase(admin, "a-job") == "Running")
        mine = a.job("a-job")
        assert mine["pods"] and all("node" not in p and "handle" not in p for p in mine["pods"])
        assert "preemptor" not in mine
        admitted = [e for e in a.events() if e["kind"] == "admitted"]
        assert admitted and all("nodes" not in e["data"] and "placement" not in e["data"]
                                for e in admitted)
        assert admin.job("a-job")["pods"][0]["node"] == "local-000", "the admin sees it all"


def test_following_a_log_reads_off_the_event_loop(
    plane: launch.Running, admin: ShoalClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = plane.server.config.app.state.core
    threads: list[str] = []
    original = core.workspace.read_log

    def recording(job: str, pod: int, offset: int, limit: int) -> tuple[bytes, int]:
        threads.append(threading.current_thread().name)
        return original(job, pod, offset, limit)

    monkeypatch.setattr(core.workspace, "read_log", recording)
    admin.apply_text(job("chatty", "team-a", QUICK), "j.yaml")
    wait_for(lambda: phase(admin, "chatty") == "Succeeded")
    assert "hello" in "".join(admin.follow_logs("chatty"))
    assert len(threads) >= 2 and plane.thread.name not in threads


def test_healthz_says_only_whether_the_plane_is_up(plane: launch.Running,
                                                    admin: ShoalClient) -> None:
    errors = plane.plane.controller.job_errors
    errors["someones-job"] = "ValueError: secret detail"  # as a failing pass records it
    try:
        with ShoalClient(plane.url, None) as anonymous:
            assert anonymous.health() == {"status": "degraded"}
        details = admin._call("GET", "/v1/health")
        assert details["job_errors"] == {"someones-job": "ValueError: secret detail"}
        with ShoalClient(plane.url, admin.create_token("team-a")) as tenant, \
                pytest.raises(Forbidden):
            tenant._call("GET", "/v1/health")
    finally:
        errors.clear()


def test_the_api_socket_lets_asyncio_turn_nagle_off() -> None:
    """Without IPPROTO_TCP on the socket, asyncio leaves Nagle on for its connections and
    every answer written in two parts waits for the client's delayed ACK (~40 ms)."""
    import socket

    sock = launch.listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
