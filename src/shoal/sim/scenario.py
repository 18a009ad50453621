"""Build a ``SimPlan`` from a Simulation manifest or from ``shoal sim`` flags.

This is the simulator's I/O edge: it reads the manifest and the trace files,
expands node pools, and derives tenants from the trace when asked to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shoal.domain.nodes import InlineNodePool, Node, expand_pool
from shoal.domain.resources import CPU, MEMORY, gpu_resource
from shoal.domain.workload import Workload
from shoal.errors import InputError
from shoal.policy.quota import TenantQuota
from shoal.sim.plan import SimPlan
from shoal.sim.replay import NodeFailure
from shoal.sim.traces import openb

DEFAULT_COHORT = "shared"


def parse_seeds(text: str) -> list[int]:
    """``42`` / ``42,43`` / ``42-51`` (inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise InputError(
                f"--seeds: expected numbers or ranges like 42,43 or 42-51, got {text!r}"
            ) from None
    if not seeds:
        raise InputError("--seeds: no seed given")
    return seeds


def equal_tenants(
    names: Sequence[str],
    nodes: Sequence[Node],
    cohort: str = DEFAULT_COHORT,
    gpu_share: int | None = 0,
) -> dict[str, TenantQuota]:
    """One tenant per name, equal nominal shares of every resource, one cohort.

    ``gpu_share`` divides GPU capacity (0: by the number of tenants; None:
    every tenant's nominal GPU quota is the whole cluster).
    """
    count = max(len(names), 1)
    capacity: dict[str, int] = {CPU: 0, MEMORY: 0}
    for node in nodes:
        capacity[CPU] += node.cpu
        capacity[MEMORY] += node.memory
        if node.gpu_count:
            key = gpu_resource(node.gpu_model)
            capacity[key] = capacity.get(key, 0) + node.gpu_count * 1000
    nominal = {
        key: value if (gpu_share is None and key.startswith("gpu/")) else value // count
        for key, value in capacity.items()
    }
    return {name: TenantQuota.equal_share(name, cohort, nominal) for name in sorted(names)}


def plan_from_flags(
    trace: Path,
    *,
    mode: str,
    policies: list[str],
    seeds: list[int],
    workload: str = "default",
    target: float = 1.3,
) -> SimPlan:
    if mode not in ("fill", "replay"):
        raise InputError(f"--mode: expected fill or replay, got {mode!r}")
    if not trace.is_dir():
        raise InputError(
            f"{trace}: --trace takes an openb trace folder; for a CSV job trace write a "
            "Simulation manifest that also describes the cluster (see docs/trace-format.md)"
        )
    loaded = openb.load(trace, workload, tenant_column="qos" if mode == "replay" else None)
    workloads: list[Workload] = loaded.pods
    tenants = (
        equal_tenants(sorted({w.tenant for w in workloads}), loaded.nodes)
        if mode == "replay"
        else {}
    )
    return SimPlan(
        name=f"{trace.name}/{workload}",
        mode=mode,
        nodes=loaded.nodes,
        workloads=workloads,
        policies=policies,
        seeds=seeds,
        tenants=tenants,
        target=target,
    )


def failures_from(spec: Sequence[object], nodes: Sequence[Node]) -> list[NodeFailure]:
    """Node failures of a scenario; a pool failure takes down all its nodes."""
    out: list[NodeFailure] = []
    for failure in spec:
        at = float(getattr(failure, "at_seconds", 0.0))
        down_for = getattr(failure, "down_for_seconds", None)
        node = getattr(failure, "node", None)
        pool = getattr(failure, "pool", None)
        names = [node] if node else [n.name for n in nodes if n.pool == pool]
        if not names:
            raise InputError(f"node failure at {at}s: pool {pool!r} has no nodes")
        out.extend(NodeFailure(at=at, node=name, down_for=down_for) for name in names)
    return out


def nodes_from_pools(pools: Sequence[InlineNodePool]) -> list[Node]:
    nodes: list[Node] = []
    for pool in pools:
        nodes.extend(expand_pool(pool.name, pool))
    return nodes
