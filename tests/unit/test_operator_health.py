"""The operator's liveness endpoint, on a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from shoal.errors import InputError
from shoal.runtime.kubernetes.health import Health


@pytest.fixture
def health() -> Iterator[tuple[Health, str]]:
    checked = Health()
    port = checked.serve(0, host="127.0.0.1")
    try:
        yield checked, f"http://127.0.0.1:{port}"
    finally:
        checked.close()


def test_alive_while_every_watched_thread_runs_and_503_naming_one_that_ended(
    health: tuple[Health, str],
) -> None:
    checked, url = health
    assert httpx.get(f"{url}/healthz").status_code == 200  # a standby watches nothing yet
    release = threading.Event()
    loop = threading.Thread(target=release.wait, name="shoal-control", daemon=True)
    serving = threading.Thread(target=release.wait, args=(60,), name="shoal-serving", daemon=True)
    for thread in (loop, serving):
        thread.start()
        checked.watch(thread)
    answer = httpx.get(f"{url}/healthz")
    assert (answer.status_code, answer.text) == (200, "ok\n")

    checked.forget(serving)
    release.set()
    loop.join(30)
    serving.join(30)
    answer = httpx.get(f"{url}/healthz")
    assert (answer.status_code, answer.text) == (503, "stopped: shoal-control\n")
    assert checked.dead() == ["shoal-control"]


def test_only_the_health_path_is_served(health: tuple[Health, str]) -> None:
    _, url = health
    assert httpx.get(f"{url}/").status_code == 404
    assert httpx.get(f"{url}/healthz/../metrics").status_code == 404
    assert httpx.post(f"{url}/healthz").status_code == 501  # http.server: no such method


def test_a_port_in_use_is_a_clear_input_error(health: tuple[Health, str]) -> None:
    _, url = health
    taken = int(url.rsplit(":", 1)[1])
    with pytest.raises(InputError, match=f"health port {taken}: cannot listen on 127.0.0.1:{taken} "
                                         r"\(Address already in use\)"):
        Health().serve(taken, host="127.0.0.1")
