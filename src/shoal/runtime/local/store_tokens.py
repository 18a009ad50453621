"""API tokens: minted once, stored only as a keyed hash, checked in constant time.

A token reads ``shoal_<id>_<secret>``.  The id is public and is the lookup
key; the secret (256 random bits) is kept only as HMAC-SHA256 under a random
per-store salt (kept in the same file, table ``meta``).  A fast hash is
enough because the secret is random, not a password: a leaked database gives
nothing to brute-force.  The salt makes one store's hashes useless against
another's and rules out precomputed tables.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from typing import Literal

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
    conn: sqlite3.Connection, salt: bytes, principal: str, role: Role, tenant: str | None
) -> str:
    """Store a new token's hash and return the plaintext (shown to the user once)."""
    if role not in ("admin", "tenant"):
        raise InputError(f"unknown role {role!r}", hint="expected admin or tenant")
    if role == "admin" and tenant is not None:
        raise InputError(f"admin token {principal!r} cannot belong to tenant {tenant!r}")
    if role == "tenant" and not tenant:
        raise InputError(f"tenant token {principal!r} needs a tenant")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO tokens (id, digest, name, role, tenant) VALUES (?, ?, ?, ?, ?)",
        (token_id, _digest(salt, secret), principal, role, tenant),
    )
    return f"{PREFIX}{token_id}_{secret}"


def find_principal(conn: sqlite3.Connection, salt: bytes, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token, else None (never says why)."""
    body = token.removeprefix(PREFIX) if token.startswith(PREFIX) else ""
    token_id, _, secret = body.partition("_")
    row = conn.execute(
        "SELECT digest, name, role, tenant FROM tokens WHERE id = ? AND revoked = 0",
        (token_id,),
    ).fetchone()
    # Hash and compare even when the id is unknown, so that the time taken
    # does not tell an attacker which ids exist.
    expected = row["digest"] if row is not None else _digest(salt, "\0no such token")
    if not hmac.compare_digest(_digest(salt, secret), expected) or row is None:
        return None
    return Principal(role=row["role"], tenant=row["tenant"], name=row["name"])


def revoke(conn: sqlite3.Connection, tenant: str) -> int:
    """Revoke every live token of ``tenant``; the rows stay for audit."""
    cursor = conn.execute(
        "UPDATE tokens SET revoked = 1 WHERE tenant = ? AND revoked = 0", (tenant,)
    )
    return cursor.rowcount
