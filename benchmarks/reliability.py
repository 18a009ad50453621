"""Reliability of the embedded control plane: a crash storm and an API fuzz.

Usage:
    python benchmarks/reliability.py crash [--jobs 1000] [--kills 100] [--seed 7] [--json F]
    python benchmarks/reliability.py fuzz  [--calls 10000] [--seed 7] [--json F]

Both parts start real ``shoal server`` processes (``python -m shoal server``)
on a fresh temporary state folder and a fixed port on 127.0.0.1, and talk to
them over HTTP only.  They need root for the cgroup and ``/proc`` checks.

**crash** (load: N=1,000 jobs of ``sh -c 'echo started ...; sleep 0.2'``,
100m CPU and 32 MiB each, two tenants of 3 concurrent jobs each, so the burst
queues; K=100 SIGKILLs of the server, about 80 s of submissions, 3 to 5
minutes in all on 2 cores; N=100, K=10 takes about 30 s): the jobs are applied in seeded
batches of 1 to ``--batch-max`` through the tenants' tokens, paced over
``--submit-seconds``, while the main thread SIGKILLs the server after a
seeded random delay from each (re)start (uniform in ``--uptime``, so some
kills land during start-up and recovery) and restarts it on the same state
folder and port, ``--kills`` times.  A submission that got no answer is sent
again; a job counts as acknowledged only once the API answered 2xx for it.
After the last kill it waits until every job is final, then reports:
acknowledged jobs missing on the server, jobs started more than once (the
``started <uid> <attempt>`` lines of each pod log: raw, per attempt number,
and those that also finished twice), cgroup folders under
``/sys/fs/cgroup/*/shoal*`` whose names hold this run's tenants, live
processes whose environment names this run's tenants, wall time and CPU.
It also counts the pods whose start line came less than 0.1 s after a kill:
spawned just before it, in the window where the plane may not have recorded
their pids (evidence that the run hit the dangerous moment at all).  Leaked
processes and cgroups of this run are removed after being counted.

**fuzz** (load: M=10,000 requests, one at a time, 8 to 9 minutes on 2 cores;
the bodies go up to 5 MB, one in a few hundred is 40 MiB): random
routes and parameters from ``/openapi.json`` plus unknown ones, admin,
tenant, garbage and missing tokens, JSON bodies (wrong types, deep nesting,
huge numbers and strings, NUL, control characters, lone surrogates), raw
bytes, and YAML through ``/v1/apply`` (alias bombs of random depth and
fan-out, self-referencing aliases, deep nesting, huge scalars, out-of-range
integers, Python tags, mutated valid manifests, a few valid jobs).  It
counts answers by status class (any 5xx fails the run), and samples the
server's RSS (``VmRSS``) every ``--sample-every`` calls: the growth is from
the first sample after warm-up (the first ``--sample-every`` calls) to the
last (target: within 50 MiB).  Not counted as errors: requests the client
itself refuses to send (a control character in a header: "not sent") and
bodies over 64 KiB without a valid token or over the server's 32 MiB cap
that the server answers and closes before reading ("closed early").

The exit status is 1 when a target is missed (a lost or twice-started job, a
leak; a 5xx, timeout or dropped connection, or RSS growth over the target).

Everything random comes from ``--seed``; timing on a loaded machine is not
reproducible, so the kill delays are, but not what each kill interrupts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from reliability_crash import crash
from reliability_fuzz import fuzz
from reliability_harness import Server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    storm = sub.add_parser("crash", help="SIGKILL the server under a burst of submissions")
    storm.add_argument("--jobs", type=int, default=1000)
    storm.add_argument("--kills", type=int, default=100)
    storm.add_argument("--uptime", type=float, nargs=2, default=(0.3, 3.0),
                       metavar=("MIN", "MAX"),
                       help="seconds from each (re)start to its kill, uniform (default 0.3 3.0)")
    storm.add_argument("--batch-max", type=int, default=10, help="most jobs per apply")
    storm.add_argument("--per-tenant", type=int, default=3, help="jobs a tenant runs at once")
    storm.add_argument("--submit-seconds", type=float, default=None,
                       help="spread the submissions over this long (default: half the kill delays' sum)")
    storm.add_argument("--settle", type=float, default=3.0,
                       help="seconds after the last job ends before leaks are counted")
    storm.add_argument("--timeout", type=float, default=1800.0)
    fz = sub.add_parser("fuzz", help="fuzzed API calls; 5xx and server RSS")
    fz.add_argument("--calls", type=int, default=10_000)
    fz.add_argument("--sample-every", type=int, default=1000)
    fz.add_argument("--call-timeout", type=float, default=60.0)
    fz.add_argument("--rss-target", type=float, default=50.0, help="MiB")
    for p in (storm, fz):
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--json", default=None, help="write the result as JSON here ('-': stdout)")
        p.add_argument("--work-dir", default=None, help="where the temporary state folder goes")
        p.add_argument("--keep", action="store_true", help="keep the state folder and server log")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("note: not root: cgroups and other users' /proc entries are not visible",
              file=sys.stderr)
    run: Callable[[argparse.Namespace], int] = crash if args.part == "crash" else fuzz
    try:
        return run(args)
    finally:
        for server in Server.started:  # a no-op after a clean run
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
