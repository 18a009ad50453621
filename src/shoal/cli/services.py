"""Inference services in the CLI: ``get services``, ``describe service``, ``delete service``,
``infer`` and ``rollout promote|abort``, on the embedded control plane; with
``--kubeconfig``, ``get``, ``describe`` and ``delete`` read and delete the
cluster's InferenceService objects (``cli/cluster.py``), ``infer`` and
``rollout`` are refused with a message.

``get services -o json`` gives each service's ``url`` (its router; the Open
Inference Protocol v2 paths are below it) and ``phase``.  ``infer`` sends one
request to the service's router with the caller's token and prints the
answer; a 4xx/5xx answer is printed as the error it is, with exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from shoal.api.client import ShoalClient
from shoal.cli.connect import client
from shoal.cli.options import ContextOption, KubeconfigOption
from shoal.cli.tables import age, check_output, clock, emit, out, show, table
from shoal.errors import InputError, ShoalError

__all__ = ["describe", "fetch", "infer", "render", "rollout"]

MAX_DATA_BYTES = 64 * 1024 * 1024

Server = Annotated[str | None, typer.Option(help="control plane URL (default: local)")]
Token = Annotated[str | None, typer.Option(help="API token (default: $SHOAL_TOKEN or local admin)")]
Home = Annotated[Path | None, typer.Option("--state-dir", help="local state (default /var/lib/shoal as root, else ~/.shoal)")]
TenantOpt = Annotated[str | None, typer.Option(
    help="the service's tenant, when several tenants have one of that name (admin)")]


class RequestFailed(ShoalError):
    """The service answered an inference request with an error."""

    code = "request_failed"


def _on_cluster(api: Any) -> ShoalClient:
    if not isinstance(api, ShoalClient):
        raise InputError("infer and rollout are not offered with --kubeconfig: on a cluster, "
                         "send requests to the service's router "
                         "(http://<service>.<tenant>.svc) and change the spec to roll out")
    return api


def fetch(api: Any, names: list[str]) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = api.services()
    if names:
        by_name = {s["name"]: s for s in services}
        for name in names:
            if name not in by_name:
                api.service(name)  # the server's own 404 line
        services = [by_name[n] for n in names]
    return services


def _split(traffic: dict[str, int]) -> str:
    return " ".join(f"{name}={percent}%" for name, percent in traffic.items()) or "-"


def _replicas(replicas: dict[str, dict[str, int]]) -> str:
    ready = sum(r["ready"] for r in replicas.values())
    desired = sum(r["desired"] for r in replicas.values())
    return f"{ready}/{desired}"


def render(services: list[dict[str, Any]], wide: bool) -> Any:
    if not services:
        return "No services."
    columns = ["NAME", "TENANT", "PHASE", "REVISIONS", "TRAFFIC", "READY/DESIRED", "P95", "SLO"]
    if wide:
        columns += ["POLICY", "MIN-MAX", "URL"]
    rows = []
    for s in services:
        revisions = s["stable"] or "-"
        if s.get("canary"):
            revisions += f" (canary {s['canary']})"
        p95 = f"{s['p95_s'] * 1000:.0f}ms" if s.get("p95_s") is not None else "-"
        slo = f"{s['sloP95Ms']:g}ms" if s.get("sloP95Ms") else "-"
        row = [s["name"], s["tenant"], s["phase"], revisions, _split(s["traffic"]),
               _replicas(s["replicas"]), p95, slo]
        if wide:
            row += [s["autoscaling"].get("policy", "kpa"), f"{s['minReplicas']}-{s['maxReplicas']}",
                    s.get("url") or "-"]
        rows.append(row)
    return table(columns, rows, wide)


def describe(api: Any, name: str, tenant: str | None, output: str) -> None:
    found: dict[str, Any] = api.service(name, tenant)
    if emit(found, output):
        return
    field = "[bold]{}:[/] {}"
    spec = found["spec"]
    model = spec.get("model") or {}
    source = model.get("path") or (
        f"TrainingJob {model['from']['trainingJob']}: {model['from']['path']}"
        if model.get("from") else "packaged")
    for key, value in (("Name", found["name"]), ("Tenant", found["tenant"]),
                       ("Phase", found["phase"]), ("URL", found.get("url") or "-"),
                       ("Model", f"{spec['framework']} {source} (version "
                                 f"{model.get('version', '1')})"),
                       ("Autoscaling", json.dumps(found["autoscaling"], sort_keys=True)),
                       ("Replicas", f"min {found['minReplicas']}, max {found['maxReplicas']}"),
                       ("Traffic", _split(found["traffic"]))):
        out.print(field.format(key, escape(str(value))), highlight=False, soft_wrap=True)
    out.print("[bold]Revisions:[/]")
    for revision in found["revisions"]:
        seen = found["replicas"].get(revision["name"], {"desired": 0, "ready": 0})
        reason = f" reason={revision['reason']}" if revision.get("reason") else ""
        out.print(f"  {revision['name']}: {revision['phase']} replicas "
                  f"{seen['ready']}/{seen['desired']}{escape(reason)}", highlight=False)
    out.print("[bold]Events:[/]" + ("" if found["events"] else " none"))
    rows = [[age(e["time"]) + " ago", clock(e["time"]), e["kind"],
             ", ".join(f"{k}={v}" for k, v in (e.get("data") or {}).items())]
            for e in found["events"]]
    if rows:
        show(table(["AGE", "TIME", "KIND", "DETAILS"], rows, wide=True))


def _data(data: str) -> bytes:
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            if path.stat().st_size > MAX_DATA_BYTES:
                raise InputError(f"--data {path}: larger than {MAX_DATA_BYTES} bytes")
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"--data {path}: cannot read: {exc.strerror or exc}") from exc
    else:
        raw = data.encode()
    try:
        json.loads(raw)
    except ValueError as exc:
        raise InputError(f"--data: expected a JSON inference request ({exc})") from exc
    return raw


def infer(
    name: Annotated[str, typer.Argument(help="the service's name (its model name on the protocol)")],
    data: Annotated[str, typer.Option(
        help='the request body: JSON ({"inputs": [...]}), or @FILE')],
    server: Server = None, token: Token = None, home: Home = None, tenant: TenantOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="json or yaml")] = "json",
) -> None:
    """Send one Open Inference Protocol v2 request to a service and print its answer."""
    body = _data(data)
    check_output(output)
    with client(server, token, home) as plane:
        api = _on_cluster(plane)
        found = api.service(name, tenant)
        if not found.get("url"):
            raise RequestFailed(f"service {name} has no router yet (phase {found['phase']})")
        status, answer = api.infer(found["url"], name, body)
    if status >= 400:
        message = answer.get("error") if isinstance(answer, dict) else answer
        raise RequestFailed(f"service {name} answered {status}: {message}")
    if output == "yaml":
        emit(answer, "yaml")
    else:
        out.print_json(json.dumps(answer))


def rollout(
    action: Annotated[str, typer.Argument(help="promote or abort")],
    name: Annotated[str, typer.Argument(help="the service's name")],
    server: Server = None, token: Token = None, home: Home = None, tenant: TenantOpt = None,
    kubeconfig: KubeconfigOption = None, context: ContextOption = None,
) -> None:
    """Promote a service's canary now (all traffic), or abort it (rolled back)."""
    if action not in ("promote", "abort"):
        raise InputError(f"shoal rollout: expected promote or abort, got {action!r}")
    with client(server, token, home, kubeconfig, context) as plane:
        _on_cluster(plane).rollout(name, action, tenant)
    out.print(f"service/{name} {'promote' if action == 'promote' else 'abort'} requested",
              highlight=False)


def delete(api: Any, names: list[str], tenant: str | None) -> None:
    for name in names:
        api.delete_service(name, tenant)
        out.print(f"service/{name} deleted", highlight=False)

