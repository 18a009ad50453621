"""Install or upgrade Shoal's CRDs when the operator starts, when it is allowed to.

``install_crds(kube)`` brings each CRD of ``crds.all_crds()`` to what this
version of Shoal generates: it creates a missing one, and replaces one whose
stored spec differs from what the server would store for the generated one
(a dry-run PUT tells: the server defaults fields, so comparing with the
generated manifest itself would see differences that are none).  Labels
and annotations others put on a CRD are kept.  It then waits, within a
deadline, until each is Established and in discovery, so that kopf, which
scans discovery once when it starts, finds the kinds.

Not allowed (403: the operator's role may not read or write CRDs, as in a
cluster whose admin installs them from ``deploy/crds.yaml``) is not fatal:
a warning says so, and the operator goes on when the server serves the
kinds.  When they are missing and cannot be installed, ``CrdsMissing``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shoal.errors import AlreadyExistsError, Forbidden, ShoalError, UnavailableError
from shoal.runtime.kubernetes.client import Body, Kube
from shoal.runtime.kubernetes.crds import all_crds

log = logging.getLogger("shoal.operator")

KIND = "CustomResourceDefinition"
ESTABLISH_TIMEOUT_S = 60.0
_POLL_S = (0.1, 0.2, 0.5, 1.0)
"""Waits between reads of a new CRD's conditions (then 1 s until the deadline)."""


class CrdsMissing(ShoalError):
    """Shoal's CRDs are not served and the operator may not install them."""

    code = "crds_missing"


@dataclass(frozen=True)
class Installed:
    """What was done about one CRD: created, upgraded, unchanged or forbidden."""

    name: str
    outcome: str
    why: str = ""

    def __str__(self) -> str:
        return f"CRD {self.name} {self.outcome}" + (f": {self.why}" if self.why else "")


def install_crds(kube: Kube, manifests: Sequence[Body] | None = None,
                 timeout_s: float = ESTABLISH_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> list[Installed]:
    """Create or upgrade each CRD in ``manifests`` (default: Shoal's); see the module's doc."""
    manifests = list(manifests or all_crds())
    done = [_install(kube, manifest) for manifest in manifests]
    forbidden = [d for d in done if d.outcome == "forbidden"]
    if forbidden:
        log.warning("not allowed to install or upgrade Shoal's CRDs, so a cluster admin must "
                    "install them (kubectl apply -f deploy/crds.yaml, or shoal operator crds "
                    "| kubectl apply -f -): %s", "; ".join(d.why for d in forbidden))
    refused = {d.name for d in forbidden}
    missing = [m["metadata"]["name"] for m in manifests
               if m["metadata"]["name"] in refused and not _served(kube, m)]
    if missing:
        raise CrdsMissing(
            f"the CRDs {', '.join(missing)} are not installed and this operator may not "
            f"install them", hint="a cluster admin must run: kubectl apply -f deploy/crds.yaml")
    changed = [m for m, d in zip(manifests, done, strict=True)
               if d.outcome in ("created", "upgraded")]
    if changed:
        _wait_served(kube, changed, clock() + timeout_s, clock, sleep)
        kube.discovery.forget()  # the group may not have been served before
    for installed in done:
        if installed.outcome != "forbidden":
            log.info("%s", installed)
    return done


def _install(kube: Kube, manifest: Body) -> Installed:
    name = manifest["metadata"]["name"]
    try:
        live = kube.get(KIND, name)
        if live is None:
            try:
                kube.create(manifest)
            except AlreadyExistsError:  # another operator made it meanwhile: check it again
                return _install(kube, manifest)
            return Installed(name, "created")
        body = _over(manifest, live)
        would = kube.replace(body, dry_run=True)
        if would.get("spec") == live.get("spec") and _labels_kept(manifest, live):
            return Installed(name, "unchanged")
        kube.replace(body)
        return Installed(name, "upgraded")
    except Forbidden as exc:
        return Installed(name, "forbidden", str(exc))


def _over(manifest: Body, live: Body) -> Body:
    """The generated CRD over the live one's metadata (fenced by its resourceVersion)."""
    meta = dict(live["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), **manifest["metadata"].get("labels", {})}
    meta.pop("managedFields", None)
    return {**manifest, "metadata": meta}


def _labels_kept(manifest: Body, live: Body) -> bool:
    labels = live["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in manifest["metadata"].get("labels", {}).items())


def _served(kube: Kube, manifest: Body) -> bool:
    spec = manifest["spec"]
    return all(kube.serves(f"{spec['group']}/{version['name']}", spec["names"]["plural"])
               for version in spec["versions"] if version.get("served"))


def _wait_served(kube: Kube, manifests: list[Body], deadline: float,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    """Until each CRD is Established and its kind is in discovery (which kopf reads once)."""
    for attempt in itertools.count():
        pending = [m["metadata"]["name"] for m in manifests
                   if not _established(kube.get(KIND, m["metadata"]["name"]))
                   or not _served(kube, m)]
        if not pending:
            return
        if clock() >= deadline:
            raise UnavailableError(f"the CRDs {', '.join(pending)} were not Established and "
                                   f"served in time; see their status conditions")
        sleep(_POLL_S[min(attempt, len(_POLL_S) - 1)])


def _established(crd: Body | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in conditions)
