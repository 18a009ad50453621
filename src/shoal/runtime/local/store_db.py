"""SQLite plumbing for the state store: one connection per thread, all-or-nothing writes.

Each thread gets its own connection (``threading.local``), so the API's worker
threads and the control loop can share one store; SQLite's write lock, waited
on through ``busy_timeout``, serialises their writes.  Connections run in WAL
mode, so readers never block the writer nor the writer the readers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from shoal.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    ShoalError,
    StoreBusyError,
)

_BUSY_TIMEOUT_MS = 10_000


# The store's errors are the tree's own classes (``shoal.errors``), named for
# where they come from; callers catch the tree's types.
class StoreConflict(ConflictError):
    """The version token did not match: someone changed the row since it was read."""


class NotFound(NotFoundError):
    """The named job, tenant or node does not exist (or is not the caller's)."""


class AlreadyExists(AlreadyExistsError):
    """A live object already has that name (HTTP 409, exit 2, not worth retrying)."""


class StoreError(ShoalError):
    """The state file cannot be used: unreadable, or from a newer Shoal."""

    code = "store_error"


class StoreBusy(StoreBusyError):
    """Another writer held the state store's lock for longer than the busy timeout."""


class Database:
    """Per-thread connections to one SQLite file and the ``transaction()`` block."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn, self._local.depth = conn, 0
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit BEGIN, transaction() decides.
            # check_same_thread=False only lets close() close every thread's
            # connection; each one is still used by its own thread alone.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                timeout=_BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
            conn.close()
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from exc
        if mode != "wal":
            conn.close()
            raise StoreError(f"{self.path} cannot use WAL mode (got {mode!r})",
                             hint="put the state directory on a local file system")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Apply every write inside all-or-nothing; an exception rolls all of them back.

        Nested blocks are savepoints: an exception undoes the inner block and,
        unless caught, the outer one too.
        """
        conn = self._conn()
        depth: int = self._local.depth
        savepoint = f"sp{depth}"
        try:
            # IMMEDIATE takes the write lock now, so what a block reads stays
            # true until it commits (no lock upgrade failing half-way).
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        except sqlite3.OperationalError as exc:
            raise StoreBusy(f"the state store {self.path} is busy: {exc}",
                            retry_after_s=1.0) from exc
        self._local.depth = depth + 1
        try:
            yield
            conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
        except BaseException:
            # SQLite may already have rolled back by itself (disk full, I/O error).
            if conn.in_transaction:
                if depth == 0:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
            raise
        finally:
            self._local.depth = depth

    def close(self) -> None:
        """Close every thread's connection; call once, at shutdown."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
