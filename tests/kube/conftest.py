"""A real Kubernetes control plane for the Kubernetes runtime's tests, one per session.

``control_plane`` starts etcd, kube-apiserver and kube-controller-manager
v1.20.2 plus fake GPU nodes from ``../shared/kube`` (``kube-up.sh``) with its
own state folder and free ports, so it never meets another plane on this
machine, and stops it (the processes it started, by their recorded PIDs)
when the session ends.  No kube-scheduler: Shoal binds its own pods.  The
controller manager is there for what tests rely on: namespace deletion,
the garbage collector, quota usage, the Job controller.

Tests that use it skip with a message when ``../shared/kube`` is absent or
the ``kube`` extra (the ``kubernetes`` client) is not installed.  The
summary at the end of the run says how long the plane took to start and stop.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT.parent / "shared" / "kube"
SCRIPT = KUBE / "kube-up.sh"
FAKE_NODES = 4
"""Fake GPU nodes (8 ``nvidia.com/gpu`` each); raise it when a test needs more."""
START_TIMEOUT_S = 180
_TIMINGS = pytest.StashKey[dict[str, float]]()


@dataclass(frozen=True)
class ControlPlane:
    """How to reach the plane: a kubeconfig (user ``admin``, group system:masters)."""

    folder: Path
    server: str
    token: str

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    @property
    def ca(self) -> Path:
        return self.folder / "pki" / "ca.crt"

    def kube(self) -> Kube:
        from shoal.runtime.kubernetes.client import Kube

        return Kube.from_kubeconfig(str(self.kubeconfig))

    def http(self) -> httpx.Client:
        """Raw HTTP as admin, for what the client seam deliberately hides."""
        return httpx.Client(base_url=self.server, timeout=30,
                            verify=ssl.create_default_context(cafile=str(self.ca)),
                            headers={"Authorization": f"Bearer {self.token}"})


def free_port(pair: bool = False) -> int:
    """A loopback port free now (``pair``: and the next one, for etcd's peer port)."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if not pair:
                return port
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port


def private_bin(folder: Path) -> Path | None:
    """The shipped binaries, with a kube-controller-manager that opens no insecure port.

    v1.20's controller manager also listens on the fixed port 10252 unless told
    ``--port=0``, which kube-up.sh does not say: so that two test planes can run
    at once on one machine (two suites, or a suite and a benchmark), their
    ``KUBE_BIN`` is a folder of links to the shipped binaries and a wrapper
    that adds it.  None when there is no tarball beside kube-up.sh (KUBE_BIN
    then comes from the environment, as kube-up.sh reads it).
    """
    tarballs = sorted(KUBE.glob("kube-bin-*.tar.xz"))
    if os.environ.get("KUBE_BIN") or not tarballs:
        return None
    cache = Path(os.environ.get("KUBE_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal-kube")
    real = cache / tarballs[0].name.removesuffix(".tar.xz")
    if not (real / "kube-apiserver").is_file():
        return None  # kube-up.sh unpacks it on its first start; the fixed port stays
    private = folder / "bin"
    private.mkdir()
    for binary in real.iterdir():
        if binary.name != "kube-controller-manager":
            (private / binary.name).symlink_to(binary)
    wrapper = private / "kube-controller-manager"
    wrapper.write_text(f'#!/bin/sh\nexec "{real}/kube-controller-manager" --port=0 "$@"\n')
    wrapper.chmod(0o755)
    return private


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    if not SCRIPT.is_file():
        pytest.skip(f"no Kubernetes control plane at {KUBE} (../shared/kube is absent)")
    pytest.importorskip("kubernetes", reason="the kube extra is not installed "
                        "(pip install -e '.[kube]')")
    folder = tmp_path_factory.mktemp("kube")
    port = free_port()
    env = {**os.environ, "KUBE_DIR": str(folder), "KUBE_PORT": str(port),
           "ETCD_PORT": str(free_port(pair=True)), "KCM_PORT": str(free_port()),
           "SCHED_PORT": str(free_port()), "KUBE_SCHEDULER": "0",
           "FAKE_NODES": str(FAKE_NODES)}
    binaries = private_bin(folder)
    if binaries is not None:
        env["KUBE_BIN"] = str(binaries)
    timings = request.config.stash.setdefault(_TIMINGS, {})
    began = time.monotonic()
    try:
        started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True,
                                 text=True, timeout=START_TIMEOUT_S, check=False)
        timings["start"] = time.monotonic() - began
        if started.returncode != 0:
            pytest.fail(f"kube-up.sh start failed (logs in {folder}):\n"
                        f"{started.stdout}{started.stderr}")
        yield ControlPlane(folder, f"https://127.0.0.1:{port}", "admin-token")
    finally:
        began = time.monotonic()
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120,
                       check=False)
        timings["stop"] = time.monotonic() - began


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    """The operator's client seam, as admin."""
    client = control_plane.kube()
    yield client
    client.close()


@pytest.fixture(scope="session")
def crds(kube: Kube) -> Kube:
    """``kube`` with Shoal's CRDs installed and Established."""
    from shoal.errors import AlreadyExistsError
    from shoal.runtime.kubernetes.crds import all_crds
    from tests.kube.waiting import wait_until

    names = set()
    for manifest in all_crds():
        # installed already when a test ran first (kubectl apply -k deploy/, the operator)
        with contextlib.suppress(AlreadyExistsError):
            kube.create(manifest)
        names.add(manifest["metadata"]["name"])

    def established(crds: dict[str, dict]) -> bool:
        return all(n in crds and any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (crds[n].get("status") or {}).get("conditions") or []) for n in names)

    wait_until(kube, "CustomResourceDefinition", established, what="Shoal's CRDs Established")
    kube.discovery.forget()  # the shoal.dev group was not served before
    return kube


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS, {})
    if timings:
        parts = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
        terminalreporter.write_line(
            f"kube control plane v1.20.2 ({FAKE_NODES} fake nodes): {parts}")
