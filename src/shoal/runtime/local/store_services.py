"""Inference services in the embedded state store: ``control.services.ServiceStore`` on SQLite.

A service is stored under its key ``<tenant>/<name>`` with the spec as
applied (JSON) and the revision state machine's row (``state``), fenced by
its version like a job: ``save_service`` writes only if nobody wrote since
the record was read.  ``put_service`` is ``apply``'s write: it replaces the
spec and keeps the state.  A deleted service stays (``deleted``) until the
reconciler has scaled its replicas to zero, then ``forget_service`` removes
it.  Service events go to the events table with the service's key.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from shoal.control.records import EventRecord
from shoal.control.service_machine import ServiceRow, row_from_json, row_to_json
from shoal.control.services import ServiceRecord
from shoal.domain.service import InferenceServiceSpec
from shoal.runtime.local.store_db import Database, NotFound, StoreConflict

__all__ = ["ServiceTable"]

_COLUMNS = "name, tenant, spec, state, version, deleted, request"


def _record(row: sqlite3.Row) -> ServiceRecord:
    return ServiceRecord(
        spec=InferenceServiceSpec.model_validate(json.loads(row["spec"])),
        row=row_from_json(json.loads(row["state"])),
        version=int(row["version"]),
        deleted=bool(row["deleted"]),
        request=str(row["request"]),
    )


class ServiceTable:
    """The services of one ``SqliteStore`` (it shares the store's connections)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put_service(self, key: str, tenant: str, spec: dict[str, Any]) -> str:
        """Create the service or replace its spec; 'created', 'configured' or 'unchanged'."""
        text = json.dumps(spec, sort_keys=True)
        with self.db.transaction():
            conn = self.db._conn()
            found = conn.execute("SELECT spec, deleted FROM services WHERE name = ?",
                                 (key,)).fetchone()
            if found is None:
                state = json.dumps(row_to_json(ServiceRow(key, tenant)), sort_keys=True)
                conn.execute("INSERT INTO services (name, tenant, spec, state, version) "
                             "VALUES (?, ?, ?, ?, 1)", (key, tenant, text, state))
                return "created"
            if found["spec"] == text and not found["deleted"]:
                return "unchanged"
            conn.execute("UPDATE services SET spec = ?, deleted = 0, version = version + 1 "
                         "WHERE name = ?", (text, key))
            return "configured"

    def get_service(self, key: str) -> ServiceRecord:
        row = self.db._conn().execute(
            f"SELECT {_COLUMNS} FROM services WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"service '{key}' not found")
        return _record(row)

    def list_services(self, tenant: str | None = None) -> list[ServiceRecord]:
        sql, params = f"SELECT {_COLUMNS} FROM services", []
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", [tenant]
        return [_record(row) for row in self.db._conn().execute(sql + " ORDER BY name", params)]

    def save_service(self, record: ServiceRecord,
                     events: Sequence[EventRecord] = ()) -> ServiceRecord:
        key = record.row.name
        state = json.dumps(row_to_json(record.row), sort_keys=True)
        with self.db.transaction():
            conn = self.db._conn()
            cursor = conn.execute(
                "UPDATE services SET state = ?, request = ?, version = version + 1 "
                "WHERE name = ? AND version = ?", (state, record.request, key, record.version))
            if cursor.rowcount == 0:
                found = self.get_service(key).version  # NotFound when it is gone
                raise StoreConflict(
                    f"service '{key}' changed since it was read: expected version "
                    f"{record.version}, found {found}", hint="reload it and decide again")
            for event in events:
                conn.execute(
                    "INSERT INTO events (time, kind, job, tenant, data, service) "
                    "VALUES (?, ?, NULL, ?, ?, ?)",
                    (event.time, event.kind, record.row.tenant,
                     json.dumps(dict(event.data), sort_keys=True), key))
            return self.get_service(key)

    def delete_service(self, key: str) -> ServiceRecord:
        """Mark it deleted (not fenced: a user's delete wins); idempotent."""
        with self.db.transaction():
            record = self.get_service(key)
            if not record.deleted:
                self.db._conn().execute(
                    "UPDATE services SET deleted = 1, version = version + 1 WHERE name = ?",
                    (key,))
            return self.get_service(key)

    def request_rollout(self, key: str, action: str) -> ServiceRecord:
        """Ask the reconciler to promote or abort the canary (not fenced, like a delete)."""
        with self.db.transaction():
            self.get_service(key)
            self.db._conn().execute(
                "UPDATE services SET request = ?, version = version + 1 WHERE name = ?",
                (action, key))
            return self.get_service(key)

    def services(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Plain views for the application layer: name, tenant, spec, state, deleted."""
        sql, params = f"SELECT {_COLUMNS} FROM services", []
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", [tenant]
        return [{"name": row["name"], "tenant": row["tenant"], "spec": json.loads(row["spec"]),
                 "state": json.loads(row["state"]), "deleted": bool(row["deleted"]),
                 "request": row["request"], "version": row["version"]}
                for row in self.db._conn().execute(sql + " ORDER BY name", params)]

    def forget_service(self, record: ServiceRecord) -> None:
        with self.db.transaction():
            self.db._conn().execute("DELETE FROM services WHERE name = ? AND deleted = 1",
                                    (record.row.name,))
