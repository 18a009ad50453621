"""On a cluster the autoscaler reads what a service's routers measured (``serving_load.py``).

A real router (``shoal.serving.router``) runs here in front of a stand-in
replica that holds requests until released, and serves its Prometheus
registry on 127.0.0.1, where the operator's ``RouterLoad`` scrapes it for
the service's router pod (the test plane's pods have no reachable IP: the
address is the one thing the test gives).  The control core's reconciler
runs over the Kubernetes ports on the real API server with a fake clock:
requests held in the router make Shoal's autoscaler write more replicas
into the revision's Deployment, and once they are answered and the service
stays idle it writes zero; the canary analysis's window counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.kube.test_serving_server import Serving, manifest
from tests.kube.waiting import wait_until
from tests.serving.router.standin import StandIn, serving

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.serving.router import Router

pytestmark = pytest.mark.kube

DEADLINE_S = 60.0
HELD = 4


class Who:
    role, tenant = "tenant", "team-a"


class Rig:
    """A router in front of a holding stand-in, on an event loop in a thread of its own."""

    def __init__(self, service: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        from shoal.serving.router import RevisionRoute, Router, RouterMetrics

        self.service, self.revision = service, f"{service}-r1"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.replica = StandIn("r1", model=service)
        registry = CollectorRegistry()
        self.router: Router = Router(service, "team-a", {"token": Who()}.get,
                                     metrics=RouterMetrics(registry))
        self._serving = serving(self.replica)

        async def up() -> None:
            urls = await self._serving.__aenter__()
            await self.router.start()
            self.router.update([RevisionRoute(name=self.revision, weight=100,
                                              replicas=tuple(urls))])

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(DEADLINE_S)
        self.metrics, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.address = f"127.0.0.1:{self.metrics.server_port}"
        self.callers: list[threading.Thread] = []
        self.answers: list[int] = []

    def hold(self, count: int) -> None:
        """``count`` requests that the replica holds until ``release``."""
        async def clear() -> None:
            self.replica.release.clear()

        asyncio.run_coroutine_threadsafe(clear(), self.loop).result(DEADLINE_S)
        self.answers.clear()

        def call() -> None:
            answer = httpx.post(f"{self.router.url}/v2/models/{self.service}/infer",
                                json={"inputs": [], "parameters": {"hold": True}},
                                headers={"Authorization": "Bearer token"}, timeout=DEADLINE_S)
            self.answers.append(answer.status_code)

        for _ in range(count):
            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            self.callers.append(thread)
        deadline = time.monotonic() + DEADLINE_S
        while self.router.stats(60.0)[self.revision].in_flight < count:
            assert time.monotonic() < deadline, "the requests never reached the router"
            threading.Event().wait(0.05)  # the callers' threads send them

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.replica.release.set)
        for thread in self.callers:
            thread.join(DEADLINE_S)
        self.callers.clear()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.replica.release.set)
        self.metrics.shutdown()
        self.metrics.server_close()

        async def down() -> None:
            await self.router.stop()
            await self._serving.__aexit__(None, None, None)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(down(), self.loop).result(DEADLINE_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE_S)
        self.loop.close()


@pytest.fixture()
def rig() -> Iterator[Rig]:
    made = Rig("busy")
    yield made
    made.close()


@pytest.fixture()
def serving_load(crds: Kube, rig: Rig) -> Iterator[Serving]:
    from shoal.runtime.kubernetes.serving import serving_reconciler
    from shoal.runtime.kubernetes.serving_load import RouterLoad
    from shoal.testing import FakeClock

    namespace = "serve-load"
    crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    clock = FakeClock(1_000.0)
    load = RouterLoad(crds, address=lambda pod: rig.address)
    yield Serving(crds, namespace, serving_reconciler(crds, clock, image="shoal:test", load=load),
                  clock)
    load.client.close()
    for item in crds.list("InferenceService", namespace):
        with contextlib.suppress(Exception):
            crds.replace({**item, "metadata": {**item["metadata"], "finalizers": []}})
    crds.delete("Namespace", namespace)


def replicas(serving: Serving) -> int:
    count: int = serving.get("Deployment", "busy-r1")["spec"]["replicas"]
    return count


def test_requests_held_in_the_router_scale_up_and_idleness_scales_to_zero(
        serving_load: Serving, rig: Rig) -> None:
    serving = serving_load
    serving.kube.create(manifest("busy", serving.ns, replicas={"min": 0, "max": 5},
                                 autoscaling={"policy": "kpa", "metric": "concurrency",
                                              "target": 1}))
    serving.step()
    assert replicas(serving) == 1
    wait_until(serving.kube, "Pod", lambda pods: any(
        (p["metadata"].get("labels") or {}).get("shoal.dev/router") == "busy"
        for p in pods.values()), namespace=serving.ns, what="the router's pod")

    rig.hold(HELD)
    serving.run_pods("busy-r1", 1)  # its model loaded: the revision is Ready
    for _ in range(10):  # 20 s with four requests in flight, target one per replica
        serving.step(2.0)
    assert replicas(serving) == 5, "the autoscaler saw the router's in-flight requests"

    rig.release()
    assert rig.answers == [200] * HELD
    serving.step(2.0)
    traffic: Any = serving.reconciler.traffic
    window = traffic.window(f"{serving.ns}/busy", f"{serving.ns}/busy-r1",
                            serving.clock.now(), 60.0)
    assert window.requests == HELD and window.errors == 0
    assert window.p95_s is not None
    for _ in range(60):  # 120 s idle: past KPA's stable window and its grace
        serving.step(2.0)
    assert replicas(serving) == 0

    rig.hold(1)  # at zero, a request in flight wakes the revision at the next pass
    serving.step(0.5)
    assert replicas(serving) >= 1
    rig.release()
