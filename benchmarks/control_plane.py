"""Embedded control plane: submit-to-running latency and burst throughput.

Usage: python benchmarks/control_plane.py [--latency-jobs 50] [--burst 1000]

Starts a real control plane (SQLite, local processes, HTTP API on
127.0.0.1).  Latency: trivial jobs submitted one at a time; submit-to-running
is the time between the job's "submitted" and "admitted" events (admitted is
recorded once its process has started).  Burst: N trivial jobs in one apply;
throughput is N divided by the time from the apply to the last job's success.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from shoal.api import launch
from shoal.api.client import ShoalClient

CLUSTER = """
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: local}
spec: {count: 1, cpu: 64, memory: 64Gi}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: bench}
spec: {quota: {cpu: {nominal: 64}, memory: {nominal: 64Gi}}}
"""


def trivial(name: str) -> str:
    return f"""---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  tenant: bench
  maxRetries: 0
  podSets: [{{resources: {{cpu: 100m, memory: 64Mi}}}}]
  command: ["true"]
"""


def wait(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met")
        tick.wait(0.05)


def latency(api: ShoalClient, count: int) -> dict[str, float]:
    samples = []
    for i in range(count):
        name = f"lat-{i}"
        api.apply_text(trivial(name), "bench")
        wait(lambda name=name: any(e["kind"] == "admitted" for e in api.job(name)["events"]), 30)
        events = {e["kind"]: e["time"] for e in api.job(name)["events"]}
        samples.append(events["admitted"] - events["submitted"])
    samples.sort()
    return {
        "jobs": count,
        "p50_ms": round(1000 * statistics.median(samples), 1),
        "p95_ms": round(1000 * samples[int(0.95 * (len(samples) - 1))], 1),
        "max_ms": round(1000 * samples[-1], 1),
    }


def burst(api: ShoalClient, count: int) -> dict[str, float]:
    text = "".join(trivial(f"burst-{i}") for i in range(count))
    started = time.monotonic()
    api.apply_text(text, "bench")
    done = 0
    last = 0

    def finished() -> bool:
        # Count success events incrementally: cheap for the server being measured.
        nonlocal done, last
        for event in api.events(since=last):
            last = max(last, event["id"])
            done += event["kind"] == "succeeded" and str(event["job"]).startswith("burst-")
        return done == count

    wait(finished, 600)
    elapsed = time.monotonic() - started
    return {"jobs": count, "seconds": round(elapsed, 2), "jobs_per_s": round(count / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        running = launch.start(Path(directory) / "state")
        api = ShoalClient(running.url, running.token)
        try:
            api.apply_text(CLUSTER, "cluster")
            print(json.dumps({"submit_to_running": latency(api, args.latency_jobs)}), flush=True)
            print(json.dumps({"burst": burst(api, args.burst)}), flush=True)
        finally:
            api.close()
            running.stop()


if __name__ == "__main__":
    main()
