"""The store port on Kubernetes: TrainingJob objects are the job records.

``list_jobs`` reads every TrainingJob (``convert.row_of``); ``save_job`` PUTs
the status subresource with the resourceVersion the record was read at, so
the API server fences every write exactly as the embedded store's versions
do: a stale writer gets 409, which is ``ConflictError``, and nothing changes.
Tenants are the Tenant objects' specs.

A TrainingJob lives in its tenant's namespace; one whose ``spec.tenant``
names another namespace, or a tenant that no Tenant object stands for, is
left out of the control core's view (never admitted, never failed) and its
status says why, once: ``phase: Pending`` with the condition ``Admitted``
False, reason ``TenantMismatch`` or ``TenantNotFound``.  Fixing the spec,
or creating the Tenant, lets it in on the next pass.

Events are Kubernetes Events on the TrainingJob, created right after the
status write that carries the transition (a crash between the two loses the
event, never the transition: the status is the record).  Deletion: the
store puts a finalizer on every job it sees, so a deleted TrainingJob stays
(``JobRow.deleted``) until the control loop has stopped its pods and the job
ends; ``finish_deleted`` then lets it go.

Each TrainingJob is converted to its record once per resourceVersion (kept
by uid and version, dropped when the object goes), and the listed records are
kept in order between calls: over the watch cache, which tells which objects
changed since the last look (``Kube.changes``), a pass takes in only those,
so that 10,000 jobs cost a pass the jobs that changed, not all 10,000.  With
pools set (the control loop's ``run`` sets them: ``background``, ``notes``), the finalizers
of newly seen jobs are put on side by side and Events are created without
waiting for them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

from shoal.control.cluster_view import workload_of
from shoal.control.records import FINAL_PHASES, EventRecord, JobRow
from shoal.domain.base import API_VERSION
from shoal.errors import ConflictError, NotFoundError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.convert import (
    ADMITTED,
    FINALIZER,
    JobObject,
    row_of,
    status_of,
)
from shoal.runtime.kubernetes.status import Condition

__all__ = ["KubeStore"]

_EVENT_MESSAGE_MAX = 1024


class KubeStore:
    """Implements ``control.ports.Store`` over TrainingJob and Tenant objects."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._objects: dict[str, JobObject] = {}
        self._rows: dict[tuple[str, str], tuple[str, str, JobRow, JobObject]] = {}
        """Records by (namespace, name), with the uid and resourceVersion they were read at."""
        self.background: Executor | None = None
        """Where finalizer writes of new jobs go, side by side (None: done in turn)."""
        self.notes: Executor | None = None
        """Where Event creates go, not waited for (None: done in turn)."""
        # The listed jobs, kept between calls (``_records``): by key, in order
        # (submit time, name, key), and that list of records once built.
        self._mark: object = None
        self._current: dict[tuple[str, str], tuple[JobRow, Body]] = {}
        self._sort_keys: dict[tuple[str, str], tuple[float, str, tuple[str, str]]] = {}
        self._order: list[tuple[float, str, tuple[str, str]]] = []
        self._listed: list[tuple[JobRow, Body]] | None = None

    # -- tenants ----------------------------------------------------------------

    def tenants(self) -> dict[str, dict[str, Any]]:
        return {
            item["metadata"]["name"]: dict(item.get("spec") or {})
            for item in self.kube.list("Tenant")
        }

    # -- jobs -------------------------------------------------------------------

    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> list[JobRow]:
        """Every TrainingJob (deleted ones too, until they let go), oldest first.

        Pending jobs of a tenant that has no Tenant object are left out (see
        the module's doc); so are jobs outside their tenant's namespace.
        """
        # Comprehensions: every pass lists every job, more than once.
        records = self._records()
        if tenant is None and phases is None:
            rows = [row for row, _ in records]
        elif tenant is None:
            assert phases is not None
            rows = [row for row, _ in records if row.phase in phases]
        else:
            rows = [row for row, _ in records
                    if row.tenant == tenant and (phases is None or row.phase in phases)]
        waiting = [r for r in rows if r.phase == "Pending" and not r.deleted]
        if waiting:
            known = {t["metadata"]["name"] for t in self.kube.list("Tenant")}
            orphans = {r.name for r in waiting if r.tenant not in known}
            if orphans:
                items = {row.name: item for row, item in records if row.name in orphans}
                for name in sorted(orphans):
                    row = next(r for r in waiting if r.name == name)
                    self._unadmitted(items[name], "TenantNotFound",
                                     f"no Tenant named {row.tenant!r}: the job waits until "
                                     f"one is created")
                rows = [r for r in rows if r.name not in orphans]
        return rows

    def _records(self) -> list[tuple[JobRow, Body]]:
        """Every job's record and object, oldest first (jobs left out are not there).

        Over a watch-fed cache that tells which TrainingJobs changed since the
        last call, only those are converted again; else every one is looked at.
        """
        # A stand-in for the client seam may not tell changes: every object is read.
        changes = getattr(self.kube, "changes", None)
        found = None if changes is None else changes("TrainingJob", self._mark)
        if found is None:
            self._rebuild(self.kube.list("TrainingJob"))
        else:
            changed, self._mark = found
            if changed is None:
                self._rebuild(self.kube.list("TrainingJob"))
            elif changed:
                self._update(changed)
        if self._listed is None:
            self._listed = [self._current[key] for _, _, key in self._order]
        return self._listed

    def _rebuild(self, listed: list[Body]) -> None:
        listed = self._held(listed)
        self._forget_gone(listed)
        self._current, self._sort_keys, self._order = {}, {}, []
        for item in listed:
            self._take(item, place=False)
        self._order.sort()
        self._listed = None

    def _update(self, changed: list[tuple[str, str]]) -> None:
        """Take in the TrainingJobs at ``changed`` as the cache now holds them."""
        seen: set[tuple[str, str]] = set()
        items: list[Body] = []
        for key in changed:
            if key in seen:
                continue
            seen.add(key)
            item = self.kube.get("TrainingJob", key[1], key[0] or None)
            if item is None:
                self._drop(key)
            else:
                items.append(item)
        for item in self._held(items):
            self._take(item)

    def _take(self, item: Body, place: bool = True) -> JobRow | None:
        """Remember ``item``'s record among the listed ones (in its place, oldest first)."""
        meta = item["metadata"]
        key = (str(meta.get("namespace", "")), str(meta["name"]))
        row = self._remember(item)
        self._listed = None
        old = self._sort_keys.pop(key, None)
        if row is None:
            self._current.pop(key, None)
            if old is not None:
                del self._order[bisect.bisect_left(self._order, old)]
            return None
        self._current[key] = (row, item)
        entry = (row.submit_time, row.name, key)
        self._sort_keys[key] = entry
        if old == entry:
            return row
        if old is not None:
            del self._order[bisect.bisect_left(self._order, old)]
        if place:
            bisect.insort(self._order, entry)
        else:
            self._order.append(entry)  # sorted by the caller
        return row

    def _drop(self, key: tuple[str, str]) -> None:
        """Forget a TrainingJob that went."""
        self._listed = None
        self._current.pop(key, None)
        old = self._sort_keys.pop(key, None)
        if old is not None:
            del self._order[bisect.bisect_left(self._order, old)]
        known = self._rows.pop(key, None)
        if known is not None:
            self._objects.pop(known[2].name, None)

    def _unadmitted(self, item: Body, reason: str, message: str) -> None:
        """Say, once, why a job is left out: ``Admitted`` False with ``reason``."""
        status = dict(item.get("status") or {})
        old = [c for c in status.get("conditions") or [] if c.get("type") == ADMITTED]
        if status.get("phase") == "Pending" and old and old[0].get("reason") == reason \
                and old[0].get("message") == message:
            return
        now = datetime.now(UTC).replace(microsecond=0)
        condition = Condition(type=ADMITTED, status="False", reason=reason, message=message,
                              last_transition_time=now)
        others = [c for c in status.get("conditions") or [] if c.get("type") != ADMITTED]
        meta = item["metadata"]
        body = {
            "apiVersion": API_VERSION, "kind": "TrainingJob",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace", ""),
                         "resourceVersion": meta.get("resourceVersion", "")},
            "status": {**status, "phase": "Pending", "reason": message,
                       "conditions": [*others, condition.model_dump(
                           mode="json", by_alias=True, exclude_defaults=True)]},
        }
        try:
            self.kube.replace_status(body)
        except ConflictError:
            return  # changed meanwhile: the next pass looks again

    def get_job(self, name: str) -> JobRow:
        known = self._objects.get(name)
        tenant, _, short = name.rpartition("/")
        found = self.kube.get("TrainingJob", short, known.namespace if known else tenant)
        row = None if found is None else self._take(found)
        if row is None:
            raise NotFoundError(f"job '{name}' not found")
        return row

    def _held(self, items: list[Body]) -> list[Body]:
        """``items``, those new to the store with the finalizer put on (side by side)."""
        pool = self.background
        new = [i for i, item in enumerate(items) if _unheld(item)
               and (item.get("spec") or {}).get("tenant") == item["metadata"].get("namespace")]
        if pool is None or len(new) < 2:
            return items
        def hold(item: Body) -> Body:
            try:
                return self._hold(item)
            except ConflictError:
                return item  # changed meanwhile: ``_remember`` tries again in turn
        out = list(items)
        for i, held in zip(new, pool.map(hold, [items[i] for i in new]), strict=True):
            out[i] = held
        return out

    def _forget_gone(self, items: list[Body]) -> None:
        """Drop the records of jobs no longer listed."""
        if len(self._rows) <= len(items):
            return
        listed = {(i["metadata"].get("namespace", ""), i["metadata"]["name"]) for i in items}
        for key in [k for k in self._rows if k not in listed]:
            _, _, row, _ = self._rows.pop(key)
            self._objects.pop(row.name, None)

    def _remember(self, item: Body) -> JobRow | None:
        meta = item["metadata"]
        key = (str(meta.get("namespace", "")), str(meta["name"]))
        known = self._rows.get(key)
        if known is not None and known[0] == meta.get("uid", "") \
                and known[1] == meta.get("resourceVersion", "0"):
            self._objects[known[2].name] = known[3]
            return known[2]
        job = JobObject(item)
        spec = item.get("spec") or {}
        if spec.get("tenant") != job.namespace:
            if not meta.get("deletionTimestamp"):
                self._unadmitted(item, "TenantMismatch",
                                 f"spec.tenant is {spec.get('tenant')!r} but the job is in "
                                 f"namespace {job.namespace!r}: a TrainingJob lives in its "
                                 f"tenant's namespace")
            return None  # not admitted, ever: see ``misplaced``
        if _unheld(item):
            item = self._hold(item)
            job = JobObject(item)
        row = row_of(item)
        self._objects[row.name] = job
        self._rows[key] = (job.uid, job.resource_version, row, job)
        return row

    def misplaced(self) -> list[Body]:
        """TrainingJobs whose ``spec.tenant`` is not their namespace."""
        return [
            item for item in self.kube.list("TrainingJob")
            if (item.get("spec") or {}).get("tenant") != item["metadata"].get("namespace")
        ]

    def _hold(self, item: Body) -> Body:
        """Add the finalizer (fenced: a job changed meanwhile is read again next pass)."""
        meta = item["metadata"]
        body = {
            "apiVersion": API_VERSION, "kind": "TrainingJob",
            "metadata": {**meta, "finalizers": [*(meta.get("finalizers") or []), FINALIZER]},
            "spec": item.get("spec") or {},
        }
        updated: Body = self.kube.replace(body)
        return updated

    def save_job(self, job: JobRow, events: Sequence[EventRecord] = ()) -> JobRow:
        """PUT the job's status, fenced by the resourceVersion it was read at."""
        known = self._objects.get(job.name)
        if known is None:
            raise NotFoundError(f"job '{job.name}' not found")
        body = {
            "apiVersion": API_VERSION,
            "kind": "TrainingJob",
            "metadata": {"name": known.name, "namespace": known.namespace,
                         "resourceVersion": str(job.version)},
            "status": status_of(job, workload_of(job).gpu_milli, known.conditions),
        }
        saved = self.kube.replace_status(body)
        row = self._remember(saved)
        assert row is not None
        for event in events:
            self._event(known, event.time, event.kind, dict(event.data))
        return row

    def finish_deleted(self) -> int:
        """Let deleted jobs that have ended and hold nothing go; returns how many."""
        done = 0
        for item in self.kube.list("TrainingJob"):
            meta = item["metadata"]
            if not meta.get("deletionTimestamp") or FINALIZER not in (meta.get("finalizers") or []):
                continue
            row = row_of(item)
            if row.phase not in FINAL_PHASES or any(not p.done for p in row.pods):
                continue
            body = {
                "apiVersion": API_VERSION, "kind": "TrainingJob",
                "metadata": {**meta, "finalizers": [
                    f for f in meta.get("finalizers") or [] if f != FINALIZER]},
                "spec": item.get("spec") or {},
            }
            try:
                self.kube.replace(body)
            except NotFoundError:
                continue
            done += 1
        return done

    # -- events -----------------------------------------------------------------

    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int:
        known = self._objects.get(job or "")
        if known is None:
            return 0
        self._event(known, time, kind, data)
        return 0

    def _event(self, job: JobObject, time: float, kind: str, data: dict[str, Any]) -> None:
        """A core/v1 Event on the TrainingJob; its name is derived, so a retry is a no-op."""
        stamp = datetime.fromtimestamp(time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = ", ".join(f"{k}={v}" for k, v in sorted(data.items()))[:_EVENT_MESSAGE_MAX]
        digest = hashlib.blake2b(f"{job.uid}{time}{kind}{text}".encode(), digest_size=6).hexdigest()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{job.name[:200]}.{digest}", "namespace": job.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": "TrainingJob",
                               "name": job.name, "namespace": job.namespace, "uid": job.uid},
            "reason": "".join(part.capitalize() for part in kind.split("_")) or "Event",
            "message": text or kind,
            "type": "Warning" if kind in ("error", "failed", "preempted") else "Normal",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": "shoal"},
        }
        if self.notes is not None:
            self.notes.submit(self._create_event, body)
        else:
            self._create_event(body)

    def _create_event(self, body: Body) -> None:
        try:
            self.kube.create(body)
        except Exception:  # an event is a note for people: never worth failing a job over
            return

    # -- for the pods port --------------------------------------------------------

    def object_of(self, row: JobRow) -> JobObject:
        known = self._objects.get(row.name)
        if known is None:
            raise NotFoundError(f"job '{row.name}' not found")
        return known


def _unheld(item: Body) -> bool:
    """A live job without Shoal's finalizer yet."""
    meta = item["metadata"]
    return not meta.get("deletionTimestamp") and FINALIZER not in (meta.get("finalizers") or [])
