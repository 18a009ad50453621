"""Options that several commands share: who pods run as, which cluster to talk to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ContextOption", "KubeconfigOption", "PodUidBaseOption", "PodUserOption"]

PodUserOption = Annotated[str | None, typer.Option(
    "--pod-user", show_default="auto, or $SHOAL_POD_USER",
    help="who pods run as: tenant (an unprivileged user per tenant; needs root), self (the "
    "plane's own user) or auto (tenant as root, else self)")]
PodUidBaseOption = Annotated[int | None, typer.Option(
    "--pod-uid-base", min=1000, max=2**32 - 2_000_001, show_default="2000000000",
    help="the first uid given to a tenant's pods (one per tenant, never reused)")]

KubeconfigOption = Annotated[Path | None, typer.Option(
    "--kubeconfig", exists=True, dir_okay=False,
    help="talk to this Kubernetes cluster (Shoal's CRDs and operator) instead of Shoal's "
         "control plane; only this flag selects a cluster ($KUBECONFIG is not read)")]
ContextOption = Annotated[str | None, typer.Option(
    "--context", help="with --kubeconfig: the context to use (default: its current-context)")]
