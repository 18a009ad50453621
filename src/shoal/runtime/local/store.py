"""The embedded control plane's state store: SQLite in WAL mode behind a small typed port.

A reconciler loads a job, decides, then writes with ``update_job(name,
version, ...)``.  That write is a compare-and-set on the version, so a writer
that decided on stale state gets ``StoreConflict`` instead of overwriting
newer state (fencing); it reloads and decides again.

Crash safety: every write is one SQLite transaction (``BEGIN IMMEDIATE`` ...
``COMMIT``), so a process killed at any instant, SIGKILL included, leaves all
of a transaction or none of it.  ``synchronous=NORMAL`` in WAL mode keeps
every commit across a process crash; only an OS crash or power cut may undo
the last few commits (never corrupt the file), which is the price of not
fsyncing on every commit.

Threads share one store: each has its own connection (see ``store_db``).
Timestamps are always passed in: the clock is a port, never read here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from shoal.control.records import FINAL_PHASES, PHASES, EventRecord, JobRow, Principal
from shoal.errors import InternalError
from shoal.runtime.local.store_db import (
    AlreadyExists,
    Database,
    NotFound,
    StoreConflict,
    StoreError,
)
from shoal.runtime.local.store_schema import (
    JOB_COLUMNS,
    MUTABLE_FIELDS,
    encode_changes,
    job_from_row,
    migrate,
)
from shoal.runtime.local.store_services import ServiceTable
from shoal.runtime.local.store_tokens import (
    Role,
    find_principal,
    get_token,
    insert_token,
    list_tokens,
    load_salt,
    revoke,
    revoke_id,
)

__all__ = [
    "PHASES", "AlreadyExists", "JobRow", "NotFound", "Principal", "SqliteStore",
    "StoreConflict", "StoreError",
]


class SqliteStore(Database):
    """Jobs, tenants, nodes, events and API tokens in one SQLite file."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the store at ``path`` and bring its schema up to date."""
        super().__init__(path)
        try:
            with self.transaction():
                migrate(self._conn())
                self._salt = load_salt(self._conn())
        except BaseException:
            self.close()
            raise

    # -- pod users ------------------------------------------------------------

    def pod_uid(self, tenant: str, base: int, size: int) -> int:
        """The tenant's pod uid, given out on first use from ``base`` up and never reused:
        a tenant deleted and created again gets a new one (see ``delete_tenant``)."""
        key = f"pod_uid:{tenant}"
        with self.transaction():
            conn = self._conn()
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return int(row["value"])
            row = conn.execute("SELECT value FROM meta WHERE key = 'pod_uid_next'").fetchone()
            given = int(row["value"]) if row is not None else 0
            if given >= size:
                raise StoreError(f"all {size} pod uids from {base} are taken",
                                 hint="start the control plane with another --pod-uid-base")
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(base + given)))
            conn.execute("INSERT INTO meta (key, value) VALUES ('pod_uid_next', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (str(given + 1),))
            return base + given

    # -- tenants and nodes ----------------------------------------------------

    def put_tenant(self, name: str, spec: dict[str, Any]) -> None:
        self._put("tenants", name, spec)

    def tenants(self) -> dict[str, dict[str, Any]]:
        return self._all("tenants")

    def delete_tenant(self, name: str) -> int:
        """Remove a tenant and revoke its tokens in the same transaction.

        Returns how many of its tokens were live.  Its jobs are the caller's
        to check first (``shoal.app.lifecycle``).
        """
        with self.transaction():
            self._delete("tenants", "tenant", name)
            # Its pod uid is retired with it: files its pods left are not the next
            # tenant of that name's to read.
            self._conn().execute("DELETE FROM meta WHERE key = ?", (f"pod_uid:{name}",))
            return revoke(self._conn(), name)

    def put_node(self, name: str, spec: dict[str, Any]) -> None:
        self._put("nodes", name, spec)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return self._all("nodes")

    def delete_node(self, name: str) -> None:
        with self.transaction():
            self._delete("nodes", "node", name)

    # ``table`` is always one of our literals above, never user input.
    def _put(self, table: str, name: str, spec: dict[str, Any]) -> None:
        with self.transaction():
            self._conn().execute(
                f"INSERT INTO {table} (name, spec) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                (name, json.dumps(spec, sort_keys=True)),
            )

    def _all(self, table: str) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute(f"SELECT name, spec FROM {table} ORDER BY name")
        return {row["name"]: json.loads(row["spec"]) for row in rows}

    def _delete(self, table: str, kind: str, name: str) -> None:
        if self._conn().execute(f"DELETE FROM {table} WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"{kind} '{name}' not found")

    # -- jobs -----------------------------------------------------------------

    def create_job(
        self, name: str, tenant: str, manifest: dict[str, Any], now: float, checkpoint_dir: str
    ) -> JobRow:
        """A new Pending job at version 1; AlreadyExists while a live job has the name.

        A deleted job that has reached a final phase is no longer live: it is
        finalised here, so the name is free even before the reconciler does it.
        """
        with self.transaction():
            existing = self._find(name)
            if existing is not None and existing.deleted and existing.phase in FINAL_PHASES:
                self._fenced(name, existing.version, "finalized = 1, ", [])
            elif existing is not None:
                hint = ("it is being deleted; create it again once it is gone" if existing.deleted
                        else "delete it first or choose another name")
                raise AlreadyExists(f"job '{name}' already exists", hint=hint)
            self._conn().execute(
                "INSERT INTO jobs (name, tenant, manifest, phase, version, submit_time, "
                "checkpoint_dir) VALUES (?, ?, ?, 'Pending', 1, ?, ?)",
                (name, tenant, json.dumps(manifest, sort_keys=True), now, checkpoint_dir),
            )
            return self.get_job(name)

    def get_job(self, name: str) -> JobRow:
        job = self._find(name)
        if job is None:
            raise NotFound(f"job '{name}' not found")
        return job

    def jobs_named(self, name: str) -> list[JobRow]:
        """The live jobs of every tenant named ``name`` (their keys end in ``/name``)."""
        pattern = "%/" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._conn().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE name LIKE ? ESCAPE '\\' AND finalized = 0 "
            "ORDER BY name", (pattern,))
        # LIKE ignores case: keep the exact name only.
        return [job for job in map(job_from_row, rows) if job.name.endswith("/" + name)]

    def _find(self, name: str) -> JobRow | None:
        row = self._conn().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE name = ? AND finalized = 0", (name,)
        ).fetchone()
        return None if row is None else job_from_row(row)

    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> list[JobRow]:
        """Live jobs (deleted ones too, until finalised), oldest submission first."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE finalized = 0"
        params: list[str] = []
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [tenant]
        if phases is not None:
            wanted = [phases] if isinstance(phases, str) else list(phases)
            sql += f" AND phase IN ({', '.join('?' * len(wanted))})" if wanted else " AND 0"
            params += wanted
        rows = self._conn().execute(sql + " ORDER BY submit_time, id", params)
        return [job_from_row(row) for row in rows]

    def update_job(self, name: str, expected_version: int, **changes: Any) -> JobRow:
        """Compare-and-set: apply ``changes`` only if the job is still at ``expected_version``.

        Bumps the version.  StoreConflict (nothing changed) when another
        writer got there first; NotFound when the job is gone.
        """
        try:
            columns = encode_changes(changes)
        except (TypeError, ValueError) as exc:
            raise InternalError(f"bad update of job '{name}': {exc}") from exc
        # Column names come from MUTABLE_FIELDS, never from input.
        assignments = "".join(f"{column} = ?, " for column in columns)
        with self.transaction():
            self._fenced(name, expected_version, assignments, list(columns.values()))
            return self.get_job(name)

    def save_job(self, job: JobRow, events: Sequence[EventRecord] = ()) -> JobRow:
        """Write every mutable field of ``job``, fenced by ``job.version`` (see ``update_job``),
        and its ``events``, in one transaction."""
        with self.transaction():
            saved = self.update_job(
                job.name, job.version, **{f: getattr(job, f) for f in sorted(MUTABLE_FIELDS)}
            )
            for event in events:
                self.append_event(event.time, event.kind, job.name, job.tenant, dict(event.data))
            return saved

    def finalize_job(self, name: str, expected_version: int) -> None:
        """Retire a job once its pods are gone: the row stays for audit, the name is freed."""
        with self.transaction():
            self._fenced(name, expected_version, "finalized = 1, ", [])

    def _fenced(self, name: str, expected: int, assignments: str, params: list[Any]) -> None:
        cursor = self._conn().execute(
            f"UPDATE jobs SET {assignments}version = version + 1 "
            "WHERE name = ? AND finalized = 0 AND version = ?",
            (*params, name, expected),
        )
        if cursor.rowcount == 0:
            found = self.get_job(name).version  # NotFound when the job is gone
            raise StoreConflict(
                f"job '{name}' changed since it was read: expected version {expected}, "
                f"found {found}",
                hint="reload it and decide again",
            )

    def request_delete(self, name: str, tenant: str | None = None) -> JobRow:
        """Mark a job deleted (the reconciler then stops its pods and finalises it).

        Not fenced: a user's delete always wins, and bumping the version makes
        any reconciler decision taken before it fail.  Idempotent.
        """
        with self.transaction():
            job = self._find(name)
            # Another tenant's job reads as missing: its name is not theirs to learn.
            if job is None or (tenant is not None and job.tenant != tenant):
                raise NotFound(f"job '{name}' not found")
            return job if job.deleted else self.update_job(name, job.version, deleted=True)

    # -- services (runtime.local.store_services) -----------------------------------

    @property
    def service_table(self) -> ServiceTable:
        return ServiceTable(self)

    def put_service(self, key: str, tenant: str, spec: dict[str, Any]) -> str:
        return self.service_table.put_service(key, tenant, spec)

    def services(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return self.service_table.services(tenant)

    def _service_view(self, key: str) -> dict[str, Any]:
        return next(s for s in self.services() if s["name"] == key)

    def delete_service(self, key: str) -> dict[str, Any]:
        self.service_table.delete_service(key)
        return self._service_view(key)

    def request_rollout(self, key: str, action: str) -> dict[str, Any]:
        self.service_table.request_rollout(key, action)
        return self._service_view(key)

    # -- events ---------------------------------------------------------------

    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int:
        """Record a decision; returns its id, which only ever grows."""
        with self.transaction():
            cursor = self._conn().execute(
                "INSERT INTO events (time, kind, job, tenant, data) VALUES (?, ?, ?, ?, ?)",
                (time, kind, job, tenant, json.dumps(data, sort_keys=True)),
            )
        assert cursor.lastrowid is not None  # always set after an INSERT
        return cursor.lastrowid

    def events(
        self, since_id: int = 0, job: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Events after ``since_id`` in the order recorded: ``{id, time, kind, job, tenant, data}``."""
        sql = "SELECT id, time, kind, job, tenant, data, service FROM events WHERE id > ?"
        params: list[Any] = [since_id]
        for column, value in (("job", job), ("tenant", tenant)):
            if value is not None:
                sql, params = sql + f" AND {column} = ?", [*params, value]
        rows = self._conn().execute(sql + " ORDER BY id", params)
        found = []
        for row in rows:
            event = {**dict(row), "data": json.loads(row["data"])}
            if event["service"] is None:
                del event["service"]  # a job's, tenant's or node pool's event
            found.append(event)
        return found

    # -- tokens ---------------------------------------------------------------

    def create_token(self, principal: str, role: Role, tenant: str | None,
                     now: float | None = None, expires: float | None = None) -> str:
        """Mint a token and return its plaintext, the only time it is ever visible.

        ``now`` is recorded as its creation time; ``expires`` None: it never expires.
        """
        with self.transaction():
            if role == "tenant" and tenant and tenant not in self.tenants():
                raise NotFound(f"tenant '{tenant}' not found")
            return insert_token(self._conn(), self._salt, principal, role, tenant, now, expires)

    def resolve_token(self, token: str, now: float | None = None) -> Principal | None:
        """Who ``token`` stands for at time ``now``; None for an unknown, revoked or
        expired one alike.  Without ``now`` a token that expires at all is refused."""
        return find_principal(self._conn(), self._salt, token, now)

    def tokens(self) -> list[dict[str, Any]]:
        """Every token (id, name, role, tenant, created, expires, revoked); never a secret."""
        return list_tokens(self._conn())

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke one token by its id (idempotent) and return it; NotFound if unknown."""
        with self.transaction():
            revoke_id(self._conn(), token_id)
            found = get_token(self._conn(), token_id)
            if found is None:
                raise NotFound(f"token '{token_id}' not found")
            return found

    def revoke_tokens(self, tenant: str) -> int:
        """Revoke every token of ``tenant``; returns how many were live."""
        with self.transaction():
            return revoke(self._conn(), tenant)
