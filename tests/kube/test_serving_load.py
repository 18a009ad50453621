"""``RouterLoad`` without a server: what it reads of a router's /metrics, and what not."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shoal.runtime.kubernetes.serving_load import MAX_METRICS_BYTES, RouterLoad, pod_address

BUCKETS = "".join(
    f'shoal_service_request_duration_seconds_bucket{{le="{le}",revision="svc-r1",service="svc"}}'
    f" {n}\n" for le, n in (("0.01", 0), ("0.05", 90), ("0.1", 100), ("+Inf", 100)))


def metrics(answered: int, in_flight: int, errors: int = 0) -> str:
    return (
        f'shoal_service_requests_total{{code="200",revision="svc-r1",service="svc"}} {answered}\n'
        f'shoal_service_requests_total{{code="503",revision="svc-r1",service="svc"}} {errors}\n'
        f'shoal_service_requests_total{{code="200",revision="x-r1",service="x"}} 999\n'
        f'shoal_service_requests_in_flight{{revision="svc-r1",service="svc"}} {in_flight}\n'
        + BUCKETS)


class Pods:
    """The one call ``RouterLoad`` makes of the client seam."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Any]:
        assert (kind, labels) == ("Pod", "shoal.dev/router=svc")
        return self.pods


RUNNING = {"status": {"phase": "Running", "podIP": "10.0.0.7"}}


def reader(pages: list[str | bytes]) -> RouterLoad:
    def answer(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "http://10.0.0.7:9090/metrics"
        page = pages.pop(0)
        return httpx.Response(200, content=page.encode() if isinstance(page, str) else page)

    return RouterLoad(Pods([RUNNING, {"status": {"phase": "Pending"}}]),  # type: ignore[arg-type]
                      client=httpx.Client(transport=httpx.MockTransport(answer)))


def test_in_flight_and_arrivals_become_one_second_samples() -> None:
    load = reader([metrics(10, 2), metrics(16, 4), metrics(16, 4)])
    assert load.load("team-a", "svc", "svc-r1", 100.0).in_flight == 2
    second = load.load("team-a", "svc", "svc-r1", 102.0)
    assert second.in_flight == 4
    assert [(s.concurrency, s.arrivals) for s in second.samples] == [(2.0, 0), (2.0, 0)]
    # The 8 arrivals (6 more answered, 2 more in flight) count in the second the read
    # fell in, as in the embedded runtime and the simulator.
    third = load.load("team-a", "svc", "svc-r1", 103.0)
    assert [(s.concurrency, s.arrivals) for s in third.samples] == [(4.0, 8)]


def test_a_window_counts_answers_errors_and_the_p95_bucket() -> None:
    load = reader([metrics(0, 0), metrics(100, 0, errors=3)])
    load.load("team-a", "svc", "svc-r1", 100.0)
    load.load("team-a", "svc", "svc-r1", 130.0)
    window = load.window("team-a", "svc", "svc-r1", 130.0, 60.0)
    assert (window.requests, window.errors, window.p95_s) == (103, 3, 0.1)


def test_a_restarted_router_starts_afresh() -> None:
    load = reader([metrics(50, 0), metrics(3, 1)])
    load.load("team-a", "svc", "svc-r1", 100.0)
    after = load.load("team-a", "svc", "svc-r1", 101.0)
    assert after.in_flight == 1 and after.samples == ()


@pytest.mark.parametrize("page", [b"x" * (MAX_METRICS_BYTES + 1), b"\xff\xfe not metrics {"])
def test_what_cannot_be_read_counts_as_no_load(page: bytes) -> None:
    load = reader([page])
    figures = load.load("team-a", "svc", "svc-r1", 100.0)
    assert figures.in_flight == 0 and figures.samples == ()


def test_only_running_pods_with_an_ip_are_read() -> None:
    assert pod_address(RUNNING) == "10.0.0.7:9090"
    assert pod_address({"status": {"phase": "Running", "podIP": "fd00::7"}}) == "[fd00::7]:9090"
    assert pod_address({"status": {"phase": "Pending", "podIP": "10.0.0.8"}}) is None
    assert pod_address({"status": {"phase": "Running"}}) is None
