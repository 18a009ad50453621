"""A tenant's NetworkPolicies: nothing in or out, except what these four allow.

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
  53, UDP and TCP.

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


def _policy(name: str, spec: Body) -> Body:
    return {"kind": "NetworkPolicy", "metadata": {"name": name},
            "spec": {"podSelector": {}, **spec}}


def network_policies() -> list[Body]:
    """The four policies, for any tenant (they differ only by namespace)."""
    router = {"namespaceSelector": {"matchLabels": dict([ROUTER_LABEL])}}
    dns = {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(DNS_PODS)}}
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
    ]
