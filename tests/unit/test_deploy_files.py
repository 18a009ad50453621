"""deploy/: the CRDs current with the models, the ClusterRole able to write the members' Role,
every manifest valid for recent Kubernetes minors (kubernetes-validate's schemas).

The base is rendered and applied to the real API server, and the operator run under its
ServiceAccount, in tests/kube/test_deploy_server.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.runtime.kubernetes.crds import all_crds, render
from shoal.runtime.kubernetes.tenancy_access import member_role

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VALIDATED_MINORS = ("1.25", "1.30", "1.34")
"""Kubernetes minors whose published schemas the manifests must meet (kubernetes-validate
ships 1.25 and later only; the server tests use v1.20.2)."""


def base_documents() -> list[dict[str, Any]]:
    """The objects of the kustomize base, read from the files it lists (plain resources)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def cluster_role() -> dict[str, Any]:
    return next(d for d in base_documents() if d["kind"] == "ClusterRole")


def test_deploy_crds_yaml_is_current() -> None:
    assert (DEPLOY / "crds.yaml").read_text() == render(), (
        "deploy/crds.yaml is out of date with the models: "
        "run python -m shoal.runtime.kubernetes.crds > deploy/crds.yaml")


def test_the_module_and_the_cli_print_the_crds() -> None:
    printed = subprocess.run([sys.executable, "-m", "shoal.runtime.kubernetes.crds"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render()
    result = CliRunner().invoke(app, ["operator", "crds"])
    assert result.exit_code == 0, result.output
    assert result.output == render()
    assert list(yaml.safe_load_all(result.output)) == all_crds()


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = sorted(d["kind"] for d in base_documents())
    assert kinds == sorted(["CustomResourceDefinition"] * len(all_crds()) + [
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"])


def _grants(rule: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    return (group in rule["apiGroups"] and resource in rule["resources"]
            and verb in rule["verbs"] and not rule.get("resourceNames"))


def test_the_cluster_role_holds_what_the_members_role_grants() -> None:
    # Kubernetes refuses to let a subject write a Role granting more than it holds
    # (without `escalate`): the operator must hold every permission of shoal-member.
    rules = cluster_role()["rules"]
    missing = [
        f"{group or 'core'} {resource} {verb}"
        for wanted in member_role()["rules"]
        for group in wanted["apiGroups"] for resource in wanted["resources"]
        for verb in wanted["verbs"]
        if not any(_grants(rule, group, resource, verb) for rule in rules)
    ]
    assert missing == []


def test_the_cluster_role_has_no_wildcards_and_no_escalation() -> None:
    for rule in cluster_role()["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert "secrets" not in rule["resources"], rule
    crd_rules = [r for r in cluster_role()["rules"]
                 if "customresourcedefinitions" in r["resources"]]
    names = {m["metadata"]["name"] for m in all_crds()}
    for rule in crd_rules:  # only create can't name them (the name is unknown then)
        assert rule["verbs"] == ["create"] or set(rule["resourceNames"]) == names, rule


@pytest.mark.parametrize("minor", VALIDATED_MINORS)
def test_the_manifests_are_valid_for_recent_kubernetes(minor: str) -> None:
    validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (the dev extra)")
    for doc in base_documents():
        validate.validate(doc, minor, strict=True)  # raises on an error or an unknown field
