"""Quota checks: cohort borrowing, lending and borrowing limits, tenants without cohort."""

from __future__ import annotations

import pytest

from shoal.domain.tenant import ReclaimWithinCohort, TenantSpec
from shoal.policy.quota import (
    UNLIMITED_PODS,
    TenantQuota,
    borrowed,
    ceiling,
    check,
    pool,
    total_usage,
    usage_after,
)
from tests.unit.builders import A100, tenant, tenants

G = 1000  # one GPU in milli-GPUs

PAIR = tenants(tenant("a", 4, cohort="c"), tenant("b", 4, cohort="c"))
B_LENDS_1 = tenants(tenant("a", 4, cohort="c"), tenant("b", 4, cohort="c", lending=1))
A_BORROWS_1 = tenants(tenant("a", 4, cohort="c", borrowing=1), tenant("b", 4, cohort="c"))
B_LENDS_0 = tenants(tenant("a", 4, cohort="c"), tenant("b", 4, cohort="c", lending=0))
SOLO = tenants(tenant("solo", 4), tenant("other", 4, cohort="c"))

# (id, tenants, GPUs in use per tenant, who asks, GPUs asked, fits, borrowing, reason contains)
CASES = [
    ("within nominal", PAIR, {}, "a", 4, True, False, ""),
    ("borrow idle cohort quota", PAIR, {"a": 4}, "a", 4, True, True, ""),
    (
        "more than the whole pool",
        PAIR,
        {"a": 4},
        "a",
        5,
        False,
        False,
        "needs 5 GPU, a can get 4 GPU now (4 GPU nominal, 4 GPU in use, 4 GPU borrowable "
        "from cohort c)",
    ),
    ("pool partly used by b", PAIR, {"a": 4, "b": 3}, "a", 2, False, False, "can get 1 GPU now"),
    ("pool partly used, still fits", PAIR, {"a": 4, "b": 3}, "a", 1, True, True, ""),
    ("lending limit caps borrowing", B_LENDS_1, {}, "a", 6, False, False, "can get 5 GPU now"),
    ("lending limit allows up to it", B_LENDS_1, {}, "a", 5, True, True, ""),
    ("lender above guarantee uses pool", B_LENDS_1, {"b": 4}, "a", 5, False, False,
     "can get 4 GPU now"),
    ("guaranteed part always available", B_LENDS_0, {"a": 4}, "b", 4, True, False, ""),
    ("lending 0: a cannot borrow", B_LENDS_0, {}, "a", 5, False, False, "can get 4 GPU now"),
    ("borrowing limit reached", A_BORROWS_1, {"a": 4}, "a", 2, False, False, "borrowingLimit 1 GPU"),
    ("borrowing limit allows 1", A_BORROWS_1, {"a": 4}, "a", 1, True, True, ""),
    ("no cohort: nominal is the cap", SOLO, {"solo": 3}, "solo", 2, False, False, "no cohort"),
    ("no cohort: up to nominal", SOLO, {"solo": 3}, "solo", 1, True, False, ""),
    ("no cohort: cannot use others'", SOLO, {}, "solo", 5, False, False,
     "solo can get 4 GPU now (4 GPU nominal, 0 GPU in use, no cohort to borrow from)"),
]


@pytest.mark.parametrize(
    ("quotas", "used", "who", "asked", "fits", "borrowing", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_gpu_request_against_cohort(
    quotas: dict[str, TenantQuota],
    used: dict[str, int],
    who: str,
    asked: int,
    fits: bool,
    borrowing: bool,
    reason: str,
) -> None:
    usage = {name: {A100: gpus * G} for name, gpus in used.items()}
    result = check(quotas, usage, who, {A100: asked * G, "cpu": 1000})
    assert (result.fits, result.borrowing) == (fits, borrowing)
    assert reason in result.reason
    if not fits:
        assert result.resource == A100
        assert A100 in result.reason


def test_resource_without_quota_is_refused_by_name() -> None:
    result = check(PAIR, {}, "a", {"gpu/H100": 1000})
    assert not result.fits
    assert result.resource == "gpu/H100"
    assert "no quota for gpu/H100" in result.reason


def test_zero_amounts_need_no_quota() -> None:
    assert check(PAIR, {}, "a", {"gpu/H100": 0, A100: 1000}).fits


@pytest.mark.parametrize(
    ("quotas", "who", "expected_gpus"),
    [
        (PAIR, "a", 8),
        (B_LENDS_1, "a", 5),
        (B_LENDS_1, "b", 8),
        (A_BORROWS_1, "a", 5),
        (SOLO, "solo", 4),
    ],
)
def test_ceiling_is_the_most_a_tenant_can_ever_use(
    quotas: dict[str, TenantQuota], who: str, expected_gpus: int
) -> None:
    assert ceiling(quotas, who, A100) == expected_gpus * G
    # The ceiling itself fits an idle cohort and one milli more does not.
    assert check(quotas, {}, who, {A100: expected_gpus * G}).fits
    assert not check(quotas, {}, who, {A100: expected_gpus * G + 1}).fits


def test_pool_sums_lendable_quota_of_the_cohort_only() -> None:
    assert pool(B_LENDS_1, "a", A100) == 5 * G
    assert pool(SOLO, "solo", A100) == 4 * G


def test_borrowed_reports_usage_above_nominal_per_tenant() -> None:
    usage = {"a": {A100: 6 * G, "cpu": 1}, "b": {A100: 2 * G}}
    assert borrowed(PAIR, usage) == {"a": {A100: 2 * G}}


def test_usage_after_adds_and_removes_without_mutating() -> None:
    usage = {"a": {A100: 2 * G}}
    after = usage_after(usage, "a", add={A100: 3 * G, "cpu": 5}, remove={A100: 1 * G})
    assert after == {"a": {A100: 4 * G, "cpu": 5}}
    assert usage == {"a": {A100: 2 * G}}
    assert usage_after(usage, "b", add={"cpu": 1})["b"] == {"cpu": 1}


def test_total_usage_sums_per_tenant() -> None:
    charges = [("a", {"cpu": 1}), ("b", {"cpu": 2}), ("a", {"cpu": 3, A100: 500})]
    assert total_usage(charges) == {"a": {"cpu": 4, A100: 500}, "b": {"cpu": 2}}


def test_from_spec_flattens_quota_and_policy() -> None:
    spec = TenantSpec.model_validate(
        {
            "cohort": "research",
            "weight": 2,
            "quota": {
                "cpu": {"nominal": "8", "lendingLimit": 2},
                "gpus": {"A100": {"nominal": 1.5, "borrowingLimit": 0.5}},
            },
            "allowedPriorities": ["low", 5],
            "preemption": {"reclaimWithinCohort": "Never"},
            "queueing": "StrictFIFO",
        }
    )
    quota = TenantQuota.from_spec("team", spec)
    # No pods quota: any number of pods, none of it lent.
    assert quota.nominal == {"cpu": 8000, A100: 1500, "pods": UNLIMITED_PODS}
    assert quota.borrowing_limit == {"cpu": None, A100: 500, "pods": None}
    assert (quota.lendable("pods"), quota.limits_pods) == (0, False)
    assert (quota.guaranteed("cpu"), quota.lendable("cpu")) == (6000, 2000)
    assert (quota.guaranteed(A100), quota.lendable(A100)) == (0, 1500)
    assert quota.allowed_priorities == frozenset({0, 5})
    assert quota.preemption.reclaim_within_cohort == ReclaimWithinCohort.NEVER
    assert (quota.cohort, quota.weight, quota.strict_fifo) == ("research", 2.0, True)
    assert TenantQuota.from_spec("x", TenantSpec()).allowed_priorities is None


def test_equal_share_has_no_limits() -> None:
    quota = TenantQuota.equal_share("t", "c", {A100: 2 * G, "cpu": 8000})
    assert quota.nominal == {A100: 2 * G, "cpu": 8000, "pods": UNLIMITED_PODS}
    assert quota.borrowing_limit == {A100: None, "cpu": None, "pods": None}
    assert (quota.lendable(A100), quota.guaranteed(A100), quota.cohort) == (2 * G, 0, "c")
