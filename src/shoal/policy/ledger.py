"""Quota kept incrementally: usage per tenant and what each cohort draws from its pool.

``quota.check`` recomputes a cohort's pool and its members' borrowing on every
call, which a scheduling cycle over thousands of pending workloads cannot
afford.  A ``QuotaLedger`` answers the same questions (same rules, same
answers: see ``quota`` for them) in time proportional to the resources of a
request: per cohort and resource it keeps the pool (sum of the members'
lendable quota) and what the members draw from it (sum of their usage above
their guaranteed part), and updates both when a tenant is charged or
refunded.

A ledger belongs to one scheduling cycle: it starts from the snapshot's
usage, the cycle charges admissions and reservations to it, and victim
searches refund and re-charge victims as they try them.  Why a check failed
is worked out only when someone reads ``reason``: most failures in a busy
cluster are never shown to anyone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from shoal.domain.resources import Vector
from shoal.policy.quota import TenantQuota, Usage, amount_text

_CohortKey = tuple[str, bool]
"""A cohort's name, or (for a tenant without one) the tenant's own name and True."""


class LedgerCheck:
    """Whether a request fits; ``reason`` is built on first read."""

    __slots__ = ("_args", "_reason", "borrowing", "fits", "resource")

    def __init__(
        self,
        fits: bool,
        borrowing: bool,
        resource: str | None = None,
        args: tuple[object, ...] | None = None,
    ) -> None:
        self.fits = fits
        self.borrowing = borrowing
        self.resource = resource
        self._args = args
        self._reason: str | None = None if args is not None else ""

    @property
    def reason(self) -> str:
        if self._reason is None:
            assert self._args is not None
            self._reason = _explain(str(self._args[0]), *self._args[1:])
        return self._reason


_FITS = LedgerCheck(True, False)
_FITS_BORROWING = LedgerCheck(True, True)


class QuotaLedger:
    """Usage of every tenant, with per-cohort totals kept up to date."""

    def __init__(self, tenants: Mapping[str, TenantQuota], usage: Usage) -> None:
        self.tenants = tenants
        self.usage: dict[str, dict[str, int]] = {t: dict(v) for t, v in usage.items()}
        self._members: dict[_CohortKey, list[TenantQuota]] = {}
        for tenant in tenants.values():
            self._members.setdefault(_cohort_key(tenant), []).append(tenant)
        self._pool: dict[tuple[_CohortKey, str], int] = {}
        self._drawn: dict[tuple[_CohortKey, str], int] = {}
        self._guaranteed: dict[tuple[str, str], int] = {}

    def guaranteed(self, tenant: TenantQuota, resource: str) -> int:
        key = (tenant.name, resource)
        value = self._guaranteed.get(key)
        if value is None:
            value = self._guaranteed[key] = tenant.guaranteed(resource)
        return value

    # -- reading ---------------------------------------------------------------

    def used(self, tenant: str, resource: str) -> int:
        return self.usage.get(tenant, {}).get(resource, 0)

    def pool(self, tenant: TenantQuota, resource: str) -> int:
        """What ``tenant``'s cohort can lend of ``resource`` (``quota.pool``)."""
        key = (_cohort_key(tenant), resource)
        value = self._pool.get(key)
        if value is None:
            value = sum(t.lendable(resource) for t in self._members[key[0]])
            self._pool[key] = value
        return value

    def drawn(self, tenant: TenantQuota, resource: str) -> int:
        """What the members of ``tenant``'s cohort use of ``resource`` beyond their guarantees."""
        key = (_cohort_key(tenant), resource)
        value = self._drawn.get(key)
        if value is None:
            value = sum(
                max(0, self.used(t.name, resource) - self.guaranteed(t, resource))
                for t in self._members[key[0]]
            )
            self._drawn[key] = value
        return value

    def borrows_any(self, name: str, request: Vector) -> bool:
        """Whether ``name`` uses more than nominal of a resource in ``request``."""
        tenant = self.tenants[name]
        mine = self.usage.get(name, {})
        return any(
            mine.get(r, 0) > tenant.nominal.get(r, 0) for r, amount in request.items() if amount > 0
        )

    def within_nominal(self, name: str, request: Vector) -> bool:
        """Whether ``name`` stays within nominal quota after being charged ``request``."""
        tenant = self.tenants[name]
        mine = self.usage.get(name, {})
        return all(
            mine.get(r, 0) + amount <= tenant.nominal.get(r, 0)
            for r, amount in request.items()
            if amount > 0
        )

    def share_after(self, name: str, request: Vector) -> float:
        """``fairshare.share_after``: the weighted dominant share ``name`` would borrow."""
        tenant = self.tenants[name]
        mine = self.usage.get(name, {})
        dominant = 0.0
        for resource in set(mine) | set(request):
            amount = mine.get(resource, 0) + request.get(resource, 0)
            over = amount - tenant.nominal.get(resource, 0)
            if over <= 0:
                continue
            lendable = self.pool(tenant, resource)
            if lendable > 0:
                dominant = max(dominant, over / lendable)
        return dominant / tenant.weight

    def check(self, name: str, request: Vector) -> LedgerCheck:
        """``quota.check``, in time proportional to the request's resources."""
        tenant = self.tenants[name]
        mine = self.usage.get(name, {})
        borrowing = False
        for resource, amount in sorted(request.items()):
            if amount <= 0:
                continue
            if not tenant.has_quota(resource):
                return LedgerCheck(False, False, resource, ("no-quota", name, resource))
            used = mine.get(resource, 0)
            after = used + amount
            nominal = tenant.nominal[resource]
            borrowing = borrowing or after > nominal
            if tenant.cohort is None:
                if after > nominal:
                    return self._short(tenant, resource, amount, used, nominal - used, "solo")
                continue
            limit = tenant.borrowing_limit.get(resource)
            if limit is not None and after > nominal + limit:
                return self._short(
                    tenant, resource, amount, used, nominal + limit - used, "limit", limit
                )
            guaranteed = self.guaranteed(tenant, resource)
            need = max(0, after - guaranteed)
            if need == 0:
                continue
            others = self.drawn(tenant, resource) - max(0, used - guaranteed)
            available = self.pool(tenant, resource) - others
            if need > available:
                reachable = guaranteed + available
                return self._short(
                    tenant, resource, amount, used, reachable - used, "cohort", reachable
                )
        return _FITS_BORROWING if borrowing else _FITS

    def _short(
        self,
        tenant: TenantQuota,
        resource: str,
        amount: int,
        used: int,
        free: int,
        why: str,
        figure: int = 0,
    ) -> LedgerCheck:
        args = (why, tenant, resource, amount, used, free, figure)
        return LedgerCheck(False, False, resource, args)

    # -- changing --------------------------------------------------------------

    def charge(
        self, name: str, vector: Vector, sign: int = 1, only: Collection[str] | None = None
    ) -> None:
        """Add ``vector`` to ``name``'s usage (``sign=-1``: refund it).

        ``only``: touch just these resources (a victim search reads only the
        preemptor's, and puts everything back when it ends).
        """
        tenant = self.tenants.get(name)
        mine = self.usage.get(name)
        if mine is None:
            mine = self.usage[name] = {}
        cohort = None if tenant is None else _cohort_key(tenant)
        for resource, amount in vector.items():
            if only is not None and resource not in only:
                continue
            before = mine.get(resource, 0)
            after = before + sign * amount
            mine[resource] = after
            if cohort is None:
                continue
            key = (cohort, resource)
            drawn = self._drawn.get(key)
            if drawn is not None:
                assert tenant is not None
                guaranteed = self.guaranteed(tenant, resource)
                if before > guaranteed or after > guaranteed:
                    self._drawn[key] = (
                        drawn + max(0, after - guaranteed) - max(0, before - guaranteed)
                    )

    def refund(self, name: str, vector: Vector, only: Collection[str] | None = None) -> None:
        self.charge(name, vector, -1, only)


def _cohort_key(tenant: TenantQuota) -> _CohortKey:
    return (tenant.name, True) if tenant.cohort is None else (tenant.cohort, False)


def _explain(why: str, *args: object) -> str:
    """The words of ``quota.check`` for a failure, from the numbers kept at the time."""
    if why == "no-quota":
        name, resource = args
        return f"tenant {name} has no quota for {resource}"
    tenant, resource, amount, used, free, figure = args
    assert isinstance(tenant, TenantQuota)
    assert isinstance(resource, str)
    assert isinstance(amount, int) and isinstance(used, int)
    assert isinstance(free, int) and isinstance(figure, int)
    nominal = tenant.nominal[resource]
    if why == "solo":
        detail = "no cohort to borrow from"
    elif why == "limit":
        detail = f"borrowingLimit {amount_text(resource, figure)}"
    elif figure >= nominal:
        detail = (
            f"{amount_text(resource, figure - nominal)} borrowable from cohort {tenant.cohort}"
        )
    else:
        detail = f"{amount_text(resource, nominal - figure)} of it lent to others in cohort " + (
            f"{tenant.cohort}"
        )
    return (
        f"{resource}: needs {amount_text(resource, amount)}, {tenant.name} can get "
        f"{amount_text(resource, max(0, free))} now ({amount_text(resource, nominal)} "
        f"nominal, {amount_text(resource, used)} in use, {detail})"
    )
