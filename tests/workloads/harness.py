"""Launch example workloads as real processes, the way the Shoal runtime does.

Each process gets the runtime's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT, SHOAL_CHECKPOINT_DIR, SHOAL_JOB, SHOAL_ATTEMPT).
Its stdout is read line by line on a thread, so a test can block until a given
line appears (``wait_for``) instead of sleeping and hoping, and a chatty rank
can never stall on a full pipe.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "examples" / "workloads"

# Generous bounds that only matter when something is broken: they turn a hang
# into a failure with the output attached.
RUN_TIMEOUT_S = 120.0
LINE_TIMEOUT_S = 60.0

CHECKPOINT_LINE = re.compile(r"^checkpoint step=(\d+)$")
FINAL_LINE = re.compile(r"^FINAL accuracy=(\d\.\d{4}) steps=(\d+) resumed_from=(\d+)$")
PREEMPTED_LINE = re.compile(r"^PREEMPTED step=(\d+)\b")


def free_port() -> int:
    """A port nobody listens on right now: bind port 0 and let the kernel choose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pod:
    """One workload process with its output collected on a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:  # closed here, by its only reader, once the process closes its end
            for raw in stdout:
                line = raw.rstrip("\n")
                self.lines.append(line)
                self._queue.put(line)
        self._queue.put(None)  # end of output

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = LINE_TIMEOUT_S) -> re.Match[str]:
        """Block until a line of output matches; fail with the output on EOF or timeout."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"{self.name}: no line matching {pattern.pattern!r} within {timeout}s:\n"
                    f"{self.output}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"{self.name}: exited ({self.proc.poll()}) before printing a line matching "
                    f"{pattern.pattern!r}:\n{self.output}"
                )
            match = pattern.match(line)
            if match:
                return match

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> int:
        """Wait for exit (``subprocess`` timeout, no sleeping) and for the output to drain."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name}: still running after {timeout}s:\n{self.output}"
            ) from None
        self._reader.join(timeout=10)
        return code

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)


@dataclass(frozen=True)
class Final:
    accuracy: float
    steps: int
    resumed_from: int


def parse_final(pod: Pod) -> Final:
    for line in reversed(pod.lines):
        match = FINAL_LINE.match(line)
        if match:
            return Final(float(match[1]), int(match[2]), int(match[3]))
    raise AssertionError(f"{pod.name}: no FINAL line:\n{pod.output}")


class Launcher:
    """Starts gangs of pods and guarantees none outlives the test."""

    def __init__(self) -> None:
        self.pods: list[Pod] = []

    def gang(
        self,
        script: str,
        args: list[str],
        checkpoint_dir: Path,
        *,
        world_size: int = 1,
        attempt: int = 1,
        job: str = "test-job",
    ) -> list[Pod]:
        """``world_size`` processes of ``script``, ranks 0..n-1, one fresh rendezvous port."""
        port = free_port()
        pods = []
        for rank in range(world_size):
            env = dict(os.environ)
            env.update(
                RANK=str(rank),
                WORLD_SIZE=str(world_size),
                LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                SHOAL_CHECKPOINT_DIR=str(checkpoint_dir),
                SHOAL_JOB=job,
                SHOAL_ATTEMPT=str(attempt),
                # Ranks share the test machine's cores: no thread pools per process.
                OMP_NUM_THREADS="1",
            )
            argv = [sys.executable, str(WORKLOADS / script), *args]
            pods.append(Pod(argv, env, name=f"{script} rank {rank} attempt {attempt}"))
        self.pods.extend(pods)
        return pods

    def close(self) -> None:
        for pod in self.pods:
            pod.kill_if_running()


def finish_all(pods: list[Pod], timeout: float = RUN_TIMEOUT_S) -> None:
    """All pods exit 0 (each waited on in turn: a rank that hangs fails the test)."""
    for pod in pods:
        code = pod.finish(timeout)
        assert code == 0, f"{pod.name} exited {code}:\n{pod.output}"
