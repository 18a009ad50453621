"""The validating admission webhook: Shoal's own checks, with the embedded runtime's words.

The CRD schemas type every field, but rules the models check in code
(``fraction <= 1``, unique pod set names, ``lendingLimit <= nominal``, known
priority classes, ``replicas.min <= max``, metric ``latency`` only with
policy ``shoal``) are in no schema, and v1.20 has no CEL.  So the API server
asks the operator before storing a Tenant, a TrainingJob or an
InferenceService, and the operator answers with
``domain.manifest.parse_manifests``: the function the application layer
(``app/apply.py``, behind ``shoal apply`` and the embedded API) validates
with, so a refusal reads the same on both, word for word, except that the
source is named ``<Kind> <namespace>/<name>`` instead of a file and line.
On top, a TrainingJob or an InferenceService must live in its tenant's
namespace.

An object being deleted is let through: its finalizer must come off even if
it was stored while the webhook was away and breaks a rule.

The webhook is served by kopf on loopback with a certificate made at start
(``self_signed``); kopf registers it with the API server
(``ValidatingWebhookConfiguration`` named ``validate.shoal.dev``).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from shoal.domain.base import API_VERSION
from shoal.errors import ManifestError

__all__ = ["review", "self_signed"]

_KEEP = ("name", "labels", "annotations")
_TOOL_ANNOTATIONS = ("kubectl.kubernetes.io/", "kopf.zalando.org/", "shoal.dev/")
_NAMESPACED = {"TrainingJob": "a", "InferenceService": "an"}
"""Kinds that live in their tenant's namespace (with the article their name takes)."""


def review(obj: Mapping[str, Any]) -> str | None:
    """Why ``obj`` (a Tenant, TrainingJob or InferenceService as the API server sends it) is
    refused; None: fine."""
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None  # only finalizers change now; refusing would hold the object forever
    where = meta.get("namespace")
    source = f"{kind} {where}/{meta.get('name')}" if where else f"{kind} {meta.get('name')}"
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith(_TOOL_ANNOTATIONS)
    }
    document = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {**{k: meta[k] for k in _KEEP if k in meta}, "annotations": annotations},
        "spec": obj.get("spec"),
    }
    from shoal.domain.manifest import parse_manifests

    try:
        parse_manifests(yaml.safe_dump(document, sort_keys=False), source)
    except ManifestError as exc:
        # Lines of a document the API server made up mean nothing to the user.
        return re.sub(rf"^(\s*){re.escape(source)}:\d+: ", rf"\1{source}: ", str(exc),
                      flags=re.MULTILINE)
    if kind in _NAMESPACED:
        tenant = (obj.get("spec") or {}).get("tenant")
        if tenant != where:
            return (f"{source}: spec.tenant: {_NAMESPACED[kind]} {kind} lives in its tenant's "
                    f"namespace: expected {where!r}, got {tenant!r}")
    return None


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, bytes]:
    """A key and a certificate for ``host`` valid for a year; returns (cert, key, CA bundle).

    The certificate is its own CA: the API server is given it to trust.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal-operator")])
    now = datetime.datetime.now(datetime.UTC)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = folder / "webhook.crt", folder / "webhook.key"
    cert_path.write_bytes(pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path, pem
