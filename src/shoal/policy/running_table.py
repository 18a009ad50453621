"""Running workloads as columns, so a victim search weighs thousands at once.

A victim search looks at every running workload its preemptor may evict: at
a thousand nodes that is a thousand or more, for every preemptor at the head
of a queue, and most searches fail.  Ranking them one Python object at a
time dominated contended replays, so the search reads this table instead:
one row per running workload, with its owner, priority, progress, quota
usage and where its pods hold room, as numpy columns.

A runtime that keeps one across cycles (the simulator) adds a row when a
workload starts, replaces it when it changes (a victim stops being
preemptible) and removes it when it stops; ``Snapshot.running_table`` passes
it in.  Otherwise the cycle builds one from ``Snapshot.running`` the first
time it searches.  A cycle only reads the table.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from shoal.policy.snapshot import Running

__all__ = ["Entries", "RunningTable"]

_STEP = float(1 << 20)
"""Gap between neighbouring order labels after a relabelling (see ``RunningTable.label``)."""

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class RunningTable:
    """Columns of running workloads; rows are reused after removal.

    ``alive`` marks the rows in use.  Where each workload holds room is kept
    flat, one entry per pod (``pods``) and one per GPU a pod uses (``gpus``),
    each naming its row, so the room held by any set of rows is a few sums
    over all entries (``Entries``).
    """

    def __init__(self, runs: Iterable[Running] = (), capacity: int = 64) -> None:
        self.tenants: list[str] = []
        self.tenant_code: dict[str, int] = {}
        self.slot: dict[str, int] = {}
        self.runs: list[Running | None] = []
        self.attempts: list[tuple[str, int] | None] = []
        """Per row, its workload's name and ``Running.attempt`` (how releases name it)."""
        self.levels: dict[tuple[int, int], int] = {}
        """Rows in use per (tenant code, priority)."""
        self._free: list[int] = []
        self._size = 0
        self.alive: Bools = np.zeros(0, dtype=np.bool_)
        self.preemptible: Bools = np.zeros(0, dtype=np.bool_)
        self.tenant: Ints = np.zeros(0, dtype=np.int64)
        self.priority: Ints = np.zeros(0, dtype=np.int64)
        self.start: Floats = np.zeros(0)
        self.checkpoint: Floats = np.zeros(0)
        """Last reported checkpoint; NaN when none was."""
        self.interval: Floats = np.zeros(0)
        """Checkpoint interval; 0 when it does not checkpoint by interval."""
        self.weight: Floats = np.zeros(0)
        self.gpu_total: Ints = np.zeros(0, dtype=np.int64)
        self.cpu_total: Ints = np.zeros(0, dtype=np.int64)
        self.usage: dict[str, Ints] = {}
        self.label: Floats = np.zeros(0)
        """Each row's place in the order of (priority, latest start first, name), as
        a number: victim searches rank by lost work, then by this.  Labels of
        rows in use are distinct and only ever compared, so a new row gets one
        between its neighbours' and the others keep theirs (all are numbered
        again, rarely, when two neighbours leave no number between them)."""
        self._order: list[tuple[int, float, str]] = []
        """The rows' (priority, -start, name), sorted."""
        self._order_slots: list[int] = []
        """The row of each entry of ``_order``."""
        self.pods = Entries(("node", "cpu", "memory"))
        """One entry per pod: its node, CPU and memory."""
        self.gpus = Entries(("node", "slot", "milli", "memory"))
        """One entry per GPU a pod uses: its node and slot, milli-GPU and GPU memory."""
        self._grow(capacity)
        for run in runs:
            self.add(run)

    def __len__(self) -> int:
        return len(self.slot)

    def __iter__(self) -> Iterator[Running]:
        for slot in self.slot.values():
            run = self.runs[slot]
            assert run is not None
            yield run

    def __contains__(self, name: object) -> bool:
        return name in self.slot

    @property
    def size(self) -> int:
        """Rows in use or freed so far: columns beyond it are all padding."""
        return self._size

    def code(self, tenant: str) -> int:
        code = self.tenant_code.get(tenant)
        if code is None:
            code = self.tenant_code[tenant] = len(self.tenants)
            self.tenants.append(tenant)
        return code

    def add(self, run: Running) -> None:
        """Add ``run``, or replace the row of the workload of the same name."""
        name = run.name
        slot = self.slot.get(name)
        if slot is None:
            if self._free:
                slot = self._free.pop()
            else:
                if self._size == len(self.alive):
                    self._grow(2 * len(self.alive))
                slot = self._size
                self._size += 1
            self.slot[name] = slot
        else:
            self._forget(slot)
        self.runs[slot] = run
        self.attempts[slot] = (name, run.attempt)
        workload = run.workload
        code = self.code(workload.tenant)
        level = (code, workload.priority)
        self.levels[level] = self.levels.get(level, 0) + 1
        self.alive[slot] = True
        self.preemptible[slot] = workload.preemptible
        self.tenant[slot] = code
        self.priority[slot] = workload.priority
        self.start[slot] = run.start_time
        self.checkpoint[slot] = math.nan if run.last_checkpoint is None else run.last_checkpoint
        self.interval[slot] = run.checkpoint_interval or 0.0
        self.weight[slot] = run.weight
        self._place(slot, (workload.priority, -run.start_time, name))
        for resource, column in self.usage.items():
            column[slot] = run.usage.get(resource, 0)
        for resource, amount in run.usage.items():
            if resource not in self.usage:
                column = self.usage[resource] = np.zeros(len(self.alive), dtype=np.int64)
                column[slot] = amount
        bindings = run.bindings
        self.pods.add(slot, [(b.node, b.shape.cpu, b.shape.memory) for b in bindings])
        self.gpus.add(slot, [
            (b.node, gpu, b.shape.gpu_milli, b.shape.gpu_memory) for b in bindings for gpu in b.gpus
        ])
        self.gpu_total[slot] = sum(b.shape.gpu_total_milli for b in bindings)
        self.cpu_total[slot] = sum(b.shape.cpu for b in bindings)

    def remove(self, name: str) -> None:
        """Forget the workload ``name`` (nothing happens if it has no row)."""
        slot = self.slot.pop(name, None)
        if slot is None:
            return
        self._forget(slot)
        self.runs[slot] = None
        self.attempts[slot] = None
        self.alive[slot] = False
        self.preemptible[slot] = False
        self._free.append(slot)

    def _forget(self, slot: int) -> None:
        """Take the row's workload out of ``levels`` and its room out of the entries."""
        level = (int(self.tenant[slot]), int(self.priority[slot]))
        left = self.levels[level] - 1
        if left:
            self.levels[level] = left
        else:
            del self.levels[level]
        self.pods.drop(slot)
        self.gpus.drop(slot)
        run = self.runs[slot]
        assert run is not None
        key = (run.workload.priority, -run.start_time, run.name)
        at = bisect.bisect_left(self._order, key)
        assert self._order[at] == key
        del self._order[at]
        del self._order_slots[at]

    def _place(self, slot: int, key: tuple[int, float, str]) -> None:
        """Give ``slot`` its label for ``key`` (see ``label``)."""
        order, slots = self._order, self._order_slots
        at = bisect.bisect_left(order, key)
        order.insert(at, key)
        slots.insert(at, slot)
        labels = self.label
        below = float(labels[slots[at - 1]]) if at else None
        above = float(labels[slots[at + 1]]) if at + 1 < len(slots) else None
        if below is None:
            labels[slot] = 0.0 if above is None else above - _STEP
        elif above is None:
            labels[slot] = below + _STEP
        else:
            middle = (below + above) / 2
            if below < middle < above:
                labels[slot] = middle
            else:  # no number left between them: number them all again
                labels[np.array(slots, dtype=np.int64)] = np.arange(len(slots)) * _STEP

    def run(self, slot: int) -> Running:
        run = self.runs[slot]
        assert run is not None
        return run

    def _grow(self, capacity: int) -> None:
        old = len(self.alive)
        more = capacity - old
        if more <= 0:
            return
        self.runs.extend([None] * more)
        self.attempts.extend([None] * more)
        for attr in ("alive", "preemptible", "tenant", "priority", "start", "checkpoint",
                     "interval", "weight", "gpu_total", "cpu_total", "label"):
            column = getattr(self, attr)
            setattr(self, attr, np.concatenate([column, np.zeros(more, dtype=column.dtype)]))
        for resource, column in self.usage.items():
            self.usage[resource] = np.concatenate([column, np.zeros(more, dtype=np.int64)])
        self.pods.grow_rows(capacity)
        self.gpus.grow_rows(capacity)


class Entries:
    """Integer columns of entries (pods, or GPUs of pods), each entry owned by a row.

    A row's entries are contiguous (``first[row]``, ``count[row]``).  Dropping a
    row zeroes all its entries but ``node`` (zero room, so sums over entries
    need not skip them) and marks them ``row`` -1; once dropped entries are
    the majority, the columns are compacted.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.used = 0
        self.dead = 0
        self.row: Ints = np.zeros(0, dtype=np.int64)
        self.columns: dict[str, Ints] = {name: np.zeros(0, dtype=np.int64) for name in names}
        self.first: Ints = np.zeros(0, dtype=np.int64)
        self.count: Ints = np.zeros(0, dtype=np.int64)

    def __getitem__(self, name: str) -> Ints:
        """Column ``name`` of the entries in use (a view)."""
        return self.columns[name][: self.used]

    def positions(self, rows: Ints) -> Ints:
        """Where the entries of ``rows`` are, row by row: reading them there costs
        what those rows hold, not what every row does."""
        counts = self.count[rows]
        ends = np.cumsum(counts)
        at: Ints = np.repeat(self.first[rows] - (ends - counts), counts) + np.arange(
            int(ends[-1]) if len(ends) else 0
        )
        return at

    @property
    def rows(self) -> Ints:
        """The row of each entry in use, -1 for a dropped one (a view)."""
        return self.row[: self.used]

    def grow_rows(self, capacity: int) -> None:
        more = capacity - len(self.first)
        if more > 0:
            self.first = np.concatenate([self.first, np.zeros(more, dtype=np.int64)])
            self.count = np.concatenate([self.count, np.zeros(more, dtype=np.int64)])

    def add(self, row: int, values: list[tuple[int, ...]]) -> None:
        """Give ``row`` the entries ``values`` (one tuple per entry, in ``names`` order)."""
        need = len(values)
        if self.used + need > len(self.row):
            self._compact_or_grow(need)
        at = self.used
        self.first[row], self.count[row] = at, need
        if need:
            self.row[at:at + need] = row
            for name, column in zip(self.names, zip(*values, strict=True), strict=True):
                self.columns[name][at:at + need] = column
            self.used += need

    def drop(self, row: int) -> None:
        at, need = int(self.first[row]), int(self.count[row])
        if need:
            self.row[at:at + need] = -1
            for name, column in self.columns.items():
                if name != "node":
                    column[at:at + need] = 0
            self.dead += need
        self.count[row] = 0

    def _compact_or_grow(self, need: int) -> None:
        if self.dead * 2 >= self.used and self.dead:
            keep = np.flatnonzero(self.row[: self.used] >= 0)
            moved = np.full(self.used, -1, dtype=np.int64)
            moved[keep] = np.arange(len(keep))
            owners = np.flatnonzero(self.count > 0)
            self.first[owners] = moved[self.first[owners]]
            size = len(self.row)
            self.row = _padded(self.row[keep], size, -1)
            for name in self.names:
                self.columns[name] = _padded(self.columns[name][keep], size, 0)
            self.used, self.dead = len(keep), 0
        if self.used + need > len(self.row):
            size = max(2 * len(self.row), self.used + need, 64)
            self.row = _padded(self.row[: self.used], size, -1)
            for name in self.names:
                self.columns[name] = _padded(self.columns[name][: self.used], size, 0)


def _padded(values: Ints, size: int, fill: int) -> Ints:
    out = np.full(size, fill, dtype=np.int64)
    out[: len(values)] = values
    return out
