"""A real embedded control plane on 127.0.0.1 with an admin client, per test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.api import launch
from shoal.api.client import ShoalClient

CLUSTER = """
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: local}
spec: {count: 1, cpu: 4, memory: 8Gi, gpus: {model: virtual, count: 4}}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec: {cohort: lab, quota: {cpu: {nominal: 2}, memory: {nominal: 4Gi}, gpus: {virtual: {nominal: 2}}}}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-b}
spec: {cohort: lab, quota: {cpu: {nominal: 2}, memory: {nominal: 4Gi}, gpus: {virtual: {nominal: 2}}}}
"""


def job(name: str, tenant: str, command: list[str], *, gpus: int = 1, pods: int = 1,
        priority: str = "normal", memory: str = "256Mi", retries: int = 0,
        annotations: str = "") -> str:
    quoted = json.dumps(command)[1:-1]  # JSON is YAML: no quoting surprises
    return f"""
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}{annotations}}}
spec:
  tenant: {tenant}
  priority: {priority}
  maxRetries: {retries}
  podSets: [{{count: {pods}, resources: {{cpu: 500m, memory: {memory}, gpu: {gpus}}}}}]
  command: [{quoted}]
"""


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Wait for a condition the control plane brings about (bounded)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        tick.wait(0.02)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[launch.Running]:
    running = launch.start(tmp_path / "state", grace_seconds=3.0)
    try:
        yield running
    finally:
        admin = ShoalClient(running.url, running.token)
        # Services first: their replicas are jobs that the plane would make again.
        for service in admin.services():
            admin.delete_service(service["name"], service["tenant"])
        wait_for(lambda: not admin.services(), 120)
        for row in admin.jobs():
            if row["phase"] in ("Pending", "Running", "Preempting"):
                admin.delete(row["name"], row["tenant"])
        wait_for(lambda: all(r["phase"] not in ("Running", "Preempting") for r in admin.jobs()))
        admin.close()
        running.stop()


@pytest.fixture
def admin(plane: launch.Running) -> Iterator[ShoalClient]:
    client = ShoalClient(plane.url, plane.token)
    client.apply_text(CLUSTER, "cluster.yaml")
    yield client
    client.close()


def phase(client: ShoalClient, name: str) -> str:
    return str(client.job(name)["phase"])


def zombie(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped, or gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1].startswith("Z")
    except OSError:
        return True
