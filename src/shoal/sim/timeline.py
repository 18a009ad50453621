"""Time-weighted accounting of GPU allocation, per tenant and overall.

The replay engine reports every change; the timeline integrates allocation
over time (for means) and keeps the step points (for plots), which are
resampled to a few hundred points when the report is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shoal.domain.cluster import ClusterState


class Timeline:
    def __init__(self, state: ClusterState, tenants: Sequence[str]) -> None:
        self.capacity = float(max(state.total_gpu_milli, 1))
        self.tenants = list(tenants)
        self._column = {tenant: i for i, tenant in enumerate(self.tenants)}
        self._current = np.zeros(len(self.tenants) + 1)  # last column: all tenants
        self._area = np.zeros(len(self.tenants) + 1)
        self._times: list[float] = []
        self._rows: list[np.ndarray] = []
        self._last = 0.0
        self.start_time: float | None = None

    def _col(self, tenant: str) -> int:
        column = self._column.get(tenant)
        if column is None:
            # Tenants first seen in the trace get a column on the fly.
            column = len(self.tenants)
            self.tenants.append(tenant)
            self._column[tenant] = column
            self._current = np.insert(self._current, column, 0.0)
            self._area = np.insert(self._area, column, 0.0)
            self._rows = [np.insert(row, column, 0.0) for row in self._rows]
        return column

    def advance(self, now: float) -> None:
        if self.start_time is None:
            self.start_time = now
            self._last = now
        if now > self._last:
            self._area += self._current * (now - self._last)
            self._last = now

    def start(self, tenant: str, gpu_milli: int) -> None:
        self._change(tenant, gpu_milli)

    def stop(self, tenant: str, gpu_milli: int) -> None:
        self._change(tenant, -gpu_milli)

    def _change(self, tenant: str, delta: int) -> None:
        column = self._col(tenant)
        self._current[column] += delta
        self._current[-1] += delta
        if self._times and self._times[-1] == self._last:
            self._rows[-1] = self._current.copy()
        else:
            self._times.append(self._last)
            self._rows.append(self._current.copy())

    @property
    def duration(self) -> float:
        return self._last - (self.start_time or 0.0)

    def mean_share(self, tenant: str | None = None) -> float:
        """Time-weighted mean share of cluster GPUs held (by a tenant, or by all)."""
        if self.duration <= 0:
            return 0.0
        column = -1 if tenant is None else self._column.get(tenant)
        if column is None:
            return 0.0
        return float(self._area[column] / self.duration / self.capacity)

    def mean_share_until(self, end: float) -> float:
        """Time-weighted mean share of cluster GPUs held by all tenants from the start to ``end``.

        A run's tail (the last long jobs finishing on an idle cluster) can
        dwarf its busy part; this measures only the window that matters.
        """
        start = self.start_time or 0.0
        end = min(end, self._last)
        if end <= start or not self._times:
            return 0.0
        times = np.append(np.array(self._times), self._last)
        totals = np.array([row[-1] for row in self._rows])
        spans = np.clip(np.minimum(times[1:], end) - times[:-1], 0.0, None)
        return float((totals * spans).sum() / (end - start) / self.capacity)

    def sampled(self, points: int = 400) -> dict[str, object]:
        """Shares at ``points`` evenly spaced instants (step function, sample-and-hold)."""
        if not self._times:
            return {"time_s": [], "gpu_allocation": [], "tenant_share": {}}
        start = self.start_time or 0.0
        grid = np.linspace(start, self._last, points)
        times = np.array(self._times)
        rows = np.array(self._rows) / self.capacity
        index = np.searchsorted(times, grid, side="right") - 1
        values = np.where(index[:, None] >= 0, rows[np.maximum(index, 0)], 0.0)
        return {
            "time_s": [round(float(t), 3) for t in grid],
            "gpu_allocation": [round(float(v), 5) for v in values[:, -1]],
            "tenant_share": {
                tenant: [round(float(v), 5) for v in values[:, i]]
                for i, tenant in enumerate(self.tenants)
            },
        }
