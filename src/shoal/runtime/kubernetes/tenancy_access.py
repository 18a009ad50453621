"""Who may do what in a tenant's namespace, and the priority classes its pods use.

Members.  The Tenant model names no people: who belongs to a tenant is the
cluster's business (its authenticator puts users into groups).  Shoal binds
the Role ``shoal-member`` to the Group ``shoal:tenant:<name>`` in the
tenant's namespace: members manage TrainingJobs and InferenceServices there
and read their status, pods, logs, Jobs, Services and events, as a tenant's
token does in the embedded runtime.  They cannot write status, quotas,
policies or RBAC.

Priorities.  Pods carry a ``priorityClassName``; Shoal writes one
PriorityClass per built-in priority (``shoal-low``, ``shoal-normal``,
``shoal-high``, ``shoal-critical``, values from
``shoal.domain.priority``) that the tenant may use (all of them when its
``allowedPriorities`` is unset).  They are cluster-wide and shared by
tenants, so deleting a tenant keeps them.  ``preemptionPolicy: Never``:
Shoal preempts, the default scheduler must not do it on Shoal's behalf.
An integer priority that no built-in class has gets a class of its own,
``shoal-priority-<value>``, for a tenant that lists it in
``allowedPriorities``; pods of an integer priority no tenant lists name the
built-in class just below it (``KubePods.class_for``): a tenant picks its
jobs' priorities, and must not make the operator create cluster-wide
objects at will.  Values a PriorityClass may not hold (above 1,000,000,000,
reserved for the system) get no class.  Pure.
"""

from __future__ import annotations

from typing import Any

from shoal.domain.priority import BUILTIN_CLASSES
from shoal.domain.tenant import Tenant

Body = dict[str, Any]

ROLE_NAME = "shoal-member"
BINDING_NAME = "shoal-members"
RBAC = "rbac.authorization.k8s.io"
PRIORITY_PREFIX = "shoal-"

_READ = ["get", "list", "watch"]
_WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]


def members_group(tenant: str) -> str:
    """The Group whose users are the tenant's members."""
    return f"shoal:tenant:{tenant}"


def member_role() -> Body:
    return {"kind": "Role", "metadata": {"name": ROLE_NAME}, "rules": [
        {"apiGroups": ["shoal.dev"], "resources": ["trainingjobs", "inferenceservices"],
         "verbs": _WRITE},
        {"apiGroups": ["shoal.dev"],
         "resources": ["trainingjobs/status", "inferenceservices/status"], "verbs": _READ},
        # Calling a service: what its router asks with a SubjectAccessReview.
        {"apiGroups": ["shoal.dev"], "resources": ["inferenceservices/predict"],
         "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "events"],
         "verbs": _READ},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": _READ},
    ]}


def members_binding(tenant: str) -> Body:
    return {
        "kind": "RoleBinding", "metadata": {"name": BINDING_NAME},
        "subjects": [{"kind": "Group", "apiGroup": RBAC, "name": members_group(tenant)}],
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": ROLE_NAME},
    }


def priority_class_name(priority: str) -> str:
    return f"{PRIORITY_PREFIX}{priority}"


MIN_CLASS_VALUE = -2_147_483_648
MAX_CLASS_VALUE = 1_000_000_000
"""What a PriorityClass may hold: higher values are reserved for the system's classes."""


def class_name(value: int) -> str | None:
    """The PriorityClass of priority ``value``: a built-in class's, else
    ``shoal-priority-<value>`` (``minus-`` for a negative one); None outside what a
    PriorityClass may hold."""
    for name, builtin in BUILTIN_CLASSES.items():
        if builtin == value:
            return priority_class_name(name)
    if not MIN_CLASS_VALUE <= value <= MAX_CLASS_VALUE:
        return None
    sign = "" if value >= 0 else "minus-"
    return priority_class_name(f"priority-{sign}{abs(value)}")


def priority_class(value: int) -> Body | None:
    """The PriorityClass of ``class_name(value)`` (None when there is none)."""
    name = class_name(value)
    if name is None:
        return None
    builtin = next((n for n, v in BUILTIN_CLASSES.items() if v == value), None)
    what = repr(builtin) if builtin is not None else str(value)
    return {"kind": "PriorityClass", "metadata": {"name": name},
            "value": value, "preemptionPolicy": "Never",
            "description": f"Shoal priority {what}: pods of Shoal's jobs; Shoal preempts"}


def priority_classes(tenant: Tenant) -> list[Body]:
    """A PriorityClass per priority ``tenant`` may use: every built-in one when its
    ``allowedPriorities`` is unset, else those it lists, integers included."""
    allowed = tenant.spec.allowed_priorities
    values = [value for name, value in BUILTIN_CLASSES.items()
              if allowed is None or name in allowed or value in allowed]
    values += sorted({v for v in allowed or () if isinstance(v, int) and v not in values})
    return [body for body in map(priority_class, values) if body is not None]
