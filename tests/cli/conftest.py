"""The CLI against a background control plane in a private state folder, stopped after each test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.control.conftest import wait_for, zombie

from shoal.api.client import ShoalClient

ROOT = Path(__file__).resolve().parents[2]


class Shell:
    """Runs ``shoal`` as a user would, with ``SHOAL_HOME`` set to a private folder."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "SHOAL_HOME": str(home)}
        self.env.pop("SHOAL_SERVER", None)
        self.env.pop("SHOAL_TOKEN", None)

    def __call__(self, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal", *args], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "shoal", *args], cwd=ROOT, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def server_pid(self) -> int | None:
        try:
            pid = json.loads((self.home / "server.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_background(home: Path) -> None:
    """Delete the services and cancel the jobs of the state folder's background server
    (a service's replicas are jobs that it would make again), then stop it."""
    record = home / "server.json"
    if not record.exists():
        return
    data = json.loads(record.read_text())
    token = (home / "admin-token").read_text().strip()
    with ShoalClient(data["url"], token) as api:
        for service in api.services():
            api.delete_service(service["name"], service["tenant"])
        wait_for(lambda: not api.services(), 120)
        for row in api.jobs():
            if row["phase"] in ("Pending", "Running", "Preempting"):
                api.delete(row["name"], row["tenant"])
        wait_for(lambda: all(r["phase"] not in ("Running", "Preempting") for r in api.jobs()))
    os.kill(data["pid"], signal.SIGTERM)
    wait_for(lambda: not _alive(data["pid"]) or zombie(data["pid"]))



@pytest.fixture
def sh(tmp_path: Path) -> Iterator[Shell]:
    shell = Shell(tmp_path / "home")
    try:
        yield shell
    finally:
        stop_background(shell.home)
