"""The control loop: load -> decide (``policy.admission``) -> fenced apply.

One ``step`` observes the pods of active jobs (finished, failed, OOM-killed,
gone), settles preemptions and deletions, then runs one admission cycle and
applies its decisions.  Every write names the version it read; a stale
writer gets ``StoreConflict`` and changes nothing, so two loops (or a loop
restarted after SIGKILL) never both act on one job.

Starting pods is made crash-safe in two writes: the job is first marked
Running with its pods ``starting`` (and a unique pod id in their
environment), then the processes are started and their pids recorded.  After
a crash, ``starting`` pods are looked up by that id and adopted, so no pod is
ever started twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shoal.control import cluster_view as view
from shoal.control.lifecycle import Lifecycle
from shoal.control.ports import Clock, Pods, Store
from shoal.control.records import JobRow
from shoal.errors import ShoalError
from shoal.policy.admission import Snapshot, schedule
from shoal.policy.decisions import Admit, Inadmissible, Pending, Preempt
from shoal.policy.placement import Placer, ScorerContext, make_scorer, node_ranks


@dataclass(frozen=True)
class ControlConfig:
    state_dir: Path
    policy: str = "most-allocated"
    seed: int = 0
    grace_seconds: float = 10.0
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0


class Controller:
    def __init__(
        self,
        store: Store,
        pods: Pods,
        clock: Clock,
        config: ControlConfig,
        pod_spec: Callable[..., Any],
        find_pod: Callable[[str], tuple[int, int] | None] = lambda uid: None,
    ) -> None:
        self.store, self.pods, self.clock, self.config = store, pods, clock, config
        self.life = Lifecycle(store, pods, clock, config, pod_spec, find_pod)
        self._placer: Placer | None = None
        self._placer_key: object = None

    def step(self) -> bool:
        """One reconcile pass; True when anything changed (call again soon)."""
        changed = self.life.observe()
        return self._admit() or changed

    # -- decide and apply --------------------------------------------------------

    def _placer_for(self, nodes: list[Any]) -> Placer:
        key = tuple(node.name for node in nodes)
        if self._placer is None or key != self._placer_key:
            scorer = make_scorer(self.config.policy, ScorerContext(seed=self.config.seed))
            self._placer = Placer(scorer, node_ranks(len(nodes), None))
            self._placer_key = key
        return self._placer

    def _admit(self) -> bool:
        now = self.clock.now()
        rows = self.store.list_jobs(phases=("Pending", "Running", "Preempting"))
        holders = [r for r in rows if r.phase in ("Running", "Preempting")]
        waiting = [
            r for r in rows
            if r.phase == "Pending" and not r.deleted
            and (r.next_attempt_at is None or r.next_attempt_at <= now)
        ]
        if not waiting:
            return False
        nodes = view.nodes_from(self.store.nodes())
        state, running = view.build_state(nodes, holders)
        stopping = {r.name for r in holders if r.phase == "Preempting"}
        # A job already being preempted holds its resources until it stops but
        # must not be chosen as a victim a second time.
        running = [
            replace(run, workload=replace(run.workload, preemptible=False))
            if run.name in stopping else run
            for run in running
        ]
        snapshot = Snapshot(
            now=now,
            cluster=state,
            tenants=view.tenants_from(self.store.tenants()),
            running=tuple(running),
            pending=tuple(view.workload_of(r) for r in waiting),
            preempting=frozenset(
                str(pod["preemptor"])
                for r in holders if r.phase == "Preempting"
                for pod in r.pods if pod.get("preemptor")
            ),
        )
        by_name = {r.name: r for r in rows}
        changed = False
        for decision in schedule(snapshot, self._placer_for(nodes)).decisions:
            row = by_name[_name(decision)]
            try:
                changed |= self._apply(decision, row, state)
            except ShoalError as exc:
                if exc.code != "conflict":
                    raise
                # Someone else changed this job since we loaded it: the next
                # pass sees the new state and decides again.
                changed = True
        return changed

    def _apply(self, decision: Any, row: JobRow, state: Any) -> bool:
        if isinstance(decision, Admit):
            placed = [
                {"index": i, "node": state.names[b.node], "gpus": list(b.gpus),
                 "uid": uuid.uuid4().hex, "state": "starting"}
                for i, b in enumerate(decision.bindings)
            ]
            self.life.start(row, placed)
            return True
        if isinstance(decision, Preempt):
            why = {"reclaim": "its cohort reclaimed borrowed quota",
                   "priority": "a higher-priority job of its tenant needed room",
                   "borrow": "a higher-priority job in its cohort needed room"}[decision.reason]
            self.life.preempt(row, f"preempted: {why}", decision.preemptor)
            return True
        if isinstance(decision, Inadmissible):
            self.life.finish(row, "Failed", f"inadmissible: {decision.reason}")
            return True
        if isinstance(decision, Pending) and row.reason != decision.reason:
            self.store.update_job(row.name, row.version, reason=decision.reason)
        return False


def _name(decision: Any) -> str:
    if isinstance(decision, Preempt):
        return decision.victim
    name: str = decision.workload
    return name
