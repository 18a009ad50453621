"""Tables of the embedded state store, their migrations, and row <-> value mapping.

The schema is versioned: ``schema_version`` holds one row per applied
migration, and opening a store applies the migrations it has not seen yet,
inside one write transaction, so two processes opening the same file at once
cannot both upgrade it.  A new column or table is a new ``Migration`` at the
end of ``MIGRATIONS``; applied migrations are never edited.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.control.records import PHASES, JobRow, PodRecord
from shoal.runtime.local.store_db import StoreError

MUTABLE_FIELDS = frozenset(
    {
        "manifest", "phase", "attempts", "preemptions", "lost_seconds", "start_time",
        "finish_time", "reason", "pods", "checkpoint_dir", "next_attempt_at", "deleted",
        "stop_cause", "stop_deadline", "preemptor", "checkpoint_time", "checkpoint_step",
        "resumed_from", "failures", "ran_seconds", "queued_at", "preemptor_attempts",
    }
)
"""What ``update_job`` may change: identity, version and submit time are fixed."""

_JSON_FIELDS = frozenset({"manifest", "pods"})

JOB_COLUMNS = (
    "name, tenant, manifest, phase, version, attempts, preemptions, lost_seconds, submit_time, "
    "start_time, finish_time, reason, pods, checkpoint_dir, next_attempt_at, deleted, "
    "stop_cause, stop_deadline, preemptor, checkpoint_time, checkpoint_step, resumed_from, "
    "failures, ran_seconds, queued_at, preemptor_attempts"
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: Sequence[str]


# ``finalized`` keeps a deleted job's row for audit while freeing its name:
# names are unique among live rows only (the partial index).
_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE tenants (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
    "CREATE TABLE nodes (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
    """CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL,
        manifest TEXT NOT NULL,
        phase TEXT NOT NULL,
        version INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        preemptions INTEGER NOT NULL DEFAULT 0,
        lost_seconds REAL NOT NULL DEFAULT 0,
        submit_time REAL NOT NULL,
        start_time REAL,
        finish_time REAL,
        reason TEXT NOT NULL DEFAULT '',
        pods TEXT NOT NULL DEFAULT '[]',
        checkpoint_dir TEXT NOT NULL,
        next_attempt_at REAL,
        deleted INTEGER NOT NULL DEFAULT 0,
        finalized INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX jobs_live_name ON jobs (name) WHERE finalized = 0",
    "CREATE INDEX jobs_tenant ON jobs (tenant)",
    "CREATE INDEX jobs_phase ON jobs (phase)",
    # AUTOINCREMENT: event ids are never reused, so ``events(since_id)`` can
    # be used as a cursor even after old events are pruned.
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        job TEXT,
        tenant TEXT,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX events_job ON events (job, id)",
    "CREATE INDEX events_tenant ON events (tenant, id)",
    # Only a keyed hash of the secret is kept; ``id`` is the public half of
    # the token, so lookup never depends on the secret.
    """CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        tenant TEXT,
        revoked INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX tokens_tenant ON tokens (tenant)",
)

# The shared state machine's bookkeeping: why and until when pods are being
# stopped, for whom, the newest checkpoint seen, and failed attempts.
_V2 = (
    "ALTER TABLE jobs ADD COLUMN stop_cause TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN stop_deadline REAL",
    "ALTER TABLE jobs ADD COLUMN preemptor TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN checkpoint_time REAL",
    "ALTER TABLE jobs ADD COLUMN checkpoint_step INTEGER",
    "ALTER TABLE jobs ADD COLUMN resumed_from INTEGER",
    "ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
    # Jobs caught mid-preemption by the upgrade keep their deadline and
    # preemptor, which version 1 kept on each pod.
    "UPDATE jobs SET stop_cause = 'preempted', "
    "stop_deadline = json_extract(pods, '$[0].deadline'), "
    "preemptor = COALESCE(json_extract(pods, '$[0].preemptor'), '') "
    "WHERE phase = 'Preempting' AND finalized = 0",
    # Failed attempts so far: the current attempt of a running job has not failed.
    "UPDATE jobs SET failures = MAX(attempts - preemptions - (phase <> 'Pending'), 0) "
    "WHERE finalized = 0",
)

# When a token was minted and when it stops working (both on the control
# plane's clock; NULL: unknown, and never).  Tokens minted before keep
# working: they never expire.
_V3 = (
    "ALTER TABLE tokens ADD COLUMN created REAL",
    "ALTER TABLE tokens ADD COLUMN expires REAL",
)

# Job names are per tenant: a job is stored under its key, "<tenant>/<name>"
# (shoal.domain.names), and so are its events. A job running across the
# upgrade keeps its checkpoint folder (recorded per job); its other files are
# looked for under jobs/<tenant>/<name>/ from then on.
_V4 = (
    "UPDATE jobs SET name = tenant || '/' || name WHERE instr(name, '/') = 0",
    "UPDATE events SET job = tenant || '/' || job "
    "WHERE job IS NOT NULL AND tenant IS NOT NULL AND instr(job, '/') = 0",
)

# What a job has run, for orderings by attained service (las, srtf): the
# seconds its ended attempts ran, and when it last went back to waiting.
_V5 = (
    "ALTER TABLE jobs ADD COLUMN ran_seconds REAL NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN queued_at REAL",
)

# Inference services: the spec as applied and the revision state machine's row
# (control.service_machine), fenced by version like jobs; names are per
# tenant ("<tenant>/<name>"), as for jobs.  ``request``: a rollout asked by
# hand (promote, abort) that the reconciler has not carried out yet.  Their
# events name the service.
_V6 = (
    """CREATE TABLE services (
        name TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        request TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX services_tenant ON services (tenant)",
    "ALTER TABLE events ADD COLUMN service TEXT",
)

# A preemptor's attempts when it evicted a job: the eviction nominates it
# only until it starts again.  NULL (records from before): until the victim
# runs again, as before.
_V7 = ("ALTER TABLE jobs ADD COLUMN preemptor_attempts INTEGER",)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, tenants, nodes, events, tokens", _V1),
    Migration(2, "job stop cause, deadline, preemptor, checkpoint, failures", _V2),
    Migration(3, "token creation and expiry times", _V3),
    Migration(4, "job names scoped per tenant", _V4),
    Migration(5, "seconds each job has run, and when it last waited", _V5),
    Migration(6, "inference services", _V6),
    Migration(7, "the preemptor's attempt at each eviction", _V7),
)
LATEST = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The newest migration applied to this database (0 for a new file)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL)"
    )
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations newer than the database; the caller holds the write lock.

    A database newer than every migration we know was written by a later
    Shoal: refuse it rather than misread it.
    """
    current = schema_version(conn)
    known = max(migration.version for migration in migrations)
    if current > known:
        raise StoreError(
            f"the state store has schema version {current}, newer than this Shoal's {known}",
            hint="upgrade Shoal to open it",
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_version (version, description) VALUES (?, ?)",
            (migration.version, migration.description),
        )
        current = migration.version
    return current


def job_from_row(row: sqlite3.Row) -> JobRow:
    return JobRow(
        name=row["name"],
        tenant=row["tenant"],
        manifest=json.loads(row["manifest"]),
        phase=row["phase"],
        version=row["version"],
        attempts=row["attempts"],
        preemptions=row["preemptions"],
        lost_seconds=row["lost_seconds"],
        submit_time=row["submit_time"],
        start_time=row["start_time"],
        finish_time=row["finish_time"],
        reason=row["reason"],
        pods=tuple(PodRecord.from_json(p) for p in json.loads(row["pods"])),
        checkpoint_dir=row["checkpoint_dir"],
        next_attempt_at=row["next_attempt_at"],
        deleted=bool(row["deleted"]),
        stop_cause=row["stop_cause"],
        stop_deadline=row["stop_deadline"],
        preemptor=row["preemptor"],
        checkpoint_time=row["checkpoint_time"],
        checkpoint_step=row["checkpoint_step"],
        resumed_from=row["resumed_from"],
        failures=row["failures"],
        ran_seconds=row["ran_seconds"],
        queued_at=row["queued_at"],
        preemptor_attempts=row["preemptor_attempts"],
    )


def encode_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for ``update_job``; a field outside ``MUTABLE_FIELDS`` is a bug.

    Raises ``ValueError`` so the store can report it as an internal error.
    """
    unknown = sorted(set(changes) - MUTABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot change job field(s) {', '.join(unknown)}")
    if "phase" in changes and changes["phase"] not in PHASES:
        raise ValueError(f"unknown job phase {changes['phase']!r}")
    encoded: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "pods":
            encoded[key] = json.dumps(
                [p.to_json() if isinstance(p, PodRecord) else p for p in value], sort_keys=True
            )
        elif key in _JSON_FIELDS:
            encoded[key] = json.dumps(value, sort_keys=True)
        elif key == "deleted":
            encoded[key] = int(bool(value))
        else:
            encoded[key] = value
    return encoded
