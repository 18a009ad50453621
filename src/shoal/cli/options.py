"""Options that several commands share: who pods run as."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["PodUidBaseOption", "PodUserOption"]

PodUserOption = Annotated[str | None, typer.Option(
    "--pod-user", show_default="auto, or $SHOAL_POD_USER",
    help="who pods run as: tenant (an unprivileged user per tenant; needs root), self (the "
    "plane's own user) or auto (tenant as root, else self)")]
PodUidBaseOption = Annotated[int | None, typer.Option(
    "--pod-uid-base", min=1000, max=2**32 - 2_000_001, show_default="2000000000",
    help="the first uid given to a tenant's pods (one per tenant, never reused)")]
