"""Serving: the router's overhead over calling a replica directly, and a soak.

Usage: python benchmarks/router_overhead.py [--seconds 10] [--concurrency 32]
       [--latency-requests 2000] [--cpus 0,1] [--soak 600 --rate 300]

Three processes on loopback: a trivial OIP v2 replica (a bare ASGI app on
uvicorn answering every infer with a fixed one-element tensor), the Shoal
router in front of it (one revision, one replica, token check on), and this
load generator (asyncio streams, HTTP/1.1 keep-alive, one connection per
concurrent caller, the same 120-byte infer body each time).  Pinned with
``--cpus`` (default: the first two), all three share those cores.

Latency: ``--latency-requests`` requests one at a time, direct and through
the router in alternating batches of a tenth; the added latency is the
difference of the p50s.  Throughput: ``--concurrency`` callers, direct and
through the router in alternating 1 s slices for ``--seconds`` seconds each
(so the rest of a shared machine weighs on both alike), with the CPU time
each server spent per request.  Soak (``--soak SECONDS``): an open-loop
``--rate`` requests per second through the router, counting errors and
reading the router's RSS every 10 s.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

SERVICE = "bench"
TOKEN = "bench-token"
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                               "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()
ANSWER = json.dumps({"model_name": SERVICE, "outputs": [
    {"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()


# -- the replica and the router, each in its own process ---------------------------------

async def _replica_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # Nagle off
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def run_replica(ports: Any) -> None:
    import uvicorn
    sock = _listen()
    ports.put(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(_replica_app, lifespan="off", log_level="warning",
                                  access_log=False)).run(sockets=[sock])


@dataclass(frozen=True)
class Who:
    role: str
    tenant: str | None


def run_router(replica_url: str, ports: Any) -> None:
    from shoal.serving.router import RevisionRoute, Router

    async def main() -> None:
        tokens = {TOKEN: Who("tenant", "bench")}
        router = Router(SERVICE, "bench", tokens.get)
        await router.start()
        router.update([RevisionRoute(name="v1", weight=100, replicas=(replica_url,))])
        ports.put(router.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def start(target: Any, *args: Any) -> tuple[multiprocessing.Process, int]:
    ports: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=target, args=(*args, ports), daemon=True)
    process.start()
    return process, ports.get(timeout=60)


# -- the load generator ---------------------------------------------------------------

def request_bytes(port: int) -> bytes:
    return (f"POST /v2/models/{SERVICE}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


class Caller:
    """One keep-alive connection sending the same request again and again."""

    def __init__(self, port: int) -> None:
        self.port, self.request = port, request_bytes(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def latencies(port: int, count: int) -> list[float]:
    caller, seconds = Caller(port), []
    for _ in range(20):  # warm the connection and both servers
        await caller.call()
    for _ in range(count):
        started = time.perf_counter()
        status = await caller.call()
        seconds.append(time.perf_counter() - started)
        assert status == 200, status
    await caller.close()
    return seconds


async def throughput(port: int, concurrency: int, seconds: float) -> dict[str, float]:
    callers = [Caller(port) for _ in range(concurrency)]
    done, errors = 0, 0
    stop = time.perf_counter() + seconds

    async def loop(caller: Caller) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop:
            if await caller.call() == 200:
                done += 1
            else:
                errors += 1

    await asyncio.gather(*(c.call() for c in callers))  # connect and warm up
    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in callers))
    elapsed = time.perf_counter() - started
    for caller in callers:
        await caller.close()
    return {"requests_per_s": done / elapsed, "errors": errors, "requests": done,
            "seconds": elapsed}


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def soak(port: int, pid: int, seconds: float, rate: float) -> dict[str, Any]:
    """Open loop: a request every 1/rate s, whatever the answers' pace (a pool of
    connections, so a slow answer does not delay the next arrival)."""
    idle: list[tuple[float, Caller]] = []  # (last used, connection)
    sent = errors = 0
    kinds: collections.Counter[str] = collections.Counter()
    samples = [round(rss_mib(pid), 1)]
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal errors
        caller = None
        while idle and caller is None:
            used, caller = idle.pop()
            if time.perf_counter() - used > IDLE_S:
                await caller.close()
                caller = None
        caller = caller or Caller(port)
        try:
            status = await caller.call()
            if status != 200:
                errors += 1
                kinds[str(status)] += 1
            idle.append((time.perf_counter(), caller))
        except Exception as exc:
            errors += 1
            kinds[type(exc).__name__] += 1
            await caller.close()

    started = time.perf_counter()
    next_sample = started + 10
    while (now := time.perf_counter()) < started + seconds:
        due = started + sent / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
        if now >= next_sample:
            samples.append(round(rss_mib(pid), 1))
            next_sample += 10
    await asyncio.gather(*tasks)
    samples.append(round(rss_mib(pid), 1))
    for _, caller in idle:
        await caller.close()
    return {"seconds": seconds, "rate": rate, "sent": sent, "errors": errors,
            "error_kinds": dict(kinds), "connections": len(idle),
            "router_rss_mib": samples, "rss_drift_after_first_sample_mib":
            round(samples[-1] - samples[1], 1) if len(samples) > 2 else None}


IDLE_S = 5.0
"""The soak's callers drop a connection idle this long, as HTTP clients do (the
router closes connections idle for 30 s; a request sent as it does so is lost)."""


def p50_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 3)


async def interleaved(replica_port: int, router_port: int, args: argparse.Namespace,
                      pids: dict[str, int]) -> dict[str, Any]:
    """Throughput direct and through the router in alternating 1 s slices (so
    the rest of a shared machine weighs on both alike), and the CPU each server
    spent per request meanwhile."""
    totals = {"direct": [0, 0, 0.0], "router": [0, 0, 0.0]}  # requests, errors, seconds
    cpu = {("direct", "replica"): 0.0, ("router", "replica"): 0.0, ("router", "router"): 0.0}
    for _ in range(max(1, round(args.seconds))):
        for path, port in (("direct", replica_port), ("router", router_port)):
            used = {name: cpu_s(pid) for name, pid in pids.items()}
            done = await throughput(port, args.concurrency, 1.0)
            for (where, name) in cpu:
                if where == path:
                    cpu[(where, name)] += cpu_s(pids[name]) - used[name]
            totals[path][0] += done["requests"]
            totals[path][1] += done["errors"]
            totals[path][2] += done["seconds"]
    result: dict[str, Any] = {}
    for path, (requests, errors, seconds) in totals.items():
        result[f"throughput_{path}"] = {
            "requests_per_s": round(requests / seconds), "requests": requests, "errors": errors,
            **{f"{name}_cpu_us_per_request": round(spent / max(1, requests) * 1e6)
               for (where, name), spent in cpu.items() if where == path}}
    result["router_to_direct_throughput"] = round(
        result["throughput_router"]["requests_per_s"]
        / result["throughput_direct"]["requests_per_s"], 3)
    return result


async def measure(args: argparse.Namespace, replica_port: int, router_port: int,
                  pids: dict[str, int]) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": args.cpus, "concurrency": args.concurrency,
                              "seconds": args.seconds, "load_average": os.getloadavg()[0]}
    if args.soak:
        result["soak"] = await soak(router_port, pids["router"], args.soak, args.rate)
        return result
    direct: list[float] = []
    routed: list[float] = []
    for _ in range(10):  # alternating batches, for the same reason as the throughput
        direct += await latencies(replica_port, args.latency_requests // 10)
        routed += await latencies(router_port, args.latency_requests // 10)
    result["latency"] = {
        "requests": len(direct), "direct_p50_ms": p50_ms(direct),
        "router_p50_ms": p50_ms(routed), "added_p50_ms": round(p50_ms(routed) - p50_ms(direct), 3),
        "direct_p99_ms": round(sorted(direct)[int(0.99 * len(direct))] * 1000, 3),
        "router_p99_ms": round(sorted(routed)[int(0.99 * len(routed))] * 1000, 3)}
    result.update(await interleaved(replica_port, router_port, args, pids))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=2000)
    parser.add_argument("--cpus", default="0,1", help="CPUs all three processes share")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--rate", type=float, default=300.0, help="soak: requests per second")
    args = parser.parse_args()
    cpus = {int(c) for c in args.cpus.split(",")}
    os.sched_setaffinity(0, cpus)  # inherited by the two servers
    multiprocessing.set_start_method("spawn")
    replica, replica_port = start(run_replica)
    router, router_port = start(run_router, f"http://127.0.0.1:{replica_port}")
    try:
        assert router.pid is not None and replica.pid is not None
        pids = {"router": router.pid, "replica": replica.pid}
        print(json.dumps(asyncio.run(measure(args, replica_port, router_port, pids)), indent=2))
    finally:
        for process in (router, replica):
            process.terminate()
            process.join(10)


if __name__ == "__main__":
    main()
