"""The synthetic job mix of the replay benchmarks, and its offered load.

Jobs are an openb-like mix: GPU shares (0.25 or 0.5 of a GPU), 1, 2 and 4
whole GPUs, and gangs of node-sized pods (2 x 8 and 4 x 8 GPUs), spread
round-robin over tenants, in three priorities, with lognormal durations capped
at ``max_duration`` so that the run's tail does not dwarf the arrival window.
Arrivals are a seeded Poisson process whose rate makes the offered GPU demand
``load`` times the cluster's GPUs: ``rate * E[gpus * duration] = load *
gpus``, the expectation taken over the generated jobs themselves.  A Poisson
stream alone takes several job lifetimes to fill an empty cluster, so the
first jobs, up to ``burst`` times the cluster's GPUs, arrive together at time
0: the cluster starts full and the queue grows from the first second.
"""

from __future__ import annotations

import numpy as np

from shoal.domain.workload import PodShape, Workload

# (probability, pods) per kind; pods repeat for gangs.
_SHARE = PodShape(cpu=4000, memory=16384, gpu_count=1, gpu_milli=250)
_HALF = PodShape(cpu=4000, memory=16384, gpu_count=1, gpu_milli=500)
_ONE = PodShape(cpu=8000, memory=32768, gpu_count=1, gpu_milli=1000)
_TWO = PodShape(cpu=16000, memory=65536, gpu_count=2, gpu_milli=1000)
_FOUR = PodShape(cpu=32000, memory=131072, gpu_count=4, gpu_milli=1000)
_EIGHT = PodShape(cpu=64000, memory=262144, gpu_count=8, gpu_milli=1000)
KINDS: tuple[tuple[float, tuple[PodShape, ...]], ...] = (
    (0.20, (_SHARE,)),
    (0.15, (_HALF,)),
    (0.40, (_ONE,)),
    (0.12, (_TWO,)),
    (0.08, (_FOUR,)),
    (0.03, (_EIGHT,) * 2),
    (0.02, (_EIGHT,) * 4),
)
PRIORITIES = ((0.3, 0), (0.6, 100), (0.1, 1000))


def gpu_milli(pods: tuple[PodShape, ...]) -> int:
    return sum(p.gpu_count * p.gpu_milli for p in pods)


def synthetic_jobs(
    count: int,
    tenants: int,
    gpus: int,
    seed: int,
    load: float,
    max_duration: float = 8 * 3600.0,
    checkpoint_interval: float | None = 600.0,
    burst: float = 1.0,
) -> list[Workload]:
    """``count`` jobs offering ``load`` x ``gpus`` GPUs of demand while they arrive."""
    rng = np.random.default_rng(seed)
    durations = np.minimum(rng.lognormal(mean=7.0, sigma=1.0, size=count), max_duration)
    kinds = rng.choice(len(KINDS), size=count, p=[p for p, _ in KINDS])
    priorities = rng.choice([p for _, p in PRIORITIES], size=count,
                            p=[q for q, _ in PRIORITIES])
    milli = np.array([gpu_milli(KINDS[k][1]) for k in kinds], dtype=np.float64)
    # The burst: the first jobs whose GPUs add up to ``burst`` x the cluster.
    upfront = int(np.searchsorted(np.cumsum(milli), burst * gpus * 1000.0))
    later = milli[upfront:] * durations[upfront:]
    # GPU-seconds offered per second by the jobs after the burst = load * gpus.
    rate = load * gpus * 1000.0 / float(np.mean(later)) if len(later) else 1.0
    arrivals = np.zeros(count)
    arrivals[upfront:] = np.cumsum(rng.exponential(1 / rate, size=count - upfront))
    return [
        Workload(
            name=f"job-{i:06d}",
            tenant=f"team-{i % tenants}",
            pods=KINDS[int(kinds[i])][1],
            priority=int(priorities[i]),
            submit_time=float(arrivals[i]),
            duration=float(durations[i]),
            checkpoint_interval=checkpoint_interval,
        )
        for i in range(count)
    ]
