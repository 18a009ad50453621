"""``shoal sim``: run a simulation scenario, or the shortcut over a trace folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.interrupts import CtrlC, Interrupted
from shoal.errors import InputError
from shoal.plugins import load_policies, require_policies
from shoal.policy.placement import scorer_names
from shoal.sim.html_report import write_html
from shoal.sim.plan import SimPlan, run_plan
from shoal.sim.scenario import parse_seeds, plan_from_flags
from shoal.sim.scenario_manifest import plan_from_simulation
from shoal.sim.serve_plan import ServePlan, plan_from_serve, read_simulation, run_serve_plan
from shoal.sim.serve_report import write_serve_html

out = Console()
err = Console(stderr=True)


def sim(
    scenario: Annotated[
        Path | None, typer.Argument(help="a Simulation manifest (YAML)", show_default=False)
    ] = None,
    trace: Annotated[
        Path | None, typer.Option(help="trace: an openb folder or a CSV job trace")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="fill, replay or serve")] = None,
    policy: Annotated[
        str | None, typer.Option(help="placement policies, comma-separated (see shoal policies)")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="seeds: 42, 42,43 or 42-51")] = None,
    workload: Annotated[str, typer.Option(help="openb pod list: default, gpushare40, ...")] = "default",
    target: Annotated[float, typer.Option(help="fill: arrived GPU request / capacity")] = 1.3,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    html: Annotated[Path | None, typer.Option(help="also write an HTML report here")] = None,
    queueing: Annotated[
        str | None,
        typer.Option(help="replay: compare tenant orderings side by side, e.g. fifo,las,srtf "
                     "(every tenant set to each in turn)"),
    ] = None,
) -> None:
    """Simulate scheduling policies on a cluster and a trace; compare them side by side."""
    if output not in ("table", "json"):
        raise InputError(f"--output: expected table or json, got {output!r}")
    # Ctrl-C is caught from the start: reading a big trace while planning is
    # long work too, and an interrupt CPython swallows there must still count.
    serve = _serve_plan(scenario, trace, mode, policy, queueing)
    if serve is not None:
        _serve(serve, output, html)
        return
    with CtrlC() as ctrl_c:
        try:
            plan = _plan(scenario, trace, mode, policy, seeds, workload, target)
            if queueing is not None:
                orders = [q.strip() for q in queueing.split(",") if q.strip()]
                if not orders:
                    raise InputError("--queueing: expected orderings, e.g. fifo,las")
                plan = dataclasses.replace(plan, queueing=orders)
            require_policies(plan.policies, warn=_warn)  # user policies (entry points) first
            plan.check()
            ctrl_c.check()
            report = _run(plan, quiet=output == "json", ctrl_c=ctrl_c)
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted: the simulation stopped; no report was written") from None
    if html is not None:
        write_html(report, html, title=f"Shoal simulation: {plan.name}")
    if output == "json":
        print(json.dumps(report))
        return
    _print_table(report)
    if html is not None:
        out.print(f"HTML report: {html}")


def _serve_plan(
    scenario: Path | None,
    trace: Path | None,
    mode: str | None,
    policy: str | None,
    queueing: str | None,
) -> ServePlan | None:
    """The serve-mode plan when the scenario (or --mode) asks for one; None otherwise."""
    if scenario is None:
        if mode == "serve":
            raise InputError(
                "--mode serve needs a Simulation manifest (service time, SLO); "
                "see examples/serving/azure-code-sim.yaml"
            )
        return None
    sim_manifest = read_simulation(scenario)
    if sim_manifest.spec.mode != "serve":
        if mode == "serve":
            raise InputError(f"--mode serve: {scenario} is a {sim_manifest.spec.mode} scenario")
        return None
    if mode not in (None, "serve"):
        raise InputError(f"--mode {mode}: {scenario} is a serve scenario")
    if trace is not None:
        raise InputError("give either a scenario file or --trace, not both")
    if queueing is not None:
        raise InputError("--queueing: orders queues of a replay; serve mode has none")
    policies = [p.strip() for p in policy.split(",") if p.strip()] if policy else None
    plan = plan_from_serve(scenario, sim_manifest, policies)
    plan.check()
    return plan


def _serve(plan: ServePlan, output: str, html: Path | None) -> None:
    with CtrlC() as ctrl_c:
        try:
            report = run_serve_plan(plan, lambda *_: ctrl_c.check())
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted: the simulation stopped; no report was written") from None
    if html is not None:
        write_serve_html(report, html, title=f"Shoal simulation: {plan.name}")
    if output == "json":
        print(json.dumps(report))
        return
    table = Table(title=f"{report['scenario']}: serve")
    heads = ("policy", "SLO attained", "p50 s", "p99 s", "cold starts", "replica-s", "wall s")
    for name in heads:
        table.add_column(name, justify="right" if name != "policy" else "left", no_wrap=True)
    for r in report["results"]:
        m = r["metrics"]
        table.add_row(
            r["policy"],
            f"{100 * m['slo_attainment']:.2f} %",
            f"{m['latency_p50_s']:.3f}",
            f"{m['latency_p99_s']:.3f}",
            str(m["cold_starts"]),
            f"{m['replica_seconds']:,.0f}",
            f"{r['wall_time_s']:.2f}",
        )
    out.print(table)
    if html is not None:
        out.print(f"HTML report: {html}")


def _plan(
    scenario: Path | None,
    trace: Path | None,
    mode: str | None,
    policy: str | None,
    seeds: str | None,
    workload: str,
    target: float,
) -> SimPlan:
    policies = [p.strip() for p in policy.split(",") if p.strip()] if policy else None
    seed_list = parse_seeds(seeds) if seeds else None
    if scenario is not None:
        if trace is not None:
            raise InputError("give either a scenario file or --trace, not both")
        # What loading changed in a CSV trace (rows dropped, merged, split) goes to stderr.
        return plan_from_simulation(
            scenario, mode=mode, policies=policies, seeds=seed_list, warn=_warn
        )
    if trace is None:
        raise InputError("nothing to simulate: give a scenario file or --trace PATH")
    return plan_from_flags(
        trace,
        mode=mode or "fill",
        policies=policies or ["fgd"],
        seeds=seed_list or [42],
        workload=workload,
        target=target,
    )


def _run(plan: SimPlan, quiet: bool, ctrl_c: CtrlC) -> dict[str, object]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:>7.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(label: str, done: int, total: int) -> None:
            ctrl_c.check()  # stop even if the interrupt itself was swallowed
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=min(done, total))

        return run_plan(plan, progress)


def _print_table(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, list)
    fill = [r for r in results if r["mode"] == "fill"]
    replay = [r for r in results if r["mode"] == "replay"]
    if fill:
        table = Table(title=f"{report['scenario']}: fill")
        for name in ("policy", "allocated @ full", "unallocated @ full", "failed pods", "wall s"):
            table.add_column(name, justify="right" if name != "policy" else "left", no_wrap=True)
        for r in fill:
            m = r["metrics"]
            table.add_row(
                r["policy"],
                f"{100 * m['allocated_gpu_fraction_at_full']:.2f} %",
                f"{100 * m['unallocated_gpu_fraction_at_full']:.2f} %",
                str(m["failed_pods"]),
                f"{r['wall_time_s']:.2f}",
            )
        out.print(table)
    if replay:
        table = Table(title=f"{report['scenario']}: replay")
        heads = ("policy", "JCT mean s", "JCT p99 s", "queue s", "GPU alloc", "frag",
                 "preempt", "lost GPU-h", "wall s")
        for name in heads:
            table.add_column(name, justify="right" if name != "policy" else "left", no_wrap=True)
        for r in replay:
            m = r["metrics"]
            table.add_row(
                _label(r),
                f"{m['jct_mean_s']:.0f}",
                f"{m['jct_p99_s']:.0f}",
                f"{m['queue_delay_mean_s']:.0f}",
                f"{100 * m['gpu_allocation_mean']:.1f} %",
                f"{100 * m['fragmentation_mean']:.1f} %",
                str(m["preemptions"]),
                f"{m['lost_gpu_hours']:.2f}",
                f"{r['wall_time_s']:.2f}",
            )
        out.print(table)
        for r in replay:
            tenants = Table(title=f"{_label(r)}: tenants")
            for name in ("tenant", "entitlement", "mean share", "queue s", "JCT s"):
                tenants.add_column(name, justify="right" if name != "tenant" else "left")
            for t in r["metrics"]["per_tenant"]:
                tenants.add_row(
                    t["tenant"],
                    f"{100 * t['entitlement']:.1f} %",
                    f"{100 * t['share_mean']:.1f} %",
                    f"{t['queue_delay_mean_s']:.0f}",
                    f"{t['jct_mean_s']:.0f}",
                )
            out.print(tenants)


def _label(result: dict[str, object]) -> str:
    """A replay's row: its placement policy, and its tenant ordering when compared."""
    order = result.get("queueing")
    return f"{result['policy']} ({order})" if order else str(result["policy"])


def policies() -> None:
    """List the placement policies (scorers), built-in and from installed plugins."""
    report = load_policies()
    for name in scorer_names():
        plugin = report.loaded.get(name)
        origin = f"  (plugin: {plugin.distribution})" if plugin is not None else ""
        out.print(f"{name}{origin}", highlight=False)
    for line in [*report.problems.values(), *report.ignored]:
        _warn(line)


def _warn(line: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
