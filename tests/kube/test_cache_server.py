"""The control loop's watch-fed cache on a real API server: no polling, 409s, broken watches.

* Idle: once a job has run and the cluster is quiet, the loop makes no
  request at all (counted at the client seam), only its watches stay open.
* A 409: a writer that changes a TrainingJob just before each of the
  loop's status writes gets the loop real conflicts from the server; the
  loop re-reads, pauses (longer each time) and admits the job once the
  writer stops: a bounded number of attempts, not a hot loop, not a crash.
* A broken watch (its TCP connection cut by a proxy in between) resumes from
  the last resourceVersion it saw, without listing again, and misses nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.kube.conftest import ControlPlane
from tests.kube.loops import drop, running
from tests.kube.test_control_server import label_gpu_model, training_job
from tests.kube.waiting import wait_until

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Body, Kube

pytestmark = pytest.mark.kube

IDLE_S = 8.0
"""How long an idle cluster is watched for requests (a wait with a deadline, not a sync)."""
DEADLINE_S = 120.0


def default_account(plane: ControlPlane, namespace: str) -> None:
    """What the controller manager makes in every namespace, and pods need (made if missing)."""
    with plane.http() as http:
        answer = http.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                           json={"metadata": {"name": "default"}})
    assert answer.status_code in (201, 409), answer.text


def own_tenant(plane: ControlPlane, kube: Kube, name: str, gpus: int) -> None:
    """A Tenant of its own cohort, its namespace, and the namespace's default ServiceAccount."""
    from shoal.errors import AlreadyExistsError

    with contextlib.suppress(AlreadyExistsError):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    default_account(plane, name)
    kube.create({"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
                 "spec": {"quota": {"cpu": {"nominal": 64}, "memory": {"nominal": "512Gi"},
                                    "gpus": {"A100": {"nominal": gpus}}}}})


def phase_is(name: str, namespace: str, wanted: str) -> Any:
    return lambda jobs: (jobs.get(f"{namespace}/{name}", {}).get("status") or {}).get(
        "phase") == wanted


def test_an_idle_cluster_costs_no_requests_beyond_the_watches(
        control_plane: ControlPlane, crds: Kube) -> None:
    from shoal.runtime.kubernetes.loop import KubeControl

    label_gpu_model(crds)
    own_tenant(control_plane, crds, "idle", 8)
    own = control_plane.kube()  # the loop's own client: its counters are the loop's alone
    control = KubeControl(own, grace_seconds=1)
    try:
        with running(control):
            crds.create(training_job("once", "idle", pods=1, gpus=2, run_seconds=1))
            wait_until(crds, "TrainingJob", phase_is("once", "idle", "Succeeded"),
                       namespace="idle", what="idle/once Succeeded", timeout_s=DEADLINE_S)
            wait_until(crds, "Pod", lambda pods: not pods, namespace="idle",
                       what="the pod of idle/once deleted once it ended", timeout_s=DEADLINE_S)
            # Quiet: a window in which the loop made no request (events of the
            # job's end may still arrive just after its pod went).
            quiet_by = time.monotonic() + DEADLINE_S
            while True:
                before = own.calls.requests()
                threading.Event().wait(2.0)  # an idle window, not a synchronisation
                if own.calls.requests() == before:
                    break
                assert time.monotonic() < quiet_by, own.calls.snapshot()
            watches = own.calls.by_verb().get("watch", 0)
            requests = own.calls.snapshot()
            threading.Event().wait(IDLE_S)  # idle: nothing happens in the cluster
            after = own.calls.snapshot()
        idle = {k: after.get(k, 0) - n for k, n in requests.items() if after.get(k, 0) != n}
        idle |= {k: n for k, n in after.items() if k not in requests}
        assert all(verb == "watch" for verb, _ in idle), f"requests while idle: {idle}"
        # The loop read through its cache all along: it listed each watched kind
        # once, not once per pass (starting a pod asks for that pod itself).
        assert control.passes > 3
        listed = {kind: n for (verb, kind), n in after.items() if verb == "list"}
        assert {k: listed.get(k) for k in ("TrainingJob", "Tenant", "Node")} == {
            "TrainingJob": 1, "Tenant": 1, "Node": 1}, listed
        assert watches >= len(control.cache.informers)
    finally:
        own.close()
        drop(crds, "idle")


class Interfering:
    """Before each of the loop's first ``times`` status writes, someone else changes the job."""

    def __init__(self, other: Kube, times: int) -> None:
        self.other, self.left = other, times
        self.attempts: list[float] = []

    def before(self, body: Body) -> None:
        self.attempts.append(time.monotonic())
        if self.left <= 0:
            return
        self.left -= 1
        meta = body["metadata"]
        current = self.other.get("TrainingJob", meta["name"], meta["namespace"])
        assert current is not None
        labels = {**(current["metadata"].get("labels") or {}), "touched": str(self.left)}
        self.other.replace({**current, "metadata": {**current["metadata"], "labels": labels}})


def test_a_conflict_is_retried_after_a_growing_pause(control_plane: ControlPlane,
                                                     crds: Kube) -> None:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl

    label_gpu_model(crds)
    own_tenant(control_plane, crds, "busy", 8)
    meddler = Interfering(crds, times=3)

    class Meddled(Kube):
        def replace_status(self, body: Body) -> Body:
            if body["metadata"]["name"] == "contested":
                meddler.before(body)
            return super().replace_status(body)

    own = Meddled.connect(str(control_plane.kubeconfig))
    control = KubeControl(own, grace_seconds=1)
    try:
        with running(control):
            crds.create(training_job("contested", "busy", pods=1, gpus=1))
            done = wait_until(crds, "TrainingJob", phase_is("contested", "busy", "Running"),
                              namespace="busy", what="busy/contested Running",
                              timeout_s=DEADLINE_S)
        assert done["busy/contested"]["metadata"]["labels"]["touched"] == "0"
        assert own.calls.snapshot().get(("conflict", "TrainingJob")) == 3
        assert control.view.conflicts == 3
        # Three refused, then the write that admitted it and the one that
        # saved its pod: a bounded number of attempts, each after a pause at
        # least as long as the backoff (0.05 s, doubling).
        assert 4 <= len(meddler.attempts) <= 6, meddler.attempts
        gaps = [b - a for a, b in zip(meddler.attempts, meddler.attempts[1:4], strict=False)]
        assert all(gap >= 0.05 * 2 ** i for i, gap in enumerate(gaps)), gaps
    finally:
        own.close()
        drop(crds, "busy")


class Proxy:
    """A TCP forwarder on 127.0.0.1 whose connections can be cut."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, upstream]
            self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        cut, self.open = self.open, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_broken_watch_resumes_from_the_last_resource_version(
        control_plane: ControlPlane, crds: Kube, tmp_path: Path) -> None:
    from shoal.runtime.kubernetes.cache import Cache, Watched
    from shoal.runtime.kubernetes.client import Kube

    own_tenant(control_plane, crds, "cut", 8)
    proxy = Proxy(int(control_plane.server.rsplit(":", 1)[1]))
    kubeconfig = tmp_path / "kubeconfig"  # the same, through the proxy
    kubeconfig.write_text(control_plane.kubeconfig.read_text().replace(
        control_plane.server, f"https://127.0.0.1:{proxy.port}"))
    via = Kube.from_kubeconfig(str(kubeconfig))
    changed = threading.Event()
    cache = Cache(via, [Watched("TrainingJob")], on_change=changed.set)
    informer = cache.informers[("TrainingJob", "")]
    stop = threading.Event()

    def held(name: str) -> Body | None:
        return informer.get("cut", name)

    def until(what: str, check: Any) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not check():
            assert time.monotonic() < deadline, f"not within {DEADLINE_S:.0f} s: {what}"
            changed.wait(1.0)
            changed.clear()

    try:
        cache.start(stop)
        assert cache.wait_synced(DEADLINE_S)
        first = crds.create(training_job("before", "cut", pods=1, gpus=1))
        until("cut/before in the cache", lambda: held("before") is not None)
        seen = informer.resource_version
        assert int(seen) >= int(first["metadata"]["resourceVersion"])
        watches = len(informer.watches)
        proxy.cut()
        crds.create(training_job("during", "cut", pods=1, gpus=1))
        until("cut/during in the cache", lambda: held("during") is not None)
        assert informer.lists == 1  # resumed, not listed again
        resumed = informer.watches[watches]  # from where it was (or a bookmark after it)
        assert resumed and int(resumed) >= int(seen)
        assert proxy.accepted >= 2  # a new connection
        assert via.calls.snapshot().get(("list", "TrainingJob")) == 1
    finally:
        stop.set()
        proxy.close()
        via.close()
        drop(crds, "cut")


def test_an_object_the_informer_listed_can_be_written_back(crds: Kube) -> None:
    """A list's items come without kind and apiVersion; the informer adds them, so that
    what the serving loop reads from its cache (a Deployment, say) can be PUT as it is."""
    from shoal.runtime.kubernetes.cache import Informer

    namespace = "listed-typed"
    crds.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        crds.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "table", "namespace": namespace,
                                  "labels": {"shoal.dev/test": "typed"}},
                     "data": {"a": "1"}})
        informer = Informer(crds, "ConfigMap", "shoal.dev/test")
        informer.relist()
        held = informer.get(namespace, "table")
        assert held is not None
        assert (held["kind"], held["apiVersion"]) == ("ConfigMap", "v1")
        saved = crds.replace({**held, "data": {"a": "2"}})
        assert saved["data"] == {"a": "2"}
    finally:
        crds.delete("Namespace", namespace)
