"""Autoscaling policies: pure functions from a context and a state to a replica count.

``kpa`` (Knative), ``hpa`` (Kubernetes HPA v2) and ``shoal`` (SLO sizing) share
one interface (``base.AutoscalingPolicy``); ``bounds.Bounded`` wraps any of
them with min/max replicas, delays and stabilisation; ``runner.Autoscaler``
keeps a policy's state and reads the time from a clock port.  The live
control plane and the serving simulator call the same objects.
"""

from __future__ import annotations

from shoal.policy.autoscaling.base import (
    AutoscalingPolicy,
    MetricSample,
    ScaleDecision,
    ScalingContext,
)
from shoal.policy.autoscaling.bounds import Bounded, BoundedState
from shoal.policy.autoscaling.hpa import HpaPolicy, HpaState
from shoal.policy.autoscaling.kpa import KpaPolicy, KpaState
from shoal.policy.autoscaling.runner import Autoscaler, Clock
from shoal.policy.autoscaling.shoal import ShoalPolicy, ShoalState

POLICY_NAMES = ("kpa", "hpa", "shoal")

__all__ = [
    "POLICY_NAMES",
    "Autoscaler",
    "AutoscalingPolicy",
    "Bounded",
    "BoundedState",
    "Clock",
    "HpaPolicy",
    "HpaState",
    "KpaPolicy",
    "KpaState",
    "MetricSample",
    "ScaleDecision",
    "ScalingContext",
    "ShoalPolicy",
    "ShoalState",
]
