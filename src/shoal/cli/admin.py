"""The admin's side of the verbs: minting and listing tokens, and deleting
tokens, tenants and node pools (``shoal create``, ``get tokens`` and
``shoal delete`` of those kinds hand over to here)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

from shoal.cli.cluster import Plane
from shoal.cli.tables import age, clock, out, table
from shoal.errors import InputError

err = Console(stderr=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d{1,12})([smhd]?)")


def parse_ttl(text: str) -> int:
    """``3600``, ``90s``, ``15m``, ``12h`` or ``30d`` as seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InputError(f"--ttl: expected seconds or a duration like 90s, 15m, 12h or 30d, "
                         f"got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def show_minted(minted: dict[str, Any]) -> None:
    """The plaintext alone on stdout (``TOKEN=$(shoal create token ...)``), the rest on stderr."""
    print(minted["token"])
    expires = ("never expires" if minted["expires"] is None
               else f"expires {clock(minted['expires'])}")
    err.print(escape(f"token {minted['id']} ({minted['name']}, {minted['role']}) {expires}; ")
              + "it is not shown again", highlight=False, soft_wrap=True)


def tokens(api: Plane, names: list[str]) -> list[dict[str, Any]]:
    return api.tokens()


def render_tokens(rows: list[dict[str, Any]], wide: bool) -> Any:
    if not rows:
        return "No tokens."
    columns = ["ID", "NAME", "ROLE", "TENANT", "STATUS", "AGE", "EXPIRES"]
    return table(columns, [
        [t["id"], t["name"], t["role"], t["tenant"] or "-", t["status"], age(t["created"]),
         "never" if t["expires"] is None else clock(t["expires"])]
        for t in rows], wide)


def _tenant(api: Plane, name: str) -> str:
    done = api.delete_tenant(name)
    if "tokens_revoked" not in done:  # a cluster: the operator removes its namespace
        return f"tenant/{name} deleted (its namespace and the jobs in it go with it)"
    jobs = done["jobs_deleted"]
    return (f"tenant/{name} deleted ({done['tokens_revoked']} token(s) revoked"
            + (f", {jobs} finished job(s) deleted)" if jobs else ")"))


def _nodepool(api: Plane, name: str) -> str:
    done = api.delete_nodepool(name)
    return f"nodepool/{name} deleted ({done['nodes']} node(s))"


def _token(api: Plane, name: str) -> str:
    api.revoke_token(name)
    return f"token/{name} revoked"


DELETERS: dict[str, Callable[[Plane, str], str]] = {
    "tenant": _tenant, "tenants": _tenant,
    "nodepool": _nodepool, "nodepools": _nodepool, "node": _nodepool, "nodes": _nodepool,
    "token": _token, "tokens": _token,
}


def delete(what: str, names: list[str], api: Plane) -> None:
    """Delete tenants, node pools or tokens one by one, stopping at the first refusal."""
    deleter = DELETERS[what]
    for name in names:
        out.print(escape(deleter(api, name)), highlight=False, soft_wrap=True)
