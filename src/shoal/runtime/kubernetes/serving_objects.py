"""The Kubernetes objects of an InferenceService, built from its spec (pure: no I/O).

Per revision (``<service>-r<N>``, in the tenant's namespace):

* a ``apps/v1`` Deployment whose pods run the replica server
  (``python -m shoal.serving.replica``) on port 8080, labelled
  ``shoal.dev/service`` and ``shoal.dev/revision``; ``spec.replicas`` is
  what Shoal's autoscaler decided (0 when scaled to zero); the readiness
  probe is the protocol's ``/v2/health/ready``;
* a PodDisruptionBudget (``maxUnavailable: 1``) over the same pods, in the
  version the server serves (``policy/v1``, or ``policy/v1beta1`` on 1.20).

Per service: the router (a Deployment ``<service>-router`` of one pod
running ``python -m shoal.api.kube_router``), its routing table (the
ConfigMap ``<service>-routes``: the split and the ready replicas' addresses,
as ``serving.router.RevisionRoute`` fields) mounted in the router's pod, and
the Service ``<service>`` that selects the router: the service's entry
point.  Every object is owned by the InferenceService (``ownerReferences``),
so the garbage collector removes them with it.

Per tenant namespace (``router_access``): the ServiceAccount
``shoal-router`` the routers run as, and the ClusterRoleBinding
``shoal-router-<tenant>`` granting it the built-in ClusterRole
``system:auth-delegator`` (``create`` on tokenreviews and
subjectaccessreviews, nothing else), with which a router checks its
callers.  The account goes with the namespace; the binding, cluster-scoped,
is not owned by a namespaced object and stays (it names an account that no
longer exists).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.domain.base import API_VERSION
from shoal.domain.replica import REVISION_LABEL, SERVICE_LABEL
from shoal.domain.service import InferenceServiceSpec, replica_args
from shoal.runtime.kubernetes.convert import GPU, NOBODY
from shoal.runtime.kubernetes.tenancy import MANAGED_BY

Body = dict[str, Any]

__all__ = [
    "METRICS_PORT", "PORT", "ROUTER_ACCOUNT", "ROUTER_LABEL", "ROUTER_ROLE", "ROUTES_FILE",
    "disruption_budget", "replica_deployment", "router_access", "router_deployment",
    "router_service", "routes_config", "routes_of",
]

PORT = 8080
"""Where a replica and a router listen in their pods."""
METRICS_PORT = 9090
"""Where a router serves ``/metrics`` and ``/healthz``."""
ROUTER_ACCOUNT = "shoal-router"
"""The ServiceAccount of a tenant's routers (one per tenant namespace)."""
ROUTER_ROLE = "system:auth-delegator"
"""The ClusterRole that lets a router check its callers (built in: the two reviews only)."""
ROUTER_LABEL = "shoal.dev/router"
"""On the router's pods: the service they route for (the Service selects them)."""
ROUTES_FILE = "/etc/shoal/routes/routes.json"
"""Where the router's pod finds its routing table (the ConfigMap, mounted)."""
MODEL_MOUNT = "/shoal/model-source"
"""Where a replica finds the checkpoint folder of ``model.from``'s TrainingJob."""
LOAD_FAILED = 1
"""The replica server's exit code when its model cannot load (``serving.replica.LOAD_FAILED``)."""


def owner_of(service: Body) -> list[Body]:
    """The InferenceService as every object's controlling owner (GC removes them with it)."""
    meta = service["metadata"]
    return [{"apiVersion": API_VERSION, "kind": "InferenceService", "name": meta["name"],
             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]


def _meta(service: Body, name: str, labels: Mapping[str, str]) -> Body:
    return {"name": name, "namespace": service["metadata"]["namespace"],
            "labels": {**labels, MANAGED_BY[0]: MANAGED_BY[1]},
            "ownerReferences": owner_of(service)}


def revision_labels(service: str, revision: str) -> dict[str, str]:
    return {SERVICE_LABEL: service, REVISION_LABEL: revision}


def resources_of(spec: InferenceServiceSpec) -> Body:
    """One replica's requests (and the GPU limit: extended resources need one)."""
    resources = spec.resources
    requests: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = f"{resources.cpu}m"
    if resources.memory:
        requests["memory"] = f"{resources.memory}Mi"
    gpu = resources.gpu
    # A share of a GPU is one whole nvidia.com/gpu here: the default scheduler and
    # device plugin know no fractions.
    count = 0 if gpu is None else (1 if gpu.fraction is not None else gpu.count)
    if count:
        return {"requests": {**requests, GPU: str(count)}, "limits": {GPU: str(count)}}
    return {"requests": requests}


def replica_deployment(service: Body, spec: InferenceServiceSpec, revision: str, replicas: int,
                       image: str, model_path: str | None, claim: str | None = None) -> Body:
    """The Deployment of ``revision`` (``<service>-r<N>``) with ``replicas`` pods.

    ``claim``: the PersistentVolumeClaim of ``model.from``'s TrainingJob,
    mounted read-only at ``MODEL_MOUNT`` (``model_path`` is then inside it).
    """
    name = service["metadata"]["name"]
    labels = revision_labels(name, revision)
    args = replica_args(name, spec, model_path, port=PORT, host="0.0.0.0")
    # On the protocol a revision is the model's version, as in the embedded runtime.
    args[args.index("--version") + 1] = revision
    container: Body = {
        "name": "replica",
        "image": image,
        "command": ["python", "-m", "shoal.serving.replica", *args],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": resources_of(spec),
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORT}},
        # A model that cannot load ends the container with its error on stderr:
        # the kubelet keeps its tail as the termination message, which fails the revision.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    pod: Body = {
        # A tenant's replica gets no API credentials and no privilege (as a job's pods).
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": NOBODY, "runAsGroup": NOBODY,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if claim is not None:
        container["volumeMounts"] = [{"name": "model", "mountPath": MODEL_MOUNT,
                                      "readOnly": True}]
        pod["volumes"] = [{"name": "model", "persistentVolumeClaim": {
            "claimName": claim, "readOnly": True}}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(service, revision, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def disruption_budget(service: Body, revision: str, api_version: str) -> Body:
    """At most one replica of ``revision`` evicted at a time (drains, node upgrades)."""
    labels = revision_labels(service["metadata"]["name"], revision)
    return {
        "apiVersion": api_version, "kind": "PodDisruptionBudget",
        "metadata": _meta(service, revision, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }


def routes_of(service: str, split: Mapping[str, int], endpoints: Mapping[str, Sequence[str]],
              activating: Sequence[str]) -> Body:
    """The routing table: ``serving.router.RevisionRoute`` fields per revision, short names."""
    def short(revision: str) -> str:
        return revision.rpartition("/")[2]

    return {
        "revisions": [
            {"name": short(revision), "weight": percent,
             "replicas": sorted(endpoints.get(revision, ())), "model": service}
            for revision, percent in sorted(split.items())
        ],
        "activating": sorted(short(r) for r in activating),
    }


def routes_config(service: Body, routes: Body) -> Body:
    name = service["metadata"]["name"]
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _meta(service, f"{name}-routes", {SERVICE_LABEL: name}),
        "data": {"routes.json": json.dumps(routes, sort_keys=True)},
    }


def router_deployment(service: Body, image: str) -> Body:
    """One router pod, reading its table from the mounted ConfigMap."""
    name = service["metadata"]["name"]
    labels = {ROUTER_LABEL: name}
    tenant = service["metadata"]["namespace"]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(service, f"{name}-router", labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # Its token asks the API server who a caller is (TokenReview)
                    # and whether they may call (SubjectAccessReview): nothing else.
                    "serviceAccountName": ROUTER_ACCOUNT,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": NOBODY,
                                        "runAsGroup": NOBODY,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "router",
                        "image": image,
                        "command": ["python", "-m", "shoal.api.kube_router",
                                    "--service", name, "--tenant", tenant,
                                    "--routes", ROUTES_FILE, "--port", str(PORT),
                                    "--metrics-port", str(METRICS_PORT)],
                        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"},
                                  {"name": "metrics", "containerPort": METRICS_PORT,
                                   "protocol": "TCP"}],
                        "livenessProbe": {"httpGet": {"path": "/healthz",
                                                      "port": METRICS_PORT}},
                        "volumeMounts": [{"name": "routes", "mountPath": "/etc/shoal/routes",
                                          "readOnly": True}],
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "privileged": False,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                    "volumes": [{"name": "routes", "configMap": {"name": f"{name}-routes"}}],
                },
            },
        },
    }


def router_access(tenant: str) -> list[Body]:
    """The routers' ServiceAccount in ``tenant``'s namespace and its ClusterRoleBinding.

    Cluster-wide because reviews are cluster-scoped (a RoleBinding cannot grant them)."""
    labels = {MANAGED_BY[0]: MANAGED_BY[1]}
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": ROUTER_ACCOUNT, "namespace": tenant, "labels": labels}},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{ROUTER_ACCOUNT}-{tenant}", "labels": labels},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": ROUTER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": ROUTER_ACCOUNT,
                       "namespace": tenant}]},
    ]


def router_service(service: Body) -> Body:
    """The service's entry point: ``http://<service>.<tenant>.svc`` reaches its router."""
    name = service["metadata"]["name"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(service, name, {SERVICE_LABEL: name}),
        "spec": {"selector": {ROUTER_LABEL: name},
                 "ports": [{"name": "http", "port": 80, "targetPort": PORT,
                            "protocol": "TCP"}]},
    }


def url_of(service: Body) -> str:
    meta = service["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc"
