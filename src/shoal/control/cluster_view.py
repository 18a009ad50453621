"""Load: turn stored rows into the scheduler's snapshot (nodes, tenants, work).

Everything here is a pure function of what the store returned, so the same
rows always give the same snapshot, whichever runtime stored them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from shoal.control.records import JobRow
from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.job import TrainingJob
from shoal.domain.nodes import Node, NodePoolSpec, expand_pool
from shoal.domain.tenant import TenantSpec
from shoal.domain.workload import Workload, from_training_job
from shoal.policy.flavors import usage_of
from shoal.policy.quota import TenantQuota
from shoal.policy.snapshot import Running


def nodes_from(rows: Mapping[str, dict[str, Any]]) -> list[Node]:
    nodes: list[Node] = []
    for name, spec in sorted(rows.items()):
        nodes.extend(expand_pool(name, NodePoolSpec.model_validate(spec)))
    return nodes


def tenants_from(rows: Mapping[str, dict[str, Any]]) -> dict[str, TenantQuota]:
    return {
        name: TenantQuota.from_spec(name, TenantSpec.model_validate(spec))
        for name, spec in rows.items()
    }


_WORKLOADS: dict[tuple[str, float, str], Workload] = {}


def workload_of(row: JobRow) -> Workload:
    """The row's workload; manifests never change, so each is parsed once."""
    key = (row.name, row.submit_time, row.tenant)
    workload = _WORKLOADS.get(key)
    if workload is None:
        workload = from_training_job(TrainingJob.model_validate(row.manifest), row.submit_time)
        if len(_WORKLOADS) > 100_000:
            _WORKLOADS.clear()
        _WORKLOADS[key] = workload
    return workload


def bindings_of(row: JobRow, workload: Workload, state: ClusterState) -> tuple[Binding, ...]:
    out = []
    for pod in row.pods:
        index = int(pod["index"])
        node = state.index.get(str(pod["node"]))
        gpus = tuple(int(g) for g in pod.get("gpus", ()))
        if node is None or any(g >= state.gpu_count[node] for g in gpus):
            continue  # its node was removed or shrunk; the pod runs but holds nothing here
        out.append(Binding(node=node, gpus=gpus, shape=workload.pods[index]))
    return tuple(out)


def last_checkpoint(directory: str, since: float) -> float | None:
    """When the job last saved progress: the newest file in its checkpoint dir.

    Files at any depth count: many frameworks save a checkpoint as a folder.
    """
    newest = None
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                mtime = os.stat(os.path.join(root, name)).st_mtime
            except OSError:
                continue  # replaced while we looked
            newest = mtime if newest is None else max(newest, mtime)
    return newest if newest is not None and newest >= since else None


def build_state(
    nodes: list[Node], holders: Iterable[JobRow]
) -> tuple[ClusterState, list[Running]]:
    """The cluster with every pod that still holds resources bound, and the running set."""
    state = ClusterState(nodes)
    running: list[Running] = []
    for row in holders:
        workload = workload_of(row)
        bindings = bindings_of(row, workload, state)
        for binding in bindings:
            state.bind(binding)
        start = attempt_start(row)
        running.append(
            Running(
                workload=workload,
                bindings=bindings,
                usage=usage_of(state, bindings),
                start_time=start,
                last_checkpoint=last_checkpoint(row.checkpoint_dir, start),
                checkpoint_interval=workload.checkpoint_interval,
            )
        )
    return state, running


def attempt_start(row: JobRow) -> float:
    """When the current attempt started (its pods record it)."""
    starts = [float(p["started_at"]) for p in row.pods if p.get("started_at") is not None]
    if starts:
        return min(starts)
    return row.start_time if row.start_time is not None else row.submit_time
