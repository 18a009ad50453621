"""The Kubernetes operator at scale, on a real API server with fake GPU nodes.

Usage: python benchmarks/kube_scale.py [--nodes 1000] [--jobs 10000] [--tenants 50]
                                       [--run-seconds 30] [--idle-seconds 10] [--out FILE]
                                       [--kcm-qps 500] [--profile FILE] [--profile-cpu]

Starts a control plane of its own from ../shared/kube (etcd, kube-apiserver,
kube-controller-manager v1.20.2, the fake kubelet with ``--nodes`` nodes of
8 GPUs each; no kube-scheduler: Shoal binds), labels the nodes' GPU model,
and runs ``shoal operator`` (the tenancy handlers and the control loop, as
``shoal operator`` runs them) in a child process of its own.  It creates
``--tenants`` Tenants, each with an equal share of the cluster's GPUs as
quota (no cohort), then submits ``--jobs`` one-pod, one-GPU TrainingJobs
round-robin over the tenants from 4 threads; each pod runs ``--run-seconds``
on the fake kubelet (``fake-kubelet/run-seconds``), so a tenant with more
jobs than quota admits the rest as the first ones end.

Measured: the time from the first submission until every job's pod is bound
(followed on a Pod watch), the operator's CPU seconds and peak RSS
(``getrusage`` in its process), its API requests by verb (counted at the
client seam: ``Kube.calls``) per job, every client's requests per job as the
API server counted them (``apiserver_request_total``), and, once every job has succeeded and
the operator has been quiet for a while, its requests over
``--idle-seconds`` of an idle cluster (the no-polling property: only the
watch streams may stay open), with the serving reconciler's timed pass
(``list InferenceService`` every 2 s) counted apart: it is no part of the
TrainingJob path this measures.  Prints one JSON object (and writes it to
``--out``); ``--profile FILE`` writes cProfile's statistics of the control
loop's thread (wall time: waiting on the server and for the GIL shows;
``--profile-cpu``: the thread's CPU time instead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KUBE_UP = ROOT.parent / "shared" / "kube" / "kube-up.sh"
GPUS_PER_NODE = 8
MODEL = "A100"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the operator's own process ---------------------------------------------------------


def operate(kubeconfig: str, report: str, profile: str = "") -> None:
    """Run the operator as ``shoal operator`` does; write its counters on SIGUSR1 and at exit.

    ``profile``: write cProfile's statistics of the control loop's thread there at exit.
    """
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl
    from shoal.runtime.kubernetes.operator import _operate, login_from

    kube = Kube.connect(kubeconfig)
    if profile:
        import cProfile

        loop_run = KubeControl.run

        # "cpu:FILE": the thread's CPU time, not the wall clock's.
        clock, _, path = profile.rpartition(":") if profile.startswith("cpu:") else ("", "", profile)

        def profiled(self: KubeControl, *args: Any, **kwargs: Any) -> None:
            profiler = cProfile.Profile(time.thread_time) if clock else cProfile.Profile()
            profiler.enable()
            try:
                loop_run(self, *args, **kwargs)
            finally:
                profiler.disable()
                profiler.dump_stats(path)

        KubeControl.run = profiled  # type: ignore[method-assign]

    def threads() -> dict[str, float]:
        """CPU seconds so far of each kind of thread (pools by their name's prefix)."""
        ticks = os.sysconf("SC_CLK_TCK")
        found: dict[str, float] = {}
        for thread in threading.enumerate():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
                utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
                group = thread.name.rstrip("0123456789").rstrip("_-")
                found[group] = found.get(group, 0.0) + (int(utime) + int(stime)) / ticks
        return found

    def write(*_: Any) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        calls = {f"{verb} {kind}": n for (verb, kind), n in sorted(kube.calls.snapshot().items())}
        Path(report + ".tmp").write_text(json.dumps({
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "calls": calls, "by_verb": kube.calls.by_verb(), "requests": kube.calls.requests(),
            "threads": threads(),
        }))
        os.replace(report + ".tmp", report)

    signal.signal(signal.SIGUSR1, write)
    try:
        _operate(kube, login_from(kubeconfig, None), None)
    finally:
        write()
        kube.close()


class Operator:
    def __init__(self, kubeconfig: Path, folder: Path, profile: Path | str | None) -> None:
        self.report = folder / "operator.json"
        self.log = folder / "operator.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--operate", str(kubeconfig), str(self.report),
                 str(profile or "")], stdout=out, stderr=subprocess.STDOUT)

    def counters(self) -> dict[str, Any]:
        """The operator's counters now (asked with SIGUSR1, read once written)."""
        before = self.report.stat().st_mtime_ns if self.report.exists() else 0
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.report.exists() and self.report.stat().st_mtime_ns != before:
                with contextlib.suppress(ValueError):
                    found: dict[str, Any] = json.loads(self.report.read_text())
                    return found
            threading.Event().wait(0.05)
        raise RuntimeError(f"the operator wrote no counters (log: {self.log})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the cluster ---------------------------------------------------------------------------


def kube_bin(folder: Path, qps: int) -> dict[str, str]:
    """``KUBE_BIN``: the unpacked binaries, kube-controller-manager with ``--port=0`` and ``qps``.

    kube-controller-manager v1.20 also serves plain HTTP on 0.0.0.0:10252
    unless told ``--port=0``: a second plane on the machine would fail to
    start on it.  Its client may send 20 requests a second by default
    (``--kube-api-qps``), so its Job controller could make no more than
    about 10 pods a second: ``qps`` (0: the default) lifts that, as large
    clusters do.  Without the unpacked binaries, kube-up.sh's defaults.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal-kube"
    found = sorted(cache.glob("kube-bin-*/kube-controller-manager"))
    if not found:
        return {}
    real = found[-1].parent
    mine = folder / "bin"
    mine.mkdir()
    for item in real.iterdir():
        (mine / item.name).symlink_to(item)
    kcm = mine / "kube-controller-manager"
    kcm.unlink()
    rate = f" --kube-api-qps={qps} --kube-api-burst={2 * qps}" if qps else ""
    kcm.write_text(f'#!/bin/sh\nexec {real}/kube-controller-manager --port=0{rate} "$@"\n')
    kcm.chmod(0o755)
    return {"KUBE_BIN": str(mine)}


def plane_env(folder: Path, nodes: int, qps: int) -> dict[str, str]:
    return {**os.environ, "KUBE_DIR": str(folder), "KUBE_PORT": str(free_port()),
            "ETCD_PORT": str(free_port()), "KCM_PORT": str(free_port()),
            "SCHED_PORT": str(free_port()), "KUBE_SCHEDULER": "0", "FAKE_NODES": str(nodes),
            **kube_bin(folder, qps)}


def label_models(kube: Any) -> None:
    """What NVIDIA's GPU feature discovery sets: the GPU model Tenants' quotas name."""
    from shoal.errors import ConflictError

    def label(node: dict[str, Any]) -> None:
        for _ in range(10):
            labels = node["metadata"].get("labels") or {}
            node["metadata"]["labels"] = {**labels, "nvidia.com/gpu.product": MODEL}
            try:
                kube.replace({**node, "apiVersion": "v1", "kind": "Node"})
                return
            except ConflictError:
                node = kube.get("Node", node["metadata"]["name"]) or node

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(label, kube.list("Node")))


def tenant(name: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"quota": {"cpu": {"nominal": 4 * gpus}, "memory": {"nominal": f"{4 * gpus}Gi"},
                               "gpus": {MODEL: {"nominal": gpus}}}}}


def training_job(name: str, owner: str, run_seconds: int) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": owner,
                         "annotations": {"fake-kubelet/run-seconds": str(run_seconds)}},
            "spec": {"tenant": owner, "podSets": [{"count": 1, "resources": {
                "cpu": "1", "memory": "1Gi", "gpu": {"count": 1}}}]}}


def plane_cpu(folder: Path) -> dict[str, float]:
    """CPU seconds so far of each process of the plane (from its pid file), and of this one
    (the submitter and the watches that follow the run)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for pid_file in sorted(folder.glob("*.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{int(pid_file.read_text().split()[0])}/stat").read_text()
            utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
            found[pid_file.stem] = (int(utime) + int(stime)) / ticks
    own = resource.getrusage(resource.RUSAGE_SELF)
    found["benchmark"] = own.ru_utime + own.ru_stime
    return found


class Follow:
    """Counts, on one watch, the jobs whose pod is bound and the pods that succeeded."""

    def __init__(self, kube: Any, jobs: int) -> None:
        from shoal.runtime.kubernetes.convert import JOB_LABEL

        self.kube, self.jobs, self.label = kube, jobs, JOB_LABEL
        self.bound: set[tuple[str, str]] = set()
        self.seen_at: dict[tuple[str, str], float] = {}  # a job's first pod appeared
        self.made_at: dict[tuple[str, str], float] = {}  # its first worker Job appeared
        self.bound_at_of: dict[tuple[str, str], float] = {}
        self.done: set[tuple[str, str]] = set()
        self.all_bound, self.all_done = threading.Event(), threading.Event()
        self.bound_at: float | None = None
        self.stop = threading.Event()
        threading.Thread(target=self._run, args=("Pod", self._see), daemon=True).start()
        threading.Thread(target=self._run, args=("Job", self._made), daemon=True).start()

    def _run(self, what: str, see: Any) -> None:
        since = self.kube.listing(what, labels=self.label)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            try:
                for kind, obj in self.kube.watch(what, since=since, timeout_s=60,
                                                 labels=self.label):
                    if kind == "ERROR":
                        since = self.kube.listing(what, labels=self.label)[
                            "metadata"]["resourceVersion"]
                        break
                    since = obj["metadata"]["resourceVersion"]
                    see(obj)
            except Exception as exc:  # keep following
                if not self.stop.is_set():
                    print(f"watch: {exc}", file=sys.stderr)
                    self.stop.wait(1.0)

    def _made(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        self.made_at.setdefault((meta["namespace"], meta["labels"][self.label]),
                                time.monotonic())

    def _see(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        job = (meta["namespace"], meta["labels"][self.label])
        now = time.monotonic()
        self.seen_at.setdefault(job, now)
        if (pod.get("spec") or {}).get("nodeName"):
            self.bound.add(job)
            self.bound_at_of.setdefault(job, now)
            if len(self.bound) >= self.jobs and not self.all_bound.is_set():
                self.bound_at = time.monotonic()
                self.all_bound.set()
        if (pod.get("status") or {}).get("phase") == "Succeeded":
            self.done.add(job)
            if len(self.done) >= self.jobs:
                self.all_done.set()


def wait(event: threading.Event, timeout_s: float, what: str, progress: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not event.wait(10):
        print(f"  ... {what}: {progress()}", file=sys.stderr, flush=True)
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout_s:.0f} s: {what} ({progress()})")


SERVING_KINDS = ("InferenceService",)
"""Kinds only the serving reconciler reads (its timed pass): not the TrainingJob path."""


def server_requests(kube: Any) -> dict[str, float]:
    """Every client's requests the API server has answered so far, by verb and resource
    (its ``apiserver_request_total``; watch streams left out): what the whole plane asks of it."""
    from prometheus_client.parser import text_string_to_metric_families

    api = kube.api_client
    headers = dict(api.default_headers)
    api.update_params_for_auth(headers, [], ["BearerToken"], "/metrics", "GET", None)
    text = api.rest_client.pool_manager.request(
        "GET", api.configuration.host + "/metrics", headers=headers).data.decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if not sample.name.endswith("_total") or labels.get("verb") == "WATCH":
                continue
            what = labels.get("resource", "") + (f"/{labels['subresource']}"
                                                  if labels.get("subresource") else "")
            key = f"{labels.get('verb', '').lower()} {what}"
            found[key] = found.get(key, 0.0) + sample.value
    return found


def training_requests(counters: dict[str, Any]) -> int:
    """Requests but the watch streams and the serving reconciler's."""
    return sum(n for key, n in counters["calls"].items()
               if key.split()[0] not in ("watch", "conflict")
               and key.split()[-1] not in SERVING_KINDS)


def quiet(operator: Operator, window_s: float, timeout_s: float) -> dict[str, Any]:
    """The operator's counters once a ``window_s`` went by without a request (serving's apart)."""
    deadline = time.monotonic() + timeout_s
    last = operator.counters()
    while time.monotonic() < deadline:
        threading.Event().wait(window_s)
        now = operator.counters()
        if training_requests(now) == training_requests(last):
            return now
        last = now
    raise SystemExit("the operator never went quiet")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.install import install_crds

    folder = Path(tempfile.mkdtemp(prefix="shoal-kube-scale-"))
    env = plane_env(folder, args.nodes, args.kcm_qps)
    began = time.monotonic()
    started = subprocess.run([str(KUBE_UP), "start"], env=env, capture_output=True, text=True,
                             timeout=1800, check=False)
    if started.returncode != 0:
        subprocess.run([str(KUBE_UP), "stop"], env=env, capture_output=True, timeout=300,
                       check=False)
        raise SystemExit(f"kube-up.sh start failed:\n{started.stdout}{started.stderr}")
    print(f"plane with {args.nodes} nodes up in {time.monotonic() - began:.0f} s",
          file=sys.stderr, flush=True)
    operator: Operator | None = None
    stops: list[threading.Event] = []
    kube = Kube.from_kubeconfig(str(folder / "kubeconfig"))
    try:
        install_crds(kube)
        kube.discovery.forget()
        label_models(kube)
        profile = f"cpu:{args.profile}" if args.profile and args.profile_cpu else args.profile
        operator = Operator(folder / "kubeconfig", folder, profile)
        share = args.nodes * GPUS_PER_NODE // args.tenants
        names = [f"team-{i:02}" for i in range(args.tenants)]
        for name in names:
            kube.create(tenant(name, share))
        deadline = time.monotonic() + 600
        while not all(any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in (t.get("status") or {}).get("conditions") or [])
                          for t in kube.list("Tenant")):
            if time.monotonic() > deadline:
                raise SystemExit(f"tenants' namespaces not made (log: {operator.log})")
            threading.Event().wait(1.0)
        settled = quiet(operator, 3.0, 600)
        follow = Follow(kube, args.jobs)
        stops.append(follow.stop)
        jobs = [(f"job-{i:05}", names[i % len(names)]) for i in range(args.jobs)]
        submitted_at = time.monotonic()
        cpu_before = plane_cpu(folder)
        served_before = server_requests(kube)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda j: kube.create(training_job(j[0], j[1], args.run_seconds)),
                          jobs))
        submit_s = time.monotonic() - submitted_at
        wait(follow.all_bound, args.timeout, "every job bound",
             lambda: f"{len(follow.bound)} bound")
        assert follow.bound_at is not None
        bound_s = follow.bound_at - submitted_at
        at_bound = operator.counters()
        cpu_at_bound = plane_cpu(folder)
        served = server_requests(kube)
        wait(follow.all_done, args.timeout, "every job succeeded",
             lambda: f"{len(follow.done)} succeeded")
        calm = quiet(operator, 3.0, 600)
        threading.Event().wait(args.idle_seconds)  # an idle cluster: nothing happens
        idle = operator.counters()
        idle_calls = {k: n - calm["calls"].get(k, 0) for k, n in idle["calls"].items()
                      if n != calm["calls"].get(k, 0) and not k.startswith("watch ")}
        idle_requests = {k: n for k, n in idle_calls.items()
                         if k.split()[-1] not in SERVING_KINDS}
        idle_serving = {k: n for k, n in idle_calls.items() if k.split()[-1] in SERVING_KINDS}
        work_calls = {k: n - settled["calls"].get(k, 0) for k, n in at_bound["calls"].items()
                      if n != settled["calls"].get(k, 0) and not k.startswith("watch ")}
        work = {verb: n - settled["by_verb"].get(verb, 0)
                for verb, n in at_bound["by_verb"].items()}
        done = {verb: n - settled["by_verb"].get(verb, 0)
                for verb, n in calm["by_verb"].items()}
        bound_times = sorted(t - submitted_at for t in follow.bound_at_of.values())
        seen_times = sorted(t - submitted_at for t in follow.seen_at.values())
        made_times = sorted(t - submitted_at for t in follow.made_at.values())
        waits = sorted(follow.bound_at_of[j] - follow.seen_at[j] for j in follow.bound_at_of)

        def quantiles(values: list[float]) -> dict[str, float]:
            return {f"{q}%": round(values[min(len(values) - 1, len(values) * q // 100)], 1)
                    for q in (10, 50, 80, 90, 99, 100)} if values else {}

        return {
            "nodes": args.nodes, "gpus": args.nodes * GPUS_PER_NODE, "tenants": args.tenants,
            "jobs": args.jobs, "run_seconds": args.run_seconds, "cores": os.cpu_count(),
            "kcm_qps": args.kcm_qps,
            "submit_s": round(submit_s, 1),
            "all_bound_s": round(bound_s, 1),
            "jobs_bound_per_s": round(args.jobs / bound_s, 1),
            # When jobs' pods appeared and were bound (seconds from the first
            # submission), and how long each waited from appearing to bound.
            "job_made_s": quantiles(made_times),
            "pod_made_s": quantiles(seen_times),
            "pod_bound_s": quantiles(bound_times),
            "made_to_bound_s": quantiles(waits),
            # Where the two cores went until every job was bound.
            "plane_cpu_s_to_bound": {k: round(v - cpu_before.get(k, 0.0), 1)
                                     for k, v in cpu_at_bound.items()},
            "operator_cpu_s_to_bound": round(at_bound["cpu_s"] - settled["cpu_s"], 1),
            # The same by the operator's threads (the control loop, the pools of
            # writes, the watches, kopf's event loop and its handlers' executor).
            "operator_cpu_s_to_bound_by_thread": {
                k: round(v - settled["threads"].get(k, 0.0), 1)
                for k, v in sorted(at_bound["threads"].items(), key=lambda kv: -kv[1])
                if v - settled["threads"].get(k, 0.0) >= 0.1},
            "operator_cpu_s_total": round(idle["cpu_s"], 1),
            "operator_peak_rss_mib": round(idle["peak_rss_mib"], 1),
            "calls_per_job_to_bound": {v: round(n / args.jobs, 2) for v, n in sorted(work.items())
                                       if n},
            "calls_per_job_to_succeeded": {v: round(n / args.jobs, 2)
                                           for v, n in sorted(done.items()) if n},
            "calls_per_job_to_bound_by_kind": {k: round(n / args.jobs, 2)
                                               for k, n in sorted(work_calls.items())},
            # Every client's requests (the submitter, the operator, the controller
            # manager, the fake kubelet) until the last bind, per job.
            "server_requests_per_job_to_bound": {
                k: round((n - served_before.get(k, 0.0)) / args.jobs, 2)
                for k, n in sorted(served.items(), key=lambda kv: -kv[1])
                if (n - served_before.get(k, 0.0)) / args.jobs >= 0.01},
            "idle_seconds": args.idle_seconds,
            "idle_requests": idle_requests,
            "idle_requests_serving_pass": idle_serving,
        }
    finally:
        for stop in stops:
            stop.set()
        if operator is not None:
            operator.stop()
        kube.close()
        subprocess.run([str(KUBE_UP), "stop"], env=env, capture_output=True, timeout=300,
                       check=False)
        if args.profile is None:  # the profile's folder aside, nothing is kept
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--operate":
        operate(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--run-seconds", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--kcm-qps", type=int, default=500,
                        help="kube-controller-manager's --kube-api-qps (0: its default, 20)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="write cProfile statistics of the control loop's thread here")
    parser.add_argument("--profile-cpu", action="store_true",
                        help="profile the thread's CPU time, not the wall clock's")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
