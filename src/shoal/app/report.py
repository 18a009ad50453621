"""The report of a run: jobs, a time-ordered event list and tenants' GPU shares.

A pure function of what the control plane recorded (jobs, events, tenants,
nodes), so it reads the same whether the run was live or replayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shoal.domain.job import TrainingJob
from shoal.domain.resources import MILLI
from shoal.domain.workload import from_training_job

_ENDS = ("requeued", "succeeded", "failed", "cancelled", "retrying")


def gpus_of(manifest: Mapping[str, Any]) -> float:
    workload = from_training_job(TrainingJob.model_validate(manifest))
    return workload.gpu_milli / MILLI


def build_report(
    jobs: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    tenants: Mapping[str, Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    start: float,
) -> dict[str, Any]:
    ordered = sorted(events, key=lambda e: (e["time"], e["id"]))
    end = max([e["time"] for e in ordered], default=start)
    capacity = sum(
        int(spec.get("count", 1)) * int((spec.get("gpus") or {}).get("count", 0))
        for spec in nodes.values()
    )
    held = _gpu_seconds(jobs, ordered, end)
    span = max(end - start, 1e-9)
    tenant_rows = []
    for name, spec in sorted(tenants.items()):
        nominal = sum(
            float(q.get("nominal") or 0) for q in ((spec.get("quota") or {}).get("gpus") or {}).values()
        )
        tenant_rows.append({
            "tenant": name,
            "entitlement": round(nominal / capacity, 4) if capacity else 0.0,
            "gpu_seconds": round(held.get(name, 0.0), 3),
            "share_mean": round(held.get(name, 0.0) / (capacity * span), 4) if capacity else 0.0,
        })
    job_rows = [
        {
            "name": job["name"],
            "tenant": job["tenant"],
            "phase": job["phase"],
            "attempts": job["attempts"],
            "preemptions": job["preemptions"],
            "lost_seconds": round(float(job["lost_seconds"]), 3),
            "jct_s": (round(job["finish_time"] - job["submit_time"], 3)
                      if job.get("finish_time") is not None else None),
            "reason": job.get("reason", ""),
            **_resume(job["name"], ordered),
        }
        for job in sorted(jobs, key=lambda j: (j["submit_time"], j["name"]))
    ]
    return {
        "jobs": job_rows,
        "events": [
            {"time_s": round(e["time"] - start, 3), "event": e["kind"], "job": e.get("job"),
             "tenant": e.get("tenant"), **(e.get("data") or {})}
            for e in ordered
        ],
        "tenants": tenant_rows,
        "duration_s": round(end - start, 3),
    }


def _resume(job: str, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the job's last attempt resumed from a checkpoint, and from which step."""
    admitted = [e.get("data") or {} for e in events
                if e["kind"] == "admitted" and e.get("job") == job]
    last = admitted[-1] if admitted else {}
    return {"resumed": bool(last.get("resumed")), "resumed_from": last.get("resumed_from")}


def _gpu_seconds(
    jobs: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]], end: float
) -> dict[str, float]:
    gpus = {job["name"]: gpus_of(job["manifest"]) for job in jobs if "manifest" in job}
    since: dict[str, float] = {}
    held: dict[str, float] = {}
    for event in events:
        job, tenant = event.get("job"), event.get("tenant")
        if job is None or tenant is None:
            continue
        if event["kind"] == "admitted":
            since[job] = event["time"]
        elif event["kind"] in _ENDS and job in since:
            held[tenant] = held.get(tenant, 0.0) + (event["time"] - since.pop(job)) * gpus.get(job, 0)
    for job, started in since.items():
        tenant = next((j["tenant"] for j in jobs if j["name"] == job), None)
        if tenant is not None:
            held[tenant] = held.get(tenant, 0.0) + (end - started) * gpus.get(job, 0)
    return held
