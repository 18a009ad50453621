"""Shoal's own autoscaler: size for a latency SLO from a queueing model, not for a utilisation.

KPA and HPA aim at a utilisation target (in-flight requests per replica) and
then hold capacity on fixed timers (a 60 s window, a 300 s stabilisation), so
they pay for replicas that the SLO does not need, and KPA goes to zero on a
fixed 90 s timer whatever the arrivals say.  This policy instead asks how
many replicas keep the p-th percentile of the waiting time within the SLO's
budget:

1. **Rate forecast.** The arrival rate to plan for is the largest of the
   short-window rate (6 s, reacts to bursts), the 30 s rate and a
   linear extrapolation of the short-term rise (beyond Poisson noise) over
   one cold start (a replica ordered now serves only that much later).
2. **Sizing.** Each replica is ``slots`` servers (its concurrency); the
   service rate comes from the measured mean service time.  Erlang C (M/G/c,
   see ``queueing``) gives the fewest servers for which
   ``P(wait > budget) <= 1 - quantile``; the backlog in flight is added so a
   queue built during a burst drains.
3. **Scale-down hold.** Replicas are released only when the sizing has
   wanted fewer for ``hold_s`` (default: one cold start): a replica released
   and needed again within a cold start costs a cold start and the requests
   that wait for it.
4. **Cold-start-aware zero.** With nothing to serve, the last replica stays
   warm while a cold resume would make more requests miss the SLO than the
   SLO allows: at the rate bursts begin with (the mean rate of the active
   seconds in the long window, 10 min), the requests of one cold start and
   those queued behind them while one replica drains that backlog, against
   ``(1 - quantile)`` of the long window's arrivals.  When that budget covers
   a cold resume, the service goes to zero after one hold; with no arrival
   for a whole long window it goes to zero anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shoal.policy.autoscaling.base import (
    MetricSample,
    ScaleDecision,
    ScalingContext,
    average,
    trim,
)
from shoal.policy.autoscaling.queueing import servers_for

TICK_S = 2.0


@dataclass(frozen=True, slots=True)
class ShoalState:
    window: tuple[MetricSample, ...] = ()
    last_arrival: float | None = None
    """End of the last sample with an arrival."""
    wanted: tuple[tuple[float, int], ...] = ()
    """(time, sized replicas) within the scale-down hold."""


@dataclass(frozen=True, slots=True)
class ShoalPolicy:
    """SLO-driven sizing; ``service_time_s`` is the prior until the caller measures one."""

    slots: int
    """Requests one replica serves at once (its concurrency)."""
    wait_budget_s: float
    """How long a request may wait before service and still meet the SLO."""
    service_time_s: float
    cold_start_s: float
    quantile: float = 0.95
    service_scv: float = 1.0
    short_window_s: float = 6.0
    mid_window_s: float = 30.0
    long_window_s: float = 600.0
    hold_s: float | None = None
    """Unset: one cold start."""
    tick_seconds: float = TICK_S
    name: str = field(default="shoal")

    @property
    def hold(self) -> float:
        return self.cold_start_s if self.hold_s is None else self.hold_s

    def initial_state(self) -> ShoalState:
        return ShoalState()

    def decide(
        self, context: ScalingContext, state: ShoalState
    ) -> tuple[ScaleDecision, ShoalState]:
        now = context.now
        window = trim(state.window, context.samples, now, self.long_window_s)
        last_arrival = state.last_arrival
        for sample in context.samples:
            if sample.arrivals:
                last_arrival = sample.end
        lam = self.forecast(window, now)
        service = context.service_time_s or self.service_time_s
        servers = servers_for(lam, 1 / service, self.wait_budget_s, self.quantile, self.service_scv)
        sized = max(math.ceil(servers / self.slots), math.ceil(context.in_flight / self.slots))
        reason = f"{lam:.2f} req/s x {service:.3f} s -> {servers} slots"
        wanted = (*tuple(w for w in state.wanted if w[0] > now - self.hold), (now, sized))
        desired = max(n for _, n in wanted)
        if desired == 0 and self._keep_warm(window, now, last_arrival, context):
            desired, reason = 1, "kept warm: a cold resume would miss more than the SLO allows"
        new_state = ShoalState(window, last_arrival, wanted)
        return ScaleDecision(desired, reason), new_state

    def forecast(self, window: tuple[MetricSample, ...], now: float) -> float:
        """The arrival rate to provision for, one cold start ahead."""
        short = average(window, now, self.short_window_s, "rps")
        mid = average(window, now, self.mid_window_s, "rps")
        before = average(window, now - self.short_window_s, self.short_window_s, "rps")
        # Extrapolate only a rise beyond Poisson noise (two standard deviations of
        # the difference of two counts), so a steady load is not over-provisioned.
        noise = 2 * math.sqrt((short + before) / self.short_window_s)
        rise = max(0.0, short - before - noise)
        ahead = short + rise / self.short_window_s * self.cold_start_s
        return max(short, mid, ahead)

    def _keep_warm(
        self,
        window: tuple[MetricSample, ...],
        now: float,
        last_arrival: float | None,
        context: ScalingContext,
    ) -> bool:
        if context.in_flight > 0:
            return True
        if last_arrival is None:
            return False
        arrivals = sum(s.arrivals for s in window)
        if arrivals == 0:
            return False  # quiet for the whole long window: go to zero
        active = [s.rps for s in window if s.arrivals]
        onset_rate = sum(active) / len(active)
        # A cold resume makes the requests of its first cold start miss the SLO,
        # and those that queue behind them while one replica drains that backlog;
        # keep a replica warm unless those fit the share the SLO allows to miss.
        service = context.service_time_s or self.service_time_s
        spare = self.slots / service - onset_rate
        if spare <= 0:
            return True  # one replica cannot even keep up with a burst's start
        backlog = onset_rate * self.cold_start_s
        cold_misses = onset_rate * (self.cold_start_s + backlog / spare)
        budget = (1 - self.quantile) * arrivals
        if cold_misses > budget:
            return True
        return now - last_arrival < self.hold
