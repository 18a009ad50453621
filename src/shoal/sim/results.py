"""Turn engine runs into the stable JSON result objects that scripts depend on.

Names here are a public contract (``shoal sim --output json``): ``policy``,
``mode``, ``wall_time_s``, ``metrics`` with ``fill_curve`` /
``unallocated_gpu_fraction_at_full`` for fill mode and the JCT, queueing,
allocation, preemption and per-tenant figures for replay mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shoal.domain.resources import is_gpu
from shoal.policy.quota import TenantQuota
from shoal.sim.fill import FillRun
from shoal.sim.replay import ReplayRun


def fill_result(runs: Sequence[FillRun], target: float) -> dict[str, Any]:
    """One policy's fill result, averaged over its seeds."""
    steps = round(target * 100)
    curve = []
    for percent in range(1, steps + 1):
        x = percent / 100
        y = float(np.mean([run.allocated_at(x) for run in runs]))
        curve.append({"arrived_gpu_fraction": x, "allocated_gpu_fraction": round(y, 6)})
    at_full = float(np.mean([run.allocated_at(target) for run in runs]))
    return {
        "policy": runs[0].policy,
        "mode": "fill",
        "wall_time_s": round(sum(run.wall_time_s for run in runs) / len(runs), 4),
        "seeds": [run.seed for run in runs],
        "metrics": {
            "fill_curve": curve,
            "allocated_gpu_fraction_at_full": round(at_full, 6),
            "unallocated_gpu_fraction_at_full": round(1.0 - at_full, 6),
            "allocated_gpu_fraction_per_seed": [
                round(run.allocated_at(target), 6) for run in runs
            ],
            "failed_pods": int(np.mean([run.failed for run in runs])),
            "placed_pods": int(np.mean([run.placed for run in runs])),
        },
    }


def entitlements(tenants: Mapping[str, TenantQuota], capacity_milli: int) -> dict[str, float]:
    """Each tenant's entitled share of cluster GPUs: nominal GPU quota, else by weight."""
    nominal = {
        name: sum(v for k, v in quota.nominal.items() if is_gpu(k))
        for name, quota in tenants.items()
    }
    if capacity_milli and any(nominal.values()):
        return {name: value / capacity_milli for name, value in nominal.items()}
    weights = {name: quota.weight for name, quota in tenants.items()}
    total = sum(weights.values()) or 1.0
    return {name: weight / total for name, weight in weights.items()}


def replay_result(runs: Sequence[ReplayRun], entitled: Mapping[str, float]) -> dict[str, Any]:
    """One policy's replay result; figures are means over its seeds."""
    per_seed = [_replay_metrics(run, entitled) for run in runs]
    metrics: dict[str, Any] = {}
    for key, value in per_seed[0].items():
        if isinstance(value, int | float):
            metrics[key] = round(float(np.mean([m[key] for m in per_seed])), 6)
        else:
            metrics[key] = value
    if isinstance(per_seed[0]["preemptions"], int):
        metrics["preemptions"] = round(metrics["preemptions"])
    return {
        "policy": runs[0].policy,
        "mode": "replay",
        "wall_time_s": round(sum(run.wall_time_s for run in runs) / len(runs), 4),
        "seeds": [run.seed for run in runs],
        "metrics": metrics,
    }


def _replay_metrics(run: ReplayRun, entitled: Mapping[str, float]) -> dict[str, Any]:
    done = [r for r in run.jobs.values() if r.finish is not None]
    jct = [r.finish - r.workload.submit_time for r in done if r.finish is not None]
    started = [r for r in run.jobs.values() if r.first_start is not None]
    delays = [r.first_start - r.workload.submit_time for r in started if r.first_start is not None]
    tenants = sorted(set(entitled) | {r.workload.tenant for r in run.jobs.values()})
    per_tenant = []
    for tenant in tenants:
        mine_jct = [j for j, r in zip(jct, done, strict=True) if r.workload.tenant == tenant]
        mine_delay = [
            d for d, r in zip(delays, started, strict=True) if r.workload.tenant == tenant
        ]
        per_tenant.append(
            {
                "tenant": tenant,
                "entitlement": round(entitled.get(tenant, 0.0), 6),
                "share_mean": round(run.timeline.mean_share(tenant), 6),
                "queue_delay_mean_s": round(_mean(mine_delay), 3),
                "jct_mean_s": round(_mean(mine_jct), 3),
            }
        )
    return {
        "jct_mean_s": _mean(jct),
        "jct_p50_s": _pct(jct, 50),
        "jct_p99_s": _pct(jct, 99),
        "queue_delay_mean_s": _mean(delays),
        "gpu_allocation_mean": run.timeline.mean_share(),
        "preemptions": sum(r.preemptions for r in run.jobs.values()),
        "lost_gpu_hours": sum(r.lost_gpu_seconds for r in run.jobs.values()) / 3600,
        "jobs_completed": len(done),
        "jobs_unfinished": sum(
            1 for r in run.jobs.values() if r.finish is None and r.inadmissible is None
        ),
        "jobs_inadmissible": sum(1 for r in run.jobs.values() if r.inadmissible is not None),
        "makespan_s": run.horizon,
        "fragmentation_mean": _mean([share for _, share in run.fragmentation]),
        "per_tenant": per_tenant,
        "timeline": _with_fragmentation(run.timeline.sampled(), run.fragmentation),
    }


def _with_fragmentation(
    timeline: dict[str, Any], samples: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """Add the fragmentation samples on the timeline's grid (sample and hold)."""
    grid = np.asarray(timeline["time_s"], dtype=float)
    if not samples or not len(grid):
        return {**timeline, "fragmentation": []}
    times = np.array([t for t, _ in samples])
    values = np.array([v for _, v in samples])
    index = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(values) - 1)
    return {**timeline, "fragmentation": [round(float(v), 5) for v in values[index]]}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0
