"""The protocols the application layer needs from a runtime (its ports).

``StateStore`` is the store of record (the embedded runtime's SQLite store
satisfies it); ``Workspace`` owns a job's files (checkpoints, logs), which
only the runtime may touch; ``Clock`` gives the time.  Records are read
through ``JobRecord`` and ``Caller`` so that this layer never imports the
runtime or the control loop.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from shoal.domain.job import TrainingJob

Role = Literal["admin", "tenant"]


class Caller(Protocol):
    """Who is calling: an admin, or a member of one tenant."""

    @property
    def role(self) -> Role: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def name(self) -> str: ...


class JobRecord(Protocol):
    """A stored job as this layer reads it (``control.records.JobRow`` satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def manifest(self) -> Mapping[str, Any]: ...
    @property
    def phase(self) -> str: ...
    @property
    def submit_time(self) -> float: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def pods(self) -> Sequence[Any]: ...


class StateStore(Protocol):
    """Tenants, nodes, jobs, events and tokens, with all-or-nothing transactions."""

    def tenants(self) -> dict[str, dict[str, Any]]: ...
    def nodes(self) -> dict[str, dict[str, Any]]: ...
    def put_tenant(self, name: str, spec: dict[str, Any]) -> None: ...
    def put_node(self, name: str, spec: dict[str, Any]) -> None: ...
    def delete_tenant(self, name: str) -> int:
        """Remove the tenant and revoke its tokens (how many were live); NotFoundError if none."""
        ...
    def delete_node(self, name: str) -> None:
        """Remove the node pool; NotFoundError if there is none."""
        ...
    def create_job(
        self, name: str, tenant: str, manifest: dict[str, Any], now: float, checkpoint_dir: str
    ) -> JobRecord: ...
    def get_job(self, name: str) -> JobRecord: ...
    def jobs_named(self, name: str) -> Sequence[JobRecord]:
        """The live jobs of every tenant that have the name ``name`` (keys ``*/name``)."""
        ...
    def list_jobs(
        self, tenant: str | None = None, phases: Collection[str] | None = None
    ) -> Sequence[JobRecord]: ...
    def request_delete(self, name: str, tenant: str | None = None) -> JobRecord: ...
    def events(
        self, since_id: int = 0, job: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]: ...
    def append_event(
        self, time: float, kind: str, job: str | None, tenant: str | None, data: dict[str, Any]
    ) -> int: ...
    def create_token(self, principal: str, role: Role, tenant: str | None,
                     now: float | None, expires: float | None) -> str:
        """Mint a token (created at ``now``; ``expires`` None: never) and return its plaintext."""
        ...
    def resolve_token(self, token: str, now: float | None) -> Caller | None:
        """The caller of a known, unrevoked token unexpired at ``now``; else None."""
        ...
    def tokens(self) -> list[dict[str, Any]]:
        """Every token: id, name, role, tenant, created, expires, revoked (never a secret)."""
        ...
    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke one token by id (idempotent) and return it as ``tokens`` lists it."""
        ...
    def put_service(self, key: str, tenant: str, spec: dict[str, Any]) -> str:
        """Create an inference service or replace its spec (its state is kept)."""
        ...
    def services(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Stored services as plain data: name (key), tenant, spec, state, deleted, request."""
        ...
    def delete_service(self, key: str) -> dict[str, Any]: ...
    def request_rollout(self, key: str, action: str) -> dict[str, Any]: ...
    def transaction(self) -> AbstractContextManager[None]: ...


class Workspace(Protocol):
    """A job's files on the machine (or volume) that runs its pods."""

    def checkpoint_dir(self, job: str) -> str:
        """Where the job's checkpoints go (recorded with the job)."""
        ...

    def check(self, job: TrainingJob, tenant: Mapping[str, Any]) -> None:
        """Raise ``InputError`` if the job's command, working folder or checkpoint
        folder cannot work here.  Must create and change nothing."""
        ...

    def forget(self, job: str) -> None:
        """Remove the files of a finished, deleted job whose name is being reused."""
        ...

    def read_log(self, job: str, pod: int, offset: int, limit: int) -> tuple[bytes, int]:
        """At most ``limit`` bytes of the pod's log from byte ``offset`` (empty
        when there is none yet, or none past ``offset``), and the offset they
        start at: 0 instead of ``offset`` when the log was rotated (it is now
        shorter than ``offset``).  Reads no more than that: a log may be far
        larger than the server's memory."""
        ...


class Clock(Protocol):
    def now(self) -> float: ...
