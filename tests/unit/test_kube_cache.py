"""The watch-fed cache (informers) against a scripted stand-in for the client seam.

The real API server shows the same in ``tests/kube/test_cache_server.py``;
here each case is driven exactly: a watch that breaks, a 410, an event that
arrives after the loop's own newer write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.errors import ConflictError, UnreachableError
from shoal.runtime.kubernetes.cache import Cache, CachedKube, Informer, Watched, matches

Body = dict[str, Any]


def obj(name: str, rv: int, namespace: str = "ns", kind: str = "TrainingJob",
        labels: dict[str, str] | None = None, **rest: Any) -> Body:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace,
                                       "resourceVersion": str(rv), "labels": labels or {},
                                       "managedFields": [{"manager": "x"}]}, **rest}


class Scripted:
    """Lists and watches played from scripts; records what was asked."""

    def __init__(self, listings: list[list[Body]], streams: list[list[tuple[str, Body] | Exception]],
                 stop: threading.Event) -> None:
        self.listings, self.streams, self.stop = listings, streams, stop
        self.asked: list[str] = []
        self.server: dict[tuple[str, str], Body] = {}
        self.writes: list[Body] = []

    def listing(self, kind: str, namespace: str | None = None, labels: str = "",
                fields: str = "") -> Body:
        self.asked.append("list")
        items = self.listings.pop(0)
        top = max([int(i["metadata"]["resourceVersion"]) for i in items] or [1])
        return {"metadata": {"resourceVersion": str(top)}, "items": items}

    def watch(self, kind: str, namespace: str | None = None, *, since: str, timeout_s: float,
              labels: str = "", fields: str = "", bookmarks: bool = False
              ) -> Iterator[tuple[str, Body]]:
        self.asked.append(f"watch from {since}")
        if not self.streams:
            self.stop.set()  # the script is played out
            return
        for event in self.streams.pop(0):
            if isinstance(event, Exception):
                raise event
            yield event

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        self.asked.append(f"list {kind} {labels}")
        return []

    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        self.asked.append(f"get {name}")
        return self.server.get((namespace or "", name))

    def replace_status(self, body: Body) -> Body:
        held = self.server[(body["metadata"]["namespace"], body["metadata"]["name"])]
        if held["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise ConflictError("stale")
        saved = obj(body["metadata"]["name"], int(held["metadata"]["resourceVersion"]) + 1,
                    status=body.get("status"))
        self.server[(body["metadata"]["namespace"], body["metadata"]["name"])] = saved
        return saved


def played(listings: list[list[Body]],
           streams: list[list[tuple[str, Body] | Exception]]) -> tuple[Informer, Scripted]:
    stop = threading.Event()
    kube = Scripted(listings, streams, stop)
    informer = Informer(kube, "TrainingJob")  # type: ignore[arg-type]
    informer.run(stop)
    return informer, kube


def test_a_broken_watch_resumes_from_the_last_resource_version_without_listing() -> None:
    informer, kube = played(
        [[obj("a", 5)]],
        [[("ADDED", obj("b", 7)), UnreachableError("connection reset")],
         [("MODIFIED", obj("a", 9)), ("BOOKMARK", {"metadata": {"resourceVersion": "12"}})]],
    )
    assert kube.asked == ["list", "watch from 5", "watch from 7", "watch from 12"]
    assert informer.lists == 1
    assert sorted(informer.items) == [("ns", "a"), ("ns", "b")]
    assert informer.items[("ns", "a")]["metadata"]["resourceVersion"] == "9"


def test_410_gone_lists_again_and_drops_what_was_deleted_meanwhile() -> None:
    informer, kube = played(
        [[obj("a", 5), obj("b", 6)], [obj("b", 20)]],
        [[("ERROR", {"kind": "Status", "code": 410, "message": "too old"})]],
    )
    assert kube.asked[:3] == ["list", "watch from 6", "list"]
    assert kube.asked[3] == "watch from 20"
    assert informer.lists == 2
    assert list(informer.items) == [("ns", "b")]


def test_objects_only_move_forward_and_a_deleted_one_stays_gone() -> None:
    informer = Informer(None, "TrainingJob")  # type: ignore[arg-type]
    assert informer.apply(obj("a", 10))
    assert not informer.apply(obj("a", 8))  # a late event older than the loop's own write
    assert not informer.apply(obj("a", 10))  # the echo of that write
    assert informer.items[("ns", "a")]["metadata"]["resourceVersion"] == "10"
    assert "managedFields" not in informer.items[("ns", "a")]["metadata"]
    assert informer.apply(obj("a", 11), deleted=True)
    assert not informer.apply(obj("a", 10))  # a write's answer arriving after the deletion
    assert ("ns", "a") not in informer.items
    assert informer.apply(obj("a", 15))  # made again under the same name


def test_a_pod_change_the_loop_does_not_read_is_no_change() -> None:
    informer = Informer(None, "Pod")  # type: ignore[arg-type]
    pod = obj("p", 3, kind="Pod", spec={"nodeName": "n1", "containers": []},
              status={"phase": "Running", "conditions": [{"lastProbeTime": "t1"}]})
    assert informer.apply(pod)
    later = {**pod, "metadata": {**pod["metadata"], "resourceVersion": "4"},
             "status": {**pod["status"], "conditions": [{"lastProbeTime": "t2"}]}}
    generation = informer.generation
    assert not informer.apply(later)
    assert informer.generation == generation
    assert informer.items[("ns", "p")]["metadata"]["resourceVersion"] == "4"


def synced_cache(kube: Scripted, *watched: Watched) -> Cache:
    cache = Cache(kube, watched)  # type: ignore[arg-type]
    for informer in cache.informers.values():
        informer.relist()
    return cache


def test_reads_come_from_memory_once_listed_and_from_the_server_before() -> None:
    kube = Scripted([[obj("a", 5)], [obj("p", 6, kind="Pod", labels={"job": "a"})],
                     [obj("q", 7, kind="Pod")]], [], threading.Event())
    kube.server[("ns", "z")] = obj("z", 1)
    view = CachedKube(kube, Cache(kube, [Watched("TrainingJob")]))  # type: ignore[arg-type]
    assert view.get("TrainingJob", "z", "ns") is not None  # not listed yet: asked
    assert kube.asked == ["get z"]
    cache = synced_cache(kube, Watched("TrainingJob"), Watched("Pod", "job", complement="!job"),
                         Watched("Pod", "!job", complement="job"))
    view = CachedKube(kube, cache)  # type: ignore[arg-type]
    kube.asked.clear()
    assert [o["metadata"]["name"] for o in view.list("TrainingJob")] == ["a"]
    assert view.get("TrainingJob", "z", "ns") is None  # the cache knows every job
    assert sorted(o["metadata"]["name"] for o in view.list("Pod")) == ["p", "q"]
    assert [o["metadata"]["name"] for o in view.list("Pod", labels="!job")] == ["q"]
    assert view.list("Pod", "other") == []
    # A narrower selector is answered by the informer whose selector covers it ...
    assert [o["metadata"]["name"] for o in view.list("Pod", labels="job=a")] == ["p"]
    assert view.list("Pod", labels="job=b") == []
    assert kube.asked == []
    # ... and one that no informer covers is asked of the server.
    assert view.list("Pod", labels="uid=x") == []
    assert kube.asked == ["list Pod uid=x"]


def test_a_conflicting_write_rereads_the_object_and_the_answer_of_a_write_is_kept() -> None:
    kube = Scripted([[obj("a", 5)]], [], threading.Event())
    kube.server[("ns", "a")] = obj("a", 9)  # changed by someone since the list
    cache = synced_cache(kube, Watched("TrainingJob"))
    view = CachedKube(kube, cache)  # type: ignore[arg-type]
    stale: Body = {"kind": "TrainingJob", "metadata": {"name": "a", "namespace": "ns",
                                                 "resourceVersion": "5"}, "status": {}}
    with pytest.raises(ConflictError):
        view.replace_status(stale)
    assert view.conflicts == 1
    held = view.get("TrainingJob", "a", "ns")
    assert held is not None and held["metadata"]["resourceVersion"] == "9"
    view.replace_status({**stale, "metadata": {**stale["metadata"],
                                                       "resourceVersion": "9"},
                                 "status": {"phase": "Running"}})
    held = view.get("TrainingJob", "a", "ns")
    assert held is not None and held["metadata"]["resourceVersion"] == "10"
    assert held["status"] == {"phase": "Running"}


def test_a_bound_pod_stays_bound_when_the_echo_of_its_creation_arrives() -> None:
    kube = Scripted([[]], [], threading.Event())
    cache = synced_cache(kube, Watched("Pod"))
    created = obj("p", 3, kind="Pod", spec={"containers": []})
    cache.saw(created)
    cache.bound("p", "ns", "node-1")
    cache.informers[("Pod", "")].apply(created)  # the watch's ADDED, same version
    assert cache.get("Pod", "p", "ns")["spec"]["nodeName"] == "node-1"  # type: ignore[index]


@pytest.mark.parametrize(("labels", "selector", "expected"), [
    ({"a": "1"}, "a=1", True), ({"a": "1"}, "a==2", False), ({"a": "1"}, "a!=1", False),
    ({}, "!a", True), ({"a": "1"}, "!a", False), ({"a": "1", "b": "2"}, "a,b=2", True),
    ({}, "", True), ({"a": "1"}, "a in (1)", None),
])
def test_equality_selectors(labels: dict[str, str], selector: str, expected: bool | None) -> None:
    assert matches(labels, selector) is expected


def test_the_journal_says_which_objects_changed_since_a_mark() -> None:
    stop = threading.Event()
    kube = Scripted([[obj("a", 1), obj("b", 2)], [obj("a", 30)]], [], stop)
    cache = synced_cache(kube, Watched("TrainingJob"))
    first = cache.changes("TrainingJob", None)
    assert first is not None
    keys, mark = first
    assert keys is None, "a first look reads everything"
    informer = cache.informers[("TrainingJob", "")]
    assert informer.apply(obj("a", 5))
    assert not informer.apply(obj("a", 4))  # older: held as it was, nothing to say
    assert informer.apply(obj("c", 6))
    assert informer.apply(obj("b", 7), deleted=True)
    found = cache.changes("TrainingJob", mark)
    assert found is not None
    keys, mark = found
    assert keys == [("ns", "a"), ("ns", "c"), ("ns", "b")]
    found = cache.changes("TrainingJob", mark)
    assert found is not None and found[0] == []
    informer.relist()  # a new journal: a reader with an older mark reads it all again
    found = cache.changes("TrainingJob", mark)
    assert found is not None and found[0] is None
    assert cache.changes("Pod", None) is None, "not watched: the cache cannot tell"


def test_a_journal_grown_past_the_objects_held_starts_anew() -> None:
    informer = Informer(None, "TrainingJob")  # type: ignore[arg-type]
    informer.apply(obj("a", 1))
    _, mark = informer.changes(None)
    for rv in range(2, 1100):
        assert informer.apply(obj("a", rv, status={"step": rv}))
    keys, mark = informer.changes(mark)
    assert keys is None, "the changes since that mark were not all kept"
    informer.apply(obj("a", 2000))
    assert informer.changes(mark)[0] == [("ns", "a")]
    assert informer.changes(None)[0] is None


def test_the_journal_says_which_index_values_changed_before_and_after() -> None:
    stop = threading.Event()
    kube = Scripted([[obj("p1", 1, kind="Pod", labels={"job": "j", "uid": "u1"}),
                      obj("p2", 2, kind="Pod", labels={"job": "j", "uid": "u2"})], []],
                    [], stop)
    cache = synced_cache(kube, Watched("Pod", "job", index="uid"))
    first = cache.changed_labels("Pod", "uid", None)
    assert first is not None and first[0] is None, "a first look: any pod may have changed"
    mark = first[1]
    informer = cache.informers[("Pod", "job")]
    assert informer.apply(obj("p1", 5, kind="Pod", labels={"job": "j", "uid": "u1"},
                              status={"phase": "Succeeded"}))
    assert informer.apply(obj("p3", 6, kind="Pod", labels={"job": "j", "uid": "u3"}))
    found = cache.changed_labels("Pod", "uid", mark)
    assert found is not None
    values, mark = found
    assert values == {"u1", "u3"}
    # A label moved: both values; a deletion: the value it had.
    assert informer.apply(obj("p3", 7, kind="Pod", labels={"job": "j", "uid": "u4"}))
    assert informer.apply(obj("p2", 8, kind="Pod", labels={"job": "j", "uid": "u2"}),
                          deleted=True)
    found = cache.changed_labels("Pod", "uid", mark)
    assert found is not None
    values, mark = found
    assert values == {"u3", "u4", "u2"}
    assert cache.changed_labels("Pod", "uid", mark) == (set(), mark)
    informer.relist()  # a new journal: an older mark can tell nothing
    found = cache.changed_labels("Pod", "uid", mark)
    assert found is not None and found[0] is None
    assert cache.changed_labels("Pod", "job", None) is None, "no watch indexes that label"
    assert cache.changed_labels("Node", "uid", None) is None
