"""Plain-data views of stored records, as the API returns them.

Pods may be records (dataclasses) or mappings depending on the store's
version; both serialise to the same dictionaries here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shoal.app.ports import JobRecord
from shoal.domain.names import job_name

_HIDDEN = ("manifest", "pods", "checkpoint_dir", "version")


def plain(record: Any) -> dict[str, Any]:
    """A dataclass record or a mapping as a new dict."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if isinstance(record, Mapping):
        return dict(record)
    raise TypeError(f"cannot serialise {type(record).__name__}")


def pod_field(pod: Any, key: str, default: Any = None) -> Any:
    if isinstance(pod, Mapping):
        return pod.get(key, default)
    return getattr(pod, key, default)


def job_summary(row: JobRecord) -> dict[str, Any]:
    """One line of ``get jobs``: everything but the manifest and the pods' details.

    ``name`` is the name the tenant gave the job (``tenant`` says whose).
    """
    data = {k: v for k, v in plain(row).items() if k not in _HIDDEN}
    data["name"] = job_name(row.name)
    data["pods"] = len(row.pods)
    data["pod_count"] = pod_count(row.manifest)
    return data


def job_detail(row: JobRecord, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {**job_summary(row), "manifest": row.manifest,
            "pods": [plain(pod) for pod in row.pods], "events": events}


# What only an admin sees: where pods run and how the runtime finds them, and
# which job (possibly another tenant's) a preempted job made room for.
_ADMIN_JOB_FIELDS = ("preemptor",)
_ADMIN_POD_FIELDS = ("node", "handle")
_ADMIN_EVENT_FIELDS = ("nodes", "placement", "preemptor")


def for_tenant_job(view: dict[str, Any]) -> dict[str, Any]:
    """A job view without what only an admin may see."""
    data = {k: v for k, v in view.items() if k not in _ADMIN_JOB_FIELDS}
    if isinstance(data.get("pods"), list):
        data["pods"] = [{k: v for k, v in pod.items() if k not in _ADMIN_POD_FIELDS}
                        for pod in data["pods"]]
    if "events" in data:
        data["events"] = [for_tenant_event(e) for e in data["events"]]
    return data


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    """An event as people read it: the job by its name (``tenant`` says whose)."""
    job = event.get("job")
    return {**event, "job": job_name(job)} if isinstance(job, str) else event


def for_tenant_event(event: dict[str, Any]) -> dict[str, Any]:
    details = event.get("data")
    if not isinstance(details, Mapping):
        return event
    return {**event, "data": {k: v for k, v in details.items() if k not in _ADMIN_EVENT_FIELDS}}


def pod_count(manifest: Mapping[str, Any]) -> int:
    """How many pods the job's spec asks for (a stored manifest is valid)."""
    pod_sets = manifest.get("spec", {}).get("podSets", [])
    return sum(int(p.get("count", 1)) for p in pod_sets)
