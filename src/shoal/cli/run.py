"""``shoal run``: an ephemeral control plane that runs a scenario to completion.

The file holds NodePools, Tenants and TrainingJobs.  A job annotated with
``shoal.dev/submit-after: "<seconds>"`` is submitted that long after the
start, so a scenario can make one team's job arrive while another's runs.
The command waits for every job to finish and prints the report: jobs,
timeline, tenants' GPU shares against their entitlements, and lost work.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shoal.api.client import ShoalClient
from shoal.cli.jobs import _resolve_working_dirs
from shoal.control.records import FINAL_PHASES
from shoal.control.report import build_report
from shoal.domain.manifest import parse_manifests
from shoal.errors import InputError, ShoalError

SUBMIT_AFTER = "shoal.dev/submit-after"
out = Console()
err = Console(stderr=True)


def run(
    file: Annotated[Path, typer.Argument(help="scenario: NodePools, Tenants, TrainingJobs")],
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    home: Annotated[Path | None, typer.Option("--state-dir", help="keep state here")] = None,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 900,
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
) -> None:
    """Run a scenario on this machine with real processes, then print the report."""
    if output not in ("table", "json"):
        raise InputError(f"--output: expected table or json, got {output!r}")
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    text = _resolve_working_dirs(file)
    parse_manifests(text, str(file))  # every error before anything starts
    docs = [d for d in yaml.safe_load_all(text) if d]
    infra = [d for d in docs if d.get("kind") != "TrainingJob"]
    jobs = sorted((d for d in docs if d.get("kind") == "TrainingJob"), key=_delay)
    if not jobs:
        raise InputError(f"{file}: no TrainingJob to run")
    from shoal.api import launch

    directory = home or Path(tempfile.mkdtemp(prefix="shoal-run-"))
    running = launch.start(directory, grace_seconds=grace)
    api = ShoalClient(running.url, running.token)
    try:
        report = _drive(api, infra, jobs, timeout, quiet=output == "json")
    except KeyboardInterrupt:
        err.print("interrupted: stopping the scenario's jobs")
        _cancel(api)
        raise
    finally:
        api.close()
        running.stop()
    if output == "json":
        print(json.dumps(report))
    else:
        _print_report(report, directory)


def _delay(doc: dict[str, Any]) -> float:
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    try:
        return float(annotations.get(SUBMIT_AFTER, 0))
    except ValueError:
        raise InputError(
            f"{doc['metadata'].get('name')}: annotation {SUBMIT_AFTER} must be a number of seconds"
        ) from None


def _drive(api: ShoalClient, infra: list[dict[str, Any]], jobs: list[dict[str, Any]],
           timeout: float, quiet: bool) -> dict[str, Any]:
    if infra:
        api.apply_text(yaml.safe_dump_all(infra, sort_keys=False), "scenario")
    start = time.time()
    queue = list(jobs)
    tick = threading.Event()
    with Live(Table(), console=err, transient=True, refresh_per_second=4,
              auto_refresh=not quiet) as live:
        while True:
            elapsed = time.time() - start
            while queue and _delay(queue[0]) <= elapsed:
                api.apply_text(yaml.safe_dump(queue.pop(0), sort_keys=False), "scenario")
            rows = api.jobs()
            if not quiet:
                live.update(_progress(rows, elapsed))
            if not queue and rows and all(r["phase"] in FINAL_PHASES for r in rows):
                break
            if elapsed > timeout:
                _cancel(api)
                raise ShoalError(f"the scenario did not finish within {timeout:.0f} s")
            tick.wait(0.2)  # the scenario's own pace; the control loop runs independently
    details = [api.job(row["name"]) for row in rows]
    report = build_report(details, api.events(), api.tenants(), api.nodes(), start)
    for job in report["jobs"]:
        job["result"] = _last_line(api.logs(job["name"], 0))
    return report


def _last_line(log: str) -> str:
    """The pod's last words (training scripts print their final accuracy there)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def _cancel(api: ShoalClient) -> None:
    for row in api.jobs():
        if row["phase"] not in FINAL_PHASES:
            api.delete(row["name"])


def _progress(rows: list[dict[str, Any]], elapsed: float) -> Table:
    table = Table(title=f"running scenario: {elapsed:.0f} s")
    for column in ("job", "tenant", "phase", "attempts", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["tenant"], row["phase"], str(row["attempts"]),
                      row["reason"][:60])
    return table


def _print_report(report: dict[str, Any], directory: Path) -> None:
    jobs = Table(title="jobs")
    for column in ("job", "tenant", "phase", "tries", "preempted", "lost s", "JCT s"):
        jobs.add_column(column, no_wrap=True)
    for job in report["jobs"]:
        jct = "-" if job["jct_s"] is None else f"{job['jct_s']:.1f}"
        jobs.add_row(job["name"], job["tenant"], job["phase"], str(job["attempts"]),
                     str(job["preemptions"]), f"{job['lost_seconds']:.1f}", jct)
    out.print(jobs)
    for job in report["jobs"]:
        # The pod's last log line: training scripts print their final accuracy there.
        out.print(f"  {job['name']}: {job.get('result') or job['reason']}", highlight=False)
    timeline = Table(title="timeline")
    for column in ("t (s)", "event", "job", "tenant", "details"):
        timeline.add_column(column)
    for event in report["events"]:
        extra = {
            k: v for k, v in event.items()
            if k not in ("time_s", "event", "job", "tenant") and v not in ("", None)
        }
        timeline.add_row(f"{event['time_s']:.1f}", event["event"], event["job"] or "",
                         event["tenant"] or "", ", ".join(f"{k}={v}" for k, v in extra.items()))
    out.print(timeline)
    tenants = Table(title="tenants: GPU share vs entitlement")
    for column in ("tenant", "entitlement", "mean share", "GPU-seconds"):
        tenants.add_column(column)
    for tenant in report["tenants"]:
        tenants.add_row(tenant["tenant"], f"{100 * tenant['entitlement']:.0f} %",
                        f"{100 * tenant['share_mean']:.0f} %", f"{tenant['gpu_seconds']:.0f}")
    out.print(tenants)
    lost = sum(job["lost_seconds"] for job in report["jobs"])
    out.print(f"lost work: {lost:.1f} s of job time; state and logs in {directory}",
              highlight=False)
