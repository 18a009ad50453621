"""The ServiceStore port on Kubernetes: InferenceService objects are the service records.

``list_services`` reads every InferenceService; a record's key is
``<namespace>/<name>`` and its version the object's resourceVersion.  The
control core's row lives in ``status.control`` (``serving_status.py``);
``save_service`` PUTs the status subresource with the resourceVersion the
record was read at, so the API server fences every write as the embedded
store's versions do: a stale writer gets 409 (``ConflictError``) and nothing
changes.  A spec change bumps the resourceVersion too, so a pass that read
the old spec cannot overwrite what the new one led to.

An InferenceService lives in its tenant's namespace.  One whose
``spec.tenant`` names another namespace, or whose spec breaks a rule the
schema cannot state (checked by the pydantic model), is left out of the
control core's view and its status says why, once (``phase: Invalid``).

Deletion: the store puts the finalizer ``shoal.dev/serving`` on every
service it sees, so a deleted service stays (``ServiceRecord.deleted``)
until the reconciler has scaled its replicas to zero; ``forget_service``
then removes the finalizer and the garbage collector removes the
Deployments, the router and the rest (they are owned by the service).

Events are Kubernetes Events on the InferenceService, created after the
status write that carries the transition.  Rollouts by hand (``shoal
rollout promote|abort``) are not offered on a cluster: ``request`` is
always empty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shoal.control.records import EventRecord
from shoal.control.service_machine import ServiceRow, row_from_json, row_to_json
from shoal.control.services import ServiceRecord
from shoal.domain.base import API_VERSION
from shoal.domain.names import job_name
from shoal.domain.service import InferenceServiceSpec
from shoal.errors import ConflictError, NotFoundError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.serving_objects import url_of
from shoal.runtime.kubernetes.serving_status import InferenceServiceStatus, ServiceControl

__all__ = ["FINALIZER", "KubeServices", "status_of"]

KIND = "InferenceService"
FINALIZER = "shoal.dev/serving"
INVALID = "Invalid"
_EVENT_MESSAGE_MAX = 1024


def _short(revision: str | None) -> str:
    return job_name(revision or "")


def status_of(row: ServiceRow, item: Body) -> Body:
    """The status to write: what people read, and the row under ``control``."""
    split = row.traffic()
    serving = set(split)
    desired = sum(d for name, d, _, _ in row.replicas if name in serving)
    ready = sum(r for name, _, r, _ in row.replicas if name in serving)
    waiting = next((why for name, _, _, why in row.replicas if why and name in serving), "")
    latest = row.revisions[-1].name if row.revisions else None
    status = InferenceServiceStatus(
        observed_generation=item["metadata"].get("generation"),
        phase=row.phase,
        reason=waiting or next((r.reason for r in reversed(row.revisions) if r.reason), ""),
        ready=f"{ready}/{desired}",
        latest_revision=_short(latest),
        traffic_split=",".join(f"{_short(name)}={percent}"
                               for name, percent in sorted(split.items())),
        url=url_of(item),
        control=ServiceControl.model_validate(row_to_json(row)),
    )
    # Defaults are left out: the 1.20 API server reads an empty string in a custom
    # resource as null and refuses it.
    body: Body = status.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return body


class KubeServices:
    """Implements ``control.services.ServiceStore`` over InferenceService objects."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._objects: dict[str, Body] = {}

    def object_of(self, record: ServiceRecord) -> Body:
        """The InferenceService as last read (the owner of its Deployments)."""
        found = self._objects.get(record.row.name)
        if found is None:
            raise NotFoundError(f"service '{record.row.name}' not found")
        return found

    def list_services(self) -> list[ServiceRecord]:
        records = []
        seen: dict[str, Body] = {}
        for item in self.kube.list(KIND):
            record = self._record(item)
            if record is not None:
                records.append(record)
                seen[record.row.name] = self._objects[record.row.name]
        self._objects = seen
        records.sort(key=lambda r: r.row.name)
        return records

    def _record(self, item: Body) -> ServiceRecord | None:
        meta = item["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        deleting = bool(meta.get("deletionTimestamp"))
        spec_body = item.get("spec") or {}
        problem: str | None = None
        spec: InferenceServiceSpec | None = None
        if spec_body.get("tenant") != namespace:
            problem = (f"spec.tenant is {spec_body.get('tenant')!r} but the service is in "
                       f"namespace {namespace!r}: an InferenceService lives in its tenant's "
                       f"namespace")
        else:
            try:
                spec = InferenceServiceSpec.model_validate(spec_body)
            except ValidationError as exc:
                problem = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                    for e in exc.errors())
        if spec is None:
            if deleting:  # nothing to scale down by this spec: let it go (GC does the rest)
                self._release(item)
            else:
                self._refuse(item, problem or "invalid")
            return None
        if not deleting and FINALIZER not in (meta.get("finalizers") or []):
            try:
                item = self._hold(item)
            except (ConflictError, NotFoundError):
                return None  # changed or gone since listed: the next pass reads it again
        key = f"{namespace}/{name}"
        control = (item.get("status") or {}).get("control")
        version = int(item["metadata"]["resourceVersion"])
        row = (row_from_json(control, version) if control
               else ServiceRow(key, namespace, version=version))
        self._objects[key] = item
        return ServiceRecord(spec=spec, row=row, version=version, deleted=deleting)

    def _refuse(self, item: Body, message: str) -> None:
        """Say, once, why the service is left out."""
        status = dict(item.get("status") or {})
        if status.get("phase") == INVALID and status.get("reason") == message:
            return
        body = {
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": item["metadata"]["name"],
                         "namespace": item["metadata"]["namespace"],
                         "resourceVersion": item["metadata"]["resourceVersion"]},
            "status": {**status, "phase": INVALID, "reason": message[:_EVENT_MESSAGE_MAX * 4]},
        }
        try:
            self.kube.replace_status(body)
        except ConflictError:
            return  # changed meanwhile: the next pass looks again

    def _hold(self, item: Body) -> Body:
        meta = item["metadata"]
        body = {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {**meta, "finalizers": [*(meta.get("finalizers") or []), FINALIZER]},
                "spec": item.get("spec") or {}}
        updated: Body = self.kube.replace(body)
        return updated

    def save_service(self, record: ServiceRecord,
                     events: Sequence[EventRecord] = ()) -> ServiceRecord:
        """PUT the status, fenced by the resourceVersion the record was read at."""
        item = self._objects.get(record.row.name)
        if item is None:
            raise NotFoundError(f"service '{record.row.name}' not found")
        meta = item["metadata"]
        body = {
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "resourceVersion": str(record.version)},
            "status": status_of(record.row, item),
        }
        saved = self.kube.replace_status(body)
        version = int(saved["metadata"]["resourceVersion"])
        self._objects[record.row.name] = saved
        for event in events:
            self._event(saved, event.time, event.kind, dict(event.data))
        return ServiceRecord(spec=record.spec, row=row_from_json(
            saved["status"]["control"], version), version=version, deleted=record.deleted)

    def forget_service(self, record: ServiceRecord) -> None:
        """Remove the finalizer: the object goes, and its Deployments with it (GC)."""
        item = self._objects.pop(record.row.name, None)
        if item is not None:
            self._release(item)

    def _release(self, item: Body) -> None:
        meta = item["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        body = {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {**meta, "finalizers": [
                    f for f in meta.get("finalizers") or [] if f != FINALIZER]},
                "spec": item.get("spec") or {}}
        try:
            self.kube.replace(body)
        except (NotFoundError, ConflictError):
            return  # gone, or changed meanwhile: the next pass looks again

    def _event(self, item: Body, time: float, kind: str, data: dict[str, Any]) -> None:
        """A core/v1 Event on the InferenceService; its name is derived, so a retry is a no-op."""
        meta = item["metadata"]
        stamp = datetime.fromtimestamp(time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = ", ".join(f"{k}={v}" for k, v in sorted(data.items()))[:_EVENT_MESSAGE_MAX]
        digest = hashlib.blake2b(f"{meta['uid']}{time}{kind}{text}".encode(),
                                 digest_size=6).hexdigest()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name'][:200]}.{digest}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": "".join(part.capitalize() for part in kind.split("-")) or "Event",
            "message": text or kind,
            "type": "Warning" if kind in ("revision-failed", "rolled-back") else "Normal",
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "source": {"component": "shoal"},
        }
        try:
            self.kube.create(body)
        except Exception:  # an event is a note for people: never worth failing a pass over
            return
