"""Scale from zero to the first response, for a scikit-learn model, on the embedded plane.

Usage: python benchmarks/scale_from_zero.py [--runs 5]

Load: per run, one InferenceService (the digits classifier, a scikit-learn
model saved with joblib, ``replicas: {min: 0, max: 1}``, ``policy: shoal``,
2 CPUs per replica: the replica's cgroup caps its CPU, and one capped at half
a core imports scikit-learn half as fast) on one embedded control plane in a
temporary folder, pods as the plane's user.  Each run applies its service,
waits until it has loaded its model and scaled to zero (no replica left),
then sends one OIP v2 request through
the router and times it until the answer: the router's activator holds it, the reconciler asks for a
replica at once, the admission cycle places it, the process starts, imports
scikit-learn, loads the model and answers.  Prints one JSON line: each run's
seconds, the median, and the bare replica's own cold start measured the same
way in the same run (the process started by hand, timed to its first
answer), so the plane's share is their difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import joblib
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shoal.api import launch  # noqa: E402
from shoal.api.client import ShoalClient  # noqa: E402

CLUSTER = """
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: local}
spec: {count: 1, cpu: 4, memory: 8Gi}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec: {quota: {cpu: {nominal: 4}, memory: {nominal: 8Gi}}}
"""

SERVICE = """
apiVersion: shoal.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  tenant: team-a
  framework: sklearn
  model: {{path: {model}}}
  resources: {{cpu: 2, memory: 1Gi}}
  replicas: {{min: 0, max: 1}}
  autoscaling: {{policy: shoal, target: 1, sloP95Ms: 100}}
"""


def wait(check, timeout: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    tick, deadline = threading.Event(), time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting")
        tick.wait(0.05)


def bare_cold_start(model: Path, body: bytes) -> float:
    """The replica alone: start it by hand and time the first answer."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.serving.replica", "--framework", "sklearn", "--model",
         str(model), "--name", "digits", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = json.loads(process.stdout.readline())["port"]
        httpx.post(f"http://127.0.0.1:{port}/v2/models/digits/infer", content=body,
                   timeout=60).raise_for_status()
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("SHOAL_POD_USER", "self")
    folder = Path(tempfile.mkdtemp(prefix="shoal-s0-"))
    x, y = load_digits(return_X_y=True)
    model = folder / "digits.joblib"
    joblib.dump(LogisticRegression(max_iter=2000, random_state=0).fit(x, y), model)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": [float(v) for v in x[0]]}]}).encode()
    plane = launch.start(folder / "state", grace_seconds=3.0)
    admin = ShoalClient(plane.url, plane.token)
    try:
        admin.apply_text(CLUSTER, "cluster.yaml")
        token = admin.create_token("team-a")
        runs = []
        for run in range(args.runs):
            # A service of its own per run: loaded once, then (no request yet) scaled to zero.
            name = f"digits-{run}"
            admin.apply_text(SERVICE.format(name=name, model=model), f"{name}.yaml")
            wait(lambda name=name: admin.service(name)["phase"] == "Ready")
            wait(lambda prefix=f"{name}-r": not any(
                j["phase"] in ("Pending", "Running") for j in admin.jobs()
                if j["name"].startswith(prefix)))
            url = admin.service(name)["url"]
            started = time.perf_counter()
            httpx.post(f"{url}/v2/models/{name}/infer", content=body, timeout=120,
                       headers={"Authorization": f"Bearer {token}"}).raise_for_status()
            runs.append(round(time.perf_counter() - started, 3))
            admin._call("DELETE", f"/v1/services/{name}")
        bare = [round(bare_cold_start(model, body), 3) for _ in range(args.runs)]
    finally:
        wait(lambda: not any(j["phase"] == "Running" for j in admin.jobs()))
        admin.close()
        plane.stop()
    print(json.dumps({"runs_s": runs, "median_s": statistics.median(runs),
                      "bare_replica_runs_s": bare, "bare_median_s": statistics.median(bare),
                      "loadavg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
