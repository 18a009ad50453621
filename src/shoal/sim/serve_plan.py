"""Serve mode of ``shoal sim``: a Simulation manifest with ``mode: serve``, resolved and run.

``plan_from_serve`` reads the manifest and the request trace into a
``ServePlan``; ``run_serve_plan`` builds each named autoscaling policy from
``shoal.policy.autoscaling`` (the objects the live control plane uses),
wraps it in ``Bounded`` with the manifest's replica bounds, runs the
simulator once per policy and returns the JSON report.  The result names
(``policy``, ``mode``, ``wall_time_s``, ``metrics.slo_attainment``,
``latency_p50_s``, ``latency_p99_s``, ``cold_starts``, ``replica_seconds``)
are a public contract for scripts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.domain.manifest import load_manifest_file
from shoal.domain.simulation import ServeSpec, Simulation
from shoal.errors import InputError, UnknownReferenceError
from shoal.policy.autoscaling import (
    POLICY_NAMES,
    AutoscalingPolicy,
    Bounded,
    HpaPolicy,
    KpaPolicy,
    ShoalPolicy,
)
from shoal.sim.serve import TIMELINE_STEP_S, Requests, ServeRun, simulate
from shoal.sim.serve_trace import load_serve_trace

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ServePlan:
    name: str
    serve: ServeSpec
    requests: Requests
    policies: Sequence[str]

    def check(self) -> None:
        for policy in self.policies:
            if policy not in POLICY_NAMES:
                raise UnknownReferenceError(
                    f"unknown autoscaling policy {policy!r}; known: {', '.join(POLICY_NAMES)}"
                )
        if len(set(self.policies)) != len(self.policies):
            raise InputError("spec.policies: a policy is named twice")
        if self.serve.initial_replicas > (self.serve.max_replicas or self.serve.initial_replicas):
            raise InputError("spec.serve.initialReplicas: above maxReplicas")

    @property
    def slo_latencies(self) -> Sequence[float]:
        """Each request's latency without waiting, as the SLO measures it."""
        on_first = self.serve.slo.measure == "firstToken"
        return self.requests.first_token if on_first else self.requests.service


def read_simulation(path: Path) -> Simulation:
    """The one ``kind: Simulation`` document of ``path``."""
    sims = [m for m in load_manifest_file(path) if isinstance(m, Simulation)]
    if len(sims) != 1:
        raise InputError(
            f"{path}: expected exactly one document of kind Simulation, found {len(sims)}"
        )
    return sims[0]


def plan_from_serve(
    path: Path, sim: Simulation, policies: Sequence[str] | None = None
) -> ServePlan:
    """The plan of a serve-mode Simulation manifest read from ``path``."""
    spec = sim.spec
    assert spec.serve is not None  # the manifest model guarantees it in serve mode
    trace = load_serve_trace(sim.trace_path(path.resolve().parent), spec.trace)
    return ServePlan(
        name=sim.metadata.name,
        serve=spec.serve,
        requests=trace.requests(spec.serve.service_time),
        policies=list(policies or spec.policies),
    )


def build_policy(name: str, plan: ServePlan) -> AutoscalingPolicy[Any]:
    """The named policy at its defaults, for this service, within the manifest's bounds."""
    serve = plan.serve
    inner: AutoscalingPolicy[Any]
    if name == "kpa":
        inner = KpaPolicy(container_concurrency=serve.concurrency)
    elif name == "hpa":
        # The same target as KPA: 70 % of the replica's concurrency in flight.
        inner = HpaPolicy(target=serve.concurrency * 0.7)
    else:
        inner = _shoal(plan)
    floor = max(serve.min_replicas, 1) if name == "hpa" else serve.min_replicas
    return Bounded(inner, min_replicas=floor, max_replicas=serve.max_replicas)


def _shoal(plan: ServePlan) -> ShoalPolicy:
    serve, slo = plan.serve, plan.serve.slo
    quantile = slo.percentile / 100
    floor = float(np.quantile(plan.slo_latencies, quantile))
    budget = slo.latency_seconds - floor
    if budget <= 0:
        raise InputError(
            f"spec.serve.slo.latencySeconds: {slo.latency_seconds:g} s cannot be met: "
            f"{slo.percentile:g} % of requests take {floor:.3f} s or more without any waiting"
        )
    service = plan.requests.service
    mean = statistics.fmean(service)
    return ShoalPolicy(
        slots=serve.concurrency,
        wait_budget_s=budget,
        service_time_s=mean,
        cold_start_s=serve.cold_start_seconds,
        quantile=quantile,
        service_scv=statistics.pvariance(service) / mean**2,
    )


def run_serve_plan(plan: ServePlan, progress: Progress | None = None) -> dict[str, Any]:
    plan.check()
    results = []
    for index, name in enumerate(plan.policies):
        if progress is not None:
            progress("serve", index, len(plan.policies))
        policy = build_policy(name, plan)
        cpu = time.process_time()
        run = simulate(
            plan.requests, policy,
            concurrency=plan.serve.concurrency,
            cold_start_s=plan.serve.cold_start_seconds,
            initial_replicas=plan.serve.initial_replicas,
            clock=time.perf_counter,
        )
        results.append(serve_result(run, plan, time.process_time() - cpu))
    if progress is not None:
        progress("serve", len(plan.policies), len(plan.policies))
    return {"scenario": plan.name, "results": results, "load": _load(plan)}


def serve_result(run: ServeRun, plan: ServePlan, cpu_s: float) -> dict[str, Any]:
    slo = plan.serve.slo
    measured = run.first_token if slo.measure == "firstToken" else run.latency
    met = sum(1 for value in measured if value <= slo.latency_seconds)
    attainment = met / len(measured) if measured else 1.0
    latency = np.asarray(run.latency)
    first = np.asarray(run.first_token)
    return {
        "policy": run.policy,
        "mode": "serve",
        "wall_time_s": round(run.wall_time_s, 4),
        "metrics": {
            "slo_attainment": round(attainment, 6),
            "latency_p50_s": round(float(np.percentile(latency, 50)), 4),
            "latency_p99_s": round(float(np.percentile(latency, 99)), 4),
            "cold_starts": run.cold_starts,
            "replica_seconds": round(run.replica_seconds, 2),
            "slo_met": attainment >= slo.percentile / 100,
            "first_token_p50_s": round(float(np.percentile(first, 50)), 4),
            "first_token_p99_s": round(float(np.percentile(first, 99)), 4),
            "requests": len(latency),
            "decisions": run.decisions,
            "panic_decisions": run.panic_decisions,
            "cpu_time_s": round(cpu_s, 4),
            "timeline": _timeline(run),
        },
    }


def _timeline(run: ServeRun) -> dict[str, list[float]]:
    """Replicas ordered, sampled every 10 s (sample and hold) up to the run's end."""
    grid = np.arange(0.0, run.horizon + TIMELINE_STEP_S, TIMELINE_STEP_S)
    times = np.array([t for t, _, _ in run.timeline])
    counts = np.array([n for _, n, _ in run.timeline])
    index = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(counts) - 1)
    return {"time_s": [float(t) for t in grid], "replicas": [int(c) for c in counts[index]]}


def _load(plan: ServePlan) -> dict[str, list[float]]:
    """Arrivals per second over 10 s bins, and the replicas' worth of work they bring."""
    arrival = np.asarray(plan.requests.arrival)
    per_request = statistics.fmean(plan.requests.service) / plan.serve.concurrency
    bins = int(arrival[-1] // TIMELINE_STEP_S) + 1 if len(arrival) else 0
    counts = np.bincount((arrival // TIMELINE_STEP_S).astype(int), minlength=bins)
    return {
        "time_s": [float(i * TIMELINE_STEP_S) for i in range(bins)],
        "rps": [round(float(c) / TIMELINE_STEP_S, 3) for c in counts],
        "busy_replicas": [round(float(c) / TIMELINE_STEP_S * per_request, 3) for c in counts],
    }
