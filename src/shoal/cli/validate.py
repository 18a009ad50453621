"""``shoal validate``: check manifests without applying anything.

Besides the schema, it runs the checks ``apply`` makes (``shoal.app.checks``)
against the tenants and node pools defined in the same files, and checks
commands and working folders on this machine (where the embedded control
plane runs them).  What needs the control plane's state (a tenant defined
elsewhere) is named in a note and skipped, or is an error with ``--strict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from shoal.api.workspace import check_host
from shoal.app.checks import offline_checks
from shoal.cli.manifests import load
from shoal.domain.job import TrainingJob
from shoal.domain.tenant import Tenant

out = Console()
err = Console(stderr=True)


def validate(
    files: Annotated[list[Path], typer.Argument(help="manifest files or folders (YAML)")],
    strict: Annotated[bool, typer.Option(
        "--strict", help="fail on what cannot be checked offline (tenants defined elsewhere)"
    )] = False,
) -> None:
    """Validate manifests: every error names the file, the line and the field."""
    loaded = [(path, load(path)) for path in files]
    manifests = [m for _, found in loaded for m in found]
    notes = offline_checks(manifests, strict)
    tenants = {m.metadata.name: m.spec.model_dump(mode="json", by_alias=True)
               for m in manifests if isinstance(m, Tenant)}
    for job in (m for m in manifests if isinstance(m, TrainingJob)):
        check_host(job, tenants.get(job.spec.tenant, {}), None)
    for path, found in loaded:
        for manifest in found:
            out.print(f"{path}: {manifest.kind} {manifest.metadata.name} is valid",
                      highlight=False)
    for note in notes:
        err.print(f"[yellow]note:[/] {escape(note)} (skipped; --strict makes it an error)",
                  highlight=False, soft_wrap=True)
