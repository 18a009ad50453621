"""What only an admin manages: API tokens, and deleting tenants and node pools.

Tokens are minted with an optional lifetime (``ttlSeconds``, at most ten
years; without it a token never expires), listed without their secrets and
revoked by id.  Expiry is read from the application's clock, so tests move
time instead of waiting; an expired token is refused exactly like an
unknown or revoked one.

Deleting follows Kueue's ``resource-in-use`` finalizers, but answers at once
instead of waiting: an object something still depends on is not deleted
(``InUseError``, HTTP 409, naming what and saying what to do), and the check
and the writes run in one store transaction, so a refused delete changes
nothing and no job can slip in between the check and the delete:

- a **tenant** with active jobs (pending, running, or still stopping, a job
  being deleted included) is refused; otherwise its finished jobs are
  marked deleted (as ``shoal delete job`` would: an admin still reads them
  until their names are reused), every token of the tenant is revoked and
  the tenant is removed;
- a **node pool** is refused while a job holds pods on one of its nodes, or
  while an active job that fits on the cluster today would fit on no node
  left (the scheduler would fail it).  Nodes are stored as pools
  (``NodePool``), so a pool is the unit that is deleted; a node's name is
  answered with the pool it belongs to.

Only an admin token may do any of this (403 for a tenant's, before anything
is looked up: a tenant's token learns nothing about what exists).
"""

from __future__ import annotations

import re
from typing import Any

from shoal.app.checks import unplaceable
from shoal.app.core import App
from shoal.app.ports import Caller, JobRecord, Role
from shoal.app.views import pod_field
from shoal.domain.base import is_name
from shoal.domain.job import TrainingJob
from shoal.domain.names import job_name
from shoal.domain.phases import ACTIVE_PHASES, FINAL_PHASES, HOLDING_PHASES
from shoal.errors import Forbidden, InputError, InUseError, NotFoundError

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
"""Longest token lifetime accepted: ten 365-day years."""
MAX_TOKEN_NAME = 63
TOKEN_PREFIX = "shoal_"
"""A token reads ``shoal_<id>_<secret>``; the id is public (listing, revoking)."""
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
NAMED = 5
"""How many blocking jobs a refusal names (then: "and N more")."""


def _admin(caller: Caller, action: str) -> None:
    if caller.role != "admin":
        raise Forbidden(f"only an admin token may {action}")


def _shown(text: str, limit: int = 64) -> str:
    """A name from a request, as an error message repeats it (never unbounded)."""
    return text if len(text) <= limit else text[:limit] + "..."


# -- tokens ---------------------------------------------------------------------------


def resolve(app: App, token: str) -> Caller | None:
    """The caller of a known, unrevoked, unexpired token; None whatever the reason."""
    return app.store.resolve_token(token, app.clock.now())


def token_id(token: str) -> str:
    """The public id of a token (``shoal_<id>_<secret>``)."""
    return token.removeprefix(TOKEN_PREFIX).partition("_")[0]


def create_token(app: App, caller: Caller, tenant: str | None, role: Role,
                 ttl_seconds: int | None = None, name: str | None = None) -> dict[str, Any]:
    """Mint a token; its plaintext is in this answer and nowhere else, ever."""
    _admin(caller, "create tokens")
    if role == "tenant" and not tenant:
        raise InputError("a tenant token needs a tenant: pass {\"tenant\": \"<name>\"}")
    if role == "admin" and tenant:
        raise InputError("an admin token belongs to no tenant: leave out \"tenant\"")
    if ttl_seconds is not None and not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InputError(f"ttlSeconds: expected 1 to {MAX_TTL_SECONDS} seconds (ten years), "
                         f"got {ttl_seconds}")
    if name is not None and not (len(name) <= MAX_TOKEN_NAME and is_name(name)):
        raise InputError(f"name: expected a DNS-1123 name of at most {MAX_TOKEN_NAME} "
                         f"characters (a-z, 0-9, '-', '.'), got {_shown(name)!r}")
    store = app.store
    if role == "tenant" and tenant not in store.tenants():
        raise NotFoundError(f"tenant '{_shown(tenant or '')}' not found")
    now = app.clock.now()
    expires = None if ttl_seconds is None else now + ttl_seconds
    principal = name or tenant or "admin"
    with store.transaction():
        token = store.create_token(principal, role, tenant, now, expires)
        record = {"id": token_id(token), "name": principal, "role": role, "tenant": tenant,
                  "created": now, "expires": expires}
        store.append_event(now, "token-created", None, None, _event(record))
    return {"token": token, **record}


def _event(record: dict[str, Any]) -> dict[str, Any]:
    """What an event says of a token (an admin-only event: its tenant is not set)."""
    return {k: record[k] for k in ("id", "name", "role", "tenant", "expires")}


def _status(token: dict[str, Any], now: float) -> str:
    if token["revoked"]:
        return "revoked"
    expires = token["expires"]
    return "expired" if expires is not None and expires <= now else "active"


def list_tokens(app: App, caller: Caller) -> list[dict[str, Any]]:
    """Every token with its ``status`` (active, expired or revoked); no secret, no digest."""
    _admin(caller, "list tokens")
    now = app.clock.now()
    return [{**token, "status": _status(token, now)} for token in app.store.tokens()]


def revoke_token(app: App, caller: Caller, ident: str) -> dict[str, Any]:
    """Revoke a token by id; revoking a revoked token answers the same (idempotent)."""
    _admin(caller, "revoke tokens")
    if _TOKEN_ID.fullmatch(ident) is None:
        raise NotFoundError(f"token '{_shown(ident)}' not found",
                            hint="a token's id is the 16 hex digits after 'shoal_'; "
                            "see GET /v1/tokens")
    store, now = app.store, app.clock.now()
    with store.transaction():
        before = {t["id"]: t for t in store.tokens()}.get(ident)
        token = store.revoke_token(ident)  # NotFoundError when there is none
        if before is not None and not before["revoked"]:
            store.append_event(now, "token-revoked", None, None, _event(token))
    return {**token, "status": _status(token, now)}


# -- tenants ---------------------------------------------------------------------------


def delete_tenant(app: App, caller: Caller, name: str) -> dict[str, Any]:
    """Delete a tenant that has no active job; revoke its tokens; all or nothing."""
    _admin(caller, "delete tenants")
    store, now = app.store, app.clock.now()
    with store.transaction():
        if name not in store.tenants():
            raise NotFoundError(f"tenant '{_shown(name)}' not found")
        jobs = list(store.list_jobs(tenant=name))
        active = [job for job in jobs if job.phase not in FINAL_PHASES]
        if active:
            raise InUseError(_tenant_in_use(name, active))
        finished = [job for job in jobs if not job.deleted]
        for job in finished:
            store.request_delete(job.name, name)
        revoked = store.delete_tenant(name)
        store.append_event(now, "tenant-deleted", None, name,
                           {"tokens_revoked": revoked, "jobs_deleted": len(finished)})
    app.wake()
    return {"kind": "Tenant", "name": name, "result": "deleted", "tokens_revoked": revoked,
            "jobs_deleted": len(finished)}


def _listed(jobs: list[JobRecord], *, qualified: bool = False) -> str:
    """``name phase`` of the first few; ``tenant/name`` when they span tenants."""
    shown = [f"{job.name if qualified else job_name(job.name)} {job.phase}{', being deleted' if job.deleted else ''}"
             for job in jobs[:NAMED]]
    more = f" and {len(jobs) - NAMED} more" if len(jobs) > NAMED else ""
    return "; ".join(shown) + more


def _tenant_in_use(name: str, active: list[JobRecord]) -> str:
    one = len(active) == 1
    todo = [job_name(job.name) for job in active if not job.deleted]
    first = (f"delete {'it' if one else 'them'} first (shoal delete job "
             f"{' '.join(todo[:NAMED])}{' ...' if len(todo) > NAMED else ''}), " if todo else "")
    return (f"tenant '{name}' still has {len(active)} active job{'' if one else 's'} "
            f"({_listed(active)}); nothing was deleted: {first}wait until "
            f"{'it has' if one else 'they have'} stopped, then delete the tenant again")


# -- node pools ------------------------------------------------------------------------


def _pool_of(node: str, pools: dict[str, Any]) -> str | None:
    """The pool a node belongs to: nodes are named ``<pool>-<index>``."""
    pool, _, index = node.rpartition("-")
    return pool if index.isdigit() and pool in pools else None


def delete_nodepool(app: App, caller: Caller, name: str) -> dict[str, Any]:
    """Delete a node pool that runs no pod and strands no active job; all or nothing."""
    _admin(caller, "delete node pools")
    store, now = app.store, app.clock.now()
    with store.transaction():
        pools = store.nodes()
        if name not in pools:
            raise _no_pool(name, pools)
        jobs = list(store.list_jobs(phases=ACTIVE_PHASES))
        holding = [job for job in jobs if job.phase in HOLDING_PHASES
                   and any(_pool_of(str(pod_field(pod, "node", "")), pools) == name
                           for pod in job.pods)]
        if holding:
            raise InUseError(
                f"NodePool '{name}' runs pods of {len(holding)} job"
                f"{'s' if len(holding) != 1 else ''} ({_listed(holding, qualified=True)}); nothing was "
                "deleted: delete those jobs (or wait until they end), then delete the pool")
        stranded = _stranded(store.tenants(), pools, name, jobs)
        if stranded:
            named = ", ".join(stranded[:NAMED]) + (
                f" and {len(stranded) - NAMED} more" if len(stranded) > NAMED else "")
            raise InUseError(
                f"without NodePool '{name}', {len(stranded)} active job"
                f"{'s' if len(stranded) != 1 else ''} would fit on no node and fail "
                f"({named}); nothing was deleted: add a pool they fit on first, or "
                "delete them")
        store.delete_node(name)
        store.append_event(now, "nodepool-deleted", None, None, {"name": name})
    app.wake()
    return {"kind": "NodePool", "name": name, "result": "deleted",
            "nodes": pools[name].get("count", 1)}


def _stranded(tenants: dict[str, Any], pools: dict[str, Any], name: str,
              jobs: list[JobRecord]) -> list[str]:
    """Active jobs that fit on the pools today and would fit on none without ``name``."""
    waiting = {job.name: TrainingJob.model_validate(job.manifest)
               for job in jobs if not job.deleted}
    rest = {pool: spec for pool, spec in pools.items() if pool != name}
    lost = unplaceable(waiting.values(), tenants, rest)
    if not lost:
        return []
    already = set(unplaceable([waiting[n] for n in lost], tenants, pools))
    return [n for n in lost if n not in already]


def _no_pool(name: str, pools: dict[str, Any]) -> NotFoundError:
    pool = _pool_of(name, pools)
    if pool is not None:
        return NotFoundError(
            f"NodePool '{_shown(name)}' not found: it is a node of NodePool '{pool}'",
            hint=f"nodes come and go with their pool: shoal delete nodepool {pool}")
    known = ", ".join(sorted(pools)[:10]) or "none"
    return NotFoundError(f"NodePool '{_shown(name)}' not found (node pools: {known})")
