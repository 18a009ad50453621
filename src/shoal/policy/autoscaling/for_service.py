"""The autoscaling policy an InferenceService asks for, built from its spec.

The live control plane calls this; the serving simulator builds its policies
from a Simulation manifest (``sim.serve_plan``) but runs the same classes.

- ``kpa``: Knative's defaults; ``target`` is the in-flight requests (or,
  with ``metric: rps``, requests per second) one replica should take before
  the 0.7 utilisation (Knative's default target: 100 in flight).
- ``hpa``: HPA v2 with ``target`` as the average per replica (default
  ``HPA_DEFAULT_TARGET`` in flight); never below one replica, as the HPA.
- ``shoal``: ``target`` is the requests one replica serves at once (default
  1); it sizes for ``sloP95Ms`` (default ``SHOAL_DEFAULT_SLO_MS``) with a
  service-time prior of ``SERVICE_TIME_PRIOR_S`` until the router has
  measured one, and a cold start of ``COLD_START_S``.

``replicas.min``/``max`` bound whatever the policy asks (``Bounded``).
"""

from __future__ import annotations

from typing import Any

from shoal.domain.service import InferenceServiceSpec
from shoal.policy.autoscaling.base import AutoscalingPolicy
from shoal.policy.autoscaling.bounds import Bounded
from shoal.policy.autoscaling.hpa import HpaPolicy
from shoal.policy.autoscaling.kpa import KpaPolicy
from shoal.policy.autoscaling.shoal import ShoalPolicy

__all__ = ["policy_for"]

HPA_DEFAULT_TARGET = 10.0
SHOAL_DEFAULT_SLO_MS = 1000.0
SERVICE_TIME_PRIOR_S = 0.05
COLD_START_S = 2.0


def policy_for(spec: InferenceServiceSpec) -> AutoscalingPolicy[Any]:
    scaling = spec.autoscaling
    inner: AutoscalingPolicy[Any]
    if scaling.policy == "kpa":
        inner = KpaPolicy(metric="rps" if scaling.metric == "rps" else "concurrency",
                          target=scaling.target)
    elif scaling.policy == "hpa":
        inner = HpaPolicy(target=scaling.target or HPA_DEFAULT_TARGET,
                          metric="rps" if scaling.metric == "rps" else "concurrency")
    else:
        slo_s = (scaling.slo_p95_ms or SHOAL_DEFAULT_SLO_MS) / 1000
        inner = ShoalPolicy(slots=max(1, int(scaling.target or 1)),
                            wait_budget_s=max(slo_s - SERVICE_TIME_PRIOR_S, slo_s / 2),
                            service_time_s=SERVICE_TIME_PRIOR_S, cold_start_s=COLD_START_S)
    floor = max(spec.replicas.min, 1) if scaling.policy == "hpa" else spec.replicas.min
    return Bounded(inner, min_replicas=floor, max_replicas=spec.replicas.max)
