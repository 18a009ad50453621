"""``shoal operator`` as a process for tests: started, then stopped with SIGINT as Ctrl-C would."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STOP_TIMEOUT_S = 30


@contextmanager
def running_operator(kubeconfig: Path, log: Path, *args: str) -> Iterator[None]:
    """The operator with ``args`` until the block ends; it must then exit 0 within 30 s."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal", "operator", "--kubeconfig", str(kubeconfig),
             *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the operator did not stop within {STOP_TIMEOUT_S} s on SIGINT:\n"
                        f"{log.read_text()[-4000:]}")
    assert code == 0, log.read_text()[-4000:]
