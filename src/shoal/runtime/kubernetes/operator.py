"""The operator process: kopf runs the tenancy reconciler and wakes the control loop.

* TrainingJobs, Tenants, Nodes and Shoal's Pods: any event wakes the control
  loop (``loop.KubeControl``, the control core that admits, binds, stops and
  requeues jobs), which runs in a thread of its own, one pass at a time.

* A Tenant created, changed or found at start: reconcile it and the other
  tenants of its cohorts (old and new), whose ResourceQuota ceilings depend
  on what it lends.  A Tenant deleted: clean up, then reconcile its cohort.
  The delete handler is optional (no kopf finalizer): with the operator
  down, the Namespace's ownerReference lets the garbage collector clean up.
* Drift: any change to or deletion of an object Shoal made (labelled
  ``app.kubernetes.io/managed-by=shoal``) reconciles the tenant it belongs
  to (all tenants for a shared PriorityClass).  A reconcile that finds
  everything in place writes nothing, so its own events end there.

Reconciles run one at a time (kopf calls sync handlers from threads).
kopf keeps its progress in annotations (``AnnotationsProgressStorage``):
the Tenant's typed status schema would prune ``status.kopf``.  Handlers
return None for the same reason.  Retryable errors (409, an API server
away, a namespace still terminating) become ``kopf.TemporaryError``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from shoal.errors import ShoalError
from shoal.runtime.kubernetes.client import Kube
from shoal.runtime.kubernetes.convert import JOB_LABEL
from shoal.runtime.kubernetes.crds import GROUP, VERSION
from shoal.runtime.kubernetes.loop import KubeControl
from shoal.runtime.kubernetes.tenancy import MANAGED_BY, TENANT_LABEL
from shoal.runtime.kubernetes.tenant_reconciler import (
    cleanup_tenant,
    is_drift,
    reconcile_tenant,
)

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
        """A deletion, or a change to what Shoal owns (not, say, a quota's usage)."""
        if event == "DELETED":
            return True
        with _kopf_errors():
            return event == "MODIFIED" and is_drift(self.kube, dict(body))

    def cleanup(self, name: str) -> None:
        with self._lock, _kopf_errors():
            cleanup_tenant(self.kube, name)


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
    return chosen


def login_from(kubeconfig: str, context: str | None) -> Callable[..., kopf.ConnectionInfo]:
    """A kopf login handler that reads the given kubeconfig (not the default one)."""

    def login(**_: Any) -> kopf.ConnectionInfo:
        config = k8s.Configuration()
        load: Callable[..., None] = k8s_config.load_kube_config
        load(config_file=kubeconfig, context=context, client_configuration=config)
        # auth_settings() names the header's value alike in every client version
        auth: Any = config.auth_settings()
        bearer = str((auth.get("BearerToken") or {}).get("value") or "")
        return kopf.ConnectionInfo(
            server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
            token=bearer.removeprefix("Bearer ").strip() or None,
            certificate_path=config.cert_file, private_key_path=config.key_file,
        )

    return login


def run(kubeconfig: str, context: str | None = None, verbose: bool = False,
        stop: threading.Event | None = None) -> None:
    """Run until SIGINT or SIGTERM (or ``stop``), watching the whole cluster."""
    kube = Kube.from_kubeconfig(kubeconfig, context)
    control = KubeControl(kube)
    registry = registry_for(Tenancy(kube), control.wake)
    kopf.on.login(registry=registry)(login_from(kubeconfig, context))
    kopf.configure(verbose=verbose)
    done = threading.Event()
    loop = threading.Thread(target=control.run, args=(done,), kwargs={"watch": False},
                            name="shoal-control", daemon=True)
    loop.start()
    try:
        kopf.run(registry=registry, settings=settings(), clusterwide=True, standalone=True,
                 stop_flag=stop)
    finally:
        done.set()
        control.wake.set()
        loop.join(timeout=30)
        kube.close()
