"""Resolve a ``kind: Simulation`` manifest into a runnable ``SimPlan``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from shoal.domain.manifest import load_manifest_file
from shoal.domain.nodes import Node
from shoal.domain.simulation import Simulation
from shoal.domain.tenant import (
    BorrowWithinCohort,
    PreemptionPolicy,
    ReclaimWithinCohort,
    WithinTenant,
)
from shoal.domain.workload import Workload
from shoal.errors import InputError
from shoal.policy.quota import TenantQuota
from shoal.sim.plan import SimPlan
from shoal.sim.scenario import equal_tenants, failures_from, nodes_from_pools
from shoal.sim.traces import csvtrace, openb

NO_PREEMPTION = PreemptionPolicy(
    within_tenant=WithinTenant.NEVER,
    reclaim_within_cohort=ReclaimWithinCohort.NEVER,
    borrow_within_cohort=BorrowWithinCohort.NEVER,
)


def plan_from_simulation(
    path: Path,
    *,
    mode: str | None = None,
    policies: list[str] | None = None,
    seeds: list[int] | None = None,
    warn: Callable[[str], None] | None = None,
) -> SimPlan:
    """The plan of a Simulation manifest; ``warn`` hears what loading changed in the trace."""
    manifests = load_manifest_file(path)
    sims = [m for m in manifests if isinstance(m, Simulation)]
    if len(sims) != 1:
        raise InputError(f"{path}: expected exactly one document of kind Simulation, found {len(sims)}")
    sim = sims[0]
    spec = sim.spec
    base = path.resolve().parent
    nodes, workloads = _load(sim, base, warn or (lambda _line: None))
    if not nodes:
        raise InputError(f"{path}: spec.cluster: the scenario has no nodes")
    chosen_mode = mode or spec.mode
    if chosen_mode not in ("fill", "replay"):
        raise InputError(f"--mode: expected fill or replay, got {chosen_mode!r}")
    replay = spec.replay_settings
    if chosen_mode == "replay" and spec.trace.format == "csv" and replay.horizon_seconds is None:
        _need_an_end(path, workloads)
    tenants = _tenants(sim, nodes, workloads) if chosen_mode == "replay" else {}
    if not replay.preemption:
        tenants = {n: dataclasses.replace(t, preemption=NO_PREEMPTION) for n, t in tenants.items()}
    return SimPlan(
        name=sim.metadata.name,
        mode=chosen_mode,
        nodes=nodes,
        workloads=workloads,
        policies=policies or list(spec.policies),
        seeds=seeds or list(spec.seeds),
        tenants=tenants,
        target=spec.fill_settings.target_gpu_share,
        checkpoint_interval=replay.checkpoint_interval_seconds,
        failures=failures_from(replay.failures, nodes),
        horizon=replay.horizon_seconds,
        grace_seconds=replay.grace_period_seconds,
        stop_seconds=replay.stop_seconds,
    )


def _load(
    sim: Simulation, base: Path, warn: Callable[[str], None]
) -> tuple[list[Node], list[Workload]]:
    spec = sim.spec
    trace = spec.trace
    trace_path = trace.resolved_path(base)
    nodes = nodes_from_pools(spec.cluster.node_pools)
    if trace.format == "openb":
        loaded = openb.load(trace_path, trace.workload, tenant_column="qos")
        if spec.cluster.nodes_from_trace:
            nodes = loaded.nodes + nodes
        workloads = loaded.pods[: trace.limit] if trace.limit else loaded.pods
    else:
        csv_trace = csvtrace.load_trace(
            trace_path,
            csvtrace.options_from_spec(trace),
            split_at=max((node.gpu_count for node in nodes), default=0) or None,
            horizon=spec.replay_settings.horizon_seconds,
        )
        workloads = csv_trace.jobs
        for line in csv_trace.report.warnings():
            warn(line)
    return nodes, workloads


def _need_an_end(path: Path, workloads: list[Workload]) -> None:
    # The replay engine reads a None duration as 0 s; a csv job that runs
    # until the end gets a finite one only from the horizon (csvtrace.load_trace).
    open_ended = sum(1 for w in workloads if w.duration is None)
    if open_ended:
        raise InputError(
            f"{path}: spec.replay.horizonSeconds: {open_ended} job(s) of the trace run until "
            "the end of the replay (missingDuration: runUntilEnd); give the replay an end"
        )


def _tenants(sim: Simulation, nodes: list[Node], workloads: list[Workload]) -> dict[str, TenantQuota]:
    spec = sim.spec
    if spec.tenants:
        return {t.name: TenantQuota.from_spec(t.name, t) for t in spec.tenants}
    names = sorted({w.tenant for w in workloads})
    from_trace = spec.tenants_from_trace
    cohort = from_trace.cohort if from_trace else "shared"
    # gpuQuota "none": every tenant may use every GPU; only priorities and
    # fair share arbitrate.
    unlimited = from_trace is not None and from_trace.gpu_quota == "none"
    return equal_tenants(names, nodes, cohort=cohort, gpu_share=None if unlimited else 0)
