"""Pending workloads grouped so that a scheduling cycle costs what can change, not the queue.

Workloads of one tenant with the same priority, pods and constraints ask for
exactly the same thing: the same quota, the same placement, the same
validation.  A ``PendingQueue`` keeps them together in a *bucket*, oldest
first (submit time, then name), and keeps each bucket sorted as workloads come
and go, so no cycle sorts the queue again.

Within one cycle the cluster only fills up and usage only grows, so once a
bucket's oldest workload finds no quota or no room, every later one in the
bucket would fail in the same way: the cycle tries one workload per bucket
until one fails, and reports the rest of the bucket pending in bulk.  A long
queue then costs the cycle one step per bucket, whatever its length.

The queue belongs to its caller (a runtime keeps one across cycles, adding
arrivals and removing admitted or rejected workloads); the cycle only reads
it.  A cycle's bulk ``Pending`` decisions list the bucket's workloads when
they are read, so read a cycle's result before changing the queue.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from shoal.domain.workload import Constraints, PodShape, Workload

BucketKey = tuple[str, int, tuple[PodShape, ...], Constraints, bool]
"""Tenant, priority, pods, constraints, gang: what makes two requests identical."""


def bucket_key(workload: Workload) -> BucketKey:
    return (
        workload.tenant,
        workload.priority,
        workload.pods,
        workload.constraints,
        workload.gang,
    )


class Bucket:
    """Workloads with one ``BucketKey``, as (submit time, name, workload), oldest first."""

    __slots__ = ("entries", "key")

    def __init__(self, key: BucketKey) -> None:
        self.key = key
        self.entries: list[tuple[float, str, Workload]] = []

    @property
    def tenant(self) -> str:
        return self.key[0]

    @property
    def priority(self) -> int:
        return self.key[1]

    def __len__(self) -> int:
        return len(self.entries)


class PendingQueue:
    """Pending workloads by bucket; adding and removing one costs a binary search."""

    def __init__(self, workloads: Iterable[Workload] = ()) -> None:
        self._buckets: dict[BucketKey, Bucket] = {}
        self._where: dict[str, tuple[Bucket, float]] = {}
        for workload in workloads:
            self.add(workload)

    def add(self, workload: Workload) -> None:
        """Queue ``workload``; one already queued under its name is replaced."""
        if workload.name in self._where:
            self.discard(workload.name)
        key = bucket_key(workload)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(key)
        # Names are unique, so tuples never compare their workloads.
        bisect.insort(bucket.entries, (workload.submit_time, workload.name, workload))
        self._where[workload.name] = (bucket, workload.submit_time)

    def discard(self, name: str) -> Workload | None:
        """Take ``name`` out of the queue; the workload, or None if it was not queued."""
        where = self._where.pop(name, None)
        if where is None:
            return None
        bucket, submit_time = where
        entries = bucket.entries
        at = bisect.bisect_left(entries, (submit_time, name))
        workload = entries.pop(at)[2]
        assert workload.name == name
        if not entries:
            del self._buckets[bucket.key]
        return workload

    def where(self, name: str) -> tuple[Bucket, float] | None:
        """The bucket ``name`` waits in and its submit time, or None if not queued."""
        return self._where.get(name)

    def get(self, name: str) -> Workload | None:
        where = self._where.get(name)
        if where is None:
            return None
        bucket, submit_time = where
        return bucket.entries[bisect.bisect_left(bucket.entries, (submit_time, name))][2]

    def buckets(self) -> Iterator[Bucket]:
        """Non-empty buckets, in the order they were first made (deterministic)."""
        return iter(self._buckets.values())

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __bool__(self) -> bool:
        return bool(self._where)

    def __iter__(self) -> Iterator[Workload]:
        for bucket in self._buckets.values():
            for _, _, workload in bucket.entries:
                yield workload

