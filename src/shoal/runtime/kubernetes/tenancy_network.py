"""A tenant's NetworkPolicies: nothing in or out, except what these seven allow.

* ``shoal-default-deny``: selects every pod of the namespace for ingress and
  egress with no rule, so all traffic is refused unless another policy
  allows it (NetworkPolicies add up);
* ``shoal-allow-same-namespace``: pods of the namespace reach each other
  (the workers of a job, its headless Service);
* ``shoal-allow-from-router``: ingress from pods of namespaces labelled
  ``shoal.dev/role=router`` (where the inference router will run);
* ``shoal-allow-dns``: egress to the cluster DNS (pods labelled
  ``k8s-app=kube-dns``, in any namespace: v1.20 gives namespaces no
  ``kubernetes.io/metadata.name`` label to pick ``kube-system`` by) on port
  53, UDP and TCP;
* ``shoal-allow-to-routers``: ingress from anywhere to the tenant's service
  routers (pods labelled ``shoal.dev/router``) on their serving port: a
  service's callers are wherever its clients run, and the router checks
  each one's token (``router_auth.py``);
* ``shoal-allow-metrics-to-operator``: ingress to the routers' metrics port
  (9090) from the operator's namespace (labelled
  ``app.kubernetes.io/name=shoal-operator``, as ``deploy/`` makes it), which
  reads their load for the autoscaler (``serving_load.py``);
* ``shoal-allow-routers-to-api``: egress from the routers to the API server
  on TCP 443 and 6443 (where it listens behind ``kubernetes.default`` on most
  clusters), for those checks; its addresses vary by cluster, so any address.

They are written as the server stores them (``policyTypes`` and each
port's ``protocol`` spelled out), so a re-read compares equal.  Only a
network plugin enforces them; the test control plane has none and only
stores and validates them.  Pure.
"""

from __future__ import annotations

from typing import Any

Body = dict[str, Any]

ROUTER_LABEL = ("shoal.dev/role", "router")
DNS_PODS = {"k8s-app": "kube-dns"}

DEFAULT_DENY = "shoal-default-deny"
SAME_NAMESPACE = "shoal-allow-same-namespace"
FROM_ROUTER = "shoal-allow-from-router"
DNS = "shoal-allow-dns"
TO_ROUTERS = "shoal-allow-to-routers"
ROUTERS_TO_API = "shoal-allow-routers-to-api"
METRICS_TO_OPERATOR = "shoal-allow-metrics-to-operator"
OPERATOR_NAMESPACE = {"app.kubernetes.io/name": "shoal-operator"}
METRICS_PORT = 9090
ROUTER_PODS = "shoal.dev/router"
"""The label of a service's router pods (``serving_objects.ROUTER_LABEL``)."""
ROUTER_PORT = 8080
API_PORTS = (443, 6443)


def _policy(name: str, spec: Body, pods: Body | None = None) -> Body:
    return {"kind": "NetworkPolicy", "metadata": {"name": name},
            "spec": {"podSelector": pods or {}, **spec}}


def network_policies() -> list[Body]:
    """The seven policies, for any tenant (they differ only by namespace)."""
    router = {"namespaceSelector": {"matchLabels": dict([ROUTER_LABEL])}}
    dns = {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(DNS_PODS)}}
    routers = {"matchExpressions": [{"key": ROUTER_PODS, "operator": "Exists"}]}
    return [
        _policy(DEFAULT_DENY, {"policyTypes": ["Ingress", "Egress"]}),
        _policy(SAME_NAMESPACE, {
            "ingress": [{"from": [{"podSelector": {}}]}],
            "egress": [{"to": [{"podSelector": {}}]}],
            "policyTypes": ["Ingress", "Egress"],
        }),
        _policy(FROM_ROUTER, {"ingress": [{"from": [router]}], "policyTypes": ["Ingress"]}),
        _policy(DNS, {
            "egress": [{"to": [dns], "ports": [{"protocol": "UDP", "port": 53},
                                               {"protocol": "TCP", "port": 53}]}],
            "policyTypes": ["Egress"],
        }),
        _policy(TO_ROUTERS, {
            "ingress": [{"ports": [{"protocol": "TCP", "port": ROUTER_PORT}]}],
            "policyTypes": ["Ingress"],
        }, routers),
        _policy(METRICS_TO_OPERATOR, {
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": dict(OPERATOR_NAMESPACE)}}],
                         "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}],
            "policyTypes": ["Ingress"],
        }, routers),
        _policy(ROUTERS_TO_API, {
            "egress": [{"ports": [{"protocol": "TCP", "port": port} for port in API_PORTS]}],
            "policyTypes": ["Egress"],
        }, routers),
    ]
