"""``shoal validate``: check manifests without applying anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shoal.domain.manifest import load_manifest_file

out = Console()


def validate(
    files: Annotated[list[Path], typer.Argument(help="manifest files (YAML, multi-document)")],
) -> None:
    """Validate manifests: every error names the file, the line and the field."""
    for path in files:
        for manifest in load_manifest_file(path):
            out.print(f"{path}: {manifest.kind} {manifest.metadata.name} is valid", highlight=False)
