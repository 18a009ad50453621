"""The control loop: load -> decide -> fenced apply, through runtime-neutral ports.

One ``step``:

1. **observe** every active job: ask the pods port how each pod stands and
   the checkpoints port what the job saved, then let the state machine
   (``control.machine``) move the job on (succeeded, failed and retried,
   preempted pods gone and requeued, deleted and cancelled); where the ports
   can say which pods changed (``ports.PodChanges``), a running job with
   nothing new is not asked about again;
2. **decide**: build the ``Snapshot`` the simulator builds and call
   ``policy.admission.schedule``;
3. **apply** each decision through the same state machine.

Every write is ``store.save_job(record)``, fenced by the version the record
was read at: a stale writer gets ``ConflictError`` and changes nothing, so two
loops (or one restarted after SIGKILL) never both act on one job.  The work
of a pass on different jobs is independent (each writes only its own record
and events), so a runtime may run it side by side (``fan_out``); a job's own
transitions always go in order.

Starting pods takes two writes: first the job is saved Running with its pods
``starting`` (each with a unique id the runtime can find the pod by), then
the pods are started and their handles saved.  A crash between the two
leaves ``starting`` pods that the runtime looks up by id on the next observe:
running or ended, they are adopted as they are; proven never started
(``absent``), they are started then, under the same id, so that no pod of an
attempt runs twice.  A runtime that starts pods in the background
(Kubernetes, where the pod exists only once the Job controller made it and
Shoal bound it) returns no handle: the pods stay ``starting`` in the record,
the runtime reports them ``starting`` while it knows their start is under
way, and the second write is the observe that finds them running, with their
handles.  A transition's events are saved with it, in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

from shoal.control import cluster_view as view
from shoal.control import machine
from shoal.control.machine import Emit, Kill, Release, RetryPolicy, Start, Step, Terminate
from shoal.control.ports import (
    Checkpoints,
    Clock,
    FanOut,
    Inventory,
    NodeSet,
    PodChanges,
    Pods,
    Store,
    serially,
)
from shoal.control.records import (
    ACTIVE_PHASES,
    HOLDING_PHASES,
    Checkpoint,
    EventRecord,
    JobRow,
    PodRecord,
)
from shoal.domain.cluster import Binding
from shoal.domain.nodes import Node
from shoal.domain.workload import Workload
from shoal.errors import ConflictError, InputError
from shoal.policy.admission import Snapshot, schedule
from shoal.policy.decisions import Admit, Decision, Inadmissible, Pending, Preempt
from shoal.policy.placement import Placer, build_placer
from shoal.policy.snapshot import ReleaseLog


@dataclass(frozen=True)
class ControlConfig:
    policy: str = "most-allocated"
    seed: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Placers:
    """Placers keyed on node content, policy, seed and pod mix: rebuilt when any changes."""

    def __init__(self) -> None:
        self._key: object = None
        self._placer: Placer | None = None

    @property
    def current(self) -> Placer | None:
        """The placer built last (None before the first admission cycle)."""
        return self._placer

    def get(self, policy: str, seed: int, nodes: NodeSet, mix: Sequence[Workload]) -> Placer:
        shapes = sorted({pod for w in mix for pod in w.pods}, key=repr)
        key = (policy, seed, nodes.key, tuple(shapes))
        if self._placer is None or key != self._key:
            pods = [pod for w in mix for pod in w.pods]
            self._placer = build_placer(policy, len(nodes.nodes), seed, pods)
            self._key = key
        return self._placer


class Controller:
    def __init__(
        self,
        store: Store,
        inventory: Inventory,
        pods: Pods,
        checkpoints: Checkpoints,
        clock: Clock,
        config: ControlConfig = ControlConfig(),
        new_uid: Callable[[], str] = lambda: uuid.uuid4().hex,
        fan_out: FanOut = serially,
    ) -> None:
        self.store, self.inventory, self.pods = store, inventory, pods
        self.checkpoints, self.clock, self.config = checkpoints, clock, config
        self.new_uid = new_uid
        self.fan_out = fan_out
        self.placers = Placers()
        # Pods this process has sent SIGTERM: after a restart the set is empty,
        # so pods of a job already stopping get theirs (again) once.
        self._terminated: set[str] = set()
        self._killed: set[str] = set()  # SIGKILL sent: sending it again is not progress
        self.job_errors: dict[str, str] = {}
        # Room given back so far (Snapshot.epoch): attempts holding resources
        # and nodes known at the last cycle.
        self._releases = 0
        self._held: frozenset[tuple[str, int]] = frozenset()
        self._nodes: frozenset[tuple[object, ...]] = frozenset()
        """Jobs whose last pass failed unexpectedly (the others go on), with the error."""
        # The same, as a log (Snapshot.released): the attempts that stopped
        # holding, with the bindings they had at the last cycle (node indices
        # of that cycle's node list), and resets when nodes or tenants change.
        self.released = ReleaseLog()
        self._bindings: dict[tuple[str, int], tuple[Binding, ...]] = {}
        self._layout: tuple[tuple[object, ...], ...] = ()
        self._digest = ""
        # Running jobs that had nothing to do when last observed, as they were
        # then, and where the pods port's changes were read up to (``observe``).
        self._quiet: dict[str, JobRow] = {}
        self._quiet_pods: dict[str, str] = {}
        """The pods of the quiet jobs (by uid), and of some that were: their job's name."""
        self._quiet_pods_kept = 0
        self._pods_mark: object = None

    def step(self) -> bool:
        """One reconcile pass; True when anything changed (call again soon)."""
        changed = self.observe()
        return self.admit() or changed

    # -- 1. observe -------------------------------------------------------------------

    def observe(self) -> bool:
        """Look at every active job here, one after another (the ports answer from what
        they know); only the jobs that have something to write or do go to ``fan_out``.

        Where the ports can tell which pods changed (``PodChanges``), a running
        job that had nothing to do last pass, whose record is the same object
        and none of whose pods changed, is not looked at again: a running job's
        step depends on nothing else (no clock, no deadline).
        """
        jobs = [job for job in self.store.list_jobs(phases=ACTIVE_PHASES)
                if job.phase != "Pending" or job.deleted]
        changed = self._changed_pods()
        last, quiet = self._quiet, {}
        # The quiet jobs that own a changed pod, found from the pods (far fewer
        # than the jobs in a burst) rather than by looking at every job's pods.
        # (A uid of a job that is no longer quiet only makes it looked at.)
        stirred = ({name for uid in changed if (name := self._quiet_pods.get(uid)) is not None}
                   if changed is not None else set())
        work = []
        for job in jobs:
            if changed is not None and last.get(job.name) is job and job.name not in stirred:
                quiet[job.name] = job
                continue
            try:
                step = self._observe(job)
            except Exception as exc:  # one bad record must not stop every other job
                self._failed(job, exc)
                continue
            if step.job != job or step.effects:
                work.append(partial(self._apply_observed, job, step))
            else:  # nothing to save and nothing to do: fine
                self.job_errors.pop(job.name, None)
                if job.phase == "Running" and not job.deleted:
                    quiet[job.name] = job
                    for pod in job.pods:
                        self._quiet_pods[pod.uid] = job.name
        if len(self._quiet_pods) > 2 * self._quiet_pods_kept + 1024:  # forget jobs gone by
            self._quiet_pods = {p.uid: name for name, job in quiet.items() for p in job.pods}
            self._quiet_pods_kept = len(self._quiet_pods)
        self._quiet = quiet
        return any(self.fan_out(work))

    def _changed_pods(self) -> Set[str] | None:
        """The pods that changed since the last pass; None: any may have (look at all)."""
        changes = getattr(self.pods, "changed_pods", None)
        if changes is None or not getattr(self.checkpoints, "follows_pods", False):
            return None
        found, self._pods_mark = cast(PodChanges, self.pods).changed_pods(self._pods_mark)
        return found

    def _apply_observed(self, job: JobRow, step: Step) -> bool:
        try:
            changed = self._apply(job, step)
        except Exception as exc:
            self._failed(job, exc)  # one event per distinct error, however many passes
            return False
        self.job_errors.pop(job.name, None)
        return changed

    def _observe(self, job: JobRow) -> Step:
        now = self.clock.now()
        self._terminate_once(job, now)
        statuses = {p.uid: self.pods.observe(job, p) for p in job.pods if not p.done}
        return machine.observe(
            job, statuses, now, self._checkpoint(job), self.config.retry,
            view.manifest_of(job).spec.max_retries, view.workload_of(job).checkpoint_interval,
        )

    def _checkpoint(self, job: JobRow) -> Checkpoint | None:
        """The job's newest checkpoint; None (and an error event) when looking fails.

        The job's files are its tenant's to write: whatever they hold must not
        stop the job from being stopped, deleted or preempted.
        """
        try:
            return self.checkpoints.latest(job)
        except Exception as exc:
            self._failed(job, exc)
            return None

    def _terminate_once(self, job: JobRow, now: float) -> None:
        """SIGTERM the pods of a stopping job that this process has not signalled yet."""
        if job.phase == "Running" or job.stop_deadline is None or now >= job.stop_deadline:
            return
        for pod in job.pods:
            if not pod.done and pod.uid not in self._terminated:
                self.pods.stop(job, pod, job.stop_deadline - now)
                self._terminated.add(pod.uid)

    def _failed(self, job: JobRow, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if self.job_errors.get(job.name) != message:  # one event per distinct error
            self.job_errors[job.name] = message
            self.store.append_event(self.clock.now(), "error", job.name, job.tenant,
                                    {"reason": message})

    # -- 2. decide ----------------------------------------------------------------------

    def admit(self) -> bool:
        now = self.clock.now()
        rows = self.store.list_jobs(phases=ACTIVE_PHASES)
        holders = [r for r in rows if r.phase in HOLDING_PHASES]
        waiting = [
            r for r in rows
            if r.phase == "Pending" and not r.deleted
            and (r.next_attempt_at is None or r.next_attempt_at <= now)
        ]
        if not waiting:
            return False
        tenant_rows = self.store.tenants()
        nodes = self.inventory.nodes()
        # Compared with the last cycle that had work to decide: an attempt that
        # started and ended in between gave back nothing that cycle had.
        epoch = self._epoch(holders, nodes.nodes, tenant_rows)
        state, running = view.build_state(list(nodes.nodes), holders)
        self._bindings = {(r.name, r.attempts): run.bindings
                          for r, run in zip(holders, running, strict=True)}
        stopping = {r.name for r in holders if r.phase != "Running"}
        # A job already being stopped holds its resources until its pods are
        # gone, but must not be chosen as a victim a second time.
        running = [
            replace(run, workload=replace(run.workload, preemptible=False))
            if run.name in stopping else run
            for run in running
        ]
        pending = tuple(view.workload_of(r) for r in waiting)
        mix = [view.workload_of(r) for r in rows]
        snapshot = Snapshot(
            now=now,
            cluster=state,
            tenants=view.tenants_from(tenant_rows),
            running=tuple(running),
            pending=pending,
            preempting=frozenset(r.preemptor for r in holders if r.preemptor),
            nominated=machine.nominated(rows, {r.name: r.attempts for r in waiting}),
            service={r.name: machine.service(r) for r in rows if r.ran_seconds},
            epoch=epoch,
            released=self.released,
        )
        placer = self.placers.get(self.config.policy, self.config.seed, nodes, mix)
        by_name = {r.name: r for r in rows}
        # A job's decisions in their order; different jobs' apart (``fan_out``).
        per_job: dict[str, list[Decision]] = {}
        for decision in schedule(snapshot, placer).decisions:
            per_job.setdefault(_subject(decision), []).append(decision)
        return any(self.fan_out([
            partial(self._decide_one, by_name[name], decisions, state.names, now, by_name)
            for name, decisions in per_job.items()
        ]))

    def _decide_one(self, job: JobRow, decisions: Sequence[Decision], names: Sequence[str],
                    now: float, by_name: Mapping[str, JobRow]) -> bool:
        changed = False
        for decision in decisions:
            try:
                changed |= self._apply(job, self._transition(decision, job, names, now, by_name))
            except Exception as exc:  # one bad record must not stop every other job
                self._failed(job, exc)
        return changed

    def _epoch(self, holders: Sequence[JobRow], nodes: Iterable[Node],
               tenants: Mapping[str, Any]) -> tuple[int, str]:
        """Counts room given back, as the simulator's cluster state does (``Snapshot.epoch``).

        An attempt that stopped holding, or a node that came (back), moves it
        on; the tenants' settings are part of it.  The attempts that stopped
        go to the release log too; nodes or tenants that changed reset it.
        """
        attempts = frozenset((r.name, r.attempts) for r in holders)
        layout = tuple(_capacity(node) for node in nodes)
        known = frozenset(layout)
        stopped = self._held - attempts
        if stopped or (known - self._nodes):
            self._releases += 1
        for name, attempt in sorted(stopped):
            self.released.add(name, attempt, self._bindings.get((name, attempt), ()))
        self._held, self._nodes = attempts, known
        digest = hashlib.blake2b(json.dumps(tenants, sort_keys=True, default=str).encode(),
                                 digest_size=8).hexdigest()
        if layout != self._layout or digest != self._digest:
            self.released.reset()  # room came otherwise, or node indices moved
        self._layout, self._digest = layout, digest
        return (self._releases, digest)

    def _transition(self, decision: Decision, job: JobRow, names: Sequence[str],
                    now: float, by_name: Mapping[str, JobRow]) -> Step:
        if isinstance(decision, Admit):
            placement = [(names[b.node], b.gpus) for b in decision.bindings]
            uids = [self.new_uid() for _ in placement]
            return machine.admit(job, placement, uids, now, self._checkpoint(job))
        if isinstance(decision, Preempt):
            why = f"preempted: {machine.PREEMPT_REASONS[decision.reason]}"
            return machine.preempt(job, now, self.config.retry.grace_seconds,
                                   decision.preemptor, why,
                                   by_name[decision.preemptor].attempts)
        if isinstance(decision, Inadmissible):
            return machine.reject(job, decision.reason, now)
        assert isinstance(decision, Pending)
        return machine.wait(job, decision.reason)

    # -- 3. apply -----------------------------------------------------------------------

    def _apply(self, before: JobRow, step: Step) -> bool:
        """Save the step's record (fenced), then carry out its effects in order.

        True when the record changed.  Effects of an unchanged record (SIGKILL
        sent again to pods past their deadline) are carried out but are not
        progress: the loop does not spin on them.
        """
        starts = [e.pod for e in step.effects if isinstance(e, Start)]
        if step.job == before:
            if starts:  # pods that provably never started: start them now
                self._start(before, starts)
                return True
            fresh = any(isinstance(e, Kill) and e.pod.uid not in self._killed
                        for e in step.effects)
            for effect in step.effects:
                self._effect(before, before, effect)
            return fresh
        # The transition and its events are written together: a crash never
        # leaves a job admitted without its "admitted" event.
        now = self.clock.now()
        events = [EventRecord(now, e.kind, e.data) for e in step.effects if isinstance(e, Emit)]
        try:
            job = self.store.save_job(step.job, events)
        except ConflictError:
            # Someone else changed this job since we loaded it (a delete, say):
            # the next pass sees the new state and decides again.
            return True
        if starts:
            started = self._start(job, starts)
            if started is None:
                return True  # it could not start: already failed and recorded
            job = started
        for effect in step.effects:
            if not isinstance(effect, Emit):
                self._effect(job, before, effect)
        return True

    def _start(self, job: JobRow, pods: Iterable[PodRecord]) -> JobRow | None:
        """Start the pods and save their handles; None when the job failed to start.

        A runtime that starts in the background gives no handle yet: the pod
        stays ``starting`` in the record until ``observe`` reports it, and its
        start and its handle are saved in one write then.
        """
        recorded = job
        begun: list[PodRecord] = []  # started in the background: no handle to stop them by
        try:
            for pod in pods:
                handle = self.pods.start(job, pod)
                if handle is not None:
                    job = machine.started(job, pod.uid, handle)
                else:
                    begun.append(pod)
        except Exception as exc:
            # What began in the background is stopped here: the record knows no
            # handle of it, so the failed attempt would not.
            for pod in begun:
                self.pods.kill(job, pod)
            # Stop what did start.  A pod that can never start as written (a
            # missing command, an argument the OS refuses) fails the job;
            # anything else (a full disk) fails this attempt, which is retried
            # with backoff.
            permanent = isinstance(exc, InputError | ValueError | TypeError)
            step = machine.start_failed(
                job, str(exc) or type(exc).__name__, self.clock.now(), permanent=permanent,
                policy=self.config.retry, max_retries=view.manifest_of(job).spec.max_retries,
            )
            self._apply(job, step)
            return None
        if job == recorded:
            return job
        try:
            return self.store.save_job(job)
        except ConflictError:
            # Changed meanwhile (deleted, say): the pods run and the runtime
            # knows them by id, so the next observe finds them.
            return job

    def _effect(self, job: JobRow, before: JobRow, effect: machine.Effect) -> None:
        if isinstance(effect, Terminate):
            self.pods.stop(job, effect.pod, effect.grace_seconds)
            self._terminated.add(effect.pod.uid)
        elif isinstance(effect, Kill):
            self.pods.kill(job, effect.pod)
            self._killed.add(effect.pod.uid)
        elif isinstance(effect, Release):
            self.pods.release(job, before.pods)
            for pod in before.pods:
                self._terminated.discard(pod.uid)
                self._killed.discard(pod.uid)
        elif isinstance(effect, Emit):
            self.store.append_event(self.clock.now(), effect.kind, job.name, job.tenant,
                                    dict(effect.data))


def _subject(decision: Decision) -> str:
    if isinstance(decision, Preempt):
        return decision.victim
    return decision.workload


def _capacity(node: Node) -> tuple[object, ...]:
    """What of a node can give a pod room: a changed one counts as a node come up."""
    return (node.name, node.cpu, node.memory, node.gpu_count, node.gpu_memory, node.gpu_model,
            tuple(sorted(node.labels.items())), tuple(map(str, node.taints)))
