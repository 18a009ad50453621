"""Erlang-C sizing: how many servers keep a queue's waiting time within a budget.

An M/M/c queue with arrival rate ``lam`` and ``c`` servers of rate ``mu``
(offered load ``a = lam / mu``) makes a request wait at all with the Erlang-C
probability ``C(c, a)``, and wait longer than ``t`` with
``P(W > t) = C(c, a) * exp(-(c * mu - lam) * t)``.  For general service
times (M/G/c) the Allen-Cunneen approximation stretches waiting times by
``(1 + scv) / 2`` (``scv``: squared coefficient of variation of the service
time; 1 for exponential), which we apply to the decay rate.

Erlang B comes from its stable recursion ``B(k) = a B(k-1) / (k + a B(k-1))``
and ``C = B / (1 - (a / c)(1 - B))``; one pass up from ``ceil(a)`` finds the
smallest ``c``.
"""

from __future__ import annotations

import math

MAX_SERVERS = 100_000


def wait_exceeds(servers: int, lam: float, mu: float, t: float, scv: float = 1.0) -> float:
    """``P(W > t)`` for ``servers`` servers: 1 when the queue is unstable."""
    load = lam / mu
    if lam <= 0:
        return 0.0
    if servers <= load:
        return 1.0
    erlang_b = 1.0
    for k in range(1, servers + 1):
        erlang_b = load * erlang_b / (k + load * erlang_b)
    return _tail(erlang_b, servers, lam, mu, t, scv)


def _tail(erlang_b: float, servers: int, lam: float, mu: float, t: float, scv: float) -> float:
    load = lam / mu
    erlang_c = erlang_b / (1 - (load / servers) * (1 - erlang_b))
    return erlang_c * math.exp(-(servers * mu - lam) * t * 2 / (1 + scv))


def servers_for(lam: float, mu: float, t: float, quantile: float, scv: float = 1.0) -> int:
    """The fewest servers with ``P(W > t) <= 1 - quantile`` (0 when nothing arrives)."""
    if lam <= 0:
        return 0
    load = lam / mu
    allowed = 1.0 - quantile
    erlang_b = 1.0
    for servers in range(1, MAX_SERVERS):
        erlang_b = load * erlang_b / (servers + load * erlang_b)
        if servers > load and _tail(erlang_b, servers, lam, mu, t, scv) <= allowed:
            return servers
    return MAX_SERVERS
