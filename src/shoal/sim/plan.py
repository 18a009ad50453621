"""A resolved simulation: concrete nodes, tenants and workloads, ready to run.

Both ways of asking for a simulation (a ``kind: Simulation`` manifest, or the
``shoal sim --trace ...`` shortcut flags) end here, and ``run_plan`` runs
every policy over every seed and returns the JSON report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.domain.nodes import Node
from shoal.domain.tenant import JobOrder
from shoal.domain.workload import Workload
from shoal.errors import InputError, UnknownReferenceError
from shoal.policy.placement import scorer_names
from shoal.policy.quota import TenantQuota
from shoal.sim.fill import run_fill
from shoal.sim.replay import NodeFailure, run_replay
from shoal.sim.results import entitlements, fill_result, replay_result

JOB_ORDERS = tuple(order.value for order in JobOrder)

Progress = Callable[[str, int, int], None]
"""``progress(label, done, total)``; called often, must be cheap."""


@dataclass(frozen=True)
class SimPlan:
    name: str
    mode: str
    nodes: Sequence[Node]
    workloads: Sequence[Workload]
    policies: Sequence[str]
    seeds: Sequence[int]
    tenants: Mapping[str, TenantQuota] = field(default_factory=dict)
    target: float = 1.3
    checkpoint_interval: float | None = None
    failures: Sequence[NodeFailure] = ()
    horizon: float | None = None
    grace_seconds: float = 10.0
    stop_seconds: float = 0.0
    queueing: Sequence[str] = ()
    """Replay every policy once per tenant ordering named here (fifo, las, srtf), with
    every tenant set to it; empty: each tenant orders its jobs as it is defined."""

    def check(self) -> None:
        known = set(scorer_names())
        for policy in self.policies:
            if policy not in known:
                raise UnknownReferenceError(
                    f"unknown placement policy {policy!r}; known: {', '.join(sorted(known))}"
                )
        if self.mode == "replay":
            missing = sorted({w.tenant for w in self.workloads} - set(self.tenants))
            if missing:
                raise UnknownReferenceError(
                    f"trace names tenant(s) {', '.join(missing[:5])} that the scenario does not "
                    "define; add them under spec.tenants or use tenantsFromTrace"
                )
        unknown = sorted(set(self.queueing) - set(JOB_ORDERS))
        if unknown:
            raise InputError(
                f"--queueing: unknown ordering {unknown[0]!r}; expected {', '.join(JOB_ORDERS)}"
            )
        if self.queueing and self.mode != "replay":
            raise InputError("--queueing: orders queues of a replay; fill mode has no queue")
        node_names = {node.name for node in self.nodes}
        for failure in self.failures:
            if failure.node not in node_names:
                raise UnknownReferenceError(f"node failure names unknown node {failure.node!r}")


def run_plan(plan: SimPlan, progress: Progress | None = None) -> dict[str, Any]:
    plan.check()
    results = []
    for policy in plan.policies:
        if plan.mode == "fill":
            shapes = [pod for w in plan.workloads for pod in w.pods]
            runs = [
                run_fill(plan.nodes, shapes, policy, seed, plan.target,
                         progress=_tick(progress, f"{policy} seed {seed}", len(shapes)))
                for seed in plan.seeds
            ]
            results.append(fill_result(runs, plan.target))
            continue
        for order in plan.queueing or (None,):
            tenants = plan.tenants
            if order is not None:
                tenants = {n: replace(t, job_order=order) for n, t in tenants.items()}
            label = policy if order is None else f"{policy} {order}"
            replays = [
                run_replay(
                    plan.nodes, tenants, plan.workloads, policy, seed,
                    checkpoint_interval=plan.checkpoint_interval,
                    failures=plan.failures,
                    horizon=plan.horizon,
                    grace_seconds=plan.grace_seconds,
                    stop_seconds=plan.stop_seconds,
                    progress=_tick(progress, f"{label} seed {seed}", 2 * len(plan.workloads)),
                )
                for seed in plan.seeds
            ]
            capacity = sum(node.gpu_count for node in plan.nodes) * 1000
            result = replay_result(replays, entitlements(tenants, capacity))
            if order is not None:
                result["queueing"] = order
            results.append(result)
    return {"scenario": plan.name, "results": results}


def _tick(progress: Progress | None, label: str, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(label, done, total)
