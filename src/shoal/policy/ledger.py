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
    def args(self) -> tuple[object, ...] | None:
        """The figures of a failure: (kind, tenant, resource, amount, used, free, figure),
        or ("no-quota", tenant name, resource); None when it fits."""
        return self._args

    @property
    def reason(self) -> str:
        if self._reason is None:
            assert self._args is not None
            self._reason = _explain(str(self._args[0]), *self._args[1:])
        return self._reason


_Terms = tuple[int | None, int | None, int, tuple[_CohortKey, str] | None]
"""A tenant's quota on one resource as ``check`` reads it: nominal (None: no quota),
borrowing limit, guaranteed part, and the cohort totals' key (None: no cohort)."""

_NONE: dict[str, int] = {}

_FITS = LedgerCheck(True, False)
_FITS_BORROWING = LedgerCheck(True, True)


class QuotaTerms:
    """What ledgers read of the tenants' quotas alone (cohort members, pools,
    guaranteed parts), worked out once: a caller may keep it across cycles
    for ledgers of the same tenants (``serves``)."""

    def __init__(self, tenants: Mapping[str, TenantQuota]) -> None:
        self.tenants = tenants
        self._seen = tuple(tenants.items())
        self.members: dict[_CohortKey, list[TenantQuota]] = {}
        for tenant in tenants.values():
            self.members.setdefault(_cohort_key(tenant), []).append(tenant)
        self.cohorts: dict[str, _CohortKey] = {
            name: _cohort_key(tenant) for name, tenant in tenants.items()
        }
        self.pool: dict[tuple[_CohortKey, str], int] = {}
        self.guaranteed: dict[tuple[str, str], int] = {}
        self.floors: dict[tuple[_CohortKey, str], list[tuple[str, int]]] = {}
        """Per cohort and resource, each member's name and guaranteed part (``drawn``)."""
        self.terms: dict[tuple[str, str], _Terms] = {}

    def serves(self, tenants: Mapping[str, TenantQuota]) -> bool:
        """Whether these are the same tenants, the very same objects."""
        return tenants is self.tenants and len(tenants) == len(self._seen) and all(
            tenants.get(name) is tenant for name, tenant in self._seen
        )


class QuotaLedger:
    """Usage of every tenant, with per-cohort totals kept up to date."""

    def __init__(
        self, tenants: Mapping[str, TenantQuota], usage: Usage, terms: QuotaTerms | None = None
    ) -> None:
        self.tenants = tenants
        self.usage: dict[str, dict[str, int]] = {t: dict(v) for t, v in usage.items()}
        if terms is None or not terms.serves(tenants):
            terms = QuotaTerms(tenants)
        self.terms = terms
        self._members = terms.members
        self._pool = terms.pool
        self._drawn: dict[tuple[_CohortKey, str], int] = {}
        self._guaranteed = terms.guaranteed
        self._terms = terms.terms
        self._cohorts = terms.cohorts
        self._floors = terms.floors

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
            # Every cycle's ledger works this out anew for the cohorts it checks.
            floors = self._floors.get(key)
            if floors is None:
                floors = self._floors[key] = [
                    (member.name, self.guaranteed(member, resource))
                    for member in self._members[key[0]]
                ]
            usage = self.usage
            value = 0
            for name, guaranteed in floors:
                used = usage.get(name, _NONE).get(resource, 0)
                if used > guaranteed:
                    value += used - guaranteed
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
        nominal = self.tenants[name].nominal
        mine = self.usage.get(name, _NONE)
        for resource, amount in request.items():
            if amount > 0 and mine.get(resource, 0) + amount > nominal.get(resource, 0):
                return False
        return True

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
        mine = self.usage.get(name, _NONE)
        borrowing = False
        terms = self._terms
        for resource, amount in sorted(request.items()):
            if amount <= 0:
                continue
            term = terms.get((name, resource))
            if term is None:
                term = self._terms_of(name, resource)
            nominal, limit, guaranteed, key = term
            if nominal is None:
                return LedgerCheck(False, False, resource, ("no-quota", name, resource))
            used = mine.get(resource, 0)
            after = used + amount
            if after > nominal:
                borrowing = True
            if key is None:
                if after > nominal:
                    return self._short(name, resource, amount, used, nominal - used, "solo")
                continue
            if limit is not None and after > nominal + limit:
                return self._short(
                    name, resource, amount, used, nominal + limit - used, "limit", limit
                )
            need = after - guaranteed
            if need <= 0:
                continue
            drawn = self._drawn.get(key)
            if drawn is None:
                drawn = self.drawn(self.tenants[name], resource)
            pool = self._pool.get(key)
            if pool is None:
                pool = self.pool(self.tenants[name], resource)
            own = used - guaranteed
            available = pool - (drawn - own if own > 0 else drawn)
            if need > available:
                reachable = guaranteed + available
                return self._short(
                    name, resource, amount, used, reachable - used, "cohort", reachable
                )
        return _FITS_BORROWING if borrowing else _FITS

    def _terms_of(self, name: str, resource: str) -> _Terms:
        """What ``check`` reads of ``name``'s quota on ``resource``, looked up once."""
        tenant = self.tenants[name]
        if not tenant.has_quota(resource):
            term: _Terms = (None, None, 0, None)
        elif tenant.cohort is None:
            term = (tenant.nominal[resource], None, 0, None)
        else:
            term = (
                tenant.nominal[resource],
                tenant.borrowing_limit.get(resource),
                self.guaranteed(tenant, resource),
                (self._cohorts[name], resource),
            )
        self._terms[(name, resource)] = term
        return term

    def _short(
        self,
        name: str,
        resource: str,
        amount: int,
        used: int,
        free: int,
        why: str,
        figure: int = 0,
    ) -> LedgerCheck:
        args = (why, self.tenants[name], resource, amount, used, free, figure)
        return LedgerCheck(False, False, resource, args)

    # -- changing --------------------------------------------------------------

    def charge(
        self, name: str, vector: Vector, sign: int = 1, only: Collection[str] | None = None
    ) -> None:
        """Add ``vector`` to ``name``'s usage (``sign=-1``: refund it).

        ``only``: touch just these resources (a victim search reads only the
        preemptor's, and puts everything back when it ends).
        """
        mine = self.usage.get(name)
        if mine is None:
            mine = self.usage[name] = {}
        cohort = self._cohorts.get(name)
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
                guaranteed = self._guaranteed.get((name, resource))
                if guaranteed is None:
                    guaranteed = self.guaranteed(self.tenants[name], resource)
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
