"""``shoal get -w`` on a cluster: watches resumed where they left off, errors in the caller."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.errors import Forbidden
from shoal.runtime.kubernetes.changes import Changes


class Server:
    """Lists and watches of one kind, scripted: each watch call takes the next script."""

    def __init__(self, scripts: list[list[tuple[str, dict[str, Any]] | Exception]]) -> None:
        self.scripts = scripts
        self.lists = 0
        self.since: queue.Queue[str] = queue.Queue()
        self.done = threading.Event()

    def listing(self, kind: str, namespace: str | None = None) -> dict[str, Any]:
        self.lists += 1
        return {"metadata": {"resourceVersion": f"list-{self.lists}"}, "items": []}

    def watch(self, kind: str, namespace: str | None = None, *, since: str,
              timeout_s: float, bookmarks: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        self.since.put(since)
        if not self.scripts:
            self.done.wait()  # an idle watch: open until the test ends
            return
        for step in self.scripts.pop(0):
            if isinstance(step, Exception):
                raise step
            yield step


def obj(version: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version}}


def test_a_watch_resumes_from_the_last_version_and_lists_again_after_gone() -> None:
    server = Server([
        [("BOOKMARK", obj("5")), ("ADDED", obj("6"))],  # ends: resumed from 6
        [("ERROR", {"code": 410})],  # too old: listed again, resumed from that
        [("MODIFIED", obj("9"))],
    ])
    changes = Changes(server, ["TrainingJob"], "team")  # type: ignore[arg-type]
    try:
        resumed = [server.since.get(timeout=60) for _ in range(4)]
        assert resumed == ["list-1", "6", "list-2", "9"]
        assert server.lists == 2
        changes.wait()  # woken (a burst of changes may be one wake)
    finally:
        changes.close()
        server.done.set()


def test_a_bookmark_moves_where_to_resume_and_wakes_nobody() -> None:
    server = Server([[("BOOKMARK", obj("5"))]])
    changes = Changes(server, ["TrainingJob"], "team")  # type: ignore[arg-type]
    try:
        assert [server.since.get(timeout=60) for _ in range(2)] == ["list-1", "5"]
        assert changes._woken.empty()
    finally:
        changes.close()
        server.done.set()


def test_a_watch_that_fails_raises_in_the_callers_thread() -> None:
    server = Server([[Forbidden("trainingjobs is forbidden")]])
    changes = Changes(server, ["TrainingJob"], None)  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="forbidden"):
        changes.wait()
    changes.close()
    server.done.set()
