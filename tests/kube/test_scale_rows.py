"""The store converts each TrainingJob to its record once per resourceVersion.

Against a stand-in for the client seam (what the watch cache would answer):
a pass over thousands of jobs must not convert them all again, a changed
job is converted again, a job that goes is forgotten, and new jobs get their
finalizer side by side when the store has a pool.
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shoal.control.records import JobRow
from shoal.errors import NotFoundError
from shoal.runtime.kubernetes import store as store_module
from shoal.runtime.kubernetes.convert import FINALIZER
from shoal.runtime.kubernetes.store import KubeStore

Body = dict[str, Any]


def job(name: str, rv: int, uid: str = "", held: bool = True) -> Body:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid or f"uid-{name}",
                         "resourceVersion": str(rv),
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "finalizers": [FINALIZER] if held else []},
            "spec": {"tenant": "team-a", "podSets": [{"count": 1, "resources": {
                "cpu": "1", "memory": "1Gi", "gpu": {"count": 1}}}]}}


class Listing:
    def __init__(self, items: list[Body]) -> None:
        self.items = items
        self.replaced: list[str] = []
        self.version = 1000

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        if kind == "Tenant":
            return [{"metadata": {"name": "team-a"}, "spec": {}}]
        return list(self.items)

    def replace(self, body: Body) -> Body:
        self.replaced.append(body["metadata"]["name"])
        self.version += 1
        return {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}


@pytest.fixture()
def converted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    seen: Counter[str] = Counter()
    real = store_module.row_of

    def counting(obj: Body) -> JobRow:
        seen[obj["metadata"]["name"]] += 1
        return real(obj)

    monkeypatch.setattr(store_module, "row_of", counting)
    return seen


def test_each_job_is_converted_once_per_resource_version(converted: Counter[str]) -> None:
    kube = Listing([job(f"j{i}", 10 + i) for i in range(50)])
    store = KubeStore(kube)  # type: ignore[arg-type]
    first = store.list_jobs()
    for _ in range(5):
        assert store.list_jobs() == first
    assert set(converted.values()) == {1} and len(converted) == 50

    kube.items[3] = job("j3", 99)  # changed: read again
    kube.items[4] = job("j4", 14, uid="another")  # deleted and made again: read again
    rows = {r.name: r for r in store.list_jobs()}
    assert converted["j3"] == converted["j4"] == 2 and converted["j5"] == 1
    assert rows["team-a/j3"].version == 99


def test_a_job_that_goes_is_forgotten(converted: Counter[str]) -> None:
    kube = Listing([job("stays", 1), job("goes", 2)])
    store = KubeStore(kube)  # type: ignore[arg-type]
    rows = {r.name: r for r in store.list_jobs()}
    kube.items.pop()
    assert [r.name for r in store.list_jobs()] == ["team-a/stays"]
    with pytest.raises(NotFoundError):
        store.object_of(rows["team-a/goes"])
    assert store.object_of(rows["team-a/stays"]).name == "stays"


def test_new_jobs_get_the_finalizer_side_by_side(converted: Counter[str]) -> None:
    kube = Listing([job(f"new{i}", 10 + i, held=False) for i in range(6)])
    store = KubeStore(kube)  # type: ignore[arg-type]
    with ThreadPoolExecutor(4) as pool:
        store.background = pool
        rows = store.list_jobs()
    assert sorted(kube.replaced) == sorted(f"new{i}" for i in range(6))
    assert all(r.version > 1000 for r in rows), "the records are read from the held objects"


class Journal(Listing):
    """A stand-in that also says which objects changed since a mark, as the cache does."""

    def __init__(self, items: list[Body]) -> None:
        super().__init__(items)
        self.log: list[tuple[str, str]] = []
        self.epoch = 0

    def changes(self, kind: str, mark: object) -> tuple[list[tuple[str, str]] | None, object]:
        assert kind == "TrainingJob"
        end = (self.epoch, len(self.log))
        if not isinstance(mark, tuple) or mark[0] != self.epoch:
            return None, end
        return self.log[mark[1]:], end

    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        return next((i for i in self.items if i["metadata"]["name"] == name), None)

    def put(self, item: Body) -> None:
        self.items = [i for i in self.items if i["metadata"]["name"] != item["metadata"]["name"]]
        self.items.append(item)
        self.log.append(("team-a", item["metadata"]["name"]))

    def remove(self, name: str) -> None:
        self.items = [i for i in self.items if i["metadata"]["name"] != name]
        self.log.append(("team-a", name))

    def replace(self, body: Body) -> Body:
        held = super().replace(body)
        self.put(held)  # the cache sees what a write answered
        return held


def stamped(name: str, rv: int, second: int, held: bool = True) -> Body:
    item = job(name, rv, held=held)
    item["metadata"]["creationTimestamp"] = f"2026-01-01T00:{second // 60:02d}:{second % 60:02d}Z"
    return item


def test_only_the_jobs_the_cache_says_changed_are_looked_at(converted: Counter[str]) -> None:
    kube = Journal([job(f"j{i}", 10 + i) for i in range(50)])
    store = KubeStore(kube)  # type: ignore[arg-type]
    store.list_jobs()
    kube.items[3] = job("j3", 99)  # changed, but the journal does not say so: not read
    assert {r.name: r.version for r in store.list_jobs()}["team-a/j3"] == 13
    kube.log.append(("team-a", "j3"))
    assert {r.name: r.version for r in store.list_jobs()}["team-a/j3"] == 99
    assert converted["j3"] == 2 and converted["j4"] == 1


def test_records_kept_by_changes_equal_a_fresh_listing() -> None:
    """Random adds, changes, deletions and journal restarts: the store that takes in
    changes lists the same records, in the same order, as one that reads everything."""
    rng = random.Random(7)
    kube = Journal([])
    kept = KubeStore(kube)  # type: ignore[arg-type]
    rv = 1
    for step in range(400):
        names = [i["metadata"]["name"] for i in kube.items]
        roll = rng.random()
        rv += 1
        if roll < 0.45 or not names:
            # new jobs, often at the same second (the name breaks the tie), some unheld
            kube.put(stamped(f"j{rng.randrange(60)}", rv, rng.randrange(30),
                             held=rng.random() < 0.7))
        elif roll < 0.8:
            name = rng.choice(names)
            old = kube.get("TrainingJob", name)
            assert old is not None
            changed = job(name, rv)
            changed["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            kube.put(changed)
        elif roll < 0.95:
            kube.remove(rng.choice(names))
        else:
            kube.epoch += 1  # the cache listed again: everything is read
        if rng.random() < 0.5:
            fresh = KubeStore(Listing(list(kube.items)))  # type: ignore[arg-type]
            want = [(r.name, r.version) for r in fresh.list_jobs()]
            # the kept store put finalizers on through ``kube``: compare after that
            got = [(r.name, r.version) for r in kept.list_jobs()]
            again = [(r.name, r.version) for r in
                     KubeStore(Listing(list(kube.items))).list_jobs()]  # type: ignore[arg-type]
            assert got == again, step
            assert [n for n, _ in got] == [n for n, _ in want], step
