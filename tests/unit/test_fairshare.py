"""Fair sharing: weighted dominant share of borrowed quota, ordering and entitlements."""

from __future__ import annotations

import pytest

from shoal.policy.fairshare import entitled_gpu_shares, order_key, share, share_after, shares
from shoal.policy.quota import TenantQuota
from tests.unit.builders import A100, tenant, tenants, workload

G = 1000

COHORT = tenants(
    tenant("a", 4, cohort="c"),
    tenant("b", 4, cohort="c", weight=2),
    tenant("c", 0, cohort="c"),
    tenant("solo", 4),
)


@pytest.mark.parametrize(
    ("who", "gpus_used", "expected"),
    [
        ("a", 4, 0.0),  # within nominal
        ("a", 6, 2 / 8),  # borrows 2 of a pool of 8
        ("b", 6, 2 / 8 / 2),  # same borrowing, double weight: half the share
        ("c", 2, 2 / 8),  # no quota at all: everything is borrowed
        ("solo", 4, 0.0),
    ],
)
def test_share_is_borrowed_fraction_of_pool_over_weight(
    who: str, gpus_used: int, expected: float
) -> None:
    assert share(COHORT, {who: {A100: gpus_used * G}}, who) == pytest.approx(expected)


def test_dominant_resource_decides() -> None:
    quotas = tenants(tenant("a", 4, cohort="c"), tenant("b", 4, cohort="c"))
    # CPU nominal is 10000 cores each, so borrowing 100 cores is 0.5% of the
    # pool; 4 borrowed GPUs are half of it and dominate.
    usage = {"a": {"cpu": 10_100_000, A100: 8 * G}}
    assert share(quotas, usage, "a") == pytest.approx(0.5)


def test_shares_cover_every_tenant() -> None:
    got = shares(COHORT, {"a": {A100: 5 * G}})
    assert got == {"a": pytest.approx(1 / 8), "b": 0.0, "c": 0.0, "solo": 0.0}


def test_share_after_charges_the_request() -> None:
    usage = {"a": {A100: 4 * G}}
    assert share_after(COHORT, usage, "a", {A100: 2 * G}) == pytest.approx(2 / 8)
    assert usage == {"a": {A100: 4 * G}}


def test_order_priority_then_share_then_age_then_name() -> None:
    keys = {
        "urgent": order_key(workload("urgent", "a", priority=100, submit=9), 0.9),
        "fair": order_key(workload("fair", "a", submit=5), 0.1),
        "old": order_key(workload("old", "a", submit=1), 0.5),
        "new": order_key(workload("new", "a", submit=2), 0.5),
        "new-b": order_key(workload("new-b", "a", submit=2), 0.5),
    }
    assert sorted(keys, key=keys.__getitem__) == ["urgent", "fair", "old", "new", "new-b"]


@pytest.mark.parametrize(
    ("quotas", "cluster_gpus", "expected"),
    [
        (tenants(tenant("a", 6), tenant("b", 2)), 16, {"a": 6 / 16, "b": 2 / 16}),
        (tenants(tenant("a", 12), tenant("b", 12)), 16, {"a": 0.75, "b": 0.75}),
        (tenants(tenant("a", 0, weight=3), tenant("b", 0)), 16, {"a": 0.75, "b": 0.25}),
        (tenants(tenant("a", 4)), 0, {"a": 0.0}),
    ],
    ids=["by-nominal", "oversubscribed-shows-above-1", "by-weight-without-gpu-quota", "no-gpus"],
)
def test_entitled_gpu_share(
    quotas: dict[str, TenantQuota], cluster_gpus: int, expected: dict[str, float]
) -> None:
    assert entitled_gpu_shares(quotas, cluster_gpus * G) == pytest.approx(expected)
