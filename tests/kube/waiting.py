"""Wait for the cluster to reach a state: list once, then follow a watch, with a deadline.

Never sleeps: each event is checked as it arrives, and a watch that ends
(the server's timeout, or 410 Gone) is resumed or the list taken again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube

Body = dict[str, Any]
State = dict[str, Body]
"""Live objects by ``namespace/name`` (``name`` for cluster-scoped kinds)."""

TIMEOUT_S = 60.0


def key(body: Body) -> str:
    meta = body["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def wait_until(kube: Kube, kind: str, done: Callable[[State], bool], *, what: str,
               namespace: str | None = None, fields: str = "",
               timeout_s: float = TIMEOUT_S) -> State:
    """The objects of ``kind`` once ``done(objects)`` holds; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    state: State = {}
    since: str | None = None
    while True:
        if since is None:
            listing = kube.listing(kind, namespace, fields=fields)
            state = {key(item): item for item in listing.get("items", [])}
            since = listing["metadata"]["resourceVersion"]
        if done(state):
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"not within {timeout_s:.0f} s: {what}; last seen: {sorted(state)}")
        since = _follow(kube, kind, namespace, fields, state, since, min(left, 30.0), done)


def _follow(kube: Kube, kind: str, namespace: str | None, fields: str, state: State,
            since: str, timeout_s: float, done: Callable[[State], bool]) -> str | None:
    """Apply events to ``state`` until ``done`` or the watch ends; None: list again."""
    for event, body in kube.watch(kind, namespace, since=since, timeout_s=timeout_s,
                                  fields=fields):
        if event == "ERROR":
            return None
        since = body["metadata"]["resourceVersion"]
        if event == "DELETED":
            state.pop(key(body), None)
        else:
            state[key(body)] = body
        if done(state):
            break
    return since


def wait_gone(kube: Kube, kind: str, name: str, namespace: str | None = None,
              timeout_s: float = TIMEOUT_S) -> None:
    """Until no ``kind`` named ``name`` exists."""
    wait_until(kube, kind, lambda objects: not objects, namespace=namespace,
               fields=f"metadata.name={name}", what=f"{kind} {name} gone",
               timeout_s=timeout_s)
