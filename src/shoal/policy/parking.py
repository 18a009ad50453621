"""Parked buckets: pending workloads that failed, set aside until something could let them run.

A bucket of the pending queue (``policy.queue``) whose head found no quota or
no room stays failed for as long as the cluster only fills and usage only
grows.  Kueue parks such a workload among its *inadmissible* ones and looks
at it again only after an event that could change the answer; Shoal does the
same, but keeps the decisions of trying every bucket in every cycle:

* a bucket that lacked **quota** on a resource by ``deficit`` units fails
  again until releases since (read from the runtime's ``ReleaseLog``) gave
  back at least that much of the resource, anywhere: a release of ``x`` units
  lowers any tenant's shortfall by at most ``x``, and admissions only raise it;
* a bucket that lacked **room** fails again for as long as the room it saw,
  plus the room of every release since, could not hold it (a ``RoomCount``
  per request shape, given each release; it never counts less room than
  there is, since admissions only took room away);
* anything else that gives back (a node that comes up or changes, other
  tenants, the log reset or gone, a workload no longer waiting for its
  victims, whose reserved quota is then free, an admission that the runtime
  did not carry out) unparks every bucket.

A parked bucket is not tried, but it still takes its turn in the order when
it is its tenant's first: that turn fails, as trying it would, and may search
for victims.  So parking changes the cost of a cycle, not its admissions,
preemptions or rejections (a parked bucket's pending reason keeps the figures
of when it failed).  The parked set belongs to the caller: it is kept in the
placer's memo between cycles, as failed victim searches are.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.domain.cluster import ClusterState
from shoal.policy import flavors
from shoal.policy.placement.gang import RoomCount
from shoal.policy.queue import Bucket
from shoal.policy.quota import TenantQuota
from shoal.policy.snapshot import ReleaseLog


@dataclass(slots=True)
class Park:
    """Why one bucket failed, and what must come back before it could run."""

    head: str
    """The name of the workload that failed (the bucket's head then)."""
    why: Callable[[], str]
    resource: str | None
    """The quota resource it lacked; None when it lacked room."""
    deficit: float
    """Units of ``resource`` it lacked, less those released since."""
    room: int
    """The bucket's room key (``_Plan.rooms``): its ``Parked.rooms`` entry, when it
    lacked room."""
    plan: Any
    """What validating the bucket found (the cycle's own type): a parked bucket is
    not validated again, since anything that could change that unparks it."""


class Parked:
    """The parked buckets of one runtime, valid while nothing else gave room back."""

    def __init__(
        self,
        log: ReleaseLog | None,
        version: tuple[object, ...],
        tenants: Mapping[str, TenantQuota],
        preempting: frozenset[str],
    ) -> None:
        self.log = log
        self.mark = log.count if log is not None else 0
        self.resets = log.resets if log is not None else 0
        self.version = version
        self.tenants = tenants
        self.preempting = preempting
        self.buckets: dict[Bucket, Park] = {}
        """By bucket (the object: it lives as long as it holds workloads)."""
        self.rooms: dict[int, RoomCount] = {}
        """By room key: what room a request shape could have at most, since it had none."""
        self.admitted: tuple[str, ...] = ()
        """Workloads the last cycle admitted: still waiting, their admission was not
        carried out and the room and quota it took are free."""

    def carry(
        self,
        log: ReleaseLog | None,
        version: tuple[object, ...],
        same_version: Callable[[tuple[object, ...], tuple[object, ...]], bool],
        tenants: Mapping[str, TenantQuota],
        preempting: frozenset[str],
        nominated: frozenset[str],
        state: ClusterState,
        waiting: Container[str],
    ) -> bool:
        """Bring the parked buckets up to now; False when none can be trusted."""
        if not (tenants is self.tenants or tenants == self.tenants):
            return False
        if any(name in waiting for name in self.admitted):
            return False
        # A workload waiting for victims reserves its quota at its own turn:
        # only nominated ones take it before any bucket, so only then is a
        # failure relative to the reservation.  One that stopped waiting gave
        # its reservation back.
        if not preempting <= nominated or not self.preempting <= preempting:
            return False
        self.tenants, self.preempting = tenants, preempting
        if log is None:
            # No log: only a cycle with nothing released since can trust them.
            if not same_version(self.version, version):
                return False
            self.version = version
            return True
        if log is not self.log or log.resets != self.resets:
            return False
        released = log.since(self.mark)
        if released is None:
            return False
        self.mark = log.count
        if not released:
            return True
        units: dict[str, int] = {}
        if any(park.resource is not None for park in self.buckets.values()):
            for _, _, bindings in released:
                for resource, amount in flavors.usage_of(state, bindings).items():
                    units[resource] = units.get(resource, 0) + amount
        # Only counts that parked buckets wait on, and that do not hold their
        # shape already, need the releases: a count that holds it wakes its
        # buckets, and the next bucket of its shape to park counts anew.
        used = {park.room for park in self.buckets.values() if park.resource is None}
        for shape in [shape for shape in self.rooms if shape not in used]:
            del self.rooms[shape]
        for room in self.rooms.values():
            for _, _, bindings in released:
                if room.fits():
                    break
                # Capped: a workload admitted after the room was counted
                # gives back room the count never lost.
                room.give(bindings, capped=True)
        woken: list[Bucket] = []
        for key, park in self.buckets.items():
            if park.resource is None:
                count = self.rooms.get(park.room)
                if count is None or count.fits():
                    woken.append(key)
                continue
            park.deficit -= units.get(park.resource, 0)
            if park.deficit <= 0:
                woken.append(key)
        for key in woken:
            del self.buckets[key]
        return True

    def park(self, key: Bucket, park: Park, room: Callable[[], RoomCount] | None) -> None:
        """Set a bucket aside; ``room`` makes the room count of a shape that found none
        (only called when no count of that shape is kept)."""
        if room is not None and (park.room not in self.rooms or self.rooms[park.room].fits()):
            self.rooms[park.room] = room()
        self.buckets[key] = park
