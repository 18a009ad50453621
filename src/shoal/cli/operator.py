"""``shoal operator``: run the Kubernetes operator; ``shoal operator crds``: print its CRDs.

The operator (``shoal.runtime.kubernetes.operator``) installs or upgrades
Shoal's CRDs when it may, keeps each Tenant's namespace, quota, default
requests, network policies, member role and priority classes in place, and
runs TrainingJobs.  With ``--kubeconfig`` it runs from outside the cluster;
without, in-cluster as its pod's service account (``deploy/``).  It needs the
``kube`` extra; printing the CRDs does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shoal.errors import InputError


def operator(
    action: Annotated[str | None, typer.Argument(
        help="'crds' to print the CustomResourceDefinitions instead of running")] = None,
    kubeconfig: Annotated[Path | None, typer.Option(
        "--kubeconfig", exists=True, dir_okay=False,
        help="kubeconfig of the cluster to operate; unset: in-cluster, as the pod's "
             "service account",
    )] = None,
    context: Annotated[str | None, typer.Option(
        "--context", help="the kubeconfig context to use; unset: its current context",
    )] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="log every handler")] = False,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="with 'crds': yaml (as deploy/crds.yaml) or json")] = "yaml",
    webhook_port: Annotated[int | None, typer.Option(
        "--webhook-port", min=1, max=65535,
        help="serve the validating admission webhook on 127.0.0.1 at this port (for an "
             "operator that runs where the API server can reach its loopback)",
    )] = None,
    leader_elect: Annotated[bool | None, typer.Option(
        "--leader-elect/--no-leader-elect",
        help="act only while holding the Lease shoal-operator, as a standby until then "
             "(so that several replicas may run); default: on in-cluster, off with "
             "--kubeconfig",
    )] = None,
    lease_namespace: Annotated[str | None, typer.Option(
        "--leader-elect-namespace",
        help="the Lease's namespace; default: the pod's own in-cluster, else 'default'",
    )] = None,
    lease_seconds: Annotated[int, typer.Option(
        "--leader-elect-lease-seconds", min=1,
        help="how long a leader's lease lasts without renewal (renewed every 2/15 of it)",
    )] = 15,
    health_port: Annotated[int | None, typer.Option(
        "--health-port", min=1, max=65535,
        help="answer GET /healthz on this port, on every address (for the kubelet's "
             "liveness probe): 200 while the operator's threads run, else 503",
    )] = None,
) -> None:
    """Run the Kubernetes operator until Ctrl-C or SIGTERM, or print its CRDs."""
    if action == "crds":
        print_crds(output)
        return
    if action is not None:
        raise InputError(f"shoal operator: expected no argument or 'crds', got {action!r}")
    try:
        from shoal.runtime.kubernetes import operator as kube_operator
    except ImportError as exc:
        raise InputError(f"shoal operator needs the kube extra ({exc.name} is missing)",
                         hint="pip install 'shoal[kube]'") from exc
    kube_operator.run(None if kubeconfig is None else str(kubeconfig), context, verbose,
                      webhook_port=webhook_port, leader_elect=leader_elect,
                      lease_namespace=lease_namespace, lease_seconds=lease_seconds,
                      health_port=health_port)


def print_crds(output: str) -> None:
    from shoal.runtime.kubernetes.crds import all_crds, render

    if output == "yaml":
        print(render(), end="")
    elif output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": all_crds()}, indent=2))
    else:
        raise InputError(f"--output: expected yaml or json, got {output!r}")
