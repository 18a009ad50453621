"""``shoal operator``: run the Kubernetes operator from outside the cluster.

So far it keeps each Tenant's namespace, quota, default requests, network
policies, member role and priority classes in place
(``shoal.runtime.kubernetes.operator``).  It needs the ``kube`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.errors import InputError


def operator(
    kubeconfig: Annotated[Path, typer.Option(
        "--kubeconfig", help="kubeconfig of the cluster to operate", exists=True, dir_okay=False,
    )],
    context: Annotated[str | None, typer.Option(
        "--context", help="the kubeconfig context to use; unset: its current context",
    )] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="log every handler")] = False,
) -> None:
    """Run the Kubernetes operator until Ctrl-C or SIGTERM."""
    try:
        from shoal.runtime.kubernetes import operator as kube_operator
    except ImportError as exc:
        raise InputError(f"shoal operator needs the kube extra ({exc.name} is missing)",
                         hint="pip install 'shoal[kube]'") from exc
    kube_operator.run(str(kubeconfig), context, verbose)
