"""kubectl-style verbs: ``apply``, ``get``, ``describe``, ``logs``, ``delete``, ``create``.

Each talks to Shoal's control plane (``connect.client``), or with
``--kubeconfig`` to a cluster (``cluster.ClusterApi``), which answers the same
calls with the same data, so the output is the same on both.
"""

from __future__ import annotations

import codecs
import json
import shlex
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from shoal.cli import admin as admin_verbs
from shoal.cli import services as service_verbs
from shoal.cli import tables
from shoal.cli.cluster import ClusterApi, Plane
from shoal.cli.connect import client
from shoal.cli.interrupts import Interrupted
from shoal.cli.manifests import load, manifest_files, read_text, request_files
from shoal.cli.manifests import resolve_working_dirs as _resolve_working_dirs
from shoal.cli.options import ContextOption, KubeconfigOption
from shoal.cli.tables import age, amount, check_output, clock, emit, out, show, table, vector
from shoal.domain.job import TrainingJob
from shoal.domain.nodes import NodePool
from shoal.domain.tenant import Tenant
from shoal.errors import InputError, NotFoundError

__all__ = ["_resolve_working_dirs", "apply", "create", "delete", "describe", "get", "logs"]

WATCH_INTERVAL_S = 1.0
err = Console(stderr=True)

Server = Annotated[str | None, typer.Option(help="control plane URL (default: local)")]
Token = Annotated[str | None, typer.Option(help="API token (default: $SHOAL_TOKEN or local admin)")]
Home = Annotated[Path | None, typer.Option("--state-dir", help="local state (default /var/lib/shoal as root, else ~/.shoal)")]
Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, json or yaml")]
Watch = Annotated[bool, typer.Option("--watch", "-w", help="print again on every change")]
TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", "-t", help="the jobs' tenant (job names are per tenant; an admin names it when "
    "several tenants have a job of that name)")]

KINDS = {"job": "jobs", "jobs": "jobs", "tenant": "tenants", "tenants": "tenants",
         "node": "nodes", "nodes": "nodes", "nodepool": "nodes", "nodepools": "nodes",
         "event": "events", "events": "events", "token": "tokens", "tokens": "tokens",
         "service": "services", "services": "services", "svc": "services"}


def apply(
    file: Annotated[Path, typer.Option("--filename", "-f", help="manifest file or folder")],
    server: Server = None, token: Token = None, home: Home = None,
    kubeconfig: KubeconfigOption = None, context: ContextOption = None,
) -> None:
    """Create or update tenants and node pools and submit jobs (a folder: all its YAML files)."""
    if kubeconfig is None:
        files = request_files(file)  # every file checked before anything is sent
    else:
        load(file)  # the same located errors, before the cluster is asked anything
        # As written: a workingDir is a path inside the job's container there.
        files = [(str(path), read_text(path)) for path in manifest_files(file)]
    with client(server, token, home, kubeconfig, context) as api:
        applied = api.apply_files(files)
    for item in applied:
        out.print(f"{item['kind'].lower()}/{item['name']} {item.get('result', 'applied')}",
                  highlight=False)


def get(
    what: Annotated[str, typer.Argument(help="jobs, services, tenants, nodes, events or tokens")],
    names: Annotated[list[str] | None, typer.Argument(help="only these (jobs)")] = None,
    server: Server = None, token: Token = None, home: Home = None, output: Output = "table",
    watch: Watch = False, tenant: TenantOpt = None,
    kubeconfig: KubeconfigOption = None, context: ContextOption = None,
) -> None:
    """List jobs, tenants (quota and usage), nodes, events or tokens (admin); a tenant's
    token sees its own."""
    kind = KINDS.get(what)
    if kind is None:
        raise InputError(
            f"shoal get: expected jobs, services, tenants, nodes, events or tokens, got {what!r}")
    if ((names or tenant) and kind not in ("jobs", "services")) or (tenant and kind != "jobs"):
        raise InputError(f"shoal get {what}: names are only accepted for jobs and services, "
                         "--tenant for jobs")
    check_output(output)
    fetch = _FETCH[kind] if kind != "jobs" else (
        lambda api, wanted: _jobs(api, wanted, tenant))

    def present(data: Any) -> None:
        if not emit(data, output):
            show(_RENDER[kind](data, output == "wide"))

    with client(server, token, home, kubeconfig, context) as api:
        if watch:
            # A cluster has watches; the embedded API has no watch stream yet: polled.
            changes = api.changes(kind, tenant) if isinstance(api, ClusterApi) else None
            try:
                _watch(lambda: fetch(api, names or []), present,
                       changes.wait if changes is not None else None)
            finally:
                if changes is not None:
                    changes.close()
        else:
            present(fetch(api, names or []))


def _watch(fetch: Callable[[], Any], present: Callable[[Any], None],
           changed: Callable[[], None] | None = None) -> None:
    """Print, then print again whenever the answer changes, until Ctrl-C.

    ``changed`` blocks until something may have changed (None: every
    ``WATCH_INTERVAL_S``).
    """
    tick = threading.Event()
    try:
        last = fetch()
        present(last)
        while True:
            if changed is not None:
                changed()
            else:
                tick.wait(WATCH_INTERVAL_S)
            data = fetch()
            if data != last:
                out.print()
                present(data)
                last = data
    except KeyboardInterrupt:
        raise Interrupted("stopped watching; the jobs keep running") from None


def _jobs(api: Plane, names: list[str], tenant: str | None = None) -> list[dict[str, Any]]:
    # A cluster lists one tenant's namespace only when asked: all its members may list.
    listed = api.jobs(tenant) if isinstance(api, ClusterApi) else api.jobs()
    jobs = [j for j in listed if tenant is None or j["tenant"] == tenant]
    if not names:
        return jobs
    found: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        found.setdefault(job["name"], []).append(job)
    for name in names:
        if len(found.get(name, [])) != 1:
            api.job(name, tenant)  # the server's own 404 (or "which tenant?") line
    return [found[n][0] for n in names]


def _render_jobs(jobs: list[dict[str, Any]], wide: bool) -> Any:
    if not jobs:
        return "No jobs."
    columns = ["NAME", "TENANT", "PHASE", "PODS", "ATTEMPTS", "PREEMPTED", "AGE"]
    if wide:
        columns += ["STARTED", "FINISHED", "LOST"]
    rows = []
    for job in jobs:
        row = [job["name"], job["tenant"], job["phase"],
               f"{job['pods']}/{job.get('pod_count', job['pods'])}", str(job["attempts"]),
               str(job["preemptions"]), age(job["submit_time"])]
        if wide:
            row += [age(job.get("start_time")), age(job.get("finish_time")),
                    tables.duration(job["lost_seconds"])]
        rows.append([*row, job["reason"] or ""])
    return table([*columns, "REASON"], rows, wide)


def _tenants(api: Plane, names: list[str]) -> list[dict[str, Any]]:
    return api.tenant_status()


def _render_tenants(tenants: list[dict[str, Any]], wide: bool) -> Any:
    if not tenants:
        return "No tenants."
    resources = sorted({r for t in tenants for r in t["nominal"]},
                       key=lambda r: (r.startswith("gpu/"), r != "cpu", r))
    columns = ["NAME", "COHORT", *[f"{r.upper()} QUOTA" for r in resources],
               "USAGE", "BORROWED", "PENDING", "RUNNING"]
    if wide:
        columns.append("WEIGHT")
    rows = []
    for tenant in tenants:
        row = [tenant["name"], tenant["cohort"] or "-",
               *[amount(r, tenant["nominal"][r]) if r in tenant["nominal"] else "-"
                 for r in resources],
               vector(tenant["usage"]) if tenant["usage"] else "0",
               vector(tenant["borrowed"]) if tenant["borrowed"] else "0",
               str(tenant["pending"]), str(tenant["running"])]
        if wide:
            row.append(f"{tenant['weight']:g}")
        rows.append(row)
    return table(columns, rows, wide)


def _nodes(api: Plane, names: list[str]) -> dict[str, Any]:
    return api.node_summary()


def _render_nodes(summary: dict[str, Any], wide: bool) -> Any:
    pools = summary.get("nodes") or {}
    total = f"{summary['node_count']} nodes: {vector(summary['capacity'])}"
    if not pools:
        return total  # a tenant's token sees the total only
    columns = ["POOL", "COUNT", "CPU", "MEMORY", "GPUS", "GPU MODEL"]
    if wide:
        columns += ["GPU MEMORY", "LABELS"]
    rows = []
    for name, spec in sorted(pools.items()):
        gpus = spec.get("gpus") or {}
        row = [name, str(spec.get("count", 1)), str(spec.get("cpu", "-")),
               str(spec.get("memory", "-")), str(gpus.get("count", 0)), gpus.get("model") or "-"]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in (spec.get("labels") or {}).items())
            row += [str(gpus.get("memory", "-")), labels or "-"]
        rows.append(row)
    return table(columns, rows, wide)


def _events(api: Plane, names: list[str]) -> list[dict[str, Any]]:
    return api.events()


def _render_events(events: list[dict[str, Any]], wide: bool) -> Any:
    if not events:
        return "No events."
    columns = ["AGE", "KIND", "JOB", "TENANT", "DETAILS"]
    if wide:
        columns.insert(0, "TIME")
    rows = []
    for event in events:
        details = ", ".join(f"{k}={v}" for k, v in (event.get("data") or {}).items())
        row = [age(event["time"]), event["kind"], event.get("job") or "-",
               event.get("tenant") or "-", details]
        rows.append([clock(event["time"]), *row] if wide else row)
    return table(columns, rows, wide)


_FETCH: dict[str, Callable[[Plane, list[str]], Any]] = {
    "jobs": _jobs, "tenants": _tenants, "nodes": _nodes, "events": _events,
    "tokens": admin_verbs.tokens, "services": service_verbs.fetch,
}
_RENDER: dict[str, Callable[[Any, bool], Any]] = {
    "jobs": _render_jobs, "tenants": _render_tenants, "nodes": _render_nodes,
    "events": _render_events, "tokens": admin_verbs.render_tokens,
    "services": service_verbs.render,
}


def _handle(handle: str | None) -> str:
    """The runtime's handle of a pod (a pid and cgroup on this machine), as ``key=value``."""
    try:
        data = json.loads(handle) if handle else None
    except ValueError:
        return f"handle={handle} "
    if not isinstance(data, dict):
        return ""
    return "".join(f"{key}={value} " for key, value in data.items() if value is not None)


def describe(
    what: Annotated[str, typer.Argument(help="job")],
    name: Annotated[str, typer.Argument(help="the job's name")],
    server: Server = None, token: Token = None, home: Home = None, output: Output = "table",
    tenant: TenantOpt = None, kubeconfig: KubeconfigOption = None, context: ContextOption = None,
) -> None:
    """Show one job (its spec, pods and events) or service (revisions, traffic, events)."""
    if KINDS.get(what) not in ("jobs", "services"):
        raise InputError(f"shoal describe: expected 'job' or 'service', got {what!r}")
    check_output(output)
    if KINDS[what] == "services":
        with client(server, token, home, kubeconfig, context) as api:
            service_verbs.describe(api, name, tenant, output)
        return
    with client(server, token, home, kubeconfig, context) as api:
        job = api.job(name, tenant)
    if emit(job, output):
        return
    _print_job(job)


def _print_job(job: dict[str, Any]) -> None:
    spec = (job.get("manifest") or {}).get("spec", {})
    field = "[bold]{}:[/] {}"
    for key, value in (("Name", job["name"]), ("Tenant", job["tenant"]),
                       ("Priority", spec.get("priority", "normal")), ("Phase", job["phase"]),
                       ("Reason", job["reason"] or "-"),
                       ("Submitted", f"{clock(job['submit_time'])} ({age(job['submit_time'])} ago)"),
                       ("Attempts", job["attempts"]), ("Preemptions", job["preemptions"]),
                       ("Lost work", tables.duration(job["lost_seconds"]))):
        out.print(field.format(key, escape(str(value))), highlight=False, soft_wrap=True)
    out.print("[bold]Spec:[/]")
    command = spec.get("command")
    out.print(f"  command: {escape(shlex.join(command)) if command else '(default)'}",
              highlight=False, soft_wrap=True)
    if spec.get("workingDir"):
        out.print(f"  workingDir: {escape(spec['workingDir'])}", highlight=False)
    env = sorted((spec.get("env") or {}).keys())
    out.print(f"  env: {', '.join(env) if env else '-'}", highlight=False)
    out.print(f"  maxRetries: {spec.get('maxRetries', 0)}", highlight=False)
    for pod_set in spec.get("podSets", []):
        res = pod_set.get("resources") or {}
        gpu = res.get("gpu")
        gpus = "-" if not gpu else (f"fraction {gpu['fraction']}" if gpu.get("fraction")
                                    else str(gpu.get("count", 1)))
        out.print(f"  podSet {pod_set.get('name', 'worker')}: count={pod_set.get('count', 1)} "
                  f"cpu={res.get('cpu', 0)} memory={res.get('memory', 0)} gpu={gpus}",
                  highlight=False)
    out.print("[bold]Pods:[/]" + ("" if job["pods"] else " none running"))
    for pod in job["pods"]:
        exit_code = "" if pod.get("exit_code") is None else f" exit={pod['exit_code']}"
        out.print(f"  pod {pod.get('index')}: node={pod.get('node')} gpus={pod.get('gpus')} "
                  f"state={pod.get('state')}{exit_code} {_handle(pod.get('handle'))}"
                  f"started={age(pod.get('started_at'))} ago", highlight=False)
    out.print("[bold]Events:[/]" + ("" if job["events"] else " none"))
    rows = [[age(e["time"]) + " ago", clock(e["time"]), e["kind"],
             ", ".join(f"{k}={v}" for k, v in (e.get("data") or {}).items())]
            for e in job["events"]]
    if rows:
        show(table(["AGE", "TIME", "KIND", "DETAILS"], rows, wide=True))


def logs(
    name: Annotated[str, typer.Argument(help="the job's name")],
    pod: Annotated[int, typer.Option(help="pod index (rank)")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    limit_bytes: Annotated[int | None, typer.Option(
        "--limit-bytes", min=1, help="print at most this many bytes of the log")] = None,
    server: Server = None, token: Token = None, home: Home = None, tenant: TenantOpt = None,
    kubeconfig: KubeconfigOption = None, context: ContextOption = None,
) -> None:
    """Print a pod's log (read page by page, never whole)."""
    if follow and limit_bytes is not None:
        raise InputError("shoal logs: --limit-bytes and --follow do not go together")
    with client(server, token, home, kubeconfig, context) as api:
        if not follow:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            for page in api.iter_log(name, pod, limit_bytes=limit_bytes, tenant=tenant):
                print(decoder.decode(page), end="", flush=True)
            print(decoder.decode(b"", final=True), end="")
            return
        try:
            for chunk in api.follow_logs(name, pod, tenant):
                print(chunk, end="", flush=True)
        except KeyboardInterrupt:
            raise Interrupted(f"\nstopped following; job {name} keeps running "
                              f"(shoal logs {name} -f to resume)") from None


def delete(
    what: Annotated[str | None, typer.Argument(help="job, tenant, nodepool (or node) or token")
                    ] = None,
    names: Annotated[list[str] | None, typer.Argument(
        help="the jobs', tenants' or node pools' names, or the tokens' ids")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="every job you can see")] = False,
    file: Annotated[Path | None, typer.Option(
        "--filename", "-f", help="delete what this manifest file or folder defines")] = None,
    server: Server = None, token: Token = None, home: Home = None, tenant: TenantOpt = None,
    kubeconfig: KubeconfigOption = None, context: ContextOption = None,
) -> None:
    """Stop jobs' pods (SIGTERM, then SIGKILL after the grace period) and cancel them;
    or (admin) delete tenants without active jobs, node pools that run no pods, or
    revoke tokens; or delete what a manifest file defines (-f)."""
    connect = (server, token, home, kubeconfig, context)
    if file is not None:
        if what is not None or all_jobs or tenant is not None:
            raise InputError("shoal delete -f: the file names what to delete; give no kind, "
                             "names, --all or --tenant")
        _delete_files(file, connect)
        return
    if what is None:
        raise InputError("shoal delete: name a kind and what to delete, or pass -f FILE")
    if what in admin_verbs.DELETERS:
        if all_jobs or not names:
            raise InputError(f"shoal delete {what}: name what to delete (--all is for jobs)")
        with client(*connect) as api:
            admin_verbs.delete(what, names, api)
        return
    if KINDS.get(what) == "services":
        if all_jobs or not names:
            raise InputError("shoal delete service: name the services to delete")
        with client(*connect) as api:
            service_verbs.delete(api, names, tenant)
        return
    if KINDS.get(what) != "jobs":
        raise InputError(f"shoal delete: expected job, service, tenant, nodepool (or node) or "
                         f"token, got {what!r}")
    if all_jobs and names:
        raise InputError("shoal delete job: give job names or --all, not both")
    if not all_jobs and not names:
        raise InputError("shoal delete job: name the jobs to delete, or pass --all")
    with client(*connect) as api:
        targets = [(name, tenant) for name in names or []]
        if all_jobs:
            listed = api.jobs(tenant) if isinstance(api, ClusterApi) else api.jobs()
            targets = [(j["name"], j["tenant"]) for j in listed
                       if not j.get("deleted") and tenant in (None, j["tenant"])]
            names = [name for name, _ in targets]
        for name, owner in targets:
            api.delete(name, owner)
            out.print(f"job/{name} deleted", highlight=False)
    if all_jobs and not names:
        out.print("No jobs.")


def _delete_files(path: Path, connect: tuple[Any, ...]) -> None:
    """Delete what the manifests define, last document first (jobs before their tenant);
    one already gone is said so and skipped, as ``kubectl delete --ignore-not-found``."""
    manifests = load(path)  # every file checked before anything is deleted
    with client(*connect) as api:
        for manifest in reversed(manifests):
            name, kind = manifest.metadata.name, manifest.kind.lower()
            try:
                if isinstance(manifest, TrainingJob):
                    api.delete(name, manifest.spec.tenant)
                    line = f"{kind}/{name} deleted"
                elif isinstance(manifest, Tenant | NodePool):
                    line = admin_verbs.DELETERS[kind](api, name)
                else:
                    raise InputError(f"{manifest.kind} {name}: shoal delete -f deletes "
                                     "Tenants, NodePools and TrainingJobs")
            except NotFoundError:
                line = f"{kind}/{name} not found"
            out.print(escape(line), highlight=False, soft_wrap=True)


def create(
    what: Annotated[str, typer.Argument(help="token")],
    tenant: Annotated[str | None, typer.Option(help="the tenant the token acts for")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token instead")] = False,
    ttl: Annotated[str | None, typer.Option(
        help="lifetime: seconds, or 90s, 15m, 12h, 30d (at most 10 years); default: none"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="its name in listings (default: the tenant)")
                    ] = None,
    server: Server = None, token: Token = None, home: Home = None, output: Output = "table",
) -> None:
    """Mint an API token (admin only); it is printed once, and never shown again."""
    if what not in ("token", "tokens"):
        raise InputError(f"shoal create: expected 'token', got {what!r}")
    if admin == (tenant is not None):
        raise InputError("shoal create token: pass --tenant NAME, or --admin for an admin token")
    check_output(output)
    seconds = None if ttl is None else admin_verbs.parse_ttl(ttl)
    with client(server, token, home) as api:
        minted = api.mint_token(tenant, "admin" if admin else "tenant", seconds, name)
    if not emit(minted, output):
        admin_verbs.show_minted(minted)
