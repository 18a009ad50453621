"""The store converts each TrainingJob to its record once per resourceVersion.

Against a stand-in for the client seam (what the watch cache would answer):
a pass over thousands of jobs must not convert them all again, a changed
job is converted again, a job that goes is forgotten, and new jobs get their
finalizer side by side when the store has a pool.
"""

from __future__ import annotations

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
