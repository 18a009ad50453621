"""The Alibaba GPU-cluster trace of 2023 ("openb", FGD paper, ATC'23).

A trace folder holds node lists (``openb_node_list_gpu_node.csv``) and pod
lists (``openb_pod_list_<name>.csv``).  Each pod becomes a one-pod workload;
``gpu_milli`` is the share of one GPU for GPU-sharing pods, ``gpu_spec`` the
allowed GPU models (``|``-separated) and times are trace-relative seconds.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from shoal.domain.nodes import HOSTNAME, Node
from shoal.domain.resources import MILLI
from shoal.domain.workload import PodShape, Workload
from shoal.errors import TraceError

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


@dataclass(frozen=True)
class OpenbTrace:
    nodes: list[Node]
    pods: list[Workload]
    source: Path


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise TraceError(f"{path}: file not found")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise TraceError(
                    f"{path}: missing column(s) {', '.join(missing)}; "
                    f"expected at least {', '.join(required)}"
                )
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(f"{path}: cannot read trace: {exc}") from exc


def _int(path: Path, line: int, row: dict[str, str], column: str, default: int = 0) -> int:
    text = (row.get(column) or "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise TraceError(
            f"{path}:{line}: column {column!r}: expected a number, got {text!r}"
        ) from None
    if value < 0:
        raise TraceError(f"{path}:{line}: column {column!r}: must not be negative, got {value}")
    return value


def load_nodes(path: Path) -> list[Node]:
    nodes = []
    for line, row in enumerate(_rows(path, NODE_COLUMNS), start=2):
        gpus = _int(path, line, row, "gpu")
        name = row["sn"].strip()
        nodes.append(
            Node(
                name=name,
                pool=row.get("model") or "cpu",
                cpu=_int(path, line, row, "cpu_milli"),
                memory=_int(path, line, row, "memory_mib"),
                gpu_model=(row.get("model") or "").strip() if gpus else "",
                gpu_count=gpus,
                labels={HOSTNAME: name},
            )
        )
    return nodes


def load_pods(path: Path, tenant_column: str | None = None) -> list[Workload]:
    pods = []
    for line, row in enumerate(_rows(path, POD_COLUMNS), start=2):
        count = _int(path, line, row, "num_gpu")
        milli = min(_int(path, line, row, "gpu_milli"), MILLI) if count else 0
        if count and milli == 0:
            milli = MILLI
        spec = (row.get("gpu_spec") or "").strip()
        shape = PodShape(
            cpu=_int(path, line, row, "cpu_milli"),
            memory=_int(path, line, row, "memory_mib"),
            gpu_count=count,
            gpu_milli=milli,
            models=tuple(m for m in spec.split("|") if m) if count else (),
        )
        created = _int(path, line, row, "creation_time")
        scheduled = _int(path, line, row, "scheduled_time", default=created)
        deleted = _int(path, line, row, "deletion_time", default=0)
        duration = float(deleted - scheduled) if deleted > scheduled else None
        tenant = (row.get(tenant_column) or "default") if tenant_column else "default"
        pods.append(
            Workload(
                name=row["name"],
                tenant=tenant,
                pods=(shape,),
                submit_time=float(created),
                duration=duration,
            )
        )
    return pods


def resolve_pod_file(folder: Path, workload: str = "default") -> Path:
    return folder / f"openb_pod_list_{workload}.csv"


def load(folder: Path, workload: str = "default", tenant_column: str | None = None) -> OpenbTrace:
    """Nodes (GPU nodes) and pods of one workload of an openb trace folder."""
    if not folder.is_dir():
        raise TraceError(f"{folder}: trace folder not found")
    nodes = load_nodes(folder / "openb_node_list_gpu_node.csv")
    pods = load_pods(resolve_pod_file(folder, workload), tenant_column)
    return OpenbTrace(nodes=nodes, pods=pods, source=folder)
