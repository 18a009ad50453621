"""The tenancy reconciler against a real kube-apiserver v1.20.2 (with its controllers).

Each test has tenants of its own (and a cohort of its own), reconciles by
calling ``reconcile_tenant`` directly and checks what the server holds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.errors import Forbidden, UnavailableError
from shoal.runtime.kubernetes import quantities
from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.sync import plan
from shoal.runtime.kubernetes.tenancy import TENANT_LABEL, tenant_from_resource, tenant_objects
from shoal.runtime.kubernetes.tenant_reconciler import (
    TenancyOutcome,
    reconcile_tenant,
    repair_message,
)
from tests.kube.conftest import ControlPlane
from tests.kube.waiting import wait_gone

pytestmark = pytest.mark.kube

Body = dict[str, Any]
MakeTenant = Callable[..., Body]

QUOTA = {"cpu": {"nominal": 4}, "memory": {"nominal": "8Gi"},
         "gpus": {"a100": {"nominal": 2}}, "pods": {"nominal": 1000}}


@pytest.fixture
def make_tenant(crds: Kube) -> Iterator[MakeTenant]:
    """``make_tenant(name, **spec)``: a Tenant object on the server, deleted after the test."""
    made: list[str] = []

    def make(name: str, **spec: Any) -> Body:
        body = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": name}, "spec": spec}
        made.append(name)
        return crds.create(body)

    yield make
    for name in made:
        crds.delete("Tenant", name)


def desired(kube: Kube, name: str) -> list[Body]:
    """The tenant's objects as the reconciler computes them now."""
    tenants = kube.list("Tenant")
    me = next(t for t in tenants if t["metadata"]["name"] == name)
    others = [tenant_from_resource(t) for t in tenants if t is not me and _valid(t)]
    objects = tenant_objects(tenant_from_resource(me), others, owner=me)
    return list(objects.all())


def _valid(body: Body) -> bool:
    try:
        tenant_from_resource(body)
    except ValueError:
        return False
    return True


def drift(kube: Kube, name: str) -> list[str]:
    """The objects that are not as desired (empty: all in place)."""
    out = []
    for body in desired(kube, name):
        meta = body["metadata"]
        action = plan(body, kube.get(body["kind"], meta["name"], meta.get("namespace")))
        if action.verb != "keep":
            out.append(str(action))
    return out


def ready(kube: Kube, name: str) -> tuple[str, str, str]:
    status = (kube.get("Tenant", name) or {}).get("status") or {}
    (condition,) = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    return condition["status"], condition["reason"], condition.get("message", "")


def verbs(outcome: TenancyOutcome) -> dict[str, str]:
    return {action.key: action.verb for action in outcome.actions}


# --- a tenant becomes its objects ---------------------------------------------------


def test_a_tenant_gets_its_namespace_and_every_object(crds: Kube, make_tenant: MakeTenant) -> None:
    me = make_tenant("alpha", cohort="alpha-lab", quota=QUOTA)
    make_tenant("alpha-peer", cohort="alpha-lab",
                quota={"cpu": {"nominal": 8, "lendingLimit": 2}, "gpus": {"a100": {"nominal": 1}}})
    outcome = reconcile_tenant(crds, "alpha")
    namespaced = {k: v for k, v in verbs(outcome).items() if not k.startswith("PriorityClass")}
    assert set(namespaced.values()) == {"create"} and len(namespaced) == 12, namespaced
    assert drift(crds, "alpha") == []
    namespace = crds.get("Namespace", "alpha")
    assert namespace is not None
    assert namespace["metadata"]["labels"][TENANT_LABEL] == "alpha"
    assert [r["uid"] for r in namespace["metadata"]["ownerReferences"]] == [
        me["metadata"]["uid"]]
    quota = crds.get("ResourceQuota", "shoal-quota", "alpha")
    assert quota is not None
    hard = {k: quantities.value(v) for k, v in quota["spec"]["hard"].items()}
    assert hard == {"requests.cpu": 6, "requests.memory": 8 * 2**30,
                    "requests.nvidia.com/gpu": 3, "pods": 1000}
    assert {p["metadata"]["name"] for p in crds.list("NetworkPolicy", "alpha")} == {
        "shoal-default-deny", "shoal-allow-same-namespace", "shoal-allow-from-router",
        "shoal-allow-dns", "shoal-allow-to-routers", "shoal-allow-routers-to-api",
        "shoal-allow-metrics-to-operator"}
    assert ready(crds, "alpha")[:2] == ("True", "Reconciled")
    assert crds.get("Tenant", "alpha")["status"]["namespace"] == "alpha"  # type: ignore[index]


def test_a_second_reconcile_writes_nothing(crds: Kube, make_tenant: MakeTenant) -> None:
    make_tenant("steady", quota=QUOTA, defaultRequests={"cpu": "1500m", "memory": "1536Mi"})
    reconcile_tenant(crds, "steady")
    before = {b["kind"] + b["metadata"]["name"]: b["metadata"]["resourceVersion"]
              for b in [*crds.list("Tenant"), *_namespaced(crds, "steady")]}
    again = reconcile_tenant(crds, "steady")
    assert again.changes == []
    after = {b["kind"] + b["metadata"]["name"]: b["metadata"]["resourceVersion"]
             for b in [*crds.list("Tenant"), *_namespaced(crds, "steady")]}
    assert after == before  # what the server rewrote (2000m -> 2) still compares equal


def _namespaced(kube: Kube, namespace: str) -> list[Body]:
    kinds = ("ResourceQuota", "LimitRange", "NetworkPolicy", "Role", "RoleBinding")
    return [{**b, "kind": kind} for kind in kinds for b in kube.list(kind, namespace)]


# --- drift is repaired --------------------------------------------------------------


CLUSTER_KINDS = ("Namespace", "PriorityClass")


def delete(kind: str, name: str) -> Callable[[Kube, str], None]:
    def change(kube: Kube, tenant: str) -> None:
        assert kube.delete(kind, name, None if kind in CLUSTER_KINDS else tenant)
    return change


def edit(kind: str, name: str | None, how: Callable[[Body], None]) -> Callable[[Kube, str], None]:
    """Change an object by hand; ``name`` None: the one named after the tenant."""
    def change(kube: Kube, tenant: str) -> None:
        live = kube.get(kind, name or tenant, None if kind in CLUSTER_KINDS else tenant)
        assert live is not None
        how(live)
        kube.replace(live)
    return change


def rebind(kube: Kube, namespace: str) -> None:
    """roleRef cannot change in place: delete the binding and make one to cluster-admin."""
    live = kube.get("RoleBinding", "shoal-members", namespace)
    assert live is not None and kube.delete("RoleBinding", "shoal-members", namespace)
    live["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                       "name": "cluster-admin"}
    kube.create({k: v for k, v in live.items() if k != "metadata"}
                | {"metadata": {"name": "shoal-members", "namespace": namespace}})


DRIFTS = {
    "network-policy-deleted": (delete("NetworkPolicy", "shoal-default-deny"), "create"),
    "limit-range-deleted": (delete("LimitRange", "shoal-defaults"), "create"),
    "quota-raised": (edit("ResourceQuota", "shoal-quota", lambda q: q["spec"].update(
        hard={**q["spec"]["hard"], "requests.nvidia.com/gpu": "64", "services": "3"})),
                     "update"),
    "deny-opened": (edit("NetworkPolicy", "shoal-default-deny",
                         lambda p: p["spec"].update(ingress=[{}])), "update"),
    "role-widened": (edit("Role", "shoal-member", lambda r: r["rules"].append(
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})), "update"),
    "binding-repointed": (rebind, "recreate"),
    "namespace-label-removed": (edit("Namespace", None, lambda n: n["metadata"]["labels"].pop(
        TENANT_LABEL)), "update"),
    "priority-class-edited": (edit("PriorityClass", "shoal-high",
                                   lambda c: c.update(description="mine now")), "update"),
}


@pytest.mark.parametrize("case", list(DRIFTS))
def test_drift_is_repaired_on_the_next_reconcile(
    case: str, crds: Kube, make_tenant: MakeTenant
) -> None:
    name = f"drift-{case}"[:63]
    make_tenant(name, quota=QUOTA)
    reconcile_tenant(crds, name)
    assert repairs(crds, name) == []  # creating them repairs nothing
    change, verb = DRIFTS[case]
    change(crds, name)
    assert drift(crds, name) != []
    outcome = reconcile_tenant(crds, name)
    assert [a.verb for a in outcome.changes] == [verb], [str(a) for a in outcome.changes]
    assert drift(crds, name) == []
    quota = crds.get("ResourceQuota", "shoal-quota", name)
    assert quota is not None and "services" not in quota["spec"]["hard"]
    # The repair is an Event on the Tenant, naming the object and what differed.
    (action,) = outcome.changes
    assert repairs(crds, name) == [repair_message(action)]
    assert action.key in repair_message(action)
    if verb == "create":
        assert repair_message(action).endswith("it was missing")
    else:
        assert "differed from the Tenant" in repair_message(action)
    assert reconcile_tenant(crds, name).changes == []
    assert len(repairs(crds, name)) == 1  # nothing to repair: no new Event


def repairs(kube: Kube, tenant: str) -> list[str]:
    """The messages of the DriftRepaired Events on Tenant ``tenant``, oldest first."""
    me = kube.get("Tenant", tenant)
    assert me is not None
    events = kube.listing("Event", "default", fields=f"involvedObject.name={tenant}")["items"]
    ours = [e for e in events if e["involvedObject"]["kind"] == "Tenant"
            and e["involvedObject"]["uid"] == me["metadata"]["uid"]
            and e["reason"] == "DriftRepaired"]
    return [e["message"] for e in sorted(ours, key=lambda e: e["metadata"]["creationTimestamp"])]


# --- members ------------------------------------------------------------------------


def allowed(control_plane: ControlPlane, group: str, verb: str, resource: str,
            namespace: str, api_group: str = "shoal.dev") -> bool:
    resource, _, sub = resource.partition("/")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": "ann", "groups": [group], "resourceAttributes": {
                  "namespace": namespace, "verb": verb, "group": api_group,
                  "resource": resource, "subresource": sub}}}
    with control_plane.http() as http:
        answer = http.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", json=review)
    assert answer.status_code == 201, answer.text
    return bool(answer.json()["status"].get("allowed"))


def test_members_manage_jobs_in_their_namespace_only(
    control_plane: ControlPlane, crds: Kube, make_tenant: MakeTenant
) -> None:
    for name in ("members-a", "members-b"):
        make_tenant(name, quota=QUOTA)
        reconcile_tenant(crds, name)
    group = "shoal:tenant:members-a"
    assert allowed(control_plane, group, "create", "trainingjobs", "members-a")
    assert allowed(control_plane, group, "get", "pods/log", "members-a", api_group="")
    assert not allowed(control_plane, group, "create", "trainingjobs", "members-b")
    assert not allowed(control_plane, group, "update", "trainingjobs/status", "members-a")
    assert not allowed(control_plane, group, "update", "resourcequotas", "members-a",
                       api_group="")


def test_members_manage_services_in_their_namespace_only(
    control_plane: ControlPlane, crds: Kube, make_tenant: MakeTenant,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.kube.test_deploy_server import kubeconfig_for, service_account_token

    for name in ("svc-members-a", "svc-members-b"):
        make_tenant(name, quota=QUOTA)
        reconcile_tenant(crds, name)
    group = "shoal:tenant:svc-members-a"
    assert allowed(control_plane, group, "get", "inferenceservices/status", "svc-members-a")
    assert not allowed(control_plane, group, "update", "inferenceservices/status",
                       "svc-members-a")
    # A member's own token: a ServiceAccount of the namespace bound to shoal-member.
    with control_plane.http() as http:
        http.post("/api/v1/namespaces/svc-members-a/serviceaccounts",
                  json={"metadata": {"name": "member"}}).raise_for_status()
        http.post("/apis/rbac.authorization.k8s.io/v1/namespaces/svc-members-a/rolebindings",
                  json={"metadata": {"name": "test-member"},
                        "subjects": [{"kind": "ServiceAccount", "name": "member",
                                      "namespace": "svc-members-a"}],
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                    "name": "shoal-member"}}).raise_for_status()
    token = service_account_token(control_plane, "svc-members-a", "member")
    path = kubeconfig_for(control_plane, token, tmp_path_factory.mktemp("member") / "kubeconfig")
    member = Kube.from_kubeconfig(str(path))
    try:
        mine = member.create(_service("digits", "svc-members-a"))
        assert mine["metadata"]["namespace"] == "svc-members-a"
        assert member.get("InferenceService", "digits", "svc-members-a") is not None
        assert [s["metadata"]["name"] for s in member.list("InferenceService",
                                                          "svc-members-a")] == ["digits"]
        with pytest.raises(Forbidden):
            member.replace_status({**mine, "status": {"phase": "Ready"}})
        with pytest.raises(Forbidden):
            member.create(_service("digits", "svc-members-b"))
        with pytest.raises(Forbidden):
            member.get("InferenceService", "digits", "svc-members-b")
        assert member.delete("InferenceService", "digits", "svc-members-a")
        assert crds.get("InferenceService", "digits", "svc-members-a") is None
        assert crds.get("InferenceService", "digits", "svc-members-b") is None
    finally:
        member.close()


def _service(name: str, namespace: str) -> Body:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"tenant": namespace, "framework": "sklearn",
                     "model": {"path": "/models/digits.joblib"}}}


# --- bad names and specs are conditions, not crashes ---------------------------------


@pytest.mark.parametrize(
    ("name", "says"),
    [("team.with.dots", "no dots"), ("t" * 64, "at most 63"),
     ("kube-system", "system namespace")],
)
def test_a_name_that_cannot_name_a_namespace_is_a_condition(
    name: str, says: str, crds: Kube, make_tenant: MakeTenant
) -> None:
    system = copy.deepcopy(crds.get("Namespace", "kube-system"))
    make_tenant(name, quota=QUOTA)
    outcome = reconcile_tenant(crds, name)
    assert outcome.actions == ()
    status, reason, message = ready(crds, name)
    assert (status, reason) == ("False", "InvalidTenant") and says in message
    assert crds.get("Namespace", "kube-system") == system  # untouched


def test_a_spec_the_model_refuses_is_a_condition(crds: Kube, make_tenant: MakeTenant) -> None:
    make_tenant("lends-too-much", quota={"cpu": {"nominal": 1, "lendingLimit": 2}})
    outcome = reconcile_tenant(crds, "lends-too-much")
    assert outcome.actions == () and crds.get("Namespace", "lends-too-much") is None
    status, reason, message = ready(crds, "lends-too-much")
    assert (status, reason) == ("False", "InvalidTenant") and "lendingLimit" in message


def test_a_namespace_shoal_did_not_make_is_never_adopted_or_deleted(
    crds: Kube, make_tenant: MakeTenant
) -> None:
    crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "squatted"}})
    try:
        make_tenant("squatted", quota=QUOTA)
        reconcile_tenant(crds, "squatted")
        assert ready(crds, "squatted")[:2] == ("False", "NamespaceTaken")
        assert crds.list("ResourceQuota", "squatted") == []
        crds.delete("Tenant", "squatted")
        assert reconcile_tenant(crds, "squatted").deleting is False
        namespace = crds.get("Namespace", "squatted")
        assert namespace is not None and not namespace["metadata"].get("deletionTimestamp")
    finally:
        crds.delete("Namespace", "squatted")


# --- deletion ----------------------------------------------------------------------


def test_deleting_the_tenant_removes_its_namespace_and_keeps_shared_classes(
    crds: Kube, make_tenant: MakeTenant
) -> None:
    make_tenant("leaving", quota=QUOTA)
    reconcile_tenant(crds, "leaving")
    crds.delete("Tenant", "leaving")
    assert reconcile_tenant(crds, "leaving").deleting
    wait_gone(crds, "Namespace", "leaving")
    assert _namespaced(crds, "leaving") == []
    assert crds.get("PriorityClass", "shoal-normal") is not None


@pytest.mark.slow
def test_the_garbage_collector_removes_it_without_the_operator(
    crds: Kube, make_tenant: MakeTenant
) -> None:
    """Through the Namespace's ownerReference. Slow: the garbage collector learns of a new
    CRD only at its next discovery (every 30 s), then the namespace is emptied."""
    make_tenant("orphaned", quota=QUOTA)
    reconcile_tenant(crds, "orphaned")
    crds.delete("Tenant", "orphaned")
    wait_gone(crds, "Namespace", "orphaned", timeout_s=120)


HOLD = "shoal.test/hold"


def test_a_recreated_tenant_waits_for_its_old_namespace(
    crds: Kube, make_tenant: MakeTenant
) -> None:
    make_tenant("again", quota=QUOTA)
    reconcile_tenant(crds, "again")
    edit("Namespace", None, lambda n: n["metadata"].update(finalizers=[HOLD]))(crds, "again")
    crds.delete("Tenant", "again")
    assert reconcile_tenant(crds, "again").deleting  # asks the namespace to go
    make_tenant("again", quota=QUOTA)
    try:
        with pytest.raises(UnavailableError, match="terminating"):
            reconcile_tenant(crds, "again")
        assert ready(crds, "again")[1] == "NamespaceTerminating"
    finally:
        edit("Namespace", None, lambda n: n["metadata"].pop("finalizers"))(crds, "again")
    wait_gone(crds, "Namespace", "again")
    reconcile_tenant(crds, "again")
    assert ready(crds, "again")[:2] == ("True", "Reconciled")
    assert drift(crds, "again") == []


def test_a_quotas_usage_moving_costs_no_drift_check(crds: Kube, make_tenant: MakeTenant) -> None:
    """The operator's drift handler lists the Tenants only when an object it owns changed
    in more than its status: a ResourceQuota's usage, which moves with every pod, is not."""
    from shoal.runtime.kubernetes.operator import Tenancy

    name = "drift-usage"
    make_tenant(name, quota=QUOTA)
    reconcile_tenant(crds, name)
    own = Kube(crds.api_client)  # counters of its own
    tenancy = Tenancy(own)
    quota = own.get("ResourceQuota", "shoal-quota", name)
    assert quota is not None
    lists = own.calls.snapshot().get(("list", "Tenant"), 0)
    assert tenancy.drifted("MODIFIED", quota) is False
    assert own.calls.snapshot()[("list", "Tenant")] == lists + 1, "checked once"
    for used in ("1", "2", "0"):
        moved = {**quota, "metadata": {**quota["metadata"], "resourceVersion": used + "00"},
                 "status": {**(quota.get("status") or {}), "used": {"pods": used}}}
        assert tenancy.drifted("MODIFIED", moved) is False
    assert own.calls.snapshot()[("list", "Tenant")] == lists + 1, "no check for usage"
    edited = copy.deepcopy(quota)
    edited["spec"]["hard"]["pods"] = "1"  # changed by hand
    assert tenancy.drifted("MODIFIED", edited) is True
    assert tenancy.drifted("DELETED", quota) is True
    assert own.calls.snapshot()[("list", "Tenant")] == lists + 2
