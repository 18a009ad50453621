"""The router on 127.0.0.1 (port 0) in front of real stand-in replicas."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from shoal.errors import InputError
from shoal.serving.router import RevisionRoute, Router, RouterHost, RouterLimits
from tests.serving.router.standin import SERVICE, StandIn, dead_url, serving

DEADLINE_S = 30.0
INFER = f"/v2/models/{SERVICE}/infer"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@dataclass(frozen=True)
class Who:
    role: str
    tenant: str | None


TOKENS = {"team-a": Who("tenant", "team-a"), "team-b": Who("tenant", "team-b"),
          "root": Who("admin", None)}
AUTH = {"Authorization": "Bearer team-a"}


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))


def make_router(**kwargs: Any) -> Router:
    return Router(SERVICE, "team-a", TOKENS.get, **kwargs)


async def infer(client: httpx.AsyncClient, path: str = INFER, **params: Any) -> httpx.Response:
    return await client.post(path, json={**BODY, "parameters": params}, headers=AUTH)


def test_routes_the_protocol_paths_to_a_replica() -> None:
    async def scenario() -> None:
        replica = StandIn("r1")
        async with serving(replica) as urls:
            router = make_router()
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                assert router.port > 0 and router.url.endswith(str(router.port))
                answer = await infer(client)
                assert answer.status_code == 200, answer.text
                assert answer.json()["id"] == "r1"
                versioned = await infer(client, f"/v2/models/{SERVICE}/versions/v1/infer")
                assert versioned.status_code == 200
                server = await client.get("/v2", headers=AUTH)
                assert server.json()["name"] == "standin"
                metadata = await client.get(f"/v2/models/{SERVICE}", headers=AUTH)
                assert metadata.json()["name"] == SERVICE
                ready = await client.get(f"/v2/models/{SERVICE}/versions/v1/ready", headers=AUTH)
                assert ready.status_code == 200
                # A replica serves one revision: the version is not passed on.
                assert replica.seen == [INFER, INFER, "/v2", f"/v2/models/{SERVICE}",
                                        f"/v2/models/{SERVICE}/ready"]
                # The caller's content type goes on; its token does not.
                assert replica.headers[0][b"content-type"] == b"application/json"
                assert all(b"authorization" not in seen for seen in replica.headers)
                assert (await client.get("/v2/health/live")).status_code == 200
                assert (await client.get("/v2/health/ready")).json() == {"ready": True}
                unknown = await infer(client, "/v2/models/other/infer")
                assert unknown.status_code == 404
                assert "unknown model 'other'" in unknown.json()["error"]
                version = await infer(client, f"/v2/models/{SERVICE}/versions/v9/infer")
                assert version.status_code == 404 and "v9" in version.json()["error"]
                path = await client.get("/v3/anything", headers=AUTH)
                assert path.status_code == 404 and "error" in path.json()
                method = await client.get(INFER, headers=AUTH)
                assert method.status_code == 405 and "POST" in method.json()["error"]
            await router.stop()
    run(scenario)


def test_weighted_split_gives_each_revision_its_share() -> None:
    async def scenario() -> None:
        stable, canary = StandIn("stable"), StandIn("canary")
        async with serving(stable, canary) as (stable_url, canary_url):
            router = make_router()
            await router.start()
            router.update([RevisionRoute(name="v1", weight=90, replicas=(stable_url,)),
                           RevisionRoute(name="v2", weight=10, replicas=(canary_url,))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                served = collections.Counter()
                for _ in range(200):
                    served[(await infer(client)).json()["id"]] += 1
                assert served == {"stable": 180, "canary": 20}
                # Naming a version reaches that revision whatever its weight.
                named = [await infer(client, f"/v2/models/{SERVICE}/versions/v2/infer")
                         for _ in range(5)]
                assert {a.json()["id"] for a in named} == {"canary"}
                router.update([RevisionRoute(name="v1", weight=0, replicas=(stable_url,)),
                               RevisionRoute(name="v2", weight=100, replicas=(canary_url,))])
                moved = [(await infer(client)).json()["id"] for _ in range(10)]
                assert set(moved) == {"canary"}
                named = [await infer(client, f"/v2/models/{SERVICE}/versions/v1/infer")]
                assert named[0].json()["id"] == "stable"  # weight 0, named: still served
            await router.stop()
    run(scenario)


def test_least_outstanding_prefers_the_idle_replica() -> None:
    async def scenario() -> None:
        busy, idle = StandIn("busy"), StandIn("idle")
        async with serving(busy, idle) as urls:
            router = make_router(seed=7)
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                # Two held requests: the second goes to the replica the first left idle.
                held = [asyncio.create_task(infer(client, hold=True)) for _ in range(2)]
                await busy.holding.wait()
                await idle.holding.wait()
                idle.release.set()
                await asyncio.wait(held, return_when=asyncio.FIRST_COMPLETED)
                # "busy" still has one request in flight: every new one goes to "idle".
                served = [(await infer(client)).json()["id"] for _ in range(6)]
                assert served == ["idle"] * 6
                assert router.stats()["v1"].in_flight == 1
                busy.release.set()
                answers = await asyncio.gather(*held)
                assert sorted(a.json()["id"] for a in answers) == ["busy", "idle"]
            await router.stop()
    run(scenario)


def test_activator_holds_requests_until_a_replica_is_ready() -> None:
    async def scenario() -> None:
        replica = StandIn("warm")
        cold = asyncio.Event()
        signals: list[tuple[str, str]] = []

        def on_cold(service: str, revision: str) -> None:
            signals.append((service, revision))
            cold.set()

        async with serving(replica) as urls:
            router = make_router(on_cold=on_cold)
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100)])  # scaled to zero
            async with httpx.AsyncClient(base_url=router.url) as client:
                waiting = asyncio.create_task(infer(client))
                await cold.wait()
                assert signals == [(SERVICE, "v1")]
                stats = router.stats()["v1"]
                assert (stats.waiting, stats.in_flight, stats.cold_requests) == (1, 1, 1)
                assert not waiting.done()
                router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
                answer = await waiting
                assert answer.status_code == 200 and answer.json()["id"] == "warm"
                assert router.stats()["v1"].waiting == 0
            await router.stop()
    run(scenario)


def test_activator_queue_full_and_timeout_are_503_with_a_reason() -> None:
    async def scenario() -> None:
        cold = asyncio.Event()
        async with serving(StandIn("late")) as urls:
            router = make_router(limits=RouterLimits(queue_limit=1),
                                 on_cold=lambda service, revision: cold.set())
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100)])
            async with httpx.AsyncClient(base_url=router.url) as client:
                first = asyncio.create_task(infer(client))
                await cold.wait()
                full = await infer(client)
                assert full.status_code == 503
                assert "queue is full" in full.json()["error"]
                assert full.headers["retry-after"] == "1"
                router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
                assert (await first).status_code == 200
            await router.stop()
            router = make_router(limits=RouterLimits(activation_timeout_s=0.5))
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100)])
            async with httpx.AsyncClient(base_url=router.url) as client:
                timed_out = await infer(client)
                assert timed_out.status_code == 503
                assert "became ready within 0.5s" in timed_out.json()["error"]
                assert timed_out.headers["retry-after"] == "1"
                stats = router.stats()["v1"]
                assert (stats.waiting, stats.in_flight, stats.errors) == (0, 0, 1)
            await router.stop()
    run(scenario)


def test_stopping_answers_the_waiting_requests() -> None:
    async def scenario() -> None:
        cold = asyncio.Event()
        router = make_router(on_cold=lambda service, revision: cold.set())
        await router.start()
        router.update([RevisionRoute(name="v1", weight=100)])
        async with httpx.AsyncClient(base_url=router.url) as client:
            waiting = asyncio.create_task(infer(client))
            await cold.wait()
            router.update([])  # the revision goes away
            answer = await waiting
            assert answer.status_code == 503 and "was removed" in answer.json()["error"]
            none = await infer(client)
            assert none.status_code == 503 and "no revision taking traffic" in none.json()["error"]
            assert (await client.get("/v2/health/ready")).status_code == 503
        await router.stop()
    run(scenario)


def test_tokens_of_the_service_tenant_only() -> None:
    async def scenario() -> None:
        async with serving(StandIn("r1")) as urls:
            router = make_router()
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                missing = await client.post(INFER, json=BODY)
                assert missing.status_code == 401 and "missing token" in missing.json()["error"]
                assert missing.headers["www-authenticate"] == "Bearer"
                wrong = await client.post(INFER, json=BODY, headers={"Authorization": "Bearer x"})
                assert wrong.status_code == 401 and "unknown" in wrong.json()["error"]
                other = await client.post(INFER, json=BODY,
                                          headers={"Authorization": "Bearer team-b"})
                assert other.status_code == 403 and "team-b" in other.json()["error"]
                admin = await client.post(INFER, json=BODY,
                                          headers={"Authorization": "Bearer root"})
                assert admin.status_code == 200
                assert (await infer(client)).status_code == 200
            await router.stop()
    run(scenario)


def test_a_revoked_token_stops_working_once_its_verdict_expires() -> None:
    async def scenario() -> None:
        now = [0.0]
        tokens = dict(TOKENS)
        async with serving(StandIn("r1")) as urls:
            router = Router(SERVICE, "team-a", tokens.get, clock=lambda: now[0],
                            limits=RouterLimits(auth_cache_s=5.0))
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                assert (await infer(client)).status_code == 200
                del tokens["team-a"]
                assert (await infer(client)).status_code == 200  # remembered verdict
                now[0] = 5.0
                assert (await infer(client)).status_code == 401
            await router.stop()
    run(scenario)


def test_an_oversized_body_is_413() -> None:
    async def scenario() -> None:
        replica = StandIn("r1")
        async with serving(replica) as urls:
            router = make_router(limits=RouterLimits(max_body_bytes=1000))
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                big = {**BODY, "parameters": {"pad": "x" * 2000}}
                # The token is checked first: an oversized body without one is a 401.
                anonymous = await client.post(INFER, json=big)
                assert anonymous.status_code == 401
                declared = await client.post(INFER, json=big, headers=AUTH)
                assert declared.status_code == 413 and "1000 bytes" in declared.json()["error"]

                async def chunks():  # no content-length: counted as it streams
                    for _ in range(3):
                        yield b"x" * 600

                streamed = await client.post(INFER, content=chunks(), headers=AUTH)
                assert streamed.status_code == 413
                assert replica.seen == []
            await router.stop()
    run(scenario)


def test_replica_errors_pass_through() -> None:
    async def scenario() -> None:
        async with serving(StandIn("r1")) as urls:
            router = make_router()
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                answer = await infer(client, fail=True)
                assert answer.status_code == 400
                assert answer.json() == {"error": "input 'x': expected shape [1, 4], got [1, 3]"}
            await router.stop()
    run(scenario)


def test_a_replica_that_refuses_connections() -> None:
    async def scenario() -> None:
        replica = StandIn("alive")
        async with serving(replica) as (alive,):
            router = make_router(seed=3)
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=(dead_url(), alive))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                # Each request whose pick is the dead replica is retried on the live one.
                answers = [await infer(client) for _ in range(10)]
                assert [a.status_code for a in answers] == [200] * 10
                assert len(replica.seen) == 10
                down = dead_url()
                router.update([RevisionRoute(name="v1", weight=100, replicas=(down,))])
                lost = await infer(client)
                assert lost.status_code == 503
                assert f"replica {down} of revision 'v1' is unreachable" in lost.json()["error"]
            await router.stop()
    run(scenario)


def test_metrics_and_stats() -> None:
    async def scenario() -> None:
        async with serving(StandIn("r1")) as urls:
            router = make_router()
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                for _ in range(4):
                    assert (await infer(client)).status_code == 200
                assert (await infer(client, fail=True)).status_code == 400
                assert (await client.post(INFER, json=BODY)).status_code == 401
            text = generate_latest(router.metrics.registry).decode()
            labels = f'service="{SERVICE}"'
            assert f'shoal_service_requests_total{{code="200",revision="v1",{labels}}} 4.0' in text
            assert f'shoal_service_requests_total{{code="400",revision="v1",{labels}}} 1.0' in text
            assert f'shoal_service_requests_total{{code="401",revision="",{labels}}} 1.0' in text
            assert (f'shoal_service_request_duration_seconds_count{{revision="v1",{labels}}} 5.0'
                    in text)
            assert f'shoal_service_requests_in_flight{{revision="v1",{labels}}} 0.0' in text
            assert "# TYPE shoal_service_activator_waiting_requests gauge" in text
            stats = router.stats()["v1"]
            assert (stats.arrivals, stats.completed, stats.in_flight, stats.errors) == (5, 5, 0, 0)
            assert stats.latency_samples == 5 and stats.latency_p95_s is not None
            assert stats.arrival_rate > 0
            await router.stop()
    run(scenario)


def test_update_from_another_thread_and_bad_updates() -> None:
    async def scenario() -> None:
        async with serving(StandIn("r1")) as urls:
            router = make_router()
            await router.start()
            applied = threading.Thread(target=router.update, args=(
                [RevisionRoute(name="v1", weight=100, replicas=tuple(urls))],))
            applied.start()
            await asyncio.to_thread(applied.join)
            async with httpx.AsyncClient(base_url=router.url) as client:
                assert (await infer(client)).status_code == 200
            with pytest.raises(InputError, match="unique"):
                router.update([RevisionRoute(name="v1", weight=50),
                               RevisionRoute(name="v1", weight=50)])
            await router.stop()
        with pytest.raises(ValueError, match="weight"):
            RevisionRoute(name="v1", weight=-1)
        with pytest.raises(ValueError, match="extra"):
            RevisionRoute.model_validate({"name": "v1", "weight": 1, "wieght": 2})
    run(scenario)


def test_a_replica_that_does_not_answer_in_time_is_504() -> None:
    async def scenario() -> None:
        replica = StandIn("slow")
        async with serving(replica) as urls:
            router = make_router(limits=RouterLimits(response_timeout_s=2.0))
            await router.start()
            router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(urls))])
            async with httpx.AsyncClient(base_url=router.url) as client:
                answer = await infer(client, hold=True)
                assert answer.status_code == 504
                assert "did not answer within 2s" in answer.json()["error"]
                replica.release.set()
                assert (await infer(client)).status_code == 200
            await router.stop()
    run(scenario)


def test_a_kept_alive_connection_the_replica_closed_is_replaced() -> None:
    async def scenario() -> None:
        answered: list[int] = []

        async def one_answer_per_connection(reader: asyncio.StreamReader,
                                            writer: asyncio.StreamWriter) -> None:
            # Answers as HTTP/1.1 keep-alive would, then closes: what an idle
            # timeout does to a pooled connection.
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            body = b'{"id": "closing"}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            answered.append(1)
            writer.close()

        server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        router = make_router()
        await router.start()
        router.update([RevisionRoute(name="v1", weight=100,
                                     replicas=(f"http://127.0.0.1:{port}",))])
        async with httpx.AsyncClient(base_url=router.url) as client:
            for _ in range(3):
                answer = await infer(client)
                assert answer.status_code == 200 and answer.json() == {"id": "closing"}
        assert len(answered) == 3
        await router.stop()
        server.close()
        await server.wait_closed()
    run(scenario)


def test_a_replica_that_drops_an_inference_is_503() -> None:
    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # took the request, then goes away
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        router = make_router()
        await router.start()
        router.update([RevisionRoute(name="v1", weight=100, replicas=(url,))])
        async with httpx.AsyncClient(base_url=router.url) as client:
            answer = await infer(client)
            assert answer.status_code == 503
            assert f"replica {url} of revision 'v1' failed while answering" in answer.json()["error"]
        await router.stop()
        server.close()
        await server.wait_closed()
    run(scenario)


def test_routers_of_two_services_share_one_registry() -> None:
    async def scenario() -> None:
        async with serving(StandIn("r1"), StandIn("r2", model="other")) as (one, two):
            first = make_router()
            second = Router("other", "team-b", TOKENS.get, metrics=first.metrics)
            for router, url in ((first, one), (second, two)):
                await router.start()
                router.update([RevisionRoute(name="v1", weight=100, replicas=(url,))])
            async with httpx.AsyncClient() as client:
                assert (await infer(client, first.url + INFER)).status_code == 200
                answer = await client.post(second.url + "/v2/models/other/infer", json=BODY,
                                           headers={"Authorization": "Bearer team-b"})
                assert answer.status_code == 200 and answer.json()["id"] == "r2"
            text = generate_latest(first.metrics.registry).decode()
            for service in (SERVICE, "other"):
                assert (f'shoal_service_requests_total{{code="200",revision="v1",'
                        f'service="{service}"}} 1.0') in text
            for router in (first, second):
                await router.stop()
    run(scenario)


def test_a_threaded_control_plane_hosts_routers_on_their_own_loop() -> None:
    async def replica_forever(ready: threading.Event, box: list[str],
                              stop: asyncio.Event) -> None:
        async with serving(StandIn("r1")) as urls:
            box.extend(urls)
            ready.set()
            await stop.wait()

    # The replica runs on a loop of its own; this thread stands for the plane.
    loop, ready, box = asyncio.new_event_loop(), threading.Event(), []
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(replica_forever(ready, box, stop),), daemon=True)
    thread.start()
    assert ready.wait(DEADLINE_S)
    host = RouterHost()
    router = make_router()
    try:
        url = host.start(router)
        router.update([RevisionRoute(name="v1", weight=100, replicas=tuple(box))])
        answer = httpx.post(url + INFER, json=BODY, headers=AUTH, timeout=DEADLINE_S)
        assert answer.status_code == 200 and answer.json()["id"] == "r1"
        # The answer is counted once it has been sent: on the router's loop, just after
        # the caller may already have read it.
        tick, deadline = threading.Event(), time.monotonic() + DEADLINE_S
        while router.stats()["v1"].completed != 1 and time.monotonic() < deadline:
            tick.wait(0.01)
        assert router.stats()["v1"].completed == 1
        host.stop(router)
    finally:
        host.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(DEADLINE_S)
        loop.close()
