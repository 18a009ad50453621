"""The API fuzz of ``reliability.py``: hostile requests, 5xx and the server's memory.

Seeded random calls (schema routes with fuzzed paths and queries, odd tokens,
hostile JSON, raw bodies, YAML bombs and mutated manifests through
``/v1/apply``) sent one at a time; it counts answers by status class and samples
the server's RSS (see ``reliability.py`` for the load and the targets).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import secrets
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from reliability_harness import (
    MiB,
    Server,
    admin_call,
    clean_up,
    cluster_yaml,
    emit,
    free_port,
    job_yaml,
    machine_cpu_seconds,
    read_status_kib,
    run_cgroups,
    run_processes,
    self_cpu_seconds,
    temporary_root,
)

MAX_BODY = 32 * MiB  # the server's cap on a request body (8 x 4 MiB of manifest text)


NAMES = ["fz-0", "fz-1", "fz-2", "fz-3", "fz-4"]
QUERY_VALUES: list[object] = [
    -1, 0, 1, 7, 2**31, 2**62, 2**62 + 1, 2**63, 2**64, 10**30, 10**300, "NaN", "inf", "1e3",
    "", "x", "-0", " 1", "0x10", "true", "false", "\x00", "\ud800", "%", "\uff11"]
WEIRD = ["", "\x00", "a\x00b", "\ud800", "\udfff\ud800", "\x1b[31m", "\r\n", "\u202e", "\ufeff",
         "../../etc/passwd", "%2e%2e%2f", "'; DROP TABLE jobs; --", "{{7*7}}", "${HOME}",
         "%s%s%n", "-1", "NaN", "1e400", "null", "true", "é€😀", "\t", "*", "?", "#", "/"]


def fuzz_text(rng: random.Random, huge: bool = True) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(WEIRD + NAMES)
    if roll < 0.55:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-._")
                       for _ in range(rng.randint(0, 40)))
    if roll < 0.8:  # any code point, controls and surrogates included
        return "".join(chr(rng.choice([rng.randint(0, 0x1F), rng.randint(0x7F, 0x9F),
                                       rng.randint(0xD800, 0xDFFF), rng.randint(0, 0x10FFFF)]))
                       for _ in range(rng.randint(1, 30)))
    if roll < 0.97 or not huge:
        return rng.choice(["x", "é", "\x00"]) * rng.choice([255, 256, 1000, 5000])
    return "y" * rng.choice([100_000, 1_000_000, 5_000_000])


def fuzz_number(rng: random.Random) -> object:
    return rng.choice([0, -1, 1, 2**31, -(2**63), 2**63, 2**64, 10**30, 10**400,
                       float("nan"), float("inf"), -float("inf"), 1e308, 5e-324, -0.0,
                       rng.randint(-(2**70), 2**70), rng.random()])


def fuzz_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 4 or roll < 0.4:
        return rng.choice([None, True, False, fuzz_number(rng), fuzz_text(rng, huge=depth == 0)])
    if roll < 0.55:
        return [fuzz_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.6:  # deep nesting, past any recursion limit
        return _Deep(rng.choice([100, 1000, 5000, 50_000]))
    keys = ["source", "text", "files", "tenant", "role", "extra", "name", "spec"]
    return {rng.choice(keys) if rng.random() < 0.7 else fuzz_text(rng, huge=False):
            fuzz_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


class _Deep:
    """A nesting too deep to build as Python objects; written straight as JSON."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def encode_json(value: object) -> bytes:
    """JSON with NaN/Infinity literals, huge integers and lone surrogates as sent by a hostile client."""
    def walk(v: object) -> str:
        if isinstance(v, _Deep):
            return "[" * v.depth + "]" * v.depth
        if isinstance(v, bool) or v is None:
            return json.dumps(v)
        if isinstance(v, int):
            return str(v) if len(str(v)) < 5000 else "1" + "0" * 5000
        if isinstance(v, float):
            return json.dumps(v, allow_nan=True)
        if isinstance(v, str):
            return json.dumps(v)  # lone surrogates come out as \ud800
        if isinstance(v, list):
            return "[" + ",".join(walk(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ",".join(f"{json.dumps(str(k))}:{walk(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))
    with contextlib.suppress(ValueError):
        sys.set_int_max_str_digits(0)
    return walk(value).encode("utf-8", "surrogatepass")


def alias_bomb(rng: random.Random) -> str:
    levels, fan = rng.randint(2, 9), rng.randint(2, 9)
    lines = ["a0: &a0 [lol]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]"
                                 for i in range(1, levels)]
    top = f"*a{levels - 1}"
    where = rng.random()
    head = "apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: bomb}\n"
    if where < 0.3:
        return "\n".join(lines) + "\n"
    if where < 0.6:  # inside a field the validator walks
        anchors = "\n".join("  x" + ln for ln in lines)
        return head + f"spec:\n  tenant: t\n{anchors}\n  command: {top}\n"
    if where < 0.8:
        return head + "\n".join(lines) + f"\nspec: {{tenant: t, command: {top}, env: {top}}}\n"
    return "\n".join(lines) + f"\n---\n{head}spec: {{podSets: {top}}}\n"


def fuzz_yaml(rng: random.Random, tenants: list[str]) -> str:
    tenant = rng.choice([*tenants, "nope", fuzz_text(rng, huge=False)])
    roll = rng.random()
    if roll < 0.08:
        return alias_bomb(rng)
    if roll < 0.13:
        return rng.choice(["&a [*a]\n", "&a {x: *a}\n", "a: &a {b: *a}\nc: *a\n",
                           "a: &a [*a, *a]\n<<: *a\n", "- &a\n  - *a\n", "&a !!set {*a}\n"])
    if roll < 0.2:
        n = rng.choice([50, 500, 900, 1000, 5000, 20_000])
        return rng.choice(["[" * n + "]" * n, "{a: " * n + "1" + "}" * n,
                           "".join("  " * i + "- \n" for i in range(min(n, 3000))),
                           "a:\n" + "".join("  " * i + "b:\n" for i in range(1, min(n, 3000)))])
    if roll < 0.25:
        return job_yaml(rng.choice(NAMES), tenant, ["echo", "y" * rng.choice(
            [10_000, 1_000_000, 4 * MiB - 200, 5 * MiB])])
    if roll < 0.32:
        return rng.choice([
            "!!python/object/apply:os.system ['true']\n", "!!binary AAAA\n",
            "a: !!float 1e400\n", "a: !!int 0x" + "f" * 2000 + "\n", "? [a, b]\n: c\n",
            "a: 1\na: 2\n", "\t- a\n", "---\n" * rng.choice([10, 1000, 100_000]),
            "%YAML 1.1\n%YAML 1.2\n---\n", "a: b\n" * 20_000, "\x00\x01\x02", "\ufeffa: b\n"])
    if roll < 0.45:  # out-of-range numbers and odd values in a real job
        field_, value = rng.choice([
            ("maxRetries", -1), ("maxRetries", 10**30), ("priority", 2**63),
            ("checkpointIntervalSeconds", ".nan"), ("checkpointIntervalSeconds", "-.inf"),
            ("durationSeconds", "1e400"), ("pidsLimit", 0), ("pidsLimit", 2**64),
            ("env", '{"A=B": "x"}'), ("env", '{"": "x"}'), ("env", '{"X": "\\0"}'),
            ("command", '["a\\0b"]'), ("command", "[]"), ("command", '[""]'),
            ("podSets", "[{count: 99999999999999999999999}]"), ("podSets", "[{count: 0}]"),
            ("podSets", "[{resources: {cpu: 1e400, memory: 99999999999Ti}}]"),
            ("podSets", "[{resources: {cpu: -1, gpu: .nan}}]"), ("workingDir", "/etc"),
            ("workingDir", "../../.."), ("tenant", '"\\ud800"'), ("gang", "maybe")])
        return (f"apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: "
                f"{rng.choice(NAMES)}}}\nspec:\n  tenant: {tenant}\n  command: [\"true\"]\n"
                f"  {field_}: {value}\n")
    if roll < 0.5:  # other kinds with odd values (never a huge node pool: that is real load)
        return rng.choice([
            "apiVersion: shoal.dev/v1alpha1\nkind: NodePool\nmetadata: {name: fz}\n"
            "spec: {count: -1, cpu: 1e400}\n",
            "apiVersion: shoal.dev/v1alpha1\nkind: NodePool\nmetadata: {name: fz}\n"
            "spec: {count: 10000000000, cpu: 1}\n",
            f"apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {tenant}}}\n"
            "spec: {quota: {cpu: {nominal: -5}}}\n",
            "apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {name: \"\\0\"}\nspec: {}\n",
            "apiVersion: shoal.dev/v1alpha1\nkind: Nope\nmetadata: {name: x}\n",
            "apiVersion: v9\nkind: TrainingJob\n"])
    if roll < 0.55:  # a valid job: real processes, names reused (created, unchanged, 409)
        return job_yaml(rng.choice(NAMES), rng.choice(tenants), ["true"])
    if roll < 0.8:  # a valid job mutated byte by byte
        text = list(job_yaml(rng.choice(NAMES), tenant, ["sh", "-c", "exit 0"]))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text[pos] = chr(rng.choice([0, 9, 10, 13, 0x7F, 0xD800, rng.randint(32, 126)]))
            elif op < 0.7:
                del text[pos]
            else:
                text.insert(pos, rng.choice(["&a ", "*a", "[", "{", "---\n", "!!str ", ": ",
                                              "- ", "\\u0000", "'", '"']))
        return "".join(text)
    return fuzz_text(rng)


@dataclass
class Call:
    label: str
    method: str
    path: str
    headers: dict[str, str]
    content: bytes | None = None
    authorized: bool = False  # a valid token (the server reads the body)


def fuzz_call(rng: random.Random, routes: list[tuple[str, str, list[str]]],
              tokens: dict[str, str], tenants: list[str]) -> Call:
    who = rng.choices(["admin", "tenant", "other", "garbage", "none"], [30, 25, 10, 20, 15])[0]
    headers: dict[str, str] = {"Content-Type": "application/json"}
    if who in tokens:
        headers["Authorization"] = f"Bearer {tokens[who]}"
    elif who == "garbage":
        headers["Authorization"] = rng.choice([
            "Bearer", "Bearer ", "Bearer not-a-token", "Basic dXNlcjpwYXNz",
            f"bearer {tokens['admin']}", f"Bearer {tokens['admin'][:-1]}",
            f"Bearer {tokens['admin']}x", f"Bearer {tokens['admin']} {tokens['admin']}",
            "Bearer " + "A" * 10_000, "Bearer shoal_" + secrets.token_hex(8) + "_x",
            "Bearer \x7f\x01", f"Bearer {tokens['tenant']}\t"])
    call = _fuzz_call(rng, routes, tokens, tenants, headers)
    call.authorized = who in tokens
    return call


def _fuzz_call(rng: random.Random, routes: list[tuple[str, str, list[str]]],
               tokens: dict[str, str], tenants: list[str], headers: dict[str, str]) -> Call:
    roll = rng.random()
    if roll < 0.45:  # a route of the schema with fuzzed path and query
        method, template, params = rng.choice(routes)
        name = rng.choice(NAMES) if rng.random() < 0.4 else fuzz_text(rng, huge=False)
        path = re.sub(r"\{[^}]*\}", lambda _: quote(name.encode("utf-8", "surrogatepass"),
                                                      safe="")[:8000], template)
        query = {p: rng.choice(QUERY_VALUES) for p in params if rng.random() < 0.5}
        if rng.random() < 0.2:
            query[rng.choice(["since", "pod", "tenant", "x", "follow", ""])] = \
                rng.choice(QUERY_VALUES)
        query.pop("follow", None)  # a follow stream of a running job would not end
        content = encode_json(fuzz_json(rng)) if method in ("POST", "PUT") or \
            rng.random() < 0.1 else None
        if method == "POST" and template == "/v1/tokens" and rng.random() < 0.5:
            content = encode_json({"tenant": rng.choice([*tenants, None, fuzz_text(rng)]),
                                   "role": rng.choice(["admin", "tenant", "root", 1, None])})
        return Call(f"{method} {template}", method, _with_query(path, query), headers, content)
    if roll < 0.8:  # YAML through apply
        text = fuzz_yaml(rng, tenants)
        body: object = {"source": fuzz_text(rng, huge=False), "text": text}
        if rng.random() < 0.2:
            body = {"files": [{"source": "a", "text": text},
                              {"text": fuzz_yaml(rng, tenants)}]}
        return Call("POST /v1/apply (yaml)", "POST", "/v1/apply", headers, encode_json(body))
    if roll < 0.9:  # raw bodies and odd content types
        headers["Content-Type"] = rng.choice(["application/json", "text/plain",
                                              "application/x-www-form-urlencoded",
                                              "application/json; charset=utf-16", ""])
        content = rng.choice([
            rng.randbytes(rng.randint(0, 2000)), b"{", b'{"text": "a"', b"\xff\xfe{}",
            b'{"text": "\\ud800"}', b"NaN", b"[]" * 10, b'{"text": 1e400}',
            b'{"a":' * 2000 + b"1" + b"}" * 2000, b"x" * rng.choice([1000, 40 * MiB])])
        path = rng.choice(["/v1/apply", "/v1/tokens", "/v1/jobs"])
        return Call(f"POST {path} (raw)", "POST", path, headers, content)
    method = rng.choice(["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "DELETE", "GET", "POST"])
    path = rng.choice(["/v1/jobs/" + quote(rng.choice(NAMES)) + "/logs/x", "/v2/jobs", "/",
                       "/docs", "/openapi.json", "/v1/../v1/jobs", "/v1/jobs/..%2f..%2fetc",
                       "/v1/tenants/x", "/v1/nodes/x", "/v1//jobs", "/v1/jobs/%ff%fe",
                       "/v1/events/" + "x" * 3000, "/healthz/x", "/v1/apply"])
    return Call(f"{method} (odd)", method, path, headers, None)


def _with_query(path: str, query: dict[str, object]) -> str:
    if not query:
        return path
    parts = [f"{quote(k)}={quote(str(v).encode('utf-8', 'surrogatepass'), safe='')}"
             for k, v in query.items()]
    return path + "?" + "&".join(parts)


def schema_routes(openapi: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    routes = []
    for path, ops in openapi.get("paths", {}).items():
        for method, op in ops.items():
            params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]
            routes.append((method.upper(), path, params))
    return routes


def fuzz(args: argparse.Namespace) -> int:
    wall0, machine0, self0 = time.monotonic(), machine_cpu_seconds(), self_cpu_seconds()
    rng = random.Random(f"{args.seed}-fuzz")
    tag = "rel" + secrets.token_hex(3)
    tenants = [f"{tag}-a", f"{tag}-b"]
    root = temporary_root(args.work_dir)
    server = Server(root / "state", free_port(), root / "server.log")
    print(f"fuzz: {args.calls} calls, seed {args.seed}, state in {root}", flush=True)
    server.spawn()
    server.wait_ready()
    admin_call(server, "POST", "/v1/apply",
               json={"source": "cluster", "text": cluster_yaml(tenants, 4)})
    tokens = {"admin": server.token(),
              "tenant": admin_call(server, "POST", "/v1/tokens", json={"tenant": tenants[0]})["token"],
              "other": admin_call(server, "POST", "/v1/tokens", json={"tenant": tenants[1]})["token"]}
    seed_jobs = "".join(job_yaml(n, tenants[i % 2], ["sh", "-c", "echo hello from $SHOAL_JOB"])
                        for i, n in enumerate(NAMES))
    admin_call(server, "POST", "/v1/apply", json={"source": "seed", "text": seed_jobs})
    routes = schema_routes(admin_call(server, "GET", "/openapi.json"))
    classes: Counter[str] = Counter()
    by_label: dict[str, Counter[str]] = {}
    statuses: Counter[int] = Counter()
    server_errors: list[dict[str, Any]] = []
    slowest: list[tuple[float, str]] = []
    samples = [{"calls": 0, "rss_mib": round(read_status_kib(server.pid, "VmRSS") / 1024, 1)}]
    fuzz0 = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(args.call_timeout, connect=5)) as http:
        for i in range(1, args.calls + 1):
            call = fuzz_call(rng, routes, tokens, tenants)
            began = time.monotonic()
            outcome = _send(http, call)
            took = time.monotonic() - began
            if isinstance(outcome, int):
                statuses[outcome] += 1
                kind = f"{outcome // 100}xx"
                if outcome >= 500:
                    server_errors.append(_describe(call, outcome, took))
            else:
                kind = outcome
                if outcome in ("timeout", "connection error"):
                    server_errors.append(_describe(call, outcome, took))
            classes[kind] += 1
            by_label.setdefault(call.label, Counter())[kind] += 1
            slowest = sorted([*slowest, (took, _summary(call))], reverse=True)[:10]
            if outcome == "connection error" and server.proc is not None \
                    and server.proc.poll() is not None:
                print(f"  the server died at call {i}; see {server.log}", flush=True)
                break
            if i % args.sample_every == 0:
                rss = read_status_kib(server.pid, "VmRSS") / 1024
                samples.append({"calls": i, "rss_mib": round(rss, 1)})
                print(f"  {i} calls, RSS {rss:.1f} MiB, {dict(classes)}", flush=True)
    fuzz_s = time.monotonic() - fuzz0
    alive = server.proc is not None and server.proc.poll() is None
    health = None
    if alive:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    peak = read_status_kib(server.pid, "VmHWM") / 1024
    server.stop()
    cgroups = run_cgroups(tag)
    processes = run_processes(set(tenants))
    clean_up(processes, cgroups, set(tenants))
    warm = samples[1]["rss_mib"] if len(samples) > 2 else samples[0]["rss_mib"]
    growth = samples[-1]["rss_mib"] - warm
    result = {
        "seed": args.seed, "calls": sum(classes.values()), "classes": dict(classes),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "by_route": {k: dict(v) for k, v in sorted(by_label.items())},
        "server_errors": server_errors[:50], "server_error_count": len(server_errors),
        "rss_samples": samples, "rss_growth_after_warmup_mib": round(growth, 1),
        "rss_peak_mib": round(peak, 1), "server_alive_after": alive, "healthz_after": health,
        "slowest_calls": [{"seconds": round(t, 3), "call": c} for t, c in slowest],
        "leaked_cgroups": cgroups, "leaked_processes": processes,
        "time": {"wall_s": round(time.monotonic() - wall0, 1), "fuzz_s": round(fuzz_s, 1),
                 "calls_per_s": round(sum(classes.values()) / fuzz_s, 1),
                 "server_cpu_s": round(server.cpu_seconds, 1),
                 "script_cpu_s": round(self_cpu_seconds() - self0, 1),
                 "machine_cpu_s": round(machine_cpu_seconds() - machine0, 1)},
    }
    _print_fuzz(result, args.rss_target)
    emit(result, args.json)
    if args.keep:
        print(f"state kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    fails = result["server_error_count"] or not alive or growth > args.rss_target
    return 1 if fails else 0


def _send(http: httpx.Client, call: Call) -> int | str:
    try:
        answer = http.request(call.method, call.path, headers=call.headers, content=call.content)
    except httpx.TimeoutException:
        return "timeout"
    except (httpx.LocalProtocolError, httpx.InvalidURL, UnicodeEncodeError):
        return "not sent"  # the client refuses it (a header with a control character)
    except httpx.TransportError:
        # A body over 64 KiB that is refused unread (no valid token, over the size cap):
        # the server answers and closes the connection while the client is still sending.
        refused = not call.authorized or len(call.content or b"") > MAX_BODY
        return "closed early" if refused and len(call.content or b"") > 64 * 1024 \
            else "connection error"
    return answer.status_code if answer.status_code < 500 else _keep(answer)


def _keep(answer: httpx.Response) -> int:
    answer.read()
    return answer.status_code


def _summary(call: Call) -> str:
    body = "" if call.content is None else \
        f" body {len(call.content)} B: {call.content[:120]!r}"
    return f"{call.label} {call.path[:120]}{body}"


def _describe(call: Call, outcome: int | str, took: float) -> dict[str, Any]:
    return {"outcome": outcome, "seconds": round(took, 3), "call": _summary(call),
            "auth": call.headers.get("Authorization", "")[:20]}


def _print_fuzz(r: dict[str, Any], target: float) -> None:
    t = r["time"]
    print()
    print(f"Fuzz (seed {r['seed']}): {r['calls']} calls in {t['fuzz_s']} s "
          f"({t['calls_per_s']} calls/s)")
    print(f"  by class        {r['classes']}")
    print(f"  5xx, timeouts and dropped connections: {r['server_error_count']}")
    for e in r["server_errors"][:10]:
        print(f"    - {e['outcome']} after {e['seconds']} s: {e['call'][:200]}")
    series = ", ".join(f"{s['rss_mib']}" for s in r["rss_samples"])
    verdict = "within" if r["rss_growth_after_warmup_mib"] <= target else "OVER"
    print(f"  RSS MiB every {r['rss_samples'][1]['calls'] if len(r['rss_samples']) > 1 else '-'}"
          f" calls: {series}")
    print(f"  RSS growth after warm-up: {r['rss_growth_after_warmup_mib']} MiB ({verdict} "
          f"{target:.0f} MiB); peak {r['rss_peak_mib']} MiB")
    print(f"  server alive after: {r['server_alive_after']}, /healthz {r['healthz_after']}")
    print("  slowest calls:")
    for s in r["slowest_calls"][:5]:
        print(f"    {s['seconds']:>7} s  {s['call'][:160]}")
    print(f"  leaked cgroups {len(r['leaked_cgroups'])}, processes {len(r['leaked_processes'])}")
    print(f"  CPU: server {t['server_cpu_s']} s, script {t['script_cpu_s']} s, "
          f"machine {t['machine_cpu_s']} s; wall {t['wall_s']} s")
