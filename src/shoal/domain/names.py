"""Job names are scoped per tenant, as Kubernetes scopes names per namespace.

Two tenants may each have a job ``train``. Inside Shoal a job is known by its
*key*, ``<tenant>/<name>`` (names cannot hold ``/``), which the store, the
scheduler and the runtimes use as its identity; people and the API see the
name and the tenant apart.
"""

from __future__ import annotations


def job_key(tenant: str, name: str) -> str:
    """The job's identity inside Shoal."""
    return f"{tenant}/{name}"


def job_name(key: str) -> str:
    """The name the job's tenant gave it (a key without a tenant is returned as it is)."""
    return key.rpartition("/")[2]


def job_tenant(key: str) -> str | None:
    """The tenant part of a key; None for an unscoped name."""
    tenant, slash, _ = key.rpartition("/")
    return tenant if slash else None
