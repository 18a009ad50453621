"""What the operator's control loop pays on every pass to read its job records.

Usage: python benchmarks/kube_pass_cost.py [--jobs 10000] [--changed 20] [--calls 200]

A pass of the loop on a cluster reads every active job's record from the
watch cache (``KubeStore.list_jobs``) and each one's manifest
(``cluster_view.workload_of``), twice (observe, then admit), and once more
for its next deadline.  This builds ``--jobs`` TrainingJobs (80 % Running
with a pod each, the rest Pending, as in the burst of
``benchmarks/kube_scale.py``), with a stand-in for the cache's seam that
tells which objects changed, and times, in CPU seconds per call, a
``list_jobs(phases=ACTIVE)`` plus ``workload_of`` of every row, after
``--changed`` jobs had their status written since the call before (what a
pass under a burst finds).  No server: it isolates the loop's own reading
cost from the API server's.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube_scale import training_job
from shoal.control import cluster_view
from shoal.control.records import ACTIVE_PHASES, PodRecord
from shoal.runtime.kubernetes.convert import FINALIZER, row_of, status_of
from shoal.runtime.kubernetes.store import KubeStore

Body = dict[str, Any]


class Seam:
    """The cache's answers: the objects, and which changed since a mark."""

    def __init__(self, items: list[Body], tenants: int) -> None:
        self.items = {(i["metadata"]["namespace"], i["metadata"]["name"]): i for i in items}
        self.tenants = [{"metadata": {"name": f"t{i}"}, "spec": {}} for i in range(tenants)]
        self.log: list[tuple[str, str]] = []

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        return self.tenants if kind == "Tenant" else list(self.items.values())

    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        return self.items.get((namespace or "", name))

    def changes(self, kind: str, mark: object) -> tuple[list[tuple[str, str]] | None, object]:
        end = len(self.log)
        return (None if mark is None else self.log[int(mark):]), end  # type: ignore[call-overload]

    def write(self, key: tuple[str, str], version: int) -> None:
        item = self.items[key]
        self.items[key] = {**item, "metadata": {**item["metadata"],
                                                "resourceVersion": str(version)}}
        self.log.append(key)


def jobs(count: int, tenants: int) -> list[Body]:
    out = []
    for i in range(count):
        tenant = f"t{i % tenants}"
        item = training_job(f"job-{i}", tenant, 30)
        item["metadata"].update(namespace=tenant, uid=f"uid-{i}", resourceVersion=str(i + 1),
                                finalizers=[FINALIZER],
                                creationTimestamp=f"2026-12-03T10:{i // 600 % 60:02d}:"
                                                  f"{i // 10 % 60:02d}Z")
        if i % 5:
            row = row_of(item)
            pod = PodRecord(index=0, node=f"fake-node-{i % 1000}", gpus=(i % 8,),
                            uid=f"pod-{i}", started_at=1.0e9, state="running",
                            handle=f"tj-job-{i}-0")
            running = replace(row, phase="Running", attempts=1, pods=(pod,))
            item["status"] = status_of(running, 1000)
        out.append(item)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--changed", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    seam = Seam(jobs(args.jobs, args.tenants), args.tenants)
    store = KubeStore(seam)  # type: ignore[arg-type]
    rows = store.list_jobs(phases=ACTIVE_PHASES)
    keys = list(seam.items)
    version = args.jobs + 1
    spent = 0.0
    for call in range(args.calls):
        for k in range(args.changed):
            version += 1
            seam.write(keys[(call * args.changed + k) % len(keys)], version)
        started = time.process_time()
        rows = store.list_jobs(phases=ACTIVE_PHASES)
        for row in rows:
            cluster_view.workload_of(row)
        spent += time.process_time() - started
    running = sum(1 for r in rows if r.phase == "Running")
    print(json.dumps({"jobs": args.jobs, "running": running, "changed_per_call": args.changed,
                      "calls": args.calls, "cpu_ms_per_call": round(1000 * spent / args.calls, 2)}))


if __name__ == "__main__":
    main()
