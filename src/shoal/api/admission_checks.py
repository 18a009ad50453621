"""Checks made when manifests are applied, before anything is written.

Applying is all-or-nothing: every document is validated and authorised, and
every job is checked against the cluster (it must fit on some node, its
tenant must exist, its command must exist) before the first write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from shoal.control import cluster_view as view
from shoal.control.records import Principal
from shoal.domain.cluster import ClusterState
from shoal.domain.job import TrainingJob
from shoal.domain.nodes import NodePool
from shoal.domain.tenant import Tenant
from shoal.domain.workload import from_training_job
from shoal.errors import Forbidden, InputError, UnknownReferenceError
from shoal.policy.flavors import never_fits
from shoal.policy.placement import Placer, ScorerContext, make_scorer, node_ranks


def authorise(principal: Principal, manifest: Any) -> None:
    kind = manifest.kind
    name = manifest.metadata.name
    if isinstance(manifest, NodePool | Tenant):
        if principal.role != "admin":
            raise Forbidden(f"{kind} {name}: only an admin token may change {kind}s")
        return
    if isinstance(manifest, TrainingJob):
        tenant = manifest.spec.tenant
        if principal.role != "admin" and principal.tenant != tenant:
            raise Forbidden(
                f"TrainingJob {name}: your token belongs to tenant {principal.tenant!r}, "
                f"not {tenant!r}"
            )
        return
    raise InputError(f"{kind} {name}: the control plane does not accept kind {kind}")


def check_job(
    job: TrainingJob,
    tenants: dict[str, dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
    checkpoint_dir: Path,
    workdir: Path,
) -> None:
    name = job.metadata.name
    spec = job.spec
    if spec.tenant not in tenants:
        known = ", ".join(sorted(tenants)) or "none yet"
        raise UnknownReferenceError(
            f"TrainingJob {name}: tenant {spec.tenant!r} does not exist (tenants: {known})"
        )
    quota = view.tenants_from({spec.tenant: tenants[spec.tenant]})[spec.tenant]
    allowed = quota.allowed_priorities
    if allowed is not None and spec.priority_value not in allowed:
        raise InputError(
            f"TrainingJob {name}: priority {spec.priority!r} is not allowed for tenant "
            f"{spec.tenant} (allowed: {', '.join(str(p) for p in sorted(allowed))})"
        )
    cluster = view.nodes_from(nodes)
    if not cluster:
        raise InputError(f"TrainingJob {name}: the control plane has no nodes yet")
    state = ClusterState(cluster)
    placer = Placer(make_scorer("most-allocated", ScorerContext()), node_ranks(len(state), None))
    reason = never_fits(state, placer, from_training_job(job))
    if reason is not None:
        raise InputError(f"TrainingJob {name}: cannot run on any node: {reason}")
    if spec.working_dir:
        _check_working_dir(name, Path(spec.working_dir), workdir, tenants[spec.tenant])
    if spec.command:
        base = Path(spec.working_dir) if spec.working_dir else workdir
        _check_command(name, spec.command[0], base)
    _check_writable(name, checkpoint_dir)


def _check_working_dir(name: str, folder: Path, state_dir: Path, tenant: dict[str, Any]) -> None:
    if not folder.is_dir():
        raise InputError(f"TrainingJob {name}: workingDir {folder} is not a directory")
    if folder.resolve().is_relative_to(state_dir.resolve()):
        raise InputError(
            f"TrainingJob {name}: workingDir {folder} is inside the control plane's state folder"
        )
    if tenant.get("isolation") == "sandbox":
        # A sandbox mounts its working folder writable: a host folder would be
        # exposed to the pod.
        raise InputError(
            f"TrainingJob {name}: tenant {tenant.get('name', '')} runs sandboxed pods, which work "
            "in a private folder; remove workingDir and use absolute paths to read-only code"
        )


def _check_command(name: str, program: str, workdir: Path) -> None:
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else workdir / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InputError(f"TrainingJob {name}: command {program!r} does not exist or is not executable")
    elif shutil.which(program) is None:
        raise InputError(f"TrainingJob {name}: command {program!r} was not found on PATH")


def _check_writable(name: str, directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".shoal-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"TrainingJob {name}: checkpoint directory {directory} is not writable ({exc.strerror})"
        ) from exc
