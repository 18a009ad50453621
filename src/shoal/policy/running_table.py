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

import math
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from shoal.policy.snapshot import Running

__all__ = ["NAME_WORDS", "RunningTable", "name_key"]

NAME_WORDS = 4
"""Words of ``RunningTable.name_key``: names equal in their first 32 bytes tie there."""

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class RunningTable:
    """Columns of running workloads; rows are reused after removal.

    ``alive`` marks the rows in use.  Pods are padded to the widest workload
    seen (node -1 marks padding), GPU entries likewise (one per GPU a pod uses).
    """

    def __init__(self, runs: Iterable[Running] = (), capacity: int = 64) -> None:
        self.tenants: list[str] = []
        self.tenant_code: dict[str, int] = {}
        self.slot: dict[str, int] = {}
        self.runs: list[Running | None] = []
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
        self.name_key: npt.NDArray[np.uint64] = np.zeros((0, NAME_WORDS), dtype=np.uint64)
        """The name's first bytes as big-endian words: they sort as the names do."""
        self.pod_node: Ints = np.zeros((0, 1), dtype=np.int64)
        self.pod_cpu: Ints = np.zeros((0, 1), dtype=np.int64)
        self.pod_memory: Ints = np.zeros((0, 1), dtype=np.int64)
        self.gpu_node: Ints = np.zeros((0, 1), dtype=np.int64)
        self.gpu_slot: Ints = np.zeros((0, 1), dtype=np.int64)
        self.gpu_milli: Ints = np.zeros((0, 1), dtype=np.int64)
        self.gpu_memory: Ints = np.zeros((0, 1), dtype=np.int64)
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
        self.runs[slot] = run
        workload = run.workload
        self.alive[slot] = True
        self.preemptible[slot] = workload.preemptible
        self.tenant[slot] = self.code(workload.tenant)
        self.priority[slot] = workload.priority
        self.start[slot] = run.start_time
        self.checkpoint[slot] = math.nan if run.last_checkpoint is None else run.last_checkpoint
        self.interval[slot] = run.checkpoint_interval or 0.0
        self.weight[slot] = run.weight
        self.name_key[slot] = name_key(name)
        for resource, column in self.usage.items():
            column[slot] = run.usage.get(resource, 0)
        for resource, amount in run.usage.items():
            if resource not in self.usage:
                column = self.usage[resource] = np.zeros(len(self.alive), dtype=np.int64)
                column[slot] = amount
        bindings = run.bindings
        gpus = sum(len(b.gpus) for b in bindings)
        if len(bindings) > self.pod_node.shape[1] or gpus > self.gpu_node.shape[1]:
            self._widen(len(bindings), gpus)
        self.pod_node[slot] = -1
        self.pod_cpu[slot] = self.pod_memory[slot] = 0
        self.gpu_node[slot] = -1
        self.gpu_slot[slot] = self.gpu_milli[slot] = self.gpu_memory[slot] = 0
        at = 0
        gpu_total = cpu_total = 0
        for i, binding in enumerate(bindings):
            shape = binding.shape
            self.pod_node[slot, i] = binding.node
            self.pod_cpu[slot, i] = shape.cpu
            self.pod_memory[slot, i] = shape.memory
            gpu_total += shape.gpu_total_milli
            cpu_total += shape.cpu
            for gpu in binding.gpus:
                self.gpu_node[slot, at] = binding.node
                self.gpu_slot[slot, at] = gpu
                self.gpu_milli[slot, at] = shape.gpu_milli
                self.gpu_memory[slot, at] = shape.gpu_memory
                at += 1
        self.gpu_total[slot] = gpu_total
        self.cpu_total[slot] = cpu_total

    def remove(self, name: str) -> None:
        """Forget the workload ``name`` (nothing happens if it has no row)."""
        slot = self.slot.pop(name, None)
        if slot is None:
            return
        self.runs[slot] = None
        self.alive[slot] = False
        self.preemptible[slot] = False
        self._free.append(slot)

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
        for attr in ("alive", "preemptible", "tenant", "priority", "start", "checkpoint",
                     "interval", "weight", "gpu_total", "cpu_total"):
            column = getattr(self, attr)
            setattr(self, attr, np.concatenate([column, np.zeros(more, dtype=column.dtype)]))
        for resource, column in self.usage.items():
            self.usage[resource] = np.concatenate([column, np.zeros(more, dtype=np.int64)])
        self.name_key = np.concatenate(
            [self.name_key, np.zeros((more, NAME_WORDS), dtype=np.uint64)]
        )
        for attr in ("pod_node", "pod_cpu", "pod_memory",
                     "gpu_node", "gpu_slot", "gpu_milli", "gpu_memory"):
            block = getattr(self, attr)
            fill = -1 if attr.endswith("_node") else 0
            extra = np.full((more, block.shape[1]), fill, dtype=np.int64)
            setattr(self, attr, np.concatenate([block, extra]))

    def _widen(self, pods: int, gpus: int) -> None:
        for attrs, width in (
            (("pod_node", "pod_cpu", "pod_memory"), pods),
            (("gpu_node", "gpu_slot", "gpu_milli", "gpu_memory"), gpus),
        ):
            for attr in attrs:
                block = getattr(self, attr)
                if width <= block.shape[1]:
                    continue
                fill = -1 if attr.endswith("_node") else 0
                extra = np.full((block.shape[0], width - block.shape[1]), fill, dtype=np.int64)
                setattr(self, attr, np.concatenate([block, extra], axis=1))


def name_key(name: str) -> npt.NDArray[np.uint64]:
    """Words that order as ``name`` does among names that differ in their first 32 bytes.

    UTF-8 keeps code point order byte by byte, and names hold no NUL, so
    zero padding sorts a name before any longer one it begins.
    """
    raw = name.encode()[: 8 * NAME_WORDS].ljust(8 * NAME_WORDS, b"\0")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)
