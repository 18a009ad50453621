"""The Pod informer's index by Shoal's pod-uid label: how the binder finds a worker's pod.

A scan of every held pod for each observed pod would cost the loop
O(pods x jobs) per pass; the index answers from a dict, and must follow
every change: events, deletions, relists and the loop's own bind.
"""

from __future__ import annotations

import threading
from typing import Any

from shoal.runtime.kubernetes.cache import Cache, CachedKube, Watched

Body = dict[str, Any]
UID = "shoal.dev/pod-uid"


def pod(name: str, rv: int, uid: str | None, namespace: str = "ns") -> Body:
    labels = {"shoal.dev/job": "j"} | ({UID: uid} if uid else {})
    return {"kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                        "resourceVersion": str(rv), "labels": labels},
            "spec": {"schedulerName": "shoal"}, "status": {"phase": "Pending"}}


class Server:
    def __init__(self, items: list[Body]) -> None:
        self.items, self.lists = items, 0

    def listing(self, kind: str, namespace: str | None = None, labels: str = "",
                fields: str = "") -> Body:
        self.lists += 1
        return {"metadata": {"resourceVersion": "100"}, "items": list(self.items)}

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        self.lists += 1
        label, _, value = labels.partition("=")
        return [i for i in self.items if i["metadata"]["labels"].get(label) == value]


def names(found: list[Body]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in found)


def test_the_index_follows_events_deletions_relists_and_binds() -> None:
    server = Server([pod("a-1", 1, "u1"), pod("b-1", 2, "u2"), pod("other", 3, None)])
    cache = Cache(server, [Watched("Pod", "shoal.dev/job", index=UID)])  # type: ignore[arg-type]
    view = CachedKube.__new__(CachedKube)
    view.inner, view.cache = server, cache  # type: ignore[assignment]
    assert view.labelled("Pod", "ns", UID, "u1") == server.list("Pod", "ns", f"{UID}=u1"), \
        "before the informer listed, the server answers"
    (informer,) = cache.informers.values()
    informer.relist()
    asked = server.lists
    assert names(view.labelled("Pod", "ns", UID, "u1")) == ["a-1"]
    assert view.labelled("Pod", "elsewhere", UID, "u1") == []
    informer.apply(pod("a-2", 5, "u1"))  # the Job controller's replacement
    informer.apply(pod("a-1", 6, "u1"), deleted=True)
    assert names(view.labelled("Pod", "ns", UID, "u1")) == ["a-2"]
    relabelled = pod("b-1", 7, "u3")
    informer.apply(relabelled)
    assert view.labelled("Pod", "ns", UID, "u2") == []
    assert names(view.labelled("Pod", "ns", UID, "u3")) == ["b-1"]
    cache.bound("a-2", "ns", "node-1")
    (bound,) = view.labelled("Pod", "ns", UID, "u1")
    assert bound["spec"]["nodeName"] == "node-1"
    server.items = [pod("c-1", 8, "u1")]
    informer.relist()
    assert names(view.labelled("Pod", "ns", UID, "u1")) == ["c-1"]
    assert view.labelled("Pod", "ns", UID, "u3") == []
    assert server.lists == asked + 1, "from the index: only the relist asked the server"


def test_lookups_from_another_thread_see_a_consistent_index() -> None:
    server = Server([])
    cache = Cache(server, [Watched("Pod", "shoal.dev/job", index=UID)])  # type: ignore[arg-type]
    (informer,) = cache.informers.values()
    informer.relist()
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(len(cache.labelled("Pod", UID, "u") or []))

    reader = threading.Thread(target=read)
    reader.start()
    for rv in range(1, 2001):
        informer.apply(pod(f"p{rv % 3}", rv, "u"), deleted=rv % 5 == 0)
    stop.set()
    reader.join(timeout=30)
    assert seen and max(seen) <= 3
    assert len(cache.labelled("Pod", UID, "u") or []) == len(informer.items)
