"""The kubectl-style verbs on a cluster: Tenants and TrainingJobs as ``shoal apply/get/...`` use them.

``shoal apply/get/describe/logs/delete --kubeconfig PATH [--context NAME]``
reach the cluster through this module only (the CLI's one import of the
Kubernetes runtime for them, an ignore line in ``.importlinter``): it reads
and writes Shoal's custom resources through the client seam (``client.Kube``)
and hands back what the application layer's views are made of: a
TrainingJob as the control core's ``JobRow`` (``convert.row_of``: the status
the operator writes), its Kubernetes Events in the embedded store's event
shape, the Nodes as ``domain.nodes.Node``.

Writes.  A manifest is sent as the model reads it (``model_dump`` of what the
file set, nulls left out), which is what the CRD schemas take: ``gpu: 2`` is
sent as ``gpu: {count: 2}`` and ``cpu: 2.5`` as ``"2500m"`` (the narrowings of
``crds.py``).  A TrainingJob goes into its tenant's namespace; when that does
not exist yet (its Tenant was applied a moment ago and the operator has not
made it), it is created exactly as the operator would make it (labelled and
owned by the Tenant, ``tenancy.tenant_objects``), so the operator adopts it as
its own.  Every object is read first and decided (created, configured,
unchanged, or refused) before the first write; a Tenant is replaced fenced by
the resourceVersion it was read at, read again and retried on a conflict.

Errors are the seam's (``shoal.errors``); ``reaching`` turns the ones that
mean "no cluster here" into one line naming the server and the kubeconfig.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from shoal.control.records import JobRow
from shoal.domain.job import TrainingJob, TrainingJobSpec
from shoal.domain.manifest import Manifest
from shoal.domain.nodes import Node
from shoal.domain.service import InferenceService, InferenceServiceSpec
from shoal.domain.tenant import Tenant, TenantSpec
from shoal.errors import (
    AlreadyExistsError,
    ConflictError,
    Forbidden,
    ImmutableError,
    InputError,
    NotFoundError,
    ShoalError,
    UnavailableError,
    UnreachableError,
)
from shoal.runtime.kubernetes.changes import Changes
from shoal.runtime.kubernetes.client import TIMEOUT_S, Body, Kube, errors
from shoal.runtime.kubernetes.convert import node_of, row_of
from shoal.runtime.kubernetes.tenancy import namespace_problem, tenant_from_resource, tenant_objects

__all__ = ["Cluster", "Result", "body_of", "event_view", "kubeconfig_contexts"]

Result = tuple[str, str, str]
"""``(kind, name, result)`` of one applied object; result as kubectl says it."""

CONFLICT_RETRIES = 5
LOG_CHUNK = 64 * 1024
LOG_TIMEOUT_S = 60.0
"""How long a log read may wait for data: the API server waits on the node's kubelet."""
KINDS = ("Tenant", "TrainingJob", "InferenceService")


def kubeconfig_contexts(path: Path) -> tuple[list[str], str | None]:
    """The context names a kubeconfig defines and its current one; InputError if unreadable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot use kubeconfig {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"cannot use kubeconfig {path}: expected a mapping (apiVersion: v1, "
                         f"kind: Config)")
    names = [str(c.get("name")) for c in data.get("contexts") or [] if isinstance(c, dict)]
    current = data.get("current-context")
    return names, str(current) if current else None


def body_of(manifest: Manifest) -> Body:
    """The object to send for ``manifest``: what the file set, as the CRD schemas take it."""
    data = _without_nulls(manifest.model_dump(mode="json", by_alias=True, exclude_unset=True))
    if isinstance(manifest, TrainingJob | InferenceService):
        data["metadata"]["namespace"] = manifest.spec.tenant
    return dict(data)


def _without_nulls(value: Any) -> Any:
    # An explicit null means "leave it out" to the models; the CRD refuses it.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


_PAIRS = re.compile(r", (?=[A-Za-z_][\w.-]*=)")
"""Where one ``key=value`` of an event's message ends (values may hold ", ")."""


def _snake(reason: str) -> str:
    """``PodFailed`` -> ``pod_failed``: the event kind the store's reason was made from."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", reason).lower()


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def event_view(event: Body) -> dict[str, Any]:
    """A Kubernetes Event on a TrainingJob as the embedded store reports an event.

    The store writes ``data`` as ``key=value, ...`` in the message (sorted by
    key): read back into a mapping of strings when it has that form, else kept
    whole as ``message``.
    """
    involved, meta = event.get("involvedObject") or {}, event.get("metadata") or {}
    kind = _snake(str(event.get("reason") or "event"))
    message = str(event.get("message") or "")
    parts = _PAIRS.split(message) if message else []
    data: dict[str, str]
    if message == kind or not parts:
        data = {}
    elif all("=" in part for part in parts):
        data = dict(part.split("=", 1) for part in parts)
    else:
        data = {"message": message}
    when = (_epoch(event.get("lastTimestamp")) or _epoch(event.get("eventTime"))
            or _epoch(event.get("firstTimestamp")) or _epoch(meta.get("creationTimestamp")) or 0.0)
    return {"time": when, "kind": kind, "job": involved.get("name"),
            "tenant": involved.get("namespace"), "data": data,
            "type": event.get("type", "Normal")}


def _unreachable_reason(exc: BaseException) -> str:
    text = str(exc.__cause__ or exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its TLS certificate is not trusted by the kubeconfig's CA"
    return text.splitlines()[0][:200] if text else type(exc).__name__


class Cluster:
    """Shoal's custom resources on one cluster, for the CLI's verbs."""

    def __init__(self, kube: Kube, where: str) -> None:
        self.kube = kube
        self.where = where
        """``the API server at https://... (kubeconfig PATH, context NAME)``, for messages."""
        self._core = k8s.CoreV1Api(kube.api_client)

    @classmethod
    def connect(cls, kubeconfig: Path, context: str | None = None) -> Cluster:
        """A cluster from ``kubeconfig`` (its ``context``, else its current one).

        InputError, before any request, for a kubeconfig that cannot be read
        or a context it does not define.
        """
        names, current = kubeconfig_contexts(kubeconfig)
        chosen = context or current
        if chosen is None:
            raise InputError(f"kubeconfig {kubeconfig} has no current-context",
                             hint="pass --context NAME")
        if chosen not in names:
            known = ", ".join(names) or "none"
            raise InputError(f"kubeconfig {kubeconfig} has no context {chosen!r} "
                             f"(contexts: {known})")
        kube = Kube.from_kubeconfig(str(kubeconfig), chosen)
        host = kube.api_client.configuration.host
        return cls(kube, f"the API server at {host} (kubeconfig {kubeconfig}, context {chosen})")

    def close(self) -> None:
        self.kube.close()

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """One line saying which cluster would not answer, or lacks Shoal's kinds."""
        try:
            yield
        except UnreachableError as exc:
            raise UnreachableError(
                f"cannot reach {self.where}: {_unreachable_reason(exc)}") from exc
        except Forbidden as exc:
            raise Forbidden(f"{self.where} refused: {exc.message}") from exc
        except UnavailableError as exc:
            if exc.hint == "install Shoal's CRDs":
                raise UnavailableError(
                    f"{self.where} serves no Shoal kinds ({exc.message})",
                    hint="install the CRDs: kubectl apply -f deploy/crds.yaml, or run "
                         "shoal operator") from exc
            raise UnavailableError(f"{self.where}: {exc.message}") from exc

    # --- reads -------------------------------------------------------------------

    def changes(self, kinds: list[str], namespace: str | None = None) -> Changes:
        """Watches of ``kinds`` (in ``namespace``), started now (``changes.Changes``)."""
        return Changes(self.kube, kinds, namespace)

    def tenants(self) -> dict[str, dict[str, Any]]:
        """Tenant specs by name."""
        return {t["metadata"]["name"]: dict(t.get("spec") or {}) for t in self.kube.list("Tenant")}

    def jobs(self, tenant: str | None = None) -> list[JobRow]:
        """Every TrainingJob (of ``tenant``'s namespace), oldest first."""
        objects = self.kube.list("TrainingJob", tenant)
        rows = [row_of(obj) for obj in objects]
        return sorted(rows, key=lambda r: (r.submit_time, r.name))

    def jobs_named(self, name: str, tenant: str | None = None) -> list[Body]:
        """The TrainingJob objects called ``name`` (in ``tenant``'s namespace)."""
        found: list[Body] = self.kube.listing(
            "TrainingJob", tenant, fields=f"metadata.name={name}").get("items", [])
        return found

    def row(self, obj: Body) -> JobRow:
        return row_of(obj)

    def nodes(self) -> list[Node]:
        """The nodes that take pods (Ready, not cordoned), as the control loop sees them."""
        return [node for obj in self.kube.list("Node") if (node := node_of(obj)) is not None]

    def job_events(self) -> list[dict[str, Any]]:
        """The Events on every TrainingJob (in every namespace), oldest first."""
        found: list[Body] = self.kube.listing(
            "Event", None, fields="involvedObject.kind=TrainingJob").get("items", [])
        return sorted((event_view(e) for e in found), key=lambda e: e["time"])

    def events(self, obj: Body) -> list[dict[str, Any]]:
        """The Events on this TrainingJob object (this one: by uid), oldest first."""
        meta = obj["metadata"]
        found: list[Body] = self.kube.listing(
            "Event", meta["namespace"], fields=f"involvedObject.uid={meta.get('uid', '')}",
        ).get("items", [])
        return sorted((event_view(e) for e in found), key=lambda e: e["time"])

    def log(self, obj: Body, pod: str, *, limit_bytes: int | None = None,
            follow: bool = False) -> Iterator[bytes]:
        """The log of the Pod ``pod`` of the TrainingJob ``obj``, chunk by chunk.

        ``GET /api/v1/namespaces/{ns}/pods/{pod}/log``: the API server asks the
        node's kubelet.  Any refusal but 403, and no answer within
        ``LOG_TIMEOUT_S`` (the server was just asked for the job, so it is the
        kubelet that does not answer), is one ShoalError (exit 1) naming the
        pod and the server's words.
        """
        namespace = obj["metadata"]["namespace"]
        options: dict[str, Any] = {"follow": follow} if follow else {}
        if limit_bytes is not None:
            options["limit_bytes"] = limit_bytes
        doing = f"read the log of Pod {namespace}/{pod}"
        try:
            with errors(doing):
                response: Any = self._core.read_namespaced_pod_log(
                    pod, namespace, **options, _preload_content=False,
                    _request_timeout=None if follow else (TIMEOUT_S, LOG_TIMEOUT_S))
                try:
                    yield from response.stream(LOG_CHUNK, decode_content=True)
                finally:
                    response.release_conn()
        except Forbidden:
            raise
        except UnreachableError as exc:
            raise ShoalError(f"the cluster did not serve the log of Pod {namespace}/{pod}: "
                             f"no answer within {LOG_TIMEOUT_S:.0f} s") from exc
        except ShoalError as exc:
            raise ShoalError(f"the cluster did not serve the log of Pod {namespace}/{pod}: "
                             f"{exc.message.removeprefix(doing + ': ')}") from exc

    # --- writes ------------------------------------------------------------------

    def apply(self, manifests: list[Manifest]) -> list[Result]:
        """Create or update each Tenant, TrainingJob and InferenceService; everything
        is decided first.

        Refused before any write: another kind, a job or service whose tenant
        cannot name a namespace, a changed spec of a live job, a job or service
        of that name being deleted.  Tenants are written first, so that jobs
        and services find their tenant.  A service's changed spec replaces the
        live one (a new model is a new revision, as on the embedded plane).
        """
        for manifest in manifests:
            name = manifest.metadata.name
            if manifest.kind not in KINDS:
                raise InputError(
                    f"{manifest.kind} {name}: a cluster takes only Tenant, TrainingJob and "
                    f"InferenceService manifests (its nodes are its Node objects)")
            if isinstance(manifest, TrainingJob | InferenceService):
                problem = namespace_problem(manifest.spec.tenant)
                if problem is not None:
                    raise InputError(f"{manifest.kind} {name}: {problem}")
        plans = [(m, self._decide(m)) for m in manifests]
        done: dict[int, Result] = {}
        order = sorted(range(len(plans)), key=lambda i: plans[i][0].kind != "Tenant")
        for i in order:
            manifest, result = plans[i]
            if result == "created":
                self._create(manifest)
            elif result == "configured" and isinstance(manifest, InferenceService):
                self._replace_service(manifest)
            elif result == "configured":
                assert isinstance(manifest, Tenant)  # a live job is never "configured"
                result = self._replace_tenant(manifest)
            done[i] = (manifest.kind, manifest.metadata.name, result)
        return [done[i] for i in range(len(plans))]

    def _live(self, manifest: Manifest) -> Body | None:
        namespace = (manifest.spec.tenant if isinstance(manifest, TrainingJob | InferenceService)
                     else None)
        return self.kube.get(manifest.kind, manifest.metadata.name, namespace)

    def _decide(self, manifest: Manifest) -> str:
        live = self._live(manifest)
        if live is None:
            return "created"
        if isinstance(manifest, Tenant):
            return "unchanged" if self._same_tenant(manifest, live) else "configured"
        name = manifest.metadata.name
        if isinstance(manifest, InferenceService):
            if live["metadata"].get("deletionTimestamp"):
                raise AlreadyExistsError(
                    f"service '{name}' already exists",
                    hint="it is being deleted; apply it again once it is gone")
            return ("unchanged" if _same_spec(InferenceServiceSpec, manifest.spec, live)
                    else "configured")
        assert isinstance(manifest, TrainingJob)
        if live["metadata"].get("deletionTimestamp"):
            raise AlreadyExistsError(
                f"job '{name}' already exists",
                hint="it is being deleted; create it again once it is gone",
            )
        if _same_spec(TrainingJobSpec, manifest.spec, live):
            return "unchanged"
        raise ImmutableError(
            f"TrainingJob {name}: jobs are immutable; delete it first "
            f"(shoal delete job {name}) to apply a changed spec"
        )

    @staticmethod
    def _same_tenant(manifest: Tenant, live: Body) -> bool:
        meta = live.get("metadata") or {}
        return (_same_spec(TenantSpec, manifest.spec, live)
                and _includes(meta.get("labels"), manifest.metadata.labels)
                and _includes(meta.get("annotations"), manifest.metadata.annotations))

    def _replace_service(self, manifest: InferenceService) -> None:
        """The new spec on the live object (fenced by its resourceVersion: a 409 says
        someone else changed it meanwhile)."""
        live = self._live(manifest)
        if live is None:
            self._create(manifest)
            return
        self.kube.replace({**live, "spec": body_of(manifest)["spec"]})

    def _create(self, manifest: Manifest) -> None:
        body = body_of(manifest)
        if not isinstance(manifest, TrainingJob | InferenceService):
            self.kube.create(body)
            return
        try:
            self.kube.create(body)
        except NotFoundError:
            # Its namespace is not there yet: make it as the operator would.
            if self.kube.get("Namespace", manifest.spec.tenant) is not None:
                raise
            self._make_namespace(manifest.spec.tenant)
            self.kube.create(body)

    def _make_namespace(self, tenant: str) -> None:
        owner = self.kube.get("Tenant", tenant)
        if owner is None:
            raise NotFoundError(f"tenant '{tenant}' not found on the cluster")
        owner.setdefault("apiVersion", "shoal.dev/v1alpha1")
        owner.setdefault("kind", "Tenant")
        namespace = tenant_objects(tenant_from_resource(owner), owner=owner).namespace
        with suppress(AlreadyExistsError):  # the operator made it meanwhile
            self.kube.create(namespace)

    def _replace_tenant(self, manifest: Tenant) -> str:
        """PUT the Tenant's spec, labels and annotations (others' labels kept), fenced."""
        wanted = body_of(manifest)
        for _ in range(CONFLICT_RETRIES):
            live = self._live(manifest)
            if live is None:
                self.kube.create(wanted)
                return "created"
            if self._same_tenant(manifest, live):
                return "unchanged"
            meta = live["metadata"]
            meta["labels"] = {**(meta.get("labels") or {}), **manifest.metadata.labels}
            meta["annotations"] = {**(meta.get("annotations") or {}),
                                   **manifest.metadata.annotations}
            try:
                self.kube.replace({**live, "spec": wanted["spec"]})
            except ConflictError:
                continue  # changed since read (the operator's status): read again
            return "configured"
        raise ConflictError(f"Tenant {manifest.metadata.name} kept changing while it was "
                            f"applied ({CONFLICT_RETRIES} tries)", retry_after_s=1.0)

    def delete_job(self, obj: Body) -> bool:
        """Ask for the TrainingJob's deletion (the operator stops its pods first)."""
        meta = obj["metadata"]
        return self.kube.delete("TrainingJob", meta["name"], meta["namespace"])

    def delete_tenant(self, name: str) -> bool:
        """Delete a Tenant (its namespace, and the jobs in it, go with it); False: none."""
        return self.kube.delete("Tenant", name)

    # --- inference services --------------------------------------------------------

    def services(self, name: str | None = None, tenant: str | None = None) -> list[Body]:
        """The InferenceService objects (called ``name``) (in ``tenant``'s namespace)."""
        fields = f"metadata.name={name}" if name else ""
        found: list[Body] = self.kube.listing(
            "InferenceService", tenant, fields=fields).get("items", [])
        return sorted(found, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    def delete_service(self, obj: Body) -> bool:
        """Ask for the service's deletion (the operator scales it to zero first)."""
        meta = obj["metadata"]
        return self.kube.delete("InferenceService", meta["name"], meta["namespace"])


def _same_spec(model: type[TenantSpec] | type[TrainingJobSpec] | type[InferenceServiceSpec],
               wanted: Any, live: Body) -> bool:
    """Whether the stored spec means what ``wanted`` means (as the model reads both)."""
    try:
        stored = model.model_validate(live.get("spec") or {})
    except ValueError:
        return False  # stored without the webhook, and invalid: a change
    return bool(stored.model_dump(mode="json") == wanted.model_dump(mode="json"))


def _includes(live: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    return all((live or {}).get(k) == v for k, v in wanted.items())
