"""The SQLite state store on real files: jobs, fencing, transactions, events, tokens.

Reopening, schema upgrades, crashes and threads: ``test_store_durability.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.control.records import PodRecord
from shoal.errors import AlreadyExistsError, ConflictError, InputError, InternalError, NotFoundError
from shoal.runtime.local.store import (
    AlreadyExists,
    JobRow,
    NotFound,
    Principal,
    SqliteStore,
    StoreConflict,
)

MANIFEST = {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "a"}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state" / "shoal.db") as opened:
        yield opened


def create(store: SqliteStore, name: str, tenant: str = "team-a", now: float = 10.0) -> JobRow:
    return store.create_job(name, tenant, MANIFEST, now=now, checkpoint_dir=f"/ck/{name}")


def test_create_get_list_update(store: SqliteStore) -> None:
    job = create(store, "a")
    assert job == JobRow(
        name="a", tenant="team-a", manifest=MANIFEST, phase="Pending", version=1, attempts=0,
        preemptions=0, lost_seconds=0.0, submit_time=10.0, start_time=None, finish_time=None,
        reason="", pods=(), checkpoint_dir="/ck/a", next_attempt_at=None, deleted=False)
    pods = (PodRecord(index=0, node="n1", gpus=(0, 1), uid="u0", started_at=11.5,
                      state="running", handle='{"pid": 42}'),)
    running = store.update_job("a", 1, phase="Running", start_time=11.5, attempts=1, pods=pods)
    assert running == dataclasses.replace(
        job, phase="Running", version=2, start_time=11.5, attempts=1, pods=pods)
    assert store.get_job("a") == running
    assert store.list_jobs() == [running]


def test_list_filters_by_tenant_and_phase_oldest_first(store: SqliteStore) -> None:
    create(store, "late", now=30.0)
    create(store, "early", now=5.0)
    create(store, "other", tenant="team-b", now=1.0)
    store.update_job("late", 1, phase="Running")
    assert [j.name for j in store.list_jobs()] == ["other", "early", "late"]
    assert [j.name for j in store.list_jobs(tenant="team-a")] == ["early", "late"]
    assert [j.name for j in store.list_jobs(phases={"Pending"})] == ["other", "early"]
    assert [j.name for j in store.list_jobs("team-a", ["Running", "Failed"])] == ["late"]
    assert [j.name for j in store.list_jobs(phases="Running")] == ["late"]
    assert store.list_jobs(phases=[]) == []


def test_rows_are_immutable_copies(store: SqliteStore) -> None:
    pod = PodRecord(index=0, node="n1", gpus=(), uid="u0", started_at=1.0)
    job = store.update_job(create(store, "a").name, 1, pods=(pod,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.phase = "Running"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.pods[0].state = "running"  # type: ignore[misc]
    assert store.get_job("a").pods == (pod,)


def test_save_job_writes_the_whole_record_fenced(store: SqliteStore) -> None:
    job = create(store, "a")
    changed = dataclasses.replace(job, phase="Preempting", stop_cause="preempted",
                                  stop_deadline=20.0, preemptor="b", preemptor_attempts=3,
                                  checkpoint_time=9.5,
                                  checkpoint_step=300, failures=1)
    saved = store.save_job(changed)
    assert saved == dataclasses.replace(changed, version=2)
    assert store.get_job("a") == saved
    with pytest.raises(StoreConflict):
        store.save_job(changed)  # still at version 1: someone else wrote since


def test_stale_writer_is_fenced_and_changes_nothing(store: SqliteStore) -> None:
    create(store, "a")
    store.update_job("a", 1, reason="queued")
    store.update_job("a", 2, reason="still queued")
    first, second = store.get_job("a"), store.get_job("a")
    assert first.version == second.version == 3
    won = store.update_job("a", first.version, phase="Running", attempts=1)
    with pytest.raises(StoreConflict) as info:
        store.update_job("a", second.version, phase="Failed", reason="stale decision")
    assert store.get_job("a") == won
    assert (won.phase, won.version) == ("Running", 4)
    assert (info.value.code, info.value.exit_code) == ("conflict", 1)
    assert isinstance(info.value, ConflictError)
    assert "job 'a' changed since it was read: expected version 3, found 4" in str(info.value)


def test_update_rejects_fields_it_may_not_change(store: SqliteStore) -> None:
    create(store, "a")
    for bad in ({"version": 9}, {"tenant": "team-b"}, {"submit_time": 0.0}, {"phase": "Exploded"}):
        with pytest.raises(InternalError):
            store.update_job("a", 1, **bad)
    assert store.get_job("a").version == 1


def test_not_found_and_already_exists_messages(store: SqliteStore) -> None:
    with pytest.raises(NotFound, match=r"^job 'x' not found$") as missing:
        store.get_job("x")
    assert (missing.value.code, missing.value.exit_code) == ("not_found", 2)
    with pytest.raises(NotFound, match="job 'x' not found"):
        store.update_job("x", 1, phase="Running")
    create(store, "a")
    with pytest.raises(AlreadyExists) as duplicate:
        create(store, "a", tenant="team-b")
    assert isinstance(duplicate.value, AlreadyExistsError) and isinstance(duplicate.value, ConflictError)
    assert duplicate.value.exit_code == 2 and not duplicate.value.retryable
    assert isinstance(missing.value, NotFoundError)
    assert (duplicate.value.code, duplicate.value.exit_code) == ("already_exists", 2)
    assert str(duplicate.value) == (
        "job 'a' already exists (delete it first or choose another name)")
    assert store.get_job("a").tenant == "team-a"


def test_delete_then_finalize_frees_the_name(store: SqliteStore) -> None:
    create(store, "a")
    with pytest.raises(NotFound):  # another tenant cannot even see it
        store.request_delete("a", tenant="team-b")
    deleted = store.request_delete("a", tenant="team-a")
    assert (deleted.deleted, deleted.version) == (True, 2)
    assert store.request_delete("a", None) == deleted  # idempotent
    with pytest.raises(AlreadyExists, match="being deleted"):
        create(store, "a")
    with pytest.raises(StoreConflict):
        store.finalize_job("a", 1)
    store.finalize_job("a", deleted.version)
    with pytest.raises(NotFound):
        store.get_job("a")
    assert store.list_jobs() == []
    assert create(store, "a", now=99.0).version == 1


def test_a_deleted_job_that_finished_frees_its_name(store: SqliteStore) -> None:
    create(store, "a")
    deleted = store.request_delete("a")
    store.update_job("a", deleted.version, phase="Cancelled", reason="deleted")
    again = create(store, "a", now=50.0)
    assert (again.version, again.phase, again.deleted, again.submit_time) == (1, "Pending", False, 50.0)
    assert store.list_jobs() == [again]


def test_transaction_rolls_back_everything_on_error(store: SqliteStore) -> None:
    create(store, "a")
    with pytest.raises(RuntimeError), store.transaction():
        store.update_job("a", 1, phase="Running")
        create(store, "b")
        store.append_event(1.0, "Admitted", "a", "team-a", {})
        store.put_tenant("team-a", {"weight": 1})
        raise RuntimeError("crash between writes")
    assert store.get_job("a").version == 1
    assert [j.name for j in store.list_jobs()] == ["a"]
    assert store.events() == [] and store.tenants() == {}
    # A conflict inside a transaction undoes the writes before it too.
    with pytest.raises(StoreConflict), store.transaction():
        create(store, "c")
        store.update_job("a", 7, phase="Running")
    assert [j.name for j in store.list_jobs()] == ["a"]


def test_nested_transaction_is_a_savepoint(store: SqliteStore) -> None:
    with store.transaction():
        create(store, "a")
        with pytest.raises(ValueError), store.transaction():
            create(store, "b")
            raise ValueError("inner block fails")
        create(store, "c")
    assert [j.name for j in store.list_jobs()] == ["a", "c"]


def test_events_in_order_with_filters(store: SqliteStore) -> None:
    first = store.append_event(5.0, "Admitted", "a", "team-a", {"node": "n1"})
    second = store.append_event(6.0, "Preempted", "b", "team-b", {"by": "a"})
    third = store.append_event(7.0, "NodeDown", None, None, {"node": "n1"})
    assert first < second < third
    assert [e["id"] for e in store.events()] == [first, second, third]
    assert store.events(since_id=second) == [
        {"id": third, "time": 7.0, "kind": "NodeDown", "job": None, "tenant": None,
         "data": {"node": "n1"}}]
    assert [e["kind"] for e in store.events(job="b")] == ["Preempted"]
    assert [e["data"] for e in store.events(tenant="team-a")] == [{"node": "n1"}]


def test_tenants_and_nodes(store: SqliteStore) -> None:
    store.put_tenant("team-b", {"weight": 1})
    store.put_tenant("team-a", {"weight": 1})
    store.put_tenant("team-a", {"weight": 3})
    assert store.tenants() == {"team-a": {"weight": 3}, "team-b": {"weight": 1}}
    store.delete_tenant("team-b")
    assert list(store.tenants()) == ["team-a"]
    with pytest.raises(NotFound, match="tenant 'team-b' not found"):
        store.delete_tenant("team-b")
    store.put_node("n1", {"cpu": 8000, "gpus": {"model": "A100", "count": 8}})
    assert store.nodes() == {"n1": {"cpu": 8000, "gpus": {"model": "A100", "count": 8}}}
    store.delete_node("n1")
    assert store.nodes() == {}


def test_tokens_resolve_revoke_and_roles(store: SqliteStore) -> None:
    store.put_tenant("team-a", {})
    admin = store.create_token("ops", "admin", None)
    alice = store.create_token("alice", "tenant", "team-a")
    assert store.resolve_token(admin) == Principal("admin", None, "ops")
    assert store.resolve_token(alice) == Principal("tenant", "team-a", "alice")
    for forged in ("", "shoal_", alice[:-1] + ("A" if alice[-1] != "A" else "B"),
                   "shoal_0000000000000000_x", alice.removeprefix("shoal_")):
        assert store.resolve_token(forged) is None
    assert store.revoke_tokens("team-a") == 1
    assert store.resolve_token(alice) is None
    assert store.resolve_token(admin) is not None
    with pytest.raises(InputError, match="cannot belong to tenant"):
        store.create_token("ops", "admin", "team-a")
    with pytest.raises(InputError, match="needs a tenant"):
        store.create_token("bob", "tenant", None)
    with pytest.raises(NotFound, match="tenant 'nope' not found"):
        store.create_token("bob", "tenant", "nope")
    bob = store.create_token("bob", "tenant", "team-a")
    store.delete_tenant("team-a")  # deleting a tenant revokes its tokens
    assert store.resolve_token(bob) is None


def test_token_plaintext_is_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    with SqliteStore(path) as store:
        store.put_tenant("team-a", {})
        token = store.create_token("alice", "tenant", "team-a")
        token_id, secret = token.removeprefix("shoal_").split("_", 1)
        stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # db, -wal, -shm
        assert token_id.encode() in stored  # the scan does see what was written
        assert token.encode() not in stored and secret.encode() not in stored
    with SqliteStore(path) as reopened:  # the salt persists with the store
        assert reopened.resolve_token(token) == Principal("tenant", "team-a", "alice")
