"""The crash storm of ``reliability.py``: SIGKILL the server under a burst of jobs.

Jobs go in through the tenants' tokens in seeded batches while the server is
killed at seeded moments and restarted on the same state; then it reports
acknowledged jobs lost, jobs started twice, leaked cgroups and processes, wall
time and CPU (see ``reliability.py`` for the load and the targets).
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from reliability_harness import (
    Server,
    admin_call,
    clean_up,
    cluster_yaml,
    emit,
    free_port,
    job_yaml,
    machine_cpu_seconds,
    run_cgroups,
    run_processes,
    self_cpu_seconds,
    temporary_root,
)

FINAL_PHASES = ("Succeeded", "Failed", "Cancelled")
START_RE = re.compile(r"^started (\S+) (\d+)(?: (\S+))?$")
DONE_RE = re.compile(r"^done (\S+) (\d+)$")
POD_COMMAND = ("echo started $SHOAL_POD_UID $SHOAL_ATTEMPT $(date +%s.%N); sleep 0.2; "
               "echo done $SHOAL_POD_UID $SHOAL_ATTEMPT")


@dataclass
class Submission:
    name: str
    tenant: str
    acked: bool = False
    result: str = ""
    tries: int = 0
    unanswered: int = 0
    rejected: str = ""


@dataclass
class Kill:
    index: int
    delay_s: float
    at: float  # wall clock
    announced: bool  # whether the killed incarnation had printed that its API was up


@dataclass
class StormState:
    submissions: list[Submission]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def submitter(server: Server, tokens: dict[str, str], state: StormState, rng: random.Random,
              batch_max: int, submit_seconds: float, deadline: float) -> None:
    """Apply the jobs in seeded batches, paced; resend what got no answer."""
    clients = {t: httpx.Client(base_url=server.url, timeout=10,
                               headers={"Authorization": f"Bearer {tok}"})
               for t, tok in tokens.items()}
    total = len(state.submissions)
    try:
        start = time.monotonic()
        i = 0
        while i < total:
            size = rng.randint(1, batch_max)
            tenant = state.submissions[i].tenant
            batch = []  # one tenant's token per request: stop at the next tenant's job
            for s in state.submissions[i:i + size]:
                if s.tenant != tenant:
                    break
                batch.append(s)
            text = "".join(job_yaml(s.name, s.tenant, ["sh", "-c", POD_COMMAND]) for s in batch)
            _submit(clients[tenant], batch, text, deadline)
            i += len(batch)
            # Pace: the i-th job goes out about i/total of the way through submit_seconds.
            wait = start + submit_seconds * i / total - time.monotonic()
            if wait > 0:
                time.sleep(wait)
    except BaseException as exc:  # reported by the main thread
        state.error = exc
    finally:
        for client in clients.values():
            client.close()
        state.done.set()


def _submit(client: httpx.Client, batch: list[Submission], text: str, deadline: float) -> None:
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("submissions did not get through before the deadline")
        for s in batch:
            s.tries += 1
        try:
            answer = client.post("/v1/apply", json={"source": "reliability", "text": text})
        except httpx.HTTPError:
            for s in batch:
                s.unanswered += 1
            time.sleep(0.05)
            continue
        if answer.status_code == 200:
            results = {a["name"]: a["result"] for a in answer.json()["applied"]}
            for s in batch:
                s.acked, s.result = True, results.get(s.name, "?")
            return
        if answer.status_code >= 500 or answer.status_code == 429:
            for s in batch:
                s.unanswered += 1  # temporary (503 while the store is busy, or a crash)
            time.sleep(0.05)
            continue
        for s in batch:
            s.rejected = f"HTTP {answer.status_code}: {answer.text[:300]}"
        return


def crash(args: argparse.Namespace) -> int:
    wall0, machine0, self0 = time.monotonic(), machine_cpu_seconds(), self_cpu_seconds()
    rng_kill = random.Random(f"{args.seed}-kill")
    rng_submit = random.Random(f"{args.seed}-submit")
    tag = "rel" + secrets.token_hex(3)  # unique per run: it marks our cgroups and pods
    tenants = [f"{tag}-a", f"{tag}-b"]
    lo, hi = args.uptime
    delays = [round(rng_kill.uniform(lo, hi), 3) for _ in range(args.kills)]
    submit_seconds = args.submit_seconds if args.submit_seconds is not None \
        else 0.5 * sum(delays)
    root = temporary_root(args.work_dir)
    server = Server(root / "state", free_port(), root / "server.log")
    print(f"crash storm: {args.jobs} jobs, {args.kills} kills, seed {args.seed}, tenants "
          f"{', '.join(tenants)}, state in {root}", flush=True)
    server.spawn()
    server.wait_ready()
    admin_call(server, "POST", "/v1/apply",
               json={"source": "cluster", "text": cluster_yaml(tenants, args.per_tenant)})
    tokens = {t: admin_call(server, "POST", "/v1/tokens", json={"tenant": t})["token"]
              for t in tenants}
    subs = _assign(args.jobs, tenants, random.Random(f"{args.seed}-tenants"), args.batch_max)
    state = StormState(subs)
    deadline = time.monotonic() + args.timeout
    worker = threading.Thread(target=submitter, name="submitter", daemon=True,
                              args=(server, tokens, state, rng_submit, args.batch_max,
                                    submit_seconds, deadline))
    storm0 = time.monotonic()
    worker.start()
    kills: list[Kill] = []
    for index, delay in enumerate(delays):
        left = server.spawned_at + delay - time.monotonic()
        if left > 0:
            time.sleep(left)
        announced = server.announced()
        server.kill()
        kills.append(Kill(index, delay, time.time(), announced))
        server.spawn()
        if (index + 1) % 10 == 0:
            acked = sum(s.acked for s in subs)
            print(f"  {index + 1} kills, {acked} jobs acknowledged", flush=True)
    storm_s = time.monotonic() - storm0
    server.wait_ready()
    worker.join(max(0.0, deadline - time.monotonic()))
    if state.error is not None:
        raise RuntimeError(f"the submitter failed: {state.error!r}") from state.error
    submit_s = time.monotonic() - storm0
    print(f"  kills done in {storm_s:.1f} s; all submissions answered after {submit_s:.1f} s; "
          "waiting for every job to end", flush=True)
    listed = _wait_final(server, deadline)
    settle_s = time.monotonic() - storm0
    time.sleep(args.settle)
    cgroups = run_cgroups(tag)
    processes = run_processes(set(tenants))
    details0 = time.monotonic()
    details = _details(server, listed)
    details_s = time.monotonic() - details0
    server_log = server.log.read_text(errors="replace")
    server.stop()
    clean_up(processes, cgroups, set(tenants))
    wall = time.monotonic() - wall0
    result = _crash_report(args, tag, delays, kills, subs, listed, details, cgroups, processes)
    result["server_log_errors"] = _log_errors(server_log)
    result["time"] = {
        "wall_s": round(wall, 1), "kill_phase_s": round(storm_s, 1),
        "until_all_final_s": round(settle_s, 1), "reading_jobs_s": round(details_s, 1),
        "submit_seconds_target": round(submit_seconds, 1),
        "server_cpu_s": round(server.cpu_seconds, 1),
        "script_cpu_s": round(self_cpu_seconds() - self0, 1),
        "machine_cpu_s": round(machine_cpu_seconds() - machine0, 1),
        "server_starts": server.incarnations}
    _print_crash(result)
    emit(result, args.json)
    if args.keep:
        print(f"state kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    bad = (result["acknowledged_lost"] or result["leaked_cgroups"] or result["leaked_processes"]
           or result["started_twice"]["jobs"])
    return 1 if bad else 0


def _assign(count: int, tenants: list[str], rng: random.Random,
            run_max: int) -> list[Submission]:
    """Jobs ``j00000``..., their tenants taking turns in seeded runs of 1..run_max."""
    out: list[Submission] = []
    turn = 0
    while len(out) < count:
        for _ in range(min(rng.randint(1, run_max), count - len(out))):
            out.append(Submission(f"j{len(out):05d}", tenants[turn % len(tenants)]))
        turn += 1
    return out


def _wait_final(server: Server, deadline: float) -> list[dict[str, Any]]:
    while True:
        jobs: list[dict[str, Any]] = admin_call(server, "GET", "/v1/jobs")["jobs"]
        if all(j["phase"] in FINAL_PHASES for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            active = Counter(j["phase"] for j in jobs if j["phase"] not in FINAL_PHASES)
            raise TimeoutError(f"jobs still active at the deadline: {dict(active)}")
        time.sleep(0.5)


def _details(server: Server, listed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per job: its record (events, pods) and the start and done lines of its log."""
    headers = {"Authorization": f"Bearer {server.token()}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http, \
            ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda job: _job_details(http, job["name"]), listed)
        return {job["name"]: d for job, d in zip(listed, found, strict=True)}


def _job_details(http: httpx.Client, name: str) -> dict[str, Any]:
    path = f"/v1/jobs/{quote(name, safe='')}"
    record = http.get(path).json()
    log, offset = b"", 0
    while True:
        page = http.get(f"{path}/logs", params={"offset": offset})
        if page.status_code != 200 or not page.content:
            break
        log += page.content
        offset += len(page.content)
    starts, dones = [], []
    for line in log.decode(errors="replace").splitlines():
        if m := START_RE.match(line.strip()):
            starts.append({"uid": m[1], "attempt": int(m[2]),
                           "time": float(m[3]) if m[3] else None})
        elif m := DONE_RE.match(line.strip()):
            dones.append({"uid": m[1], "attempt": int(m[2])})
    return {"record": record, "starts": starts, "dones": dones}


def _crash_report(args: argparse.Namespace, tag: str, delays: list[float], kills: list[Kill],
                  subs: list[Submission], listed: list[dict[str, Any]],
                  details: dict[str, dict[str, Any]], cgroups: list[dict[str, Any]],
                  processes: list[dict[str, Any]]) -> dict[str, Any]:
    present = {j["name"] for j in listed}
    acked = [s for s in subs if s.acked]
    lost = sorted(s.name for s in acked if s.name not in present)
    twice, per_attempt, finished_twice, retried, never = [], [], [], [], []
    for name, d in sorted(details.items()):
        starts, record = d["starts"], d["record"]
        kinds = [e["kind"] for e in record.get("events", [])]
        if "retrying" in kinds:
            retried.append(name)
        if record.get("phase") == "Succeeded" and not starts:
            never.append(name)
        if len(starts) > 1:
            twice.append(name)
        if any(n > 1 for n in Counter(s["attempt"] for s in starts).values()):
            per_attempt.append(name)
        if len({x["uid"] for x in d["dones"]}) > 1:
            finished_twice.append(name)
    cases = [_case(name, details[name], kills) for name in twice]
    # Pods that printed their start line just after a kill were spawned just before it:
    # the window in which the plane may not have recorded their pids yet.
    kill_times = [k.at for k in kills]
    close_calls = sorted(name for name, d in details.items() for x in d["starts"]
                         if x["time"] and any(0 <= x["time"] - k <= 0.1 for k in kill_times))
    ran = {x["uid"][:8] for d in details.values() for x in d["starts"]}
    leaked_pods: dict[str, dict[str, Any]] = {}
    for group in cgroups:  # <tenant>-<job>-<uid8>-<index>, once per controller
        pod = Path(group["path"]).name
        job, uid = [*pod.split("-")[-3:-1], "", ""][:2]
        leaked_pods.setdefault(pod, {"pod": pod, "job": job, "uid": uid,
                                     "attempt_ran": uid in ran, "controllers": 0})
        leaked_pods[pod]["controllers"] += 1
    phases = Counter(j["phase"] for j in listed)
    waits = sorted(j["start_time"] - j["submit_time"] for j in listed
                   if j.get("start_time") and j.get("submit_time"))
    return {
        "seed": args.seed, "tag": tag, "jobs": args.jobs, "kills": len(kills),
        "kill_delays_s": delays, "kill_times": [round(k.at, 3) for k in kills],
        "pods_started_within_100ms_before_a_kill": close_calls,
        "kills_before_api_up": sum(not k.announced for k in kills),
        "submissions": {
            "acknowledged": len(acked),
            "acknowledged_created": sum(s.result == "created" for s in acked),
            "acknowledged_unchanged": sum(s.result == "unchanged" for s in acked),
            "rejected": {s.name: s.rejected for s in subs if s.rejected},
            "requests_unanswered": sum(s.unanswered for s in subs),
            "jobs_resent": sum(s.tries > 1 for s in subs)},
        "jobs_on_server": len(present), "phases": dict(phases),
        "queue_wait_s": {"p50": round(waits[len(waits) // 2], 2) if waits else None,
                         "p95": round(waits[int(0.95 * (len(waits) - 1))], 2) if waits else None,
                         "max": round(waits[-1], 2) if waits else None},
        "acknowledged_lost": lost,
        "started_twice": {
            "jobs": len(twice), "names": twice,
            "same_attempt_started_twice": len(per_attempt), "same_attempt_names": per_attempt,
            "finished_twice": len(finished_twice), "finished_twice_names": finished_twice,
            "start_lines": sum(len(d["starts"]) for d in details.values()),
            "jobs_with_failure_retries": retried},
        "succeeded_without_start_line": never,
        "cases": cases,
        "leaked_cgroups": cgroups, "leaked_cgroup_pods": list(leaked_pods.values()),
        "leaked_processes": processes,
    }


def _case(name: str, d: dict[str, Any], kills: list[Kill]) -> dict[str, Any]:
    """What happened to a job started more than once, next to the kills around it."""
    record = d["record"]
    first = min((s["time"] for s in d["starts"] if s["time"]), default=None)
    near = []
    if first is not None:
        near = [{"kill": k.index, "offset_s": round(k.at - first, 3), "api_up": k.announced}
                for k in kills if -1.0 <= k.at - first <= 3.0]
    return {
        "job": name, "tenant": record.get("tenant"), "phase": record.get("phase"),
        "attempts": record.get("attempts"),
        "starts": [{**s, "uid": s["uid"][:8]} for s in d["starts"]],
        "dones": [{**x, "uid": x["uid"][:8]} for x in d["dones"]],
        "events": [{"kind": e["kind"], "time": e["time"],
                    **{k: v for k, v in e.get("data", {}).items()
                       if k in ("attempt", "reason", "lost_seconds")}}
                   for e in record.get("events", [])],
        "kills_near_first_start": near,
    }


def _log_errors(text: str) -> list[str]:
    """Server log lines that look like errors or warnings (first 40)."""
    keep = [line for line in text.splitlines()
            if re.search(r"error|warn|traceback|exception", line, re.I)]
    return keep[:40]


def _print_crash(r: dict[str, Any]) -> None:
    s, t, tw = r["submissions"], r["time"], r["started_twice"]
    print()
    print(f"Crash storm (seed {r['seed']}, tag {r['tag']})")
    print(f"  kills                         {r['kills']} ({r['kills_before_api_up']} before the "
          "restarted API was up)")
    print(f"  pods spawned just before a kill  {len(r['pods_started_within_100ms_before_a_kill'])}"
          " (start line within 0.1 s after the kill)")
    print(f"  jobs acknowledged             {s['acknowledged']} of {r['jobs']} "
          f"({s['acknowledged_unchanged']} on a resend after an unanswered request; "
          f"{s['jobs_resent']} jobs resent, {s['requests_unanswered']} unanswered job-requests)")
    print(f"  rejected                      {len(s['rejected'])}")
    print(f"  jobs on the server            {r['jobs_on_server']}  phases {r['phases']}")
    print(f"  queue wait (submit to start)  p50 {r['queue_wait_s']['p50']} s, p95 "
          f"{r['queue_wait_s']['p95']} s, max {r['queue_wait_s']['max']} s")
    print(f"  acknowledged jobs lost        {len(r['acknowledged_lost'])}")
    print(f"  jobs started more than once   {tw['jobs']} (start lines {tw['start_lines']} for "
          f"{r['jobs_on_server']} jobs)")
    print(f"    same attempt started twice  {tw['same_attempt_started_twice']}")
    print(f"    ran to the end twice        {tw['finished_twice']}")
    print(f"    jobs with failure retries   {len(tw['jobs_with_failure_retries'])}")
    print(f"  succeeded with no start line  {len(r['succeeded_without_start_line'])}")
    pods = r["leaked_cgroup_pods"]
    print(f"  leaked cgroups                {len(r['leaked_cgroups'])} folders, "
          f"{len(pods)} pods ({sum(bool(c['procs']) for c in r['leaked_cgroups'])} folders "
          f"with processes; {sum(not p['attempt_ran'] for p in pods)} pods whose attempt "
          "never printed its start line)")
    print(f"  leaked processes              {len(r['leaked_processes'])}")
    print(f"  wall time                     {t['wall_s']} s (kills {t['kill_phase_s']} s, all "
          f"final after {t['until_all_final_s']} s)")
    print(f"  CPU                           server {t['server_cpu_s']} s (with the pods it "
          f"reaped), script {t['script_cpu_s']} s, whole machine {t['machine_cpu_s']} s")
    for case in r["cases"][:20]:
        events = ", ".join(f"{e['kind']}" + (f"({e['reason'][:60]})" if e.get("reason") else "")
                           for e in case["events"])
        starts = ", ".join(f"{s['uid']}#{s['attempt']}" for s in case["starts"])
        print(f"  - {case['job']}: starts {starts}; done {len(case['dones'])}x; events: {events}; "
              f"kills near: {case['kills_near_first_start']}")
    for pod in pods[:20]:
        print(f"  - leaked cgroup {pod['pod']} in {pod['controllers']} hierarchies "
              f"({'its attempt ran' if pod['attempt_ran'] else 'its attempt never ran'})")
    for p in r["leaked_processes"][:20]:
        print(f"  - leaked process {p['pid']} ({p['job']} attempt {p['attempt']}): {p['cmdline']}")
    if r["server_log_errors"]:
        print(f"  server log: {len(r['server_log_errors'])} error/warning lines, e.g. "
              f"{r['server_log_errors'][0][:160]}")
