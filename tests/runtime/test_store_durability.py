"""The state store across restarts, SIGKILL, schema upgrades and threads.

Nothing committed is lost, nothing is torn, and a file it cannot use is a clear error.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shoal.control.records import PodRecord
from shoal.runtime.local import store_schema
from shoal.runtime.local.store import SqliteStore, StoreConflict, StoreError


def test_reopen_keeps_state_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    with SqliteStore(path) as store:
        store.create_job("a", "team-a", {}, 0.0, "/ck")
        store.update_job("a", 1, phase="Running")
    with SqliteStore(path) as store:
        assert store.get_job("a").version == 2
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [
            (m.version,) for m in store_schema.MIGRATIONS]
    raw.close()


def test_schema_upgrades_and_refuses_newer(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    SqliteStore(path).close()
    newest = store_schema.LATEST
    later = store_schema.Migration(newest + 1, "job labels",
                                   ["ALTER TABLE jobs ADD COLUMN labels TEXT"])
    migrations = (*store_schema.MIGRATIONS, later)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    assert store_schema.migrate(raw, migrations) == newest + 1
    assert store_schema.migrate(raw, migrations) == newest + 1  # applying twice is a no-op
    raw.execute("COMMIT")
    raw.close()
    with pytest.raises(StoreError,
                       match=f"schema version {newest + 1}, newer than this Shoal's {newest}"):
        SqliteStore(path)


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the state store"):
        SqliteStore(path)


# The child creates jobs "a" and "b", then loops: one transaction per step
# updates both and creates job "s<step>", and "done <step>" is printed once
# COMMIT has returned.  At step ``pause`` it stops half-way through the
# transaction, says "inside <step>" and waits on stdin, so the kill lands
# exactly there.  A tiny page cache makes SQLite spill the uncommitted pages
# into the WAL file first, so recovery has a torn tail to throw away.
CHILD = """
import sys
from pathlib import Path
from shoal.control.records import PodRecord
from shoal.runtime.local.store import SqliteStore

store = SqliteStore(Path(sys.argv[1]))
pause = int(sys.argv[2])
store._conn().execute("PRAGMA cache_size = 2")
for name in ("a", "b"):
    store.create_job(name, "team-a", {"kind": "TrainingJob"}, 0.0, "/ck/" + name)
step = 0
while True:
    step += 1
    pods = tuple(PodRecord(index=i, node="n", gpus=(), uid=f"u{i}", started_at=float(step),
                           state="running", handle=str(step)) for i in range(200))
    with store.transaction():
        store.update_job("a", step, attempts=step, pods=pods, reason="x" * (step % 997))
        store.create_job(f"s{step}", "team-a", {"step": step}, float(step), "/ck/s")
        if step == pause:
            print("inside", step, flush=True)
            sys.stdin.readline()  # blocks until the parent kills us
        store.update_job("b", step, attempts=step, pods=pods, reason="x" * (step % 997))
        store.append_event(float(step), "Step", "a", "team-a", {"step": step})
    print("done", step, flush=True)
"""


@pytest.mark.parametrize(
    ("pause", "kill_at"),
    [(1, "inside 1"), (0, "done 1"), (38, "inside 38"), (0, "done 37"), (400, "inside 400")],
)
def test_sigkill_mid_update_loses_no_committed_write(
    tmp_path: Path, pause: int, kill_at: str
) -> None:
    path = tmp_path / "shoal.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(pause)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        committed = 0
        while (line := child.stdout.readline().strip()) != kill_at:
            assert line, f"child exited early with code {child.wait()}"
            what, step = line.split()
            committed = int(step) if what == "done" else committed
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()  # no-op when already dead; never leave it running on failure
        child.wait()
        child.stdout.close()
        child.stdin.close()
    assert child.returncode == -signal.SIGKILL

    with SqliteStore(path) as store:
        a, b = store.get_job("a"), store.get_job("b")
        # The two jobs change in one transaction: the same number of steps
        # applied to both, each step whole (version, attempts and pods agree).
        # When stopped mid-step, exactly the committed steps survive; when
        # killed after "done N" the child may have committed more by then.
        steps = a.attempts
        assert steps == committed if pause else steps >= committed
        assert (a.version, b.version, b.attempts) == (steps + 1, steps + 1, steps)
        pods = tuple(PodRecord(index=i, node="n", gpus=(), uid=f"u{i}", started_at=float(steps),
                               state="running", handle=str(steps))
                     for i in range(200 if steps else 0))
        assert (a.reason, a.pods) == (b.reason, b.pods) == ("x" * (steps % 997), pods)
        created = sorted(int(j.name[1:]) for j in store.list_jobs() if j.name.startswith("s"))
        assert created == list(range(1, steps + 1))
        assert [e["data"]["step"] for e in store.events()] == created
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()


def test_threads_updating_different_jobs_both_succeed(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "shoal.db") as store:
        for name in ("a", "b"):
            store.create_job(name, "team-a", {}, 0.0, "/ck")
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def work(name: str) -> None:
            try:
                start.wait()
                for version in range(1, 101):
                    store.update_job(name, version, attempts=version)
            except BaseException as exc:  # reported to the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [(j.version, j.attempts) for j in store.list_jobs()] == [(101, 100), (101, 100)]


def test_threads_racing_on_one_version_exactly_one_wins(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "shoal.db") as store:
        store.create_job("a", "team-a", {}, 0.0, "/ck")
        start = threading.Barrier(8)
        outcomes: list[str] = []

        def claim(node: str) -> None:
            start.wait()
            try:
                store.update_job("a", 1, phase="Running", pods=(PodRecord(index=0, node=node, gpus=(), uid=node, started_at=0.0),))
                outcomes.append("won")
            except StoreConflict:
                outcomes.append("fenced")

        threads = [threading.Thread(target=claim, args=(f"n{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["fenced"] * 7 + ["won"]
        assert store.get_job("a").version == 2


def test_a_version_1_store_upgrades_with_jobs_mid_preemption(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    store_schema.migrate(raw, store_schema.MIGRATIONS[:1])
    pods = json.dumps([{"index": 0, "node": "n", "gpus": [0], "uid": "u0", "pid": 4242,
                        "start_ticks": 99, "cgroup": "shoal/v-0", "state": "running",
                        "deadline": 50.0, "preemptor": "b"}])
    raw.execute(
        "INSERT INTO jobs (name, tenant, manifest, phase, version, attempts, preemptions, "
        "submit_time, checkpoint_dir, pods) VALUES ('v', 't', '{}', 'Preempting', 3, 3, 1, 0, "
        "'/ck', ?)", (pods,))
    raw.execute("COMMIT")
    raw.close()
    with SqliteStore(path) as store:
        job = store.get_job("t/v")  # names became per tenant (migration 4)
    assert (job.stop_cause, job.stop_deadline, job.preemptor) == ("preempted", 50.0, "b")
    # Not known then: the eviction nominates "b" until the victim runs (migration 7).
    assert job.preemptor_attempts is None
    assert job.failures == 1, "attempt 1 failed, one was preempted, the third still runs"
    assert json.loads(job.pods[0].handle or "{}") == {
        "pid": 4242, "start_ticks": 99, "cgroup": "shoal/v-0"}
