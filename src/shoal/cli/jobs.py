"""kubectl-style verbs: ``apply``, ``get``, ``describe``, ``logs``, ``delete``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from shoal.cli.connect import client
from shoal.errors import InputError

out = Console()

Server = Annotated[str | None, typer.Option(help="control plane URL (default: local)")]
Token = Annotated[str | None, typer.Option(help="API token (default: $SHOAL_TOKEN or local admin)")]
Home = Annotated[Path | None, typer.Option("--state-dir", help="local state (default ~/.shoal)")]
Output = Annotated[str, typer.Option("--output", "-o", help="table, json or yaml")]


def _emit(data: Any, output: str) -> bool:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
        return True
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return True
    if output != "table":
        raise InputError(f"--output: expected table, json or yaml, got {output!r}")
    return False


def _resolve_working_dirs(path: Path) -> str:
    """The manifest's text, with relative ``workingDir`` made absolute (from the file's folder)."""
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    changed = False
    for doc in docs:
        spec = doc.get("spec") if isinstance(doc, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("workingDir"), str):
            folder = Path(spec["workingDir"])
            if not folder.is_absolute():
                spec["workingDir"] = str((path.resolve().parent / folder).resolve())
                changed = True
    return yaml.safe_dump_all(docs, sort_keys=False) if changed else text


def apply(
    file: Annotated[Path, typer.Option("--filename", "-f", help="manifest file (YAML)")],
    server: Server = None, token: Token = None, home: Home = None,
) -> None:
    """Create tenants, node pools and training jobs from a manifest file."""
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    text = _resolve_working_dirs(file)
    with client(server, token, home) as api:
        for item in api.apply_text(text, str(file)):
            out.print(f"{item['kind'].lower()}/{item['name']} applied", highlight=False)


def get(
    what: Annotated[str, typer.Argument(help="jobs")],
    server: Server = None, token: Token = None, home: Home = None, output: Output = "table",
) -> None:
    """List jobs (a tenant's token sees its own)."""
    if what not in ("jobs", "job"):
        raise InputError(f"shoal get: expected 'jobs', got {what!r}")
    with client(server, token, home) as api:
        jobs = api.jobs()
    if _emit(jobs, output):
        return
    table = Table()
    for column in ("NAME", "TENANT", "PHASE", "ATTEMPTS", "PREEMPTIONS", "LOST S", "REASON"):
        table.add_column(column, no_wrap=column != "REASON")
    for job in jobs:
        table.add_row(job["name"], job["tenant"], job["phase"], str(job["attempts"]),
                      str(job["preemptions"]), f"{job['lost_seconds']:.1f}", job["reason"])
    out.print(table)


def describe(
    what: Annotated[str, typer.Argument(help="job")],
    name: Annotated[str, typer.Argument(help="the job's name")],
    server: Server = None, token: Token = None, home: Home = None, output: Output = "table",
) -> None:
    """Show one job: its spec, pods and events."""
    if what != "job":
        raise InputError(f"shoal describe: expected 'job', got {what!r}")
    with client(server, token, home) as api:
        job = api.job(name)
    if _emit(job, output):
        return
    for key in ("name", "tenant", "phase", "reason", "attempts", "preemptions", "lost_seconds"):
        out.print(f"[bold]{key}:[/] {job[key]}", highlight=False)
    for pod in job["pods"]:
        out.print(f"  pod {pod['index']}: node={pod['node']} gpus={pod.get('gpus')} "
                  f"pid={pod.get('pid')} state={pod.get('state')}", highlight=False)
    out.print("[bold]events:[/]")
    for event in job["events"]:
        out.print(f"  {event['time']:.3f} {event['kind']} {event.get('data') or ''}",
                  highlight=False)


def logs(
    name: Annotated[str, typer.Argument(help="the job's name")],
    pod: Annotated[int, typer.Option(help="pod index (rank)")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    server: Server = None, token: Token = None, home: Home = None,
) -> None:
    """Print a pod's log."""
    with client(server, token, home) as api:
        if not follow:
            print(api.logs(name, pod), end="")
            return
        try:
            for chunk in api.follow_logs(name, pod):
                print(chunk, end="", flush=True)
        except KeyboardInterrupt:
            Console(stderr=True).print(
                f"\nstopped following; job {name} continues (shoal logs {name} -f to resume)"
            )


def delete(
    what: Annotated[str, typer.Argument(help="job")],
    name: Annotated[str, typer.Argument(help="the job's name")],
    server: Server = None, token: Token = None, home: Home = None,
) -> None:
    """Stop a job's pods (SIGTERM, then SIGKILL after the grace period) and cancel it."""
    if what != "job":
        raise InputError(f"shoal delete: expected 'job', got {what!r}")
    with client(server, token, home) as api:
        api.delete(name)
    out.print(f"job/{name} deleted", highlight=False)
