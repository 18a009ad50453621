"""Let a test's PersistentVolumeClaims go, as the pvc-protection controller would.

The test control plane runs no volume controllers (``../shared/kube``), so
nothing removes the ``kubernetes.io/pvc-protection`` finalizer that admission
puts on every claim, and a namespace holding a claim would never finish
deleting.  A test that is done with a namespace's pods calls this before
deleting the namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube

PROTECTION = "kubernetes.io/pvc-protection"


def release_claims(kube: Kube, namespace: str) -> None:
    """Drop the protection finalizer from every claim in ``namespace`` (its pods are gone)."""
    for claim in kube.list("PersistentVolumeClaim", namespace):
        for _ in range(5):
            meta = claim["metadata"]
            if PROTECTION not in (meta.get("finalizers") or []):
                break
            finalizers = [f for f in meta["finalizers"] if f != PROTECTION]
            try:
                kube.replace({**claim, "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "metadata": {**meta, "finalizers": finalizers}})
                break
            except ConflictError:
                claim = kube.get("PersistentVolumeClaim", meta["name"], namespace) or claim
            except NotFoundError:
                break
