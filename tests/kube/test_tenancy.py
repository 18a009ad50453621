"""What a Tenant becomes on Kubernetes, computed without a server."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.domain.tenant import Tenant
from shoal.errors import ManifestError
from shoal.runtime.kubernetes import quantities
from shoal.runtime.kubernetes.tenancy import (
    TENANT_LABEL,
    namespace_problem,
    tenant_from_resource,
    tenant_objects,
)
from shoal.runtime.kubernetes.tenancy_access import (
    member_role,
    members_group,
    priority_classes,
)
from shoal.runtime.kubernetes.tenancy_network import network_policies
from shoal.runtime.kubernetes.tenancy_quota import hard_limits, limit_range


def tenant(name: str = "team-a", **spec: Any) -> Tenant:
    return Tenant.model_validate({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                                  "metadata": {"name": name}, "spec": spec})


def gpus(nominal: float, **limits: float) -> dict[str, Any]:
    return {"nominal": nominal, **limits}


def values(hard: dict[str, str]) -> dict[str, float]:
    return {k: float(quantities.value(v)) for k, v in hard.items()}


# --- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("team-a", None),
        ("a" * 63, None),
        ("a" * 64, "64 characters; a namespace has at most 63"),
        ("team.a", "no dots"),
        ("default", "system namespace"),
        ("kube-system", "system namespace"),
        ("kube-anything", "system namespace"),
    ],
)
def test_which_tenant_names_can_name_a_namespace(name: str, problem: str | None) -> None:
    found = namespace_problem(name)
    assert (found is None) if problem is None else (problem in (found or "")), found
    if problem is not None:
        with pytest.raises(ManifestError, match="rename the tenant"):
            tenant_objects(tenant(name))


# --- the ResourceQuota is the ceiling ---------------------------------------------


LAB_B = tenant("team-b", cohort="lab", quota={
    "cpu": {"nominal": 8, "lendingLimit": 2}, "memory": {"nominal": "16Gi"},
    "gpus": {"a100": gpus(4, lendingLimit=1), "h100": gpus(2)}})
OTHER = tenant("team-c", cohort="other", quota={"cpu": {"nominal": 100},
                                                "gpus": {"a100": gpus(50)}})


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # a cohort of one never exceeds nominal
        ({"quota": {"cpu": {"nominal": 4}, "memory": {"nominal": "8Gi"},
                    "gpus": {"a100": gpus(2)}}},
         {"requests.cpu": 4, "requests.memory": 8 * 2**30, "requests.nvidia.com/gpu": 2}),
        # in a cohort: nominal plus what the others lend (lendingLimit, else all)
        ({"cohort": "lab", "quota": {"cpu": {"nominal": 4}, "memory": {"nominal": "8Gi"},
                                     "gpus": {"a100": gpus(2)}}},
         {"requests.cpu": 6, "requests.memory": 24 * 2**30, "requests.nvidia.com/gpu": 3}),
        # borrowingLimit caps it
        ({"cohort": "lab", "quota": {"cpu": {"nominal": 4, "borrowingLimit": "500m"},
                                     "gpus": {"a100": gpus(2, borrowingLimit=0)}}},
         {"requests.cpu": 4.5, "requests.memory": 0, "requests.nvidia.com/gpu": 2}),
        # models add up (one resource name for all); fractions round up to whole GPUs
        ({"quota": {"cpu": {"nominal": 1}, "gpus": {"a100": gpus(0.5), "t4": gpus(1.25)}}},
         {"requests.cpu": 1, "requests.memory": 0, "requests.nvidia.com/gpu": 2}),
        # a model the tenant has no quota for is never admitted, even if the cohort lends it
        ({"cohort": "lab", "quota": {"gpus": {"t4": gpus(1)}}},
         {"requests.cpu": 0, "requests.memory": 0, "requests.nvidia.com/gpu": 1}),
        # pods only with a pods quota
        ({"quota": {"cpu": {"nominal": 1}, "pods": {"nominal": 1000}}},
         {"requests.cpu": 1, "requests.memory": 0, "requests.nvidia.com/gpu": 0, "pods": 1000}),
    ],
    ids=["alone", "cohort", "borrowing-limit", "models-and-fractions", "unlisted-model", "pods"],
)
def test_the_quota_is_what_the_tenant_could_ever_hold(
    spec: dict[str, Any], expected: dict[str, float]
) -> None:
    assert values(hard_limits(tenant(**spec), [LAB_B, OTHER])) == expected


def test_with_shared_gpus_the_quota_counts_no_gpus() -> None:
    """A fractional pod asks a sharing device plugin for one ``nvidia.com/gpu`` (a share):
    no count of them bounds what Shoal admits, so there is none."""
    spec = {"quota": {"cpu": {"nominal": 4}, "memory": {"nominal": "8Gi"},
                      "gpus": {"a100": gpus(2)}}}
    assert values(hard_limits(tenant(**spec), [], shared_gpus=True)) == {
        "requests.cpu": 4, "requests.memory": 8 * 2**30}


def test_the_quota_follows_what_the_cohort_lends() -> None:
    mine = tenant(cohort="lab", quota={"cpu": {"nominal": 4}})
    lends_more = tenant("team-b", cohort="lab", quota={"cpu": {"nominal": 8, "lendingLimit": 6}})
    assert values(hard_limits(mine, [LAB_B]))["requests.cpu"] == 6
    assert values(hard_limits(mine, [lends_more]))["requests.cpu"] == 10
    assert values(hard_limits(mine, []))["requests.cpu"] == 4


def test_default_requests_become_the_limit_range() -> None:
    spec = limit_range(tenant(defaultRequests={"cpu": "250m", "memory": "1Gi"}))["spec"]
    assert spec == {"limits": [{"type": "Container",
                                "defaultRequest": {"cpu": "250m", "memory": "1Gi"}}]}
    shoal_defaults = limit_range(tenant())["spec"]["limits"][0]
    assert set(shoal_defaults) == {"type", "defaultRequest"}  # no default limits


# --- network, members, priorities ---------------------------------------------------


def test_network_policies_deny_by_default_and_allow_six_paths() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in network_policies()}
    deny = policies["shoal-default-deny"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    same = policies["shoal-allow-same-namespace"]
    assert same["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert same["egress"] == [{"to": [{"podSelector": {}}]}]
    router = policies["shoal-allow-from-router"]
    assert router["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"shoal.dev/role": "router"}}}]
    assert router["policyTypes"] == ["Ingress"]
    dns = policies["shoal-allow-dns"]
    assert {(p["protocol"], p["port"]) for p in dns["egress"][0]["ports"]} == {
        ("UDP", 53), ("TCP", 53)}
    assert dns["policyTypes"] == ["Egress"]
    routers = {"matchExpressions": [{"key": "shoal.dev/router", "operator": "Exists"}]}
    callers = policies["shoal-allow-to-routers"]
    assert callers["podSelector"] == routers and callers["policyTypes"] == ["Ingress"]
    assert callers["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    api = policies["shoal-allow-routers-to-api"]
    assert api["podSelector"] == routers and api["policyTypes"] == ["Egress"]
    assert {p["port"] for p in api["egress"][0]["ports"]} == {443, 6443}
    scrape = policies["shoal-allow-metrics-to-operator"]
    assert scrape["podSelector"] == routers and scrape["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {
            "app.kubernetes.io/name": "shoal-operator"}}}],
        "ports": [{"protocol": "TCP", "port": 9090}]}]


@pytest.mark.parametrize(
    ("allowed", "classes"),
    [
        (None, {"shoal-low": 0, "shoal-normal": 100, "shoal-high": 1000,
                "shoal-critical": 10000}),
        (["high", 0], {"shoal-low": 0, "shoal-high": 1000}),
        ([5], {"shoal-priority-5": 5}),
    ],
)
def test_priority_classes_are_those_the_tenant_may_use(
    allowed: list[int | str] | None, classes: dict[str, int]
) -> None:
    made = priority_classes(tenant(allowedPriorities=allowed))
    assert {c["metadata"]["name"]: c["value"] for c in made} == classes
    assert all(c["preemptionPolicy"] == "Never" for c in made)


def test_the_whole_set_is_labelled_owned_and_versioned() -> None:
    owner = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
             "metadata": {"name": "team-a", "uid": "u-1"}}
    objects = tenant_objects(tenant(), owner=owner)
    namespace = objects.namespace
    assert namespace["metadata"]["name"] == "team-a"
    assert namespace["metadata"]["ownerReferences"] == [
        {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "name": "team-a", "uid": "u-1",
         "controller": True}]
    kinds = sorted(o["kind"] for o in objects.namespaced)
    assert kinds == ["LimitRange", *["NetworkPolicy"] * 7, "ResourceQuota", "Role",
                     "RoleBinding"]
    for body in (namespace, *objects.namespaced):
        assert body["metadata"]["labels"][TENANT_LABEL] == "team-a"
        assert body["metadata"].get("namespace", "team-a") == "team-a"
        assert next(iter(body)) == "apiVersion"
    (binding,) = [o for o in objects.namespaced if o["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == members_group("team-a") == "shoal:tenant:team-a"
    assert {o["apiVersion"] for o in objects.all()} == {
        "v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "scheduling.k8s.io/v1"}
    older = tenant_objects(tenant(), api_version=lambda kind: "x/v1beta1")
    assert {o["apiVersion"] for o in older.all()} == {"x/v1beta1"}


def test_a_stored_tenant_is_read_through_the_model() -> None:
    stored = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
              "metadata": {"name": "team-a", "uid": "u", "resourceVersion": "7",
                           "annotations": {"kopf.zalando.org/last": "{}"}},
              "spec": {"quota": {"cpu": {"nominal": "2"}}}, "status": {"namespace": "x"}}
    assert tenant_from_resource(stored).spec.quota.cpu.nominal == 2000  # type: ignore[union-attr]
    stored["spec"] = {"quota": {"cpu": {"nominal": 1, "lendingLimit": 2}}}
    with pytest.raises(ManifestError, match=r"Tenant team-a is invalid: .*lendingLimit"):
        tenant_from_resource(stored)


def test_members_write_jobs_and_services_and_only_read_their_status() -> None:
    grants = {(group, resource): set(rule["verbs"]) for rule in member_role()["rules"]
              for group in rule["apiGroups"] for resource in rule["resources"]}
    every = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for kind in ("trainingjobs", "inferenceservices"):
        assert grants[("shoal.dev", kind)] == every
        assert grants[("shoal.dev", f"{kind}/status")] == {"get", "list", "watch"}
    assert ("shoal.dev", "tenants") not in grants


def test_each_integer_priority_a_tenant_lists_gets_a_class_of_its_own() -> None:
    from shoal.runtime.kubernetes.tenancy_access import class_name, priority_classes

    tenant = Tenant.model_validate({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                                    "metadata": {"name": "team"},
                                    "spec": {"allowedPriorities": ["high", 100, 37, -5]}})
    classes = {c["metadata"]["name"]: c["value"] for c in priority_classes(tenant)}
    assert classes == {"shoal-normal": 100, "shoal-high": 1000,
                       "shoal-priority-37": 37, "shoal-priority-minus-5": -5}
    # A class holds at most 1,000,000,000 (higher is the system's): such pods name none.
    assert class_name(1_000_000_000) == "shoal-priority-1000000000"
    assert class_name(1_000_000_001) is None
    assert class_name(0) == "shoal-low"
