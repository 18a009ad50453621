"""``shoal run``: an ephemeral control plane that runs a scenario to completion.

The file holds NodePools, Tenants and TrainingJobs.  A job may arrive later
than the start, on an *event* rather than a timer, so a scenario behaves the
same on a fast machine and on a slow, busy one:

- ``shoal.dev/submit-when: "<job> <condition>"``: submit once another job of
  the scenario is ``running``, has ``checkpointed`` (saved a checkpoint),
  ``succeeded`` or ``finished`` (any final phase);
- ``shoal.dev/submit-after: "<seconds>"``: that long after the start (or
  after the ``submit-when`` condition was met).

The command waits for every job to finish and prints the report: jobs (with
the step each resumed from), timeline, tenants' GPU shares against their
entitlements, and lost work.  It exits 1 when a job did not succeed, 2 for
bad input and 130 when interrupted (the scenario's jobs are stopped).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shoal.api.client import ShoalClient
from shoal.app.report import build_report
from shoal.cli.manifests import resolve_working_dirs
from shoal.cli.options import PodUserOption
from shoal.cli.tables import show, table
from shoal.domain.phases import FINAL_PHASES
from shoal.errors import InputError, ShoalError

SUBMIT_AFTER = "shoal.dev/submit-after"
SUBMIT_WHEN = "shoal.dev/submit-when"
CONDITIONS = ("running", "checkpointed", "succeeded", "finished")
out = Console()
err = Console(stderr=True)


@dataclass
class Arrival:
    """A job of the scenario and when to submit it."""

    doc: dict[str, Any]
    after: float = 0.0
    when: tuple[str, str] | None = None
    ready_at: float | None = None  # elapsed seconds at which its condition was met

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])


def run(
    file: Annotated[Path, typer.Argument(help="scenario: NodePools, Tenants, TrainingJobs")],
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    home: Annotated[Path | None, typer.Option(
        "--state-dir", help="keep state here (default: a new temporary folder, named in the "
        "report)")] = None,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 900,
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
    remove: Annotated[bool, typer.Option(
        "--rm", help="delete the run's state folder (logs, checkpoints) afterwards")] = False,
    pod_user: PodUserOption = None,
) -> None:
    """Run a scenario on this machine with real processes, then print the report."""
    if output not in ("table", "json"):
        raise InputError(f"--output: expected table or json, got {output!r}")
    if file.is_dir():
        raise InputError(f"{file}: is a folder; shoal run takes one scenario file")
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    text = resolve_working_dirs(file)  # every error, located, before anything starts
    docs = [d for d in yaml.safe_load_all(text) if d]
    infra = [d for d in docs if d.get("kind") != "TrainingJob"]
    arrivals = plan_arrivals(file, [d for d in docs if d.get("kind") == "TrainingJob"])
    from shoal.api import launch

    # A temporary folder by default: every sandbox hides /tmp behind a private
    # one, so no pod can read another run's admin token, logs or checkpoints.
    directory = home or Path(tempfile.mkdtemp(
        prefix=f"shoal-run-{file.stem}-{datetime.now():%Y%m%d-%H%M%S}-"))
    pod_user, warning = launch.scenario_pod_user(pod_user, [a.doc for a in arrivals])
    if warning:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    running = launch.start(directory, grace_seconds=grace, pod_user=pod_user)
    api = ShoalClient(running.url, running.token)
    try:
        report = _drive(api, infra, arrivals, timeout, quiet=output == "json")
    except BaseException as exc:
        # Pods outlive their control plane: stop the scenario's before leaving.
        if isinstance(exc, KeyboardInterrupt):
            err.print("interrupted: stopping the scenario's jobs")
        _cancel(api)
        _wait_final(api, grace + 10)
        raise
    finally:
        api.close()
        running.stop()
    report["state_dir"] = None if remove else str(directory)
    if remove:
        shutil.rmtree(directory, ignore_errors=True)
    if output == "json":
        print(json.dumps(report))
    else:
        _print_report(report)
    failed = [j for j in report["jobs"] if j["phase"] != "Succeeded"]
    if failed:
        listed = ", ".join(f"{j['name']} ({j['phase']}: {j['reason'] or 'no reason'})"
                           for j in failed)
        err.print(f"[bold red]error:[/] {len(failed)} job(s) did not succeed: {listed}",
                  highlight=False)
        raise typer.Exit(1)


def plan_arrivals(file: Path, jobs: list[dict[str, Any]]) -> list[Arrival]:
    """When each job is submitted, from its annotations; bad annotations are input errors."""
    if not jobs:
        raise InputError(f"{file}: no TrainingJob to run")
    names = {str(d["metadata"]["name"]) for d in jobs}
    arrivals = []
    for doc in jobs:
        name = doc["metadata"]["name"]
        annotations = doc["metadata"].get("annotations") or {}
        where = f"{file}: TrainingJob {name}: metadata.annotations"
        arrival = Arrival(doc)
        if SUBMIT_AFTER in annotations:
            try:
                arrival.after = float(annotations[SUBMIT_AFTER])
            except (TypeError, ValueError):
                arrival.after = -1
            if not arrival.after >= 0:
                raise InputError(f"{where}.{SUBMIT_AFTER}: expected a number of seconds >= 0, "
                                 f"got {annotations[SUBMIT_AFTER]!r}")
        if SUBMIT_WHEN in annotations:
            words = str(annotations[SUBMIT_WHEN]).split()
            if len(words) != 2 or words[1] not in CONDITIONS:
                raise InputError(
                    f"{where}.{SUBMIT_WHEN}: expected '<job> <condition>' with a condition of "
                    f"{', '.join(CONDITIONS)}; got {annotations[SUBMIT_WHEN]!r}")
            if words[0] not in names or words[0] == name:
                raise InputError(f"{where}.{SUBMIT_WHEN}: {words[0]!r} is not another "
                                 f"TrainingJob of this scenario ({', '.join(sorted(names))})")
            arrival.when = (words[0], words[1])
        arrivals.append(arrival)
    _check_no_cycle(file, arrivals)
    return arrivals


def _check_no_cycle(file: Path, arrivals: list[Arrival]) -> None:
    waits = {a.name: a.when[0] for a in arrivals if a.when is not None}
    for start in waits:
        seen, name = [start], waits[start]
        while name in waits:
            if name in seen:
                raise InputError(f"{file}: {SUBMIT_WHEN} waits in a circle: "
                                 f"{' -> '.join([*seen, name])}")
            seen.append(name)
            name = waits[name]


def _condition_met(job: dict[str, Any] | None, condition: str) -> bool:
    if job is None:
        return False
    if condition == "running":
        return int(job.get("attempts") or 0) > 0
    if condition == "checkpointed":
        return job.get("checkpoint_time") is not None
    phase = str(job["phase"])
    if condition == "succeeded":
        return phase == "Succeeded"
    return phase in FINAL_PHASES


def _drive(api: ShoalClient, infra: list[dict[str, Any]], arrivals: list[Arrival],
           timeout: float, quiet: bool) -> dict[str, Any]:
    start = time.time()
    if infra:
        api.apply_text(yaml.safe_dump_all(infra, sort_keys=False), "scenario")
    queue = list(arrivals)
    tick = threading.Event()
    with Live(Table(), console=err, transient=True, refresh_per_second=4,
              auto_refresh=not quiet) as live:
        while True:
            elapsed = time.time() - start
            rows = {row["name"]: row for row in api.jobs()}
            due = [arrival for arrival in queue if _due(arrival, rows, elapsed)]
            for arrival in due:
                api.apply_text(yaml.safe_dump(arrival.doc, sort_keys=False), "scenario")
                queue.remove(arrival)
            if not quiet:
                live.update(_progress(list(rows.values()), elapsed))
            # ``rows`` predates what was just submitted: decide on the next look.
            if not due and not queue and rows and all(
                    r["phase"] in FINAL_PHASES for r in rows.values()):
                break
            if elapsed > timeout:
                _cancel(api)
                raise ShoalError(f"the scenario did not finish within {timeout:.0f} s")
            tick.wait(0.2)  # the scenario's own pace; the control loop runs independently
    details = [api.job(row["name"], row["tenant"]) for row in api.jobs()]
    report = build_report(details, api.events(), api.tenants(), api.nodes(), start)
    for job in report["jobs"]:
        job["result"] = _last_line(api.logs(job["name"], 0))
    return report


def _due(arrival: Arrival, rows: dict[str, dict[str, Any]], elapsed: float) -> bool:
    """Whether to submit now; an event that can no longer happen is an error."""
    if arrival.when is not None and arrival.ready_at is None:
        other, condition = arrival.when
        row = rows.get(other)
        if _condition_met(row, condition):
            arrival.ready_at = elapsed
        elif row is not None and row["phase"] in FINAL_PHASES:
            raise ShoalError(
                f"{arrival.name} waits for {other} to be {condition}, but {other} ended "
                f"{row['phase']} without it ({row.get('reason') or 'no reason'})")
        else:
            return False
    return (arrival.ready_at or 0.0) + arrival.after <= elapsed


def _last_line(log: str) -> str:
    """The pod's last words (training scripts print their final accuracy there)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def _cancel(api: ShoalClient) -> None:
    for row in api.jobs():
        if row["phase"] not in FINAL_PHASES:
            api.delete(row["name"], row["tenant"])


def _wait_final(api: ShoalClient, timeout: float) -> None:
    """Let the deleted jobs' pods stop (bounded) before the control plane goes away."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while time.monotonic() < deadline:
        if all(row["phase"] in FINAL_PHASES for row in api.jobs()):
            return
        tick.wait(0.1)


def _progress(rows: list[dict[str, Any]], elapsed: float) -> Table:
    table = Table(title=f"running scenario: {elapsed:.0f} s")
    for column in ("job", "tenant", "phase", "attempts", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["tenant"], row["phase"], str(row["attempts"]),
                      row["reason"][:60])
    return table


def _resumed(job: dict[str, Any]) -> str:
    if not job.get("resumed"):
        return "-"
    step = job.get("resumed_from")
    return "checkpoint" if step is None else f"step {step}"


def _details(event: dict[str, Any]) -> str:
    hidden = ("time_s", "event", "job", "tenant", "placement", "resumed", "kept_seconds")
    parts = []
    for key, value in event.items():
        if key in hidden or value in ("", None, []):
            continue
        if key == "reason" and event["event"] == "requeued":
            continue  # said by the preempted event just before
        shown = f"{value:g}" if isinstance(value, float) else (
            ",".join(map(str, value)) if isinstance(value, list) else str(value))
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def _print_report(report: dict[str, Any]) -> None:
    rows = []
    for job in report["jobs"]:
        jct = "-" if job["jct_s"] is None else f"{job['jct_s']:.1f}"
        rows.append([job["name"], job["tenant"], job["phase"], str(job["attempts"]),
                     str(job["preemptions"]), _resumed(job), f"{job['lost_seconds']:.1f}", jct])
    show(table(("JOB", "TENANT", "PHASE", "TRIES", "PREEMPTED", "RESUMED FROM", "LOST S",
                "JCT S"), rows, wide=True))
    for job in report["jobs"]:
        # The pod's last log line: training scripts print their final accuracy there.
        show(f"  {job['name']}: {job.get('result') or job['reason']}")
    show("")
    events = [[f"{e['time_s']:.1f}", e["event"], e["job"] or "", e["tenant"] or "", _details(e)]
              for e in report["events"]]
    show(table(("T (S)", "EVENT", "JOB", "TENANT", "DETAILS"), events, wide=True))
    show("")
    shares = [[t["tenant"], f"{100 * t['entitlement']:.0f} %", f"{100 * t['share_mean']:.0f} %",
               f"{t['gpu_seconds']:.0f}"] for t in report["tenants"]]
    show(table(("TENANT", "ENTITLEMENT", "MEAN GPU SHARE", "GPU-SECONDS"), shares, wide=True))
    lost = sum(job["lost_seconds"] for job in report["jobs"])
    where = report["state_dir"] or "removed (--rm)"
    show(f"\nlost work: {lost:.1f} s of job time; state and logs: {where}")
