"""A tenant's own order of its jobs: FIFO, least attained service (LAS), or SRTF.

Fairness *between* tenants stays dominant-resource fair sharing; these keys
only say which of one tenant's jobs goes first, as Tiresias ("Tiresias: A GPU
Cluster Manager for Distributed Deep Learning", NSDI'19) orders jobs of one
cluster:

* ``fifo``: priority, then age.
* ``las`` (Tiresias's discretised 2D-LAS): priority, then the queue that the
  job's *attained service* puts it in (GPUs x seconds run, over all its
  attempts; queue ``i`` holds jobs with ``thresholds[i-1] <= attained <
  thresholds[i]``), then age.  Jobs that have run little go first, without
  knowing how long anything will run; discretising keeps jobs of one queue
  in FIFO order, so they are not preempted back and forth.  A starvation
  guard sends a job back to the first queue once it has waited
  ``starvation`` times as long as it has run.
* ``srtf``: priority, then the least remaining GPU time by the job's
  declared duration (jobs that declare none come last), then age.

Under ``las`` and ``srtf`` a waiting job may preempt the tenant's running
jobs of its own priority whose key is worse, as Tiresias preempts jobs of
lower queues.  All of this is a pure function of the workload, what it has run
(``Service``) and the time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.domain.resources import MILLI
from shoal.domain.workload import Workload
from shoal.policy.quota import TenantQuota

OrderKey = tuple[int, float, float, str]


@dataclass(frozen=True, slots=True)
class Service:
    """What a job has run before its current attempt (or before now, when waiting)."""

    ran_seconds: float = 0.0
    """Wall-clock seconds its earlier attempts ran."""
    kept_seconds: float = 0.0
    """Seconds of progress its earlier attempts kept (up to their last checkpoints)."""
    queued_at: float | None = None
    """When it last went back to waiting (None: it never ran)."""


NO_SERVICE = Service()


def gpus(workload: Workload) -> float:
    """GPUs the job holds (fractions count as such); CPU-only jobs count one."""
    return workload.gpu_milli / MILLI or 1.0


def attained(workload: Workload, service: Service, running_since: float | None,
             now: float) -> float:
    """GPU-seconds the job has run so far, the current attempt included."""
    seconds = service.ran_seconds + (now - running_since if running_since is not None else 0.0)
    return gpus(workload) * max(seconds, 0.0)


def las_queue(tenant: TenantQuota, attained_gpu_seconds: float) -> int:
    """The LAS queue (0 first) that this much attained service puts a job in."""
    return bisect.bisect_right(tenant.las_thresholds, attained_gpu_seconds)


def starving(tenant: TenantQuota, service: Service, now: float) -> bool:
    """Whether a waiting job has waited long enough to go back to the first queue."""
    factor = tenant.starvation_factor
    if factor is None or service.queued_at is None or service.ran_seconds <= 0:
        return False
    return now - service.queued_at >= factor * service.ran_seconds


def remaining(workload: Workload, service: Service, running_since: float | None,
              now: float) -> float:
    """GPU-seconds of work left by the declared duration (infinite without one)."""
    if workload.duration is None:
        return math.inf
    done = service.kept_seconds + (now - running_since if running_since is not None else 0.0)
    return gpus(workload) * max(workload.duration - done, 0.0)


def rank(tenant: TenantQuota, workload: Workload, service: Service,
         running_since: float | None, now: float) -> float:
    """The tenant-order value between priority and age (0 under fifo): lower goes first."""
    if tenant.job_order == "las":
        if running_since is None and starving(tenant, service, now):
            return 0.0
        return float(las_queue(tenant, attained(workload, service, running_since, now)))
    if tenant.job_order == "srtf":
        return remaining(workload, service, running_since, now)
    return 0.0


def key(tenant: TenantQuota, workload: Workload, service: Service, now: float) -> OrderKey:
    """A waiting job's place in its tenant's own order."""
    return (-workload.priority, rank(tenant, workload, service, None, now),
            workload.submit_time, workload.name)


def service_of(services: Mapping[str, Service], name: str) -> Service:
    return services.get(name, NO_SERVICE)


def next_change(tenant: TenantQuota, workload: Workload, service: Service,
                running_since: float, now: float) -> float | None:
    """When a running job's LAS queue next changes (None: never, or not under LAS).

    A runtime that decides only on events (the simulator) wakes at this time,
    so that a job demoted past a threshold can be preempted when it happens.
    """
    if tenant.job_order != "las":
        return None
    done = attained(workload, service, running_since, now)
    at = bisect.bisect_right(tenant.las_thresholds, done)
    if at >= len(tenant.las_thresholds):
        return None
    return now + (tenant.las_thresholds[at] - done) / gpus(workload)
