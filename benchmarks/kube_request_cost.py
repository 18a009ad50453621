"""What one request of each kind costs the API server and etcd, in CPU milliseconds.

Usage: python benchmarks/kube_request_cost.py [--requests 500] [--out FILE]

Starts a control plane of its own from ../shared/kube (etcd and
kube-apiserver v1.20.2 only: no controller manager, no scheduler, no
kubelet, so nothing else writes meanwhile), installs Shoal's CRDs and one
CRD without a schema (``x-kubernetes-preserve-unknown-fields``), then sends
``--requests`` requests of each kind that a TrainingJob's life takes, one
at a time from one client, and reads the CPU the two server processes used
meanwhile (``/proc/<pid>/stat``).  The objects are the burst benchmark's
(``kube_scale.py``): a one-pod, one-GPU TrainingJob, its status as the
operator writes it when it admits the job, its Event, its pod and Job.

Prints one JSON object (and writes it to ``--out``): milliseconds per
request for each kind, the API server's and etcd's.  It tells what the
burst benchmark's requests per job cost, and how much of that Shoal's
TrainingJob writes are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube_scale import KUBE_UP, plane_cpu, plane_env, training_job

NAMESPACE = "cost"

SCHEMALESS = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "blobs.cost.example"},
    "spec": {"group": "cost.example", "scope": "Namespaced",
             "names": {"plural": "blobs", "singular": "blob", "kind": "Blob"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True},
                               "status": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}
"""A CRD whose objects the API server neither validates nor prunes."""


def pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": NAMESPACE,
                         "labels": {"shoal.dev/job": f"j{i}"}},
            "spec": {"schedulerName": "shoal", "restartPolicy": "Never",
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "main", "image": "busybox", "resources": {
                         "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                         "limits": {"nvidia.com/gpu": "1"}}}]}}


def batch_job(i: int) -> dict[str, Any]:
    template = {"metadata": {"labels": {"shoal.dev/job": f"j{i}"}}, "spec": pod(i)["spec"]}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"bj{i}", "namespace": NAMESPACE},
            "spec": {"backoffLimit": 0, "template": template}}


def event(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"j{i}.admitted", "namespace": NAMESPACE},
            "involvedObject": {"apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
                               "name": f"j{i}", "namespace": NAMESPACE},
            "reason": "Admitted", "message": "attempt 1 admitted on n3 (GPU 3)",
            "type": "Normal", "source": {"component": "shoal"}}


def measure(folder: Path, count: int, send: Callable[[int], Any]) -> dict[str, float]:
    """Milliseconds of API server and etcd CPU per request of ``send``."""
    before = plane_cpu(folder)
    for i in range(count):
        send(i)
    after = plane_cpu(folder)
    return {part: round(1000 * (after[part] - before[part]) / count, 2)
            for part in ("apiserver", "etcd")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes import client as k8s

    from shoal.control.records import PodRecord
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.convert import row_of, status_of
    from shoal.runtime.kubernetes.install import install_crds

    folder = Path(tempfile.mkdtemp(prefix="shoal-kube-cost-"))
    env = {**plane_env(folder, 0, 0), "KUBE_CONTROLLER_MANAGER": "0"}
    started = subprocess.run([str(KUBE_UP), "start"], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    try:
        if started.returncode != 0:
            raise SystemExit(f"kube-up.sh start failed:\n{started.stdout}{started.stderr}")
        kube = Kube.from_kubeconfig(str(folder / "kubeconfig"))
        install_crds(kube)
        k8s.ApiextensionsV1Api(kube.api_client).create_custom_resource_definition(SCHEMALESS)
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        # No controller manager makes it: pods ask for no token, but need the account.
        kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": "default", "namespace": NAMESPACE}})
        for n in range(20):
            kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n{n}"}})
        deadline = time.monotonic() + 60
        while not (kube.serves("shoal.dev/v1alpha1", "trainingjobs")
                   and kube.serves("cost.example/v1", "blobs")):
            if time.monotonic() > deadline:
                raise SystemExit("the CRDs were not served within 60 s")
            time.sleep(0.5)
        n = args.requests
        jobs: dict[int, dict[str, Any]] = {}
        blobs: dict[int, dict[str, Any]] = {}
        costs: dict[str, dict[str, float]] = {}

        def create_job(i: int) -> None:
            jobs[i] = kube.create(training_job(f"j{i}", NAMESPACE, 30))

        def finalizer(i: int) -> None:
            body = jobs[i]
            body["metadata"]["finalizers"] = ["shoal.dev/stop"]
            jobs[i] = kube.replace(body)

        def admitted(i: int) -> dict[str, Any]:
            row = row_of(jobs[i]).evolve(
                phase="Running", attempts=1, start_time=time.time(),
                pods=(PodRecord(index=0, node=f"n{i % 20}", gpus=(i % 8,), uid=f"u{i:08d}",
                                started_at=time.time()),))
            return status_of(row, 1000)

        def status(i: int) -> None:
            meta = jobs[i]["metadata"]
            jobs[i] = kube.replace_status({
                "apiVersion": "shoal.dev/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": meta["name"], "namespace": NAMESPACE,
                             "resourceVersion": meta["resourceVersion"]},
                "status": admitted(i)})

        # Not a kind Shoal's client knows: sent through the library's client.
        custom = k8s.CustomObjectsApi(kube.api_client)
        where = ("cost.example", "v1", NAMESPACE, "blobs")

        def create_blob(i: int) -> None:
            body = {**training_job(f"b{i}", NAMESPACE, 30),
                    "apiVersion": "cost.example/v1", "kind": "Blob"}
            blobs[i] = custom.create_namespaced_custom_object(*where, body)

        def blob_status(i: int) -> None:
            blobs[i] = custom.replace_namespaced_custom_object_status(
                *where, f"b{i}", {**blobs[i], "status": admitted(i)})

        def patched(i: int) -> None:
            # What changes when the pod is seen running: its name and state, fenced.
            meta = jobs[i]["metadata"]
            pods = [{**p, "state": "running", "name": f"j{i}-0-abcde"}
                    for p in jobs[i]["status"]["pods"]]
            jobs[i] = custom.patch_namespaced_custom_object_status(
                "shoal.dev", "v1alpha1", NAMESPACE, "trainingjobs", f"j{i}",
                {"metadata": {"resourceVersion": meta["resourceVersion"]},
                 "status": {"pods": pods}})

        for name, send in (
            ("post trainingjobs", create_job),
            ("put trainingjobs (finalizer)", finalizer),
            ("put trainingjobs/status", status),
            ("patch trainingjobs/status (merge)", patched),
            ("post blobs (no schema)", create_blob),
            ("put blobs/status (no schema)", blob_status),
            ("post events", lambda i: kube.create(event(i))),
            ("post pods", lambda i: kube.create(pod(i))),
            ("post pods/binding", lambda i: kube.bind(f"p{i}", NAMESPACE, f"n{i % 20}")),
            ("post jobs", lambda i: kube.create(batch_job(i))),
        ):
            costs[name] = measure(folder, n, send)
            print(f"{name:32s} {costs[name]}", file=sys.stderr, flush=True)
        return {"requests_each": n, "cpu_ms_per_request": costs}
    finally:
        subprocess.run([str(KUBE_UP), "stop"], env=env, capture_output=True, timeout=300,
                       check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
