"""API tokens: minted once, stored only as a keyed hash, checked in constant time.

A token reads ``shoal_<id>_<secret>``.  The id is public and is the lookup
key; the secret (256 random bits) is kept only as HMAC-SHA256 under a random
per-store salt (kept in the same file, table ``meta``).  A fast hash is
enough because the secret is random, not a password: a leaked database gives
nothing to brute-force.  The salt makes one store's hashes useless against
another's and rules out precomputed tables.

A token may expire: ``expires`` is a time on the control plane's clock,
passed in by the caller like every time the store keeps; a token is valid
while ``now < expires``.  Revoking keeps the row (for audit and for the
listing) and the token stops working at once.  Nothing here ever returns a
secret or a digest, except the plaintext of a token at the moment it is minted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from typing import Any, Literal

from shoal.control.records import Principal
from shoal.errors import InputError

Role = Literal["admin", "tenant"]
PREFIX = "shoal_"


def load_salt(conn: sqlite3.Connection) -> bytes:
    """The store's salt, created on first use; the caller holds the write lock."""
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('token_salt', ?)",
        (secrets.token_hex(32),),
    )
    (value,) = conn.execute("SELECT value FROM meta WHERE key = 'token_salt'").fetchone()
    return bytes.fromhex(value)


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def insert_token(
    conn: sqlite3.Connection, salt: bytes, principal: str, role: Role, tenant: str | None,
    created: float | None = None, expires: float | None = None,
) -> str:
    """Store a new token's hash and return the plaintext (shown to the user once).

    ``expires`` None: the token never expires.
    """
    if role not in ("admin", "tenant"):
        raise InputError(f"unknown role {role!r}", hint="expected admin or tenant")
    if role == "admin" and tenant is not None:
        raise InputError(f"admin token {principal!r} cannot belong to tenant {tenant!r}")
    if role == "tenant" and not tenant:
        raise InputError(f"tenant token {principal!r} needs a tenant")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO tokens (id, digest, name, role, tenant, created, expires) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token_id, _digest(salt, secret), principal, role, tenant, created, expires),
    )
    return f"{PREFIX}{token_id}_{secret}"


def find_principal(
    conn: sqlite3.Connection, salt: bytes, token: str, now: float | None
) -> Principal | None:
    """The principal of a valid token (known, unrevoked, unexpired at ``now``),
    else None, whichever the reason: an unknown, revoked or expired token look
    the same.  ``now`` None (the time is unknown): a token that expires at all
    is refused."""
    body = token.removeprefix(PREFIX) if token.startswith(PREFIX) else ""
    token_id, _, secret = body.partition("_")
    # ``expires > NULL`` is never true: without a time, expiring tokens fail closed.
    row = conn.execute(
        "SELECT digest, name, role, tenant FROM tokens WHERE id = ? AND revoked = 0 "
        "AND (expires IS NULL OR expires > ?)",
        (token_id, now),
    ).fetchone()
    # Hash and compare even when the id is unknown, so that the time taken
    # does not tell an attacker which ids exist.
    expected = row["digest"] if row is not None else _digest(salt, "\0no such token")
    if not hmac.compare_digest(_digest(salt, secret), expected) or row is None:
        return None
    return Principal(role=row["role"], tenant=row["tenant"], name=row["name"])


_LISTED = "id, name, role, tenant, created, expires, revoked"
"""What a listing shows of a token: never its digest."""


def _listed(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "role": row["role"], "tenant": row["tenant"],
            "created": row["created"], "expires": row["expires"],
            "revoked": bool(row["revoked"])}


def list_tokens(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every token, revoked and expired ones too, oldest first; never a secret or digest."""
    rows = conn.execute(f"SELECT {_LISTED} FROM tokens ORDER BY rowid")
    return [_listed(row) for row in rows]


def get_token(conn: sqlite3.Connection, token_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {_LISTED} FROM tokens WHERE id = ?", (token_id,)).fetchone()
    return None if row is None else _listed(row)


def revoke_id(conn: sqlite3.Connection, token_id: str) -> None:
    """Revoke one token by its public id; a revoked or unknown one is left as it is."""
    conn.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))


def revoke(conn: sqlite3.Connection, tenant: str) -> int:
    """Revoke every live token of ``tenant``; the rows stay for audit."""
    cursor = conn.execute(
        "UPDATE tokens SET revoked = 1 WHERE tenant = ? AND revoked = 0", (tenant,)
    )
    return cursor.rowcount
