"""Decide how to bring one live object to its desired state: create, update, recreate, keep.

``plan(desired, live)`` compares only what Shoal owns in an object (per
kind: ``spec``, a Role's ``rules``, a RoleBinding's ``subjects`` and
``roleRef``, a PriorityClass's fields; for every kind the desired labels and
ownerReferences, which may sit among others), with quantities compared by
value, and returns one ``Action``.  A difference in a field the server
will not change in place (a RoleBinding's ``roleRef``, a PriorityClass's
``value``) means delete and create.  ``Action.body`` is what to write: the
desired fields over the live object's metadata, so that labels and
annotations others added survive and the write is fenced by the live
``resourceVersion``.  Pure: the caller reads and writes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from shoal.runtime.kubernetes import quantities

Body = dict[str, Any]
Verb = Literal["create", "update", "recreate", "keep"]

OWNED: dict[str, tuple[str, ...]] = {
    "Namespace": (),
    "ResourceQuota": ("spec",),
    "LimitRange": ("spec",),
    "NetworkPolicy": ("spec",),
    "Role": ("rules",),
    "RoleBinding": ("subjects", "roleRef"),
    "PriorityClass": ("value", "preemptionPolicy", "description", "globalDefault"),
}
"""Top-level fields Shoal owns, per kind (metadata aside)."""

IMMUTABLE: dict[str, tuple[str, ...]] = {"RoleBinding": ("roleRef",), "PriorityClass": ("value",)}
_ABSENT_MEANS = {("PriorityClass", "globalDefault"): False}
_QUANTITY_KEYS = {"hard", "default", "defaultRequest", "min", "max", "maxLimitRequestRatio"}


@dataclass(frozen=True)
class Action:
    """What to do about one object, and why."""

    verb: Verb
    body: Body
    changed: tuple[str, ...] = ()
    """The owned fields that differ (empty for create and keep)."""

    @property
    def key(self) -> str:
        meta = self.body["metadata"]
        where = f"{meta['namespace']}/" if meta.get("namespace") else ""
        return f"{self.body['kind']} {where}{meta['name']}"

    def __str__(self) -> str:
        why = f" ({', '.join(self.changed)} changed)" if self.changed else ""
        return f"{self.verb} {self.key}{why}"


def plan(desired: Body, live: Body | None) -> Action:
    """The action that makes ``live`` (None: absent) what ``desired`` says."""
    if live is None:
        return Action("create", copy.deepcopy(desired))
    changed = differences(desired, live)
    if not changed:
        return Action("keep", live)
    fixed = set(IMMUTABLE.get(desired["kind"], ())) & set(changed)
    if fixed:
        return Action("recreate", copy.deepcopy(desired), tuple(changed))
    return Action("update", _over(desired, live), tuple(changed))


def differences(desired: Body, live: Body) -> list[str]:
    """The owned fields of ``live`` that differ from ``desired``."""
    kind = desired["kind"]
    out = [
        field for field in OWNED[kind]
        if _normal(_get(desired, kind, field)) != _normal(_get(live, kind, field))
    ]
    want, have = desired["metadata"], live.get("metadata", {})
    labels = have.get("labels") or {}
    if any(labels.get(k) != v for k, v in (want.get("labels") or {}).items()):
        out.append("metadata.labels")
    uids = {ref.get("uid") for ref in have.get("ownerReferences") or []}
    if any(ref["uid"] not in uids for ref in want.get("ownerReferences") or []):
        out.append("metadata.ownerReferences")
    return out


def _get(body: Body, kind: str, field: str) -> Any:
    return body.get(field, _ABSENT_MEANS.get((kind, field)))


def _normal(node: Any, key: str = "") -> Any:
    """``node`` with the quantities under quota and limit keys replaced by their values."""
    if isinstance(node, dict):
        if key in _QUANTITY_KEYS:
            return {k: _quantity(v) for k, v in node.items()}
        return {k: _normal(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_normal(item) for item in node]
    return node


def _quantity(text: Any) -> Any:
    try:
        return quantities.value(text)
    except ValueError:
        return text  # malformed: compare as written, so it shows as a difference


def _over(desired: Body, live: Body) -> Body:
    """``live`` with the desired fields, labels and ownerReferences written over it."""
    body = copy.deepcopy(live)
    kind = desired["kind"]
    for field in OWNED[kind]:
        if field in desired:
            body[field] = copy.deepcopy(desired[field])
        else:
            body.pop(field, None)
    meta, want = body.setdefault("metadata", {}), desired["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **(want.get("labels") or {})}
    refs = list(meta.get("ownerReferences") or [])
    uids = {ref.get("uid") for ref in refs}
    refs += [copy.deepcopy(ref) for ref in want.get("ownerReferences") or []
             if ref["uid"] not in uids]
    if refs:
        meta["ownerReferences"] = refs
    body.pop("status", None)
    return body
