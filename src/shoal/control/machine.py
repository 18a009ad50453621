"""The job state machine that every runtime applies: pure transitions on ``JobRow``.

::

    Pending --admit--> Running --all pods succeeded--> Succeeded
       ^                 |  \\--a pod failed--> Stopping(failed) --pods gone--> Pending (retry,
       |                 |                                                     backoff) | Failed
       |                 +--preempt--> Preempting --pods gone--> Pending (requeued, lost work)
       |                 |                 \\--all exited 0 in the grace period--> Succeeded
       |                 +--delete--> Stopping(deleted) --pods gone--> Cancelled
       +--(Pending, deleted)--> Cancelled;  inadmissible --> Failed

A transition takes a record (and what was observed: pod statuses, the newest
checkpoint, the clock's ``now``) and returns a ``Step``: the new record and
the *effects* the runtime must carry out (start, terminate or kill a pod,
release an attempt's resources, record an event).  The embedded controller,
the Kubernetes operator and the replay engine all call these functions, so
grace periods, checkpoint bookkeeping, lost-work accounting and retries with
backoff are one piece of code in every runtime.

Resources are held in Running, Preempting and Stopping: a job's pods keep
their GPUs until every pod has been *seen* gone, never merely signalled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shoal.control.records import (
    Checkpoint,
    JobRow,
    PodRecord,
    PodStatus,
    StopCause,
)
from shoal.policy.ordering import Service
from shoal.policy.snapshot import progress_saved

DEFAULT_GRACE_SECONDS = 10.0
"""Between SIGTERM and SIGKILL, in every runtime (``--grace`` live, ``gracePeriodSeconds``
in a Simulation)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Grace period and retry backoff (the same defaults in every runtime)."""

    grace_seconds: float = DEFAULT_GRACE_SECONDS
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0

    def backoff(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed attempts (>= 1)."""
        return float(min(self.backoff_seconds * 2 ** (failures - 1), self.backoff_max_seconds))


# -- effects ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start this pod of the job's current attempt."""

    pod: PodRecord


@dataclass(frozen=True, slots=True)
class Terminate:
    """Ask the pod to stop (SIGTERM); it is killed if it still runs at the deadline."""

    pod: PodRecord
    grace_seconds: float


@dataclass(frozen=True, slots=True)
class Kill:
    pod: PodRecord


@dataclass(frozen=True, slots=True)
class Release:
    """The attempt is over and its pods are gone: free what the runtime kept for it."""


@dataclass(frozen=True, slots=True)
class Emit:
    """Record an event about the job."""

    kind: str
    data: Mapping[str, Any]


Effect = Start | Terminate | Kill | Release | Emit


@dataclass(frozen=True, slots=True)
class Step:
    job: JobRow
    effects: tuple[Effect, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.effects)


PREEMPT_REASONS = {
    "reclaim": "its cohort reclaimed borrowed quota",
    "priority": "a higher-priority job of its tenant needed room",
    "borrow": "a higher-priority job in its cohort needed room",
    "queue": "a job of its tenant ahead of it in the tenant's order (las, srtf) needed room",
}
"""How a victim's reason reads, per ``Preempt.reason``."""


def _emit(kind: str, **data: Any) -> Emit:
    # Empty fields are left out: events are read by people and kept forever.
    return Emit(kind, {k: v for k, v in data.items()
                       if v is not None and v is not False and v != ""})


# -- transitions ------------------------------------------------------------------

_UNSEEN = PodStatus("running", None, "")

# A failure count no maxRetries reaches: the failure is permanent (bad input).
_NEVER_RETRY = 1 << 30



def admit(
    job: JobRow,
    placement: Sequence[tuple[str, tuple[int, ...]]],
    uids: Sequence[str],
    now: float,
    checkpoint: Checkpoint | None,
) -> Step:
    """Admit a pending job: its pods (one per ``(node, gpus)``) are to be started."""
    pods = tuple(
        PodRecord(index=i, node=node, gpus=tuple(gpus), uid=uid, started_at=now)
        for i, ((node, gpus), uid) in enumerate(zip(placement, uids, strict=True))
    )
    attempt = job.attempts + 1
    resumed = checkpoint is not None
    new = job.evolve(
        phase="Running", pods=pods, attempts=attempt,
        start_time=job.start_time if job.start_time is not None else now,
        reason="", next_attempt_at=None, stop_cause="", stop_deadline=None, preemptor="",
        preemptor_attempts=None, resumed_from=checkpoint.step if checkpoint is not None else None,
    )
    event = _emit(
        "admitted", attempt=attempt, nodes=sorted({node for node, _ in placement}),
        placement=[[node, list(gpus)] for node, gpus in placement],
        resumed=resumed, resumed_from=new.resumed_from,
    )
    return Step(new, (*(Start(pod) for pod in pods), event))


def started(job: JobRow, uid: str, handle: str) -> JobRow:
    """Record the runtime's handle of a pod that now runs."""
    pods = tuple(
        replace(p, state="running", handle=handle) if p.uid == uid else p for p in job.pods
    )
    return job.evolve(pods=pods)


def start_failed(
    job: JobRow,
    message: str,
    now: float,
    *,
    permanent: bool,
    policy: RetryPolicy | None = None,
    max_retries: int = 0,
) -> Step:
    """A pod could not start.

    ``permanent``: it never will as written (a missing command, no sandbox on
    this machine): the job fails for good.  Otherwise (a full disk, say) the
    attempt counts as a failed one and is retried with backoff.  Pods that
    did start are killed first; the job holds its resources until they are gone.
    """
    started_pods = [p for p in job.pods if p.handle is not None and not p.done]
    failing = job.evolve(failures=_NEVER_RETRY) if permanent else job
    if not started_pods:
        stopped = failing.evolve(pods=(), phase="Stopping", stop_cause="failed",
                          reason=message)
        return _retry_or_fail(stopped, now, policy or RetryPolicy(), max_retries)
    new = failing.evolve(phase="Stopping", stop_cause="failed", reason=message,
                  stop_deadline=now)
    return Step(new, tuple(Kill(p) for p in started_pods))


def preempt(job: JobRow, now: float, grace: float, preemptor: str, reason: str,
            preemptor_attempts: int) -> Step:
    """Evict a running job for ``preemptor``: SIGTERM now, SIGKILL after ``grace``.

    ``preemptor_attempts``: the preemptor's ``attempts`` now, so that the
    eviction nominates it only until it starts (``nominated``).
    """
    if job.phase != "Running":
        return Step(job)  # already stopping: never a victim twice
    new = job.evolve(
        phase="Preempting", stop_cause="preempted", stop_deadline=now + grace,
        preemptor=preemptor, preemptor_attempts=preemptor_attempts, reason=reason,
    )
    alive = [p for p in job.pods if not p.done]
    return Step(new, (*(Terminate(p, grace) for p in alive), _emit("preempted", reason=reason)))


def delete(job: JobRow, now: float, grace: float) -> Step:
    """The user deleted the job: cancel it, stopping its pods first."""
    if job.phase == "Pending":
        return _final(job, "Cancelled", "deleted", now)
    if job.phase == "Running":
        new = job.evolve(phase="Stopping", stop_cause="deleted", stop_deadline=now + grace,
                      reason="deleted")
        return Step(new, tuple(Terminate(p, grace) for p in job.pods if not p.done))
    if job.stop_cause != "deleted":  # already stopping: it ends Cancelled instead
        return Step(job.evolve(stop_cause="deleted", reason="deleted"), ())
    return Step(job)


def reject(job: JobRow, reason: str, now: float) -> Step:
    """The job can never run as written."""
    return _final(job, "Failed", f"inadmissible: {reason}", now)


def wait(job: JobRow, reason: str) -> Step:
    """Still pending; only the reason may change (no event: reasons change often)."""
    if job.reason == reason:
        return Step(job)
    return Step(job.evolve(reason=reason))


def observe(
    job: JobRow,
    statuses: Mapping[str, PodStatus],
    now: float,
    checkpoint: Checkpoint | None,
    policy: RetryPolicy,
    max_retries: int,
    checkpoint_interval: float | None = None,
) -> Step:
    """Fold what the runtime saw of the pods into the record and move on from there."""
    job = _with_statuses(job, statuses)
    if checkpoint is not None and checkpoint.time >= job.attempt_start:
        job = job.evolve(checkpoint_time=checkpoint.time, checkpoint_step=checkpoint.step)
    if job.phase == "Pending":
        return delete(job, now, policy.grace_seconds) if job.deleted else Step(job)
    if job.phase == "Running" and job.deleted:
        return delete(job, now, policy.grace_seconds)
    alive = [p for p in job.pods if not p.done]
    if job.phase == "Running":
        failed = [p for p in job.pods if p.done and p.state not in ("succeeded", "lost")]
        lost = [p for p in job.pods if p.state == "lost"]
        if not failed and not lost:
            # Pods the runtime proves never started (the control plane died between
            # recording them and starting them) are started now, under the same id.
            absent = [p for p in job.pods if p.state == "starting"
                      and statuses.get(p.uid, _UNSEEN).state == "absent"]
            if absent:
                return Step(job, tuple(Start(p) for p in absent))
        if failed or lost:
            # One member failed (or vanished): the gang cannot go on. Its pods
            # are killed at once; the job holds its resources until they are
            # seen gone.  A pod the runtime lost (it ended while no control
            # plane watched, and how is unknown) is no fault of the job: the
            # attempt is requeued like a preempted one, using no retry.
            first = (failed or lost)[0]
            stopping = job.evolve(phase="Stopping", stop_cause="failed" if failed else "disrupted",
                               reason=first.message or first.state, stop_deadline=now)
            if alive:
                return Step(stopping, tuple(Kill(p) for p in alive))
            return _settle(stopping, now, policy, max_retries, checkpoint_interval)
        if not alive:
            return _final(job, "Succeeded", "", now)
        return Step(job)
    # Preempting or Stopping: wait for the pods, kill them from the deadline on.
    if alive:
        if job.stop_deadline is None or now >= job.stop_deadline:
            # SIGKILL, again on every pass until the pods are seen gone (a crash
            # right after the first must not leave them running): the record
            # does not change, so the runtime does not count it as progress.
            return Step(job, tuple(Kill(p) for p in alive))
        return Step(job)
    return _settle(job, now, policy, max_retries, checkpoint_interval)


def disrupt(
    job: JobRow, now: float, why: str, checkpoint_interval: float | None = None
) -> Step:
    """The job's pods were lost through no fault of its own (its node failed)."""
    pods = tuple(replace(p, state="lost", message=why) if not p.done else p for p in job.pods)
    stopped = job.evolve(pods=pods, phase="Preempting", stop_cause="disrupted", reason=why)
    return _requeue(stopped, now, checkpoint_interval, "disrupted")


def _settle(
    job: JobRow,
    now: float,
    policy: RetryPolicy,
    max_retries: int,
    checkpoint_interval: float | None,
) -> Step:
    """Every pod of a stopping job is gone: decide what comes next."""
    cause: StopCause = job.stop_cause or (
        "preempted" if job.phase == "Preempting" else "failed"  # a record from before causes
    )
    if job.deleted or cause == "deleted":
        return _final(job, "Cancelled", "deleted", now)
    if cause in ("preempted", "disrupted"):
        if job.pods and all(p.state == "succeeded" for p in job.pods):
            return _final(job, "Succeeded", "", now)  # it finished within its grace period
        # Pods the runtime lost are started again after a pause, so that a pod
        # that is lost at every start cannot spin the control loop.
        delay = policy.backoff_seconds if cause == "disrupted" else 0.0
        return _requeue(job, now, checkpoint_interval, "requeued", delay)
    return _retry_or_fail(job, now, policy, max_retries)


def _requeue(
    job: JobRow, now: float, interval: float | None, kind: str, delay: float = 0.0
) -> Step:
    start = job.attempt_start
    saved = progress_saved(start, now, job.checkpoint_time, interval)
    lost = max(now - saved, 0.0)
    # A victim remembers whom it was evicted for until it runs again: while
    # that preemptor waits, it is *nominated* and goes first (``nominated``).
    new = job.evolve(
        phase="Pending", pods=(), preemptions=job.preemptions + 1,
        lost_seconds=job.lost_seconds + lost, next_attempt_at=now + delay, stop_cause="",
        stop_deadline=None, **_ran(job, now),
    )
    event = _emit(kind, lost_seconds=round(lost, 3), kept_seconds=round(saved - start, 3),
                  reason=job.reason)
    return Step(new, (Release(), event))


def _retry_or_fail(job: JobRow, now: float, policy: RetryPolicy, max_retries: int) -> Step:
    failures = job.failures + 1
    why = job.reason
    if failures > max_retries:
        return _final(job.evolve(failures=min(failures, _NEVER_RETRY)), "Failed", why, now)
    delay = policy.backoff(failures)
    new = job.evolve(
        phase="Pending", pods=(), failures=failures, reason=f"retrying after: {why}",
        next_attempt_at=now + delay, stop_cause="", stop_deadline=None, preemptor="",
        preemptor_attempts=None, **_ran(job, now),
    )
    return Step(new, (Release(), _emit("retrying", reason=why, delay_seconds=delay)))


def _final(job: JobRow, phase: str, reason: str, now: float) -> Step:
    ran = _ran(job, now)
    new = job.evolve(phase=phase, reason=reason, finish_time=now, stop_cause="",
                  stop_deadline=None, preemptor="", preemptor_attempts=None,
                  next_attempt_at=None, ran_seconds=ran["ran_seconds"])
    return Step(new, (Release(), _emit(phase.lower(), reason=reason)))


def _ran(job: JobRow, now: float) -> dict[str, float]:
    """The service bookkeeping of an attempt that ends now (``JobRow.ran_seconds``)."""
    ran = job.ran_seconds
    if job.pods:
        ran += max(0.0, now - job.attempt_start)
    return {"ran_seconds": ran, "queued_at": now}


def _with_statuses(job: JobRow, statuses: Mapping[str, PodStatus]) -> JobRow:
    if not statuses:
        return job
    pods = []
    changed = False
    for pod in job.pods:
        status = statuses.get(pod.uid)
        if status is None or pod.done or status.state == "starting":
            pods.append(pod)
        elif status.state == "absent":
            # Never started: it is started now while the job runs (see observe),
            # and is simply gone when the job is stopping.
            if job.phase == "Running" and not job.deleted:
                pods.append(pod)
            else:
                pods.append(replace(pod, state="lost", message=status.message))
                changed = True
        elif status.state == "running":
            handle = status.handle or pod.handle
            if pod.state != "running" or handle != pod.handle:
                pods.append(replace(pod, state="running", handle=handle))
                changed = True
            else:
                pods.append(pod)
        else:
            pods.append(replace(pod, state=status.state, exit_code=status.exit_code,
                                message=status.message, handle=status.handle or pod.handle))
            changed = True
    return job.evolve(pods=tuple(pods)) if changed else job


def nominated(rows: Iterable[JobRow], pending: Mapping[str, int]) -> frozenset[str]:
    """Pending jobs that evicted others and have not started since: they go first.

    ``pending``: each waiting job's ``attempts``.  Without nominations a
    preemptor can lose the room its victims freed to a job ordered before it
    (a victim of higher priority, say) and evict again, for ever.  Kubernetes
    nominates a preemptor to the node it freed for the same reason.  A
    nomination ends when the preemptor starts, even though its victim still
    waits: were a preemptor that ran and was evicted in turn still to go first,
    it would take back the room its own evictor freed, and the two would take
    turns.  Read from the victims' records, so every runtime agrees.
    """
    nominated = set()
    for row in rows:
        if not row.preemptor:
            continue
        attempts = pending.get(row.preemptor)
        if attempts is not None and row.preemptor_attempts in (None, attempts):
            nominated.add(row.preemptor)
    return frozenset(nominated)


def service(job: JobRow) -> Service:
    """What the job ran before its current attempt, as las and srtf orderings read it."""
    return Service(
        ran_seconds=job.ran_seconds,
        kept_seconds=max(0.0, job.ran_seconds - job.lost_seconds),
        queued_at=job.queued_at,
    )
