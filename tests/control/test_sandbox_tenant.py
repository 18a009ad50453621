"""A tenant with sandbox isolation: its gang rendezvouses inside its own network."""

from __future__ import annotations

import shutil

import pytest

from shoal.api.client import ShoalClient
from tests.control.conftest import job, phase, wait_for

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

RENDEZVOUS = """
import os, socket, time
port = int(os.environ["MASTER_PORT"])
if os.environ["RANK"] == "0":
    server = socket.create_server(("127.0.0.1", port))
    conn, _ = server.accept()
    print("rank0 got", conn.recv(16).decode())
else:
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the peer's listener is not up yet
    sock.sendall(b"hello")
print("pid", os.getpid())
"""

SANDBOXED = """
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-s}
spec: {isolation: sandbox, quota: {cpu: {nominal: 2}, memory: {nominal: 4Gi}, gpus: {virtual: {nominal: 4}}}}
"""


def test_sandboxed_gang_rendezvouses_in_its_own_network(admin: ShoalClient) -> None:
    admin.apply_text(SANDBOXED, "t.yaml")
    admin.apply_text(job("gang", "team-s", ["python", "-c", RENDEZVOUS], pods=2), "j.yaml")
    wait_for(lambda: phase(admin, "gang") in ("Succeeded", "Failed"), timeout=60)
    assert phase(admin, "gang") == "Succeeded", admin.job("gang")["reason"]
    assert "rank0 got hello" in admin.logs("gang", pod=0)
    # In its own PID namespace the pod's process has a tiny PID.
    assert int(admin.logs("gang", pod=1).split("pid")[-1]) < 10
