"""The router of an inference service: one Open Inference Protocol v2 entry
point per service, in front of its revisions' replicas.

Weighted traffic split between revisions, least-outstanding-requests
balancing among a revision's ready replicas, an activator holding requests
while a revision scales from zero, per-tenant bearer-token authentication,
body limits, and Prometheus metrics plus in-process figures for the
autoscaler.  ``Router`` is the whole interface a control plane drives.
"""

from shoal.serving.router.activator import ColdCallback
from shoal.serving.router.front import Principal, Verifier
from shoal.serving.router.host import RouterHost
from shoal.serving.router.metrics import RouterMetrics, StatsSnapshot
from shoal.serving.router.router import RevisionRoute, Router, RouterLimits

__all__ = ["ColdCallback", "Principal", "RevisionRoute", "Router", "RouterHost",
           "RouterLimits", "RouterMetrics", "StatsSnapshot", "Verifier"]
