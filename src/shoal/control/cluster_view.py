"""Load: turn stored records into the scheduler's snapshot (nodes, tenants, work).

Everything here is a pure function of what the ports returned, so the same
records always give the same snapshot, whichever runtime stored them.
"""

from __future__ import annotations

import hashlib
import json
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
    """The nodes of NodePool specs, pools in name order."""
    nodes: list[Node] = []
    for name, spec in sorted(rows.items()):
        nodes.extend(expand_pool(name, NodePoolSpec.model_validate(spec)))
    return nodes


def tenants_from(rows: Mapping[str, dict[str, Any]]) -> dict[str, TenantQuota]:
    return {
        name: TenantQuota.from_spec(name, TenantSpec.model_validate(spec))
        for name, spec in rows.items()
    }


_PARSED: dict[tuple[str, float, bytes], tuple[TrainingJob, Workload]] = {}
_PARSED_MAX = 50_000
_BY_OBJECT: dict[int, tuple[Mapping[str, Any], str, float, tuple[TrainingJob, Workload]]] = {}
"""The same, by the manifest object itself: a runtime that keeps its records between
passes (Kubernetes: one per resourceVersion) hands the same object every pass, and
hashing 10,000 manifests on every pass cost a loop more than deciding did.  The
entry holds the object, so its id is not reused while it is kept; records are
values, never changed in place."""


def _parsed(row: JobRow) -> tuple[TrainingJob, Workload]:
    """The record's manifest and workload; a manifest never changes, so each is parsed once.

    Keyed on a digest of the manifest's content (and submit time), never on
    the name alone: a name may be reused with another manifest. A digest, not
    the text: a manifest may be megabytes.
    """
    manifest = row.manifest
    seen = _BY_OBJECT.get(id(manifest))
    if (seen is not None and seen[0] is manifest and seen[1] == row.name
            and seen[2] == row.submit_time):
        return seen[3]
    text = json.dumps(manifest, sort_keys=True).encode()
    key = (row.name, row.submit_time, hashlib.blake2b(text, digest_size=16).digest())
    parsed = _PARSED.get(key)
    if parsed is None:
        job = TrainingJob.model_validate(manifest)
        # The workload goes by the job's key: two tenants may both have a "train".
        parsed = (job, from_training_job(job, row.submit_time, name=row.name))
        if len(_PARSED) > _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = parsed
    if len(_BY_OBJECT) > _PARSED_MAX:
        _BY_OBJECT.clear()
    _BY_OBJECT[id(manifest)] = (manifest, row.name, row.submit_time, parsed)
    return parsed


def workload_of(row: JobRow) -> Workload:
    return _parsed(row)[1]


def manifest_of(row: JobRow) -> TrainingJob:
    return _parsed(row)[0]


def bindings_of(row: JobRow, workload: Workload, state: ClusterState) -> tuple[Binding, ...]:
    out = []
    for pod in row.pods:
        node = state.index.get(pod.node)
        if node is None or any(g >= state.gpu_count[node] for g in pod.gpus):
            continue  # its node was removed or shrunk; the pod runs but holds nothing here
        out.append(Binding(node=node, gpus=pod.gpus, shape=workload.pods[pod.index]))
    return tuple(out)


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
        start = row.attempt_start
        running.append(
            Running(
                workload=workload,
                bindings=bindings,
                usage=usage_of(state, bindings),
                start_time=start,
                last_checkpoint=row.checkpoint_time,
                checkpoint_interval=workload.checkpoint_interval,
                attempt=row.attempts,
            )
        )
    return state, running
