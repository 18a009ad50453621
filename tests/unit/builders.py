"""Small builders for policy tests: nodes, tenants, workloads and running jobs.

Units follow ``shoal.domain.resources``: GPUs are given here as floats
(``0.5`` is half a GPU) and converted to milli-GPUs; CPU in cores.
"""

from __future__ import annotations

from shoal.domain.cluster import ClusterState
from shoal.domain.nodes import Node
from shoal.domain.tenant import TenantSpec
from shoal.domain.workload import PodShape, Workload
from shoal.policy import flavors
from shoal.policy.placement import Placer, ScorerContext, make_scorer, node_ranks
from shoal.policy.quota import TenantQuota, total_usage
from shoal.policy.snapshot import Running

A100 = "gpu/A100"


def node(name: str, gpus: int = 8, model: str = "A100", cpu: int = 64) -> Node:
    return Node(
        name=name,
        pool="pool",
        cpu=cpu * 1000,
        memory=512 * 1024,
        gpu_model=model if gpus else "",
        gpu_count=gpus,
        gpu_memory=80 * 1024 if gpus else 0,
        labels={"kubernetes.io/hostname": name},
    )


def cluster(*gpus_per_node: int, model: str = "A100") -> ClusterState:
    """One node per argument, with that many GPUs: ``cluster(8, 8)``."""
    return ClusterState([node(f"n{i}", g, model) for i, g in enumerate(gpus_per_node)])


def placer(state: ClusterState, scorer: str = "most-allocated") -> Placer:
    return Placer(make_scorer(scorer, ScorerContext()), node_ranks(len(state), None))


def tenant(
    name: str,
    gpus: float,
    cohort: str | None = None,
    borrowing: float | None = None,
    lending: float | None = None,
    model: str = "A100",
    **spec: object,
) -> TenantQuota:
    """A tenant with GPU quota of one model and ample CPU and memory quota."""
    gpu = {"nominal": gpus, "borrowingLimit": borrowing, "lendingLimit": lending}
    quota = {"cpu": {"nominal": 10_000}, "memory": {"nominal": "100Ti"}, "gpus": {model: gpu}}
    return TenantQuota.from_spec(
        name, TenantSpec.model_validate({"cohort": cohort, "quota": quota, **spec})
    )


def tenants(*quotas: TenantQuota) -> dict[str, TenantQuota]:
    return {t.name: t for t in quotas}


def workload(
    name: str,
    tenant: str,
    gpus: float = 1,
    pods: int = 1,
    priority: int = 0,
    submit: float = 0.0,
    cpu: float = 1,
    preemptible: bool = True,
    models: tuple[str, ...] = (),
) -> Workload:
    """``pods`` identical pods of ``gpus`` GPUs each (a fraction below 1 shares a GPU)."""
    if gpus == 0:
        shape = PodShape(cpu=round(cpu * 1000), memory=1024)
    elif gpus < 1:
        shape = PodShape(
            cpu=round(cpu * 1000),
            memory=1024,
            gpu_count=1,
            gpu_milli=round(gpus * 1000),
            models=models,
        )
    else:
        shape = PodShape(
            cpu=round(cpu * 1000),
            memory=1024,
            gpu_count=int(gpus),
            gpu_milli=1000,
            models=models,
        )
    return Workload(
        name=name,
        tenant=tenant,
        pods=(shape,) * pods,
        priority=priority,
        submit_time=submit,
        preemptible=preemptible,
    )


def start(
    state: ClusterState,
    work: Workload,
    started: float = 0.0,
    checkpoint: float | None = None,
    how: Placer | None = None,
) -> Running:
    """Place ``work`` and bind it on ``state`` (mutated), as a runtime would."""
    bindings = (how or placer(state)).place(state, work)
    assert bindings is not None, f"{work.name} does not fit the test cluster"
    for binding in bindings:
        state.bind(binding)
    return Running(
        workload=work,
        bindings=tuple(bindings),
        usage=flavors.usage_of(state, bindings),
        start_time=started,
        last_checkpoint=checkpoint,
    )


def usage_of(*runs: Running) -> dict[str, dict[str, int]]:
    return total_usage((run.tenant, run.usage) for run in runs)
