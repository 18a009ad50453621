"""The operator process: kopf runs the tenancy reconciler beside the control loop.

* The control loop (``loop.KubeControl``, the control core that admits,
  binds, stops and requeues jobs) runs in a thread of its own, one pass at a
  time, woken by its own watches of TrainingJobs, Tenants, Nodes and Pods
  (which also feed its cache: ``cache.py``); kopf does not watch those.

* InferenceServices: the service reconciler (``serving.py``) runs in a
  thread of its own, one pass every two seconds.

* A Tenant created, changed or found at start: reconcile it and the other
  tenants of its cohorts (old and new), whose ResourceQuota ceilings depend
  on what it lends.  A Tenant deleted: clean up, then reconcile its cohort.
  The delete handler is optional (no kopf finalizer): with the operator
  down, the Namespace's ownerReference lets the garbage collector clean up.
* Drift: any change to or deletion of an object Shoal made (labelled
  ``app.kubernetes.io/managed-by=shoal``) reconciles the tenant it belongs
  to (all tenants for a shared PriorityClass).  A reconcile that finds
  everything in place writes nothing, so its own events end there.

With leader election (``leader.py``; on by default in-cluster) all of this
runs only while the process holds the Lease ``shoal-operator``; until then
it waits as a standby.

At start, before any watch, the operator installs or upgrades Shoal's CRDs
when its role allows it (``install.py``).  kopf's scanning is off: it
discovers the kinds once at start (after the install) and does not watch
CustomResourceDefinitions, so the role needs no list or watch on them.

It connects with a kubeconfig, or without one in-cluster, as the pod's
service account (``client.configuration``, for both the client seam and
kopf, whose login re-reads the rotated token when the server says 401).

Reconciles run one at a time (kopf calls sync handlers from threads).
kopf keeps its progress in annotations (``AnnotationsProgressStorage``):
the Tenant's typed status schema would prune ``status.kopf``.  Handlers
return None for the same reason.  Retryable errors (409, an API server
away, a namespace still terminating) become ``kopf.TemporaryError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import kopf

from shoal.errors import ShoalError
from shoal.runtime.kubernetes.client import Kube, bearer_token, configuration
from shoal.runtime.kubernetes.convert import JOB_LABEL
from shoal.runtime.kubernetes.crds import GROUP, VERSION
from shoal.runtime.kubernetes.gpu_resources import shares_gpus
from shoal.runtime.kubernetes.health import Health
from shoal.runtime.kubernetes.install import install_crds
from shoal.runtime.kubernetes.leader import (
    LEASE_SECONDS,
    LeaderElector,
    default_namespace,
    identity,
    leading,
)
from shoal.runtime.kubernetes.loop import KubeControl
from shoal.runtime.kubernetes.serving import start as start_serving
from shoal.runtime.kubernetes.tenancy import MANAGED_BY, TENANT_LABEL
from shoal.runtime.kubernetes.tenant_reconciler import (
    cleanup_tenant,
    is_drift,
    reconcile_tenant,
)
from shoal.runtime.kubernetes.webhook import review, self_signed

log = logging.getLogger("shoal.operator")

ANNOTATIONS = "shoal.dev"
OWNED = (
    ("", "v1", "namespaces"), ("", "v1", "resourcequotas"), ("", "v1", "limitranges"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
)
"""Kinds of the objects made per tenant, whose changes are drift."""
_SHARED = ("scheduling.k8s.io", "v1", "priorityclasses")


class Tenancy:
    """The handlers' state: one client, one reconcile at a time."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._shapes: dict[tuple[str, str, str], str] = {}
        """What each owned object looked like when last checked, but its status."""
        self._sharing: set[str] = set()
        """Nodes seen that share their GPUs (``gpu_resources.shares_gpus``)."""

    def sharing_changed(self, event: str | None, name: str, body: Any) -> bool:
        """Follow a Node; True when the cluster just got its first node that shares
        its GPUs, or lost its last: every tenant's ResourceQuota changes then."""
        before = bool(self._sharing)
        if event == "DELETED" or not shares_gpus(body):
            self._sharing.discard(name)
        else:
            self._sharing.add(name)
        return bool(self._sharing) != before

    def reconcile(self, names: Iterable[str]) -> None:
        with self._lock, _kopf_errors():
            for name in dict.fromkeys(names):
                outcome = reconcile_tenant(self.kube, name)
                for action in outcome.changes:
                    log.info("tenant %s: %s", name, action)

    def around(self, name: str, cohorts: Iterable[str | None]) -> list[str]:
        """``name`` first, then every tenant in one of ``cohorts``."""
        wanted = {c for c in cohorts if c is not None}
        peers = [t["metadata"]["name"] for t in self.kube.list("Tenant")
                 if (t.get("spec") or {}).get("cohort") in wanted]
        return [name, *peers]

    def drifted(self, event: str | None, body: Any) -> bool:
        """A deletion, or a change to what Shoal owns (not, say, a quota's usage).

        An object whose content but its status is as when last checked has
        not drifted since: the check (which lists the Tenants) is skipped, so
        that the usage a ResourceQuota's status follows, moving with every
        pod, costs no request.
        """
        meta = body.get("metadata") or {}
        key = (str(body.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")))
        if event == "DELETED":
            self._shapes.pop(key, None)
            return True
        shape = _shape(body)
        if self._shapes.get(key) == shape:
            return False
        with _kopf_errors():
            drift = event == "MODIFIED" and is_drift(self.kube, dict(body))
        if len(self._shapes) > _SHAPES_KEPT:
            self._shapes.clear()
        self._shapes[key] = shape  # checked (an error above leaves it to be checked again)
        return drift

    def cleanup(self, name: str) -> None:
        with self._lock, _kopf_errors():
            cleanup_tenant(self.kube, name)


_SHAPES_KEPT = 100_000
_VOLATILE = frozenset({"resourceVersion", "managedFields", "generation"})


def _shape(body: Any) -> str:
    """The object but its status and the metadata every write moves on."""
    meta = {k: v for k, v in dict(body.get("metadata") or {}).items() if k not in _VOLATILE}
    rest = {k: v for k, v in dict(body).items() if k not in ("metadata", "status")}
    return hashlib.blake2b(json.dumps([meta, rest], sort_keys=True, default=str).encode(),
                           digest_size=16).hexdigest()


@contextmanager
def _kopf_errors() -> Iterator[None]:
    """Shoal's retryable errors -> kopf.TemporaryError; the others -> kopf.PermanentError."""
    try:
        yield
    except ShoalError as exc:
        if exc.retryable:
            raise kopf.TemporaryError(str(exc), delay=exc.retry_after_s or 5.0) from exc
        raise kopf.PermanentError(str(exc)) from exc


def registry_for(tenancy: Tenancy, wake: threading.Event | None = None) -> kopf.OperatorRegistry:
    """The handlers, registered on a registry of their own (nothing global).

    ``wake`` is set on every event that can change an admission decision.
    """
    registry = kopf.OperatorRegistry()
    tenants = (GROUP, VERSION, "tenants")
    if wake is not None:
        def woken(**_: Any) -> None:
            wake.set()

        for group, version, plural, labels in (
            (GROUP, VERSION, "trainingjobs", None),
            (GROUP, VERSION, "tenants", None),
            ("", "v1", "nodes", None),
            ("", "v1", "pods", {JOB_LABEL: kopf.PRESENT}),
        ):
            kopf.on.event(group, version, plural, labels=labels, registry=registry)(woken)

    def changed(name: str, old: Any = None, new: Any = None, body: Any = None,
                **_: Any) -> None:
        cohorts = [((old or {}).get("spec") or {}).get("cohort"),
                   ((new or body or {}).get("spec") or {}).get("cohort")]
        tenancy.reconcile(tenancy.around(name, cohorts))

    def deleted(name: str, body: Any, **_: Any) -> None:
        tenancy.cleanup(name)
        peers = tenancy.around(name, [(body.get("spec") or {}).get("cohort")])
        tenancy.reconcile(peer for peer in peers if peer != name)

    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(*tenants, registry=registry)(changed)
    kopf.on.delete(*tenants, registry=registry, optional=True)(deleted)

    def drifted(type: str | None, body: Any, **_: Any) -> None:
        name = (body.get("metadata", {}).get("labels") or {}).get(TENANT_LABEL)
        if name and tenancy.drifted(type, body) and tenancy.kube.get("Tenant", name):
            tenancy.reconcile([name])

    def shared_drifted(type: str | None, body: Any, **_: Any) -> None:
        if tenancy.drifted(type, body):
            tenancy.reconcile(t["metadata"]["name"] for t in tenancy.kube.list("Tenant"))

    def node_changed(type: str | None, name: str, body: Any, **_: Any) -> None:
        if tenancy.sharing_changed(type, name, body):
            tenancy.reconcile(t["metadata"]["name"] for t in tenancy.kube.list("Tenant"))

    kopf.on.event("", "v1", "nodes", registry=registry)(node_changed)
    mine = {MANAGED_BY[0]: MANAGED_BY[1]}
    for group, version, plural in OWNED:
        kopf.on.event(group, version, plural, labels=mine, registry=registry)(drifted)
    kopf.on.event(*_SHARED, labels=mine, registry=registry)(shared_drifted)
    return registry


def settings() -> kopf.OperatorSettings:
    chosen = kopf.OperatorSettings()
    chosen.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS)
    chosen.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATIONS)
    chosen.posting.level = logging.WARNING
    # Shoal's CRDs are installed before kopf starts: no watch on CRDs needed.
    chosen.scanning.disabled = True
    return chosen


def login_from(kubeconfig: str | None, context: str | None,
               **where: Any) -> Callable[..., kopf.ConnectionInfo]:
    """A kopf login handler: the given kubeconfig (not the default one), or in-cluster."""

    def login(**_: Any) -> kopf.ConnectionInfo:
        config = configuration(kubeconfig, context, **where)  # read again: tokens rotate
        return kopf.ConnectionInfo(
            server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
            token=bearer_token(config),
            certificate_path=config.cert_file, private_key_path=config.key_file,
        )

    return login


def run(kubeconfig: str | None, context: str | None = None, verbose: bool = False,
        stop: threading.Event | None = None, webhook_port: int | None = None,
        leader_elect: bool | None = None, lease_namespace: str | None = None,
        lease_seconds: int = LEASE_SECONDS, health_port: int | None = None) -> None:
    """Install the CRDs if allowed, then run until SIGINT or SIGTERM (or ``stop``).

    ``kubeconfig`` None: in-cluster, as the pod's service account.
    ``webhook_port``: also serve the validating webhook on loopback there.
    ``leader_elect`` (default: in-cluster only): act only while holding the
    Lease ``shoal-operator`` in ``lease_namespace`` (``leader.py``).
    ``health_port``: answer ``GET /healthz`` there from the start, standby
    included (``health.py``).
    """
    kopf.configure(verbose=verbose)
    health = Health()
    if health_port is not None:
        health.serve(health_port)
    kube = Kube.connect(kubeconfig, context)
    elect = kubeconfig is None if leader_elect is None else leader_elect
    elector = LeaderElector(kube, identity(), lease_s=lease_seconds, namespace=lease_namespace
                            or default_namespace(kubeconfig is None)) if elect else None
    try:
        with leading(elector, stop) if elector else nullcontext(True) as acting:
            if acting:  # else stopped while standby
                _install_and_operate(kube, kubeconfig, context, stop, webhook_port, health)
    finally:
        kube.close()
        health.close()


def _install_and_operate(kube: Kube, kubeconfig: str | None, context: str | None,
                         stop: threading.Event | None, webhook_port: int | None,
                         health: Health | None = None) -> None:
    """Install the CRDs if allowed, then kopf and the control loop until ``stop``."""
    install_crds(kube)
    with tempfile.TemporaryDirectory(prefix="shoal-webhook-") as folder:
        chosen = settings()
        if webhook_port is not None:
            cert, key, ca = self_signed(Path(folder))
            chosen.admission.server = kopf.WebhookServer(
                addr="127.0.0.1", port=webhook_port, host="127.0.0.1",
                certfile=str(cert), pkeyfile=str(key), cadata=ca)
            chosen.admission.managed = WEBHOOK_CONFIGURATION
        _operate(kube, login_from(kubeconfig, context), stop, chosen,
                 webhook=webhook_port is not None, health=health)


WEBHOOK_CONFIGURATION = "validate.shoal.dev"
"""The ValidatingWebhookConfiguration kopf keeps while the webhook is served."""


def _validate(body: Any, **_: Any) -> None:
    refused = review(dict(body))
    if refused is not None:
        raise kopf.AdmissionError(refused, code=422)


def _operate(kube: Kube, login: Callable[..., kopf.ConnectionInfo],
             stop: threading.Event | None, chosen: kopf.OperatorSettings | None = None,
             webhook: bool = False, health: Health | None = None) -> None:
    """kopf's handlers in this thread, the control loop in another, until stopped;
    ``health`` watches the threads while they should run."""
    control = KubeControl(kube)
    registry = registry_for(Tenancy(kube))  # the loop watches for itself
    kopf.on.login(registry=registry)(login)
    if webhook:
        for plural in ("tenants", "trainingjobs", "inferenceservices"):
            kopf.on.validate(GROUP, VERSION, plural, id=f"shoal-{plural}",
                             operations=["CREATE", "UPDATE"], ignore_failures=True,
                             registry=registry)(_validate)
    done = threading.Event()
    loop = threading.Thread(target=control.run, args=(done,), name="shoal-control",
                            daemon=True)
    loop.start()
    serving = start_serving(kube, done)  # InferenceServices: serving.py
    health = health or Health()
    for thread in (loop, serving):
        health.watch(thread)
    try:
        kopf.run(registry=registry, settings=chosen or settings(), clusterwide=True,
                 standalone=True, stop_flag=stop)
    finally:
        for thread in (loop, serving):
            health.forget(thread)  # they end now on purpose
        done.set()
        control.wake.set()
        loop.join(timeout=30)
        serving.join(timeout=30)
