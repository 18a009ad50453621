"""Deciding create / update / recreate / keep, quantities by value, discovery (no server)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from shoal.errors import UnavailableError
from shoal.runtime.kubernetes import quantities
from shoal.runtime.kubernetes.discovery import Discovery
from shoal.runtime.kubernetes.sync import plan

Body = dict[str, Any]


def quota(**hard: str) -> Body:
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "q", "namespace": "t", "labels": {"shoal.dev/tenant": "t"}},
            "spec": {"hard": hard}}


def stored(body: Body, **changes: Any) -> Body:
    """``body`` as a server returns it: server metadata, a status, then ``changes``."""
    live = copy.deepcopy(body)
    live["metadata"] |= {"uid": "u", "resourceVersion": "42",
                         "annotations": {"note": "kept"}}
    live["status"] = {"used": {}}
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = live
        for part in parents:
            node = node[part]
        node[last] = value
    return live


@pytest.mark.parametrize(
    ("text", "worth"),
    [("2", "2"), ("2000m", "2"), ("1500m", "1.5"), ("4Gi", str(4 * 2**30)),
     ("4096Mi", str(4 * 2**30)), ("1k", "1000"), ("1e3", "1000"), ("0.5", "0.5")],
)
def test_quantities_are_compared_by_value(text: str, worth: str) -> None:
    assert quantities.value(text) == Decimal(worth)


def test_quantities_are_written_as_people_write_them() -> None:
    assert (quantities.cpu(2000), quantities.cpu(1500), quantities.cpu(0)) == ("2", "1500m", "0")
    assert (quantities.memory(4096), quantities.memory(1536), quantities.memory(2**20),
            quantities.memory(0)) == ("4Gi", "1536Mi", "1Ti", "0Mi")
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantities.value("4 cores")


def test_absent_is_created() -> None:
    desired = quota(**{"requests.cpu": "2"})
    action = plan(desired, None)
    assert (action.verb, action.body) == ("create", desired)
    assert str(action) == "create ResourceQuota t/q"


def test_what_the_server_rewrote_or_others_added_is_kept() -> None:
    desired = quota(**{"requests.cpu": "2000m", "requests.memory": "4096Mi"})
    live = stored(quota(**{"requests.cpu": "2", "requests.memory": "4Gi"}))
    live["metadata"]["labels"]["team"] = "x"
    assert plan(desired, live).verb == "keep"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spec__hard": {"requests.cpu": "3"}}, "spec"),
        ({"spec__hard": {"requests.cpu": "2", "services": "1"}}, "spec"),
        ({"metadata__labels": {}}, "metadata.labels"),
    ],
)
def test_a_drifted_object_is_updated_over_the_live_one(change: Body, field: str) -> None:
    desired = quota(**{"requests.cpu": "2"})
    action = plan(desired, stored(desired, **change))
    assert (action.verb, action.changed) == ("update", (field,))
    assert action.body["spec"] == desired["spec"]
    meta = action.body["metadata"]
    assert meta["resourceVersion"] == "42"  # fenced by what was read
    assert meta["annotations"] == {"note": "kept"}
    assert meta["labels"]["shoal.dev/tenant"] == "t"
    assert "status" not in action.body


def test_a_missing_owner_reference_is_added_beside_others() -> None:
    ours = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "name": "t", "uid": "mine"}
    desired = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "t", "ownerReferences": [ours]}}
    theirs = {**ours, "uid": "theirs"}
    live = stored(desired, metadata__ownerReferences=[theirs], spec={"finalizers": ["k"]})
    action = plan(desired, live)
    assert action.verb == "update"
    assert action.body["metadata"]["ownerReferences"] == [theirs, ours]
    assert action.body["spec"] == {"finalizers": ["k"]}  # a Namespace's spec is not Shoal's


@pytest.mark.parametrize(
    ("desired", "change", "verb"),
    [
        ({"kind": "RoleBinding", "subjects": [], "roleRef": {"kind": "Role", "name": "a"}},
         {"roleRef": {"kind": "Role", "name": "b"}}, "recreate"),
        ({"kind": "RoleBinding", "subjects": [], "roleRef": {"kind": "Role", "name": "a"}},
         {"subjects": [{"kind": "User", "name": "eve"}]}, "update"),
        ({"kind": "PriorityClass", "value": 1000, "description": "d"}, {"value": 5}, "recreate"),
        ({"kind": "PriorityClass", "value": 1000, "description": "d"},
         {"globalDefault": True}, "update"),
        ({"kind": "PriorityClass", "value": 1000, "description": "d"},
         {"globalDefault": False}, "keep"),
    ],
)
def test_fields_the_server_will_not_change_mean_recreate(
    desired: Body, change: Body, verb: str
) -> None:
    desired = {"apiVersion": "x/v1", "metadata": {"name": "n"}, **desired}
    assert plan(desired, stored(desired, **change)).verb == verb


def resource_lists(served: dict[str, list[Body]]) -> tuple[Discovery, list[str]]:
    asked: list[str] = []

    def lists(group_version: str) -> Body | None:
        asked.append(group_version)
        found = served.get(group_version)
        return None if found is None else {"resources": found}

    return Discovery(lists), asked


def test_discovery_takes_the_newest_served_version_and_asks_once() -> None:
    pdb = {"name": "poddisruptionbudgets", "kind": "PodDisruptionBudget", "namespaced": True}
    status = {"name": "poddisruptionbudgets/status", "kind": "PodDisruptionBudget"}
    discovery, asked = resource_lists({"policy/v1beta1": [status, pdb]})
    found = discovery.kind("PodDisruptionBudget")
    assert (found.api_version, found.plural, found.namespaced) == (
        "policy/v1beta1", "poddisruptionbudgets", True)
    discovery.kind("PodDisruptionBudget")
    assert asked == ["policy/v1", "policy/v1beta1"]
    new, _ = resource_lists({"policy/v1": [pdb], "policy/v1beta1": [pdb]})
    assert new.api_version("PodDisruptionBudget") == "policy/v1"


def test_discovery_names_what_is_not_served() -> None:
    discovery, _ = resource_lists({})
    with pytest.raises(UnavailableError, match=r"Tenant at none of shoal.dev/v1alpha1") as caught:
        discovery.kind("Tenant")
    assert caught.value.hint == "install Shoal's CRDs"
    core, _ = resource_lists({"v1": [{"name": "resourcequotas", "kind": "ResourceQuota",
                                      "namespaced": True}]})
    assert (core.kind("ResourceQuota").group, core.kind("ResourceQuota").snake) == (
        "", "resource_quota")
