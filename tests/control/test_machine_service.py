"""What the state machine keeps for orderings and nominations: seconds run, whom a victim made room for."""

from __future__ import annotations

from shoal.control import machine
from shoal.control.records import JobRow, PodStatus

SIGTERM = PodStatus("signalled", 143, "killed by signal SIGTERM")


def pending(name: str, submit: float = 0.0) -> JobRow:
    return JobRow(name=name, tenant="t", manifest={}, phase="Pending", version=1,
                  submit_time=submit)


def run(job: JobRow, now: float) -> JobRow:
    step = machine.admit(job, [("n0", (0,))], [f"{job.name}-{job.attempts + 1}"], now, None)
    return step.job


def test_a_preempted_job_keeps_its_run_time_and_whom_it_made_room_for() -> None:
    job = run(pending("victim"), now=100.0)
    stopping = machine.preempt(job, 400.0, 10.0, "t/preemptor", "preempted", 0).job
    uid = stopping.pods[0].uid
    back = machine.observe(stopping, {uid: SIGTERM}, 405.0, None, machine.RetryPolicy(), 0).job
    assert back.phase == "Pending"
    assert back.ran_seconds == 305.0 and back.queued_at == 405.0
    assert back.preemptor == "t/preemptor"
    service = machine.service(back)
    assert (service.ran_seconds, service.kept_seconds) == (305.0, 305.0 - back.lost_seconds)
    # While it waits, its preemptor is nominated; once it runs again, no more.
    assert machine.nominated([back], {"t/preemptor": 0}) == {"t/preemptor"}
    assert machine.nominated([back], {}) == frozenset()
    again = run(back, now=500.0)
    assert again.preemptor == "" and machine.nominated([again], {"t/preemptor": 0}) == frozenset()
    done = machine.observe(again, {again.pods[0].uid: PodStatus("succeeded", 0, "")}, 560.0,
                           None, machine.RetryPolicy(), 0).job
    assert done.phase == "Succeeded" and done.ran_seconds == 365.0


def test_a_nomination_ends_when_the_preemptor_starts_even_while_its_victim_waits() -> None:
    victim = run(pending("victim"), now=0.0)
    stopping = machine.preempt(victim, 10.0, 5.0, "t/preemptor", "preempted", 2).job
    back = machine.observe(stopping, {stopping.pods[0].uid: SIGTERM}, 12.0, None,
                           machine.RetryPolicy(), 0).job
    assert (back.phase, back.preemptor, back.preemptor_attempts) == ("Pending", "t/preemptor", 2)
    assert machine.nominated([back], {"t/preemptor": 2}) == {"t/preemptor"}
    # The preemptor started (attempt 3) and waits again, evicted in turn: the
    # old eviction no longer puts it first.
    assert machine.nominated([back], {"t/preemptor": 3}) == frozenset()
    # A record from before the attempt was kept nominates as long as its victim waits.
    legacy = back.evolve(preemptor_attempts=None)
    assert machine.nominated([legacy], {"t/preemptor": 3}) == {"t/preemptor"}
