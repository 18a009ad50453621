"""Services in the embedded SQLite store: apply semantics, fenced state writes, events, deletion."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shoal.control import service_machine as sm
from shoal.control.records import EventRecord
from shoal.errors import ConflictError, NotFoundError
from shoal.runtime.local.store import SqliteStore
from shoal.runtime.local.store_services import ServiceTable

SPEC = {"tenant": "team-a", "framework": "sklearn", "model": {"path": "/models/a.joblib"}}


@pytest.fixture
def table(tmp_path: Path) -> ServiceTable:
    store = SqliteStore(tmp_path / "state.db")
    return ServiceTable(store)


def test_apply_creates_configures_or_leaves_unchanged(table: ServiceTable) -> None:
    assert table.put_service("team-a/digits", "team-a", SPEC) == "created"
    assert table.put_service("team-a/digits", "team-a", SPEC) == "unchanged"
    changed = {**SPEC, "model": {"path": "/models/b.joblib"}}
    assert table.put_service("team-a/digits", "team-a", changed) == "configured"
    record = table.get_service("team-a/digits")
    assert record.spec.model.path == "/models/b.joblib"
    assert record.row == sm.ServiceRow("team-a/digits", "team-a") and record.version == 2


def test_state_writes_are_fenced_and_carry_their_events(table: ServiceTable,
                                                        tmp_path: Path) -> None:
    table.put_service("team-a/digits", "team-a", SPEC)
    record = table.get_service("team-a/digits")
    step = sm.deploy(record.row, "model-a", 10, 5.0)
    saved = table.save_service(replace(record, row=step.service),
                               [EventRecord(5.0, "revision-created", {"revision": "r1"})])
    assert saved.row.stable == "team-a/digits-r1" and saved.version == record.version + 1
    with pytest.raises(ConflictError, match="changed since it was read"):
        table.save_service(replace(record, row=step.service))  # the stale version
    events = table.db.events(tenant="team-a")  # type: ignore[attr-defined]
    assert [(e["kind"], e["data"]) for e in events] == [("revision-created", {"revision": "r1"})]
    # A second store on the same file reads what the first wrote (it is on disk).
    again = ServiceTable(SqliteStore(tmp_path / "state.db")).get_service("team-a/digits")
    assert again.row.revisions == saved.row.revisions


def test_a_deleted_service_stays_until_forgotten_and_can_be_applied_again(
        table: ServiceTable) -> None:
    table.put_service("team-a/digits", "team-a", SPEC)
    assert table.delete_service("team-a/digits").deleted
    assert table.delete_service("team-a/digits").deleted  # idempotent
    assert table.put_service("team-a/digits", "team-a", SPEC) == "configured"
    assert not table.get_service("team-a/digits").deleted
    record = table.delete_service("team-a/digits")
    table.forget_service(record)
    with pytest.raises(NotFoundError):
        table.get_service("team-a/digits")
    assert table.list_services() == []
