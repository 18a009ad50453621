"""Serving simulation on the Azure LLM code trace: KPA vs HPA vs Shoal, and its cost.

Usage: python benchmarks/serve_sim.py [--scenario examples/serving/azure-code-sim.yaml]
       [--repeat 3]

Runs the serve-mode Simulation manifest in this process (the path
``shoal sim`` takes), prints each policy's SLO attainment, latencies, cold
starts and replica-seconds, the replica-seconds of Shoal's policy as a share
of the others', and the CPU seconds (``time.process_time``) of loading the
whole trace and of simulating it under each policy: the median of
``--repeat`` runs, all measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from shoal.sim.serve_plan import plan_from_serve, read_simulation, run_serve_plan

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path,
                        default=ROOT / "examples" / "serving" / "azure-code-sim.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    loads, totals, report = [], [], {}
    for _ in range(args.repeat):
        begin = time.process_time()
        plan = plan_from_serve(args.scenario, read_simulation(args.scenario))
        loaded = time.process_time()
        report = run_serve_plan(plan)
        loads.append(loaded - begin)
        totals.append(time.process_time() - begin)
    results = {r["policy"]: r["metrics"] for r in report["results"]}
    print(f"{'policy':8} {'SLO att.':>9} {'p50 s':>7} {'p99 s':>7} {'TTFT p99':>9} "
          f"{'cold':>5} {'replica-s':>10} {'CPU s':>6}")
    for name, m in results.items():
        print(f"{name:8} {100 * m['slo_attainment']:8.2f}% {m['latency_p50_s']:7.3f} "
              f"{m['latency_p99_s']:7.3f} {m['first_token_p99_s']:9.3f} {m['cold_starts']:5d} "
              f"{m['replica_seconds']:10.0f} {m['cpu_time_s']:6.3f}")
    if "shoal" in results:
        for other in ("kpa", "hpa"):
            if other in results:
                share = results["shoal"]["replica_seconds"] / results[other]["replica_seconds"]
                print(f"shoal replica-seconds / {other}: {share:.3f} ({100 * (1 - share):.1f} % fewer)")
    print(f"requests: {next(iter(results.values()))['requests']}; "
          f"CPU s to load the trace: {statistics.median(loads):.3f}; "
          f"load + every policy: {statistics.median(totals):.3f} (median of {args.repeat})")
    print(json.dumps({"cpu_s_total": round(statistics.median(totals), 3)}))


if __name__ == "__main__":
    main()
