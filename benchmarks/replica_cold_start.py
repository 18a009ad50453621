"""Replica cold start: process start -> model loaded -> first answer, for a scikit-learn model.

Usage: python benchmarks/replica_cold_start.py [--runs 5]

Trains the digits classifier (scikit-learn, fixed seed) once, then starts
``python -m shoal.serving.replica`` ``--runs`` times on 127.0.0.1 with
``--port 0 --ready-file``, and measures for each run the wall time from the
process start until the ready file appears (the model is loaded and the
socket listens) and until the first FP32 [1, 64] inference answers.  This is
the replica's share of a scale from zero (the router's activator and the
runtime's process start come on top).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def one_run(model: Path, folder: Path) -> tuple[float, float]:
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.serving.replica", "--model", str(model), "--framework",
         "sklearn", "--name", "digits", "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not ready.exists():
            if process.poll() is not None:
                raise SystemExit(process.stderr.read().decode() if process.stderr else "exited")
            time.sleep(0.002)
        loaded = time.perf_counter() - start
        port = json.loads(ready.read_text())["port"]
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.0] * 64}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/digits/infer", json=body,
                            timeout=60)
        answer.raise_for_status()
        return loaded, time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "examples/serving/train_digits.py")],
                       check=True, capture_output=True,
                       env={**os.environ, "SHOAL_CHECKPOINT_DIR": tmp})
        runs = [one_run(folder / "model.joblib", folder) for _ in range(args.runs)]
    ready, first = [r[0] for r in runs], [r[1] for r in runs]
    print(json.dumps({
        "runs": args.runs, "cpus": os.cpu_count(),
        "ready_s": {"median": round(statistics.median(ready), 3), "max": round(max(ready), 3)},
        "first_answer_s": {"median": round(statistics.median(first), 3),
                           "max": round(max(first), 3)},
    }))


if __name__ == "__main__":
    main()
