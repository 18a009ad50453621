"""The incremental quota ledger answers exactly as the from-scratch quota functions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.policy import fairshare
from shoal.policy.ledger import QuotaLedger
from shoal.policy.quota import check
from tests.unit.test_admission_properties import NAMES, quotas

RESOURCES = ("cpu", "gpu/A100", "gpu/H100", "pods")


@st.composite
def vectors(draw: st.DrawFn) -> dict[str, int]:
    return {r: draw(st.integers(0, 6)) * 500 for r in draw(st.sets(st.sampled_from(RESOURCES)))}


@settings(max_examples=300, deadline=None)
@given(quotas(), st.lists(st.tuples(st.sampled_from(NAMES), vectors(), st.booleans()),
                          max_size=12), st.sampled_from(NAMES), vectors())
def test_ledger_agrees_with_quota_check_after_any_charges(tenants, steps, name, request) -> None:
    ledger = QuotaLedger(tenants, {})
    usage: dict[str, dict[str, int]] = {}
    for who, vector, refund in steps:
        sign = -1 if refund and usage.get(who) else 1
        ledger.charge(who, vector, sign)
        mine = usage.setdefault(who, {})
        for resource, amount in vector.items():
            mine[resource] = mine.get(resource, 0) + sign * amount
        # Every step, the incremental answer equals the from-scratch one.
        fresh = check(tenants, usage, name, request)
        kept = ledger.check(name, request)
        assert (kept.fits, kept.borrowing) == (fresh.fits, fresh.borrowing)
        assert kept.reason == fresh.reason
    for who in set(usage) | set(ledger.usage):
        assert ledger.usage.get(who, {}) == usage.get(who, {})
    assert ledger.share_after(name, request) == fairshare.share_after(
        tenants, usage, name, request
    )


def test_a_refund_restricted_to_some_resources_leaves_the_others() -> None:
    from tests.unit.builders import tenant, tenants

    quotas_ = tenants(tenant("a", 4, cohort="c"), tenant("b", 4, cohort="c"))
    ledger = QuotaLedger(quotas_, {"a": {"gpu/A100": 6000, "cpu": 3000}})
    assert not ledger.check("b", {"gpu/A100": 3000}).fits  # a borrows 2 of b's 4
    ledger.refund("a", {"gpu/A100": 2000, "cpu": 3000}, only={"gpu/A100": 1})
    assert ledger.usage["a"] == {"gpu/A100": 4000, "cpu": 3000}
    assert ledger.check("b", {"gpu/A100": 3000}).fits
