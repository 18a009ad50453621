"""Cluster state as numpy arrays, one row per node, so scheduling is vectorised.

Policies only read a ``ClusterState``; runtimes apply decisions to it with
``bind``/``unbind``.  Every change stamps the node with a number from a
counter shared by all copies of the state, so a cache keyed on
``(node, stamp)`` can never confuse two different contents.

Tentative changes need no copy: inside ``with state.trial():`` every node
row is saved before its first change and put back, stamp included, when the
block ends.  A trial costs what it touches, not the size of the cluster, so
a scheduling cycle can try gangs and victim sets on the state it was given
and leave it exactly as it was.  Trials nest; a stamp given out inside a trial
is never given out again, so caches keyed on stamps stay sound.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shoal.domain.nodes import Node
from shoal.domain.resources import MILLI
from shoal.domain.workload import PodShape

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Binding:
    """One pod bound to one node, with the GPUs it uses there."""

    node: int
    gpus: tuple[int, ...]
    shape: PodShape


_MUTABLE = (
    "cpu_free", "mem_free", "gpu_free", "gpu_mem_free", "gpu_left", "free_share", "whole_free", "max_free", "kinds", "up",
    "stamp",
)
# What a copy shares with its original: capacities (scorers key their caches on
# them, so a copy counts as the same cluster) and the stamp counter (so stamps
# stay unique across copies).  With _MUTABLE, ``releases`` and ``_journals``,
# every attribute (a test holds the list whole).
_SHARED = (
    "nodes", "names", "index", "max_gpus", "cpu_cap", "mem_cap", "gpu_count", "gpu_memory",
    "models", "model_id", "gpu_exists", "_counter", "total_gpu_milli", "cpu_inv", "mem_inv",
    "gpu_inv", "dims_inv", "uniform",
)


class ClusterState:
    """Capacities and free resources of every node (CPU milli, memory MiB, GPU milli)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self.names = [node.name for node in nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        n = len(nodes)
        self.max_gpus = max((node.gpu_count for node in nodes), default=0) or 1
        self.cpu_cap = np.array([node.cpu for node in nodes], dtype=np.int64)
        self.mem_cap = np.array([node.memory for node in nodes], dtype=np.int64)
        self.gpu_count = np.array([node.gpu_count for node in nodes], dtype=np.int64)
        self.gpu_memory = np.array([node.gpu_memory for node in nodes], dtype=np.int64)
        self.models: list[str] = sorted({node.gpu_model for node in nodes if node.gpu_model})
        model_ids = {model: i for i, model in enumerate(self.models)}
        self.model_id = np.array(
            [model_ids.get(node.gpu_model, -1) for node in nodes], dtype=np.int64
        )
        self.gpu_exists = np.arange(self.max_gpus)[None, :] < self.gpu_count[:, None]
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        # Free milli-GPU per GPU slot; slots beyond a node's GPU count stay 0,
        # which no request can use, so no mask is needed on the hot path.
        self.gpu_free = np.where(self.gpu_exists, MILLI, 0).astype(np.int64)
        self.gpu_mem_free = np.where(self.gpu_exists, self.gpu_memory[:, None], 0).astype(np.int64)
        self.gpu_left = self.gpu_count * MILLI
        self.whole_free = self.gpu_count.copy()
        self.max_free = np.where(self.gpu_count > 0, MILLI, 0).astype(np.int64)
        # GPU pods per node by kind: column 0 counts GPU-sharing pods, column k
        # pods of k whole GPUs; some scorers cluster pods of one kind.
        self.kinds = np.zeros((n, self.max_gpus + 1), dtype=np.int64)
        self.up: BoolArray = np.ones(n, dtype=np.bool_)
        self.stamp: IntArray = np.zeros(n, dtype=np.int64)
        self._counter: Iterator[int] = itertools.count(1)
        self.total_gpu_milli = int(self.gpu_count.sum()) * MILLI
        # Reciprocal capacities, so that scoring multiplies instead of divides.
        self.cpu_inv = 1.0 / np.maximum(self.cpu_cap, 1)
        self.mem_inv = 1.0 / np.maximum(self.mem_cap, 1)
        self.gpu_inv = np.where(self.gpu_count > 0, 1.0 / np.maximum(self.gpu_count * MILLI, 1), 0.0)
        self.dims_inv = 1.0 / (2.0 + (self.gpu_count > 0))
        # Mean free share over CPU, memory and GPU: kept up to date per node
        # because least/most-allocated scoring reads it for every node.
        self.free_share = np.ones(n)
        # Changes that gave room back (an unbind, a node coming up); undone by trials.
        self.releases = 0
        # Open trials, innermost last: each maps node -> its rows before the trial.
        self._journals: list[dict[int, tuple[object, ...]]] = []
        self.uniform = n > 0 and bool(
            (self.cpu_cap == self.cpu_cap[0]).all()
            and (self.mem_cap == self.mem_cap[0]).all()
            and (self.gpu_count == self.gpu_count[0]).all()
        )

    def __len__(self) -> int:
        return len(self.names)

    def copy(self) -> ClusterState:
        """An independent copy for tentative decisions."""
        # Attribute by attribute, not by copying __dict__: a compiled build
        # (SHOAL_COMPILE=1) has none.
        clone = ClusterState(())
        for attr in _SHARED:
            setattr(clone, attr, getattr(self, attr))
        for attr in _MUTABLE:
            setattr(clone, attr, getattr(self, attr).copy())
        clone.releases = self.releases
        return clone

    @contextmanager
    def trial(self) -> Iterator[None]:
        """Undo every change made inside the block when it ends (exceptions too)."""
        journal: dict[int, tuple[object, ...]] = {}
        self._journals.append(journal)
        releases = self.releases
        try:
            yield
        finally:
            self.releases = releases
            popped = self._journals.pop()
            assert popped is journal, "trials must end in the order they began"
            for node, rows in journal.items():
                for attr, row in zip(_MUTABLE, rows, strict=True):
                    getattr(self, attr)[node] = row

    def _save(self, node: int) -> None:
        rows: tuple[object, ...] | None = None
        for journal in self._journals:
            if node not in journal:
                if rows is None:
                    rows = tuple(_row(getattr(self, attr), node) for attr in _MUTABLE)
                journal[node] = rows

    # -- reading -------------------------------------------------------------

    @property
    def allocated_gpu_milli(self) -> int:
        """GPU milli in use on nodes that are up."""
        up = self.up
        return int(self.gpu_count[up].sum()) * MILLI - int(self.gpu_free[up].sum())

    @property
    def lineage(self) -> object:
        """What this state and all its copies share: stamps are unique within it."""
        return self._counter

    def version(self) -> int:
        """The newest stamp of any node: it grows with every change that a trial did not undo."""
        return int(self.stamp.max()) if len(self.stamp) else 0

    def label_values(self, key: str) -> list[str | None]:
        return [node.labels.get(key) for node in self.nodes]

    # -- changing ------------------------------------------------------------

    def bind(self, binding: Binding) -> None:
        node, shape = binding.node, binding.shape
        if self._journals:
            self._save(node)
        self.cpu_free[node] -= shape.cpu
        self.mem_free[node] -= shape.memory
        for gpu in binding.gpus:
            self.gpu_free[node, gpu] -= shape.gpu_milli
            self.gpu_mem_free[node, gpu] -= shape.gpu_memory
        if shape.gpu_count:
            self.kinds[node, pod_kind(shape)] += 1
        self._refresh(node)

    def unbind(self, binding: Binding) -> None:
        node, shape = binding.node, binding.shape
        if self._journals:
            self._save(node)
        self.releases += 1
        self.cpu_free[node] += shape.cpu
        self.mem_free[node] += shape.memory
        for gpu in binding.gpus:
            self.gpu_free[node, gpu] += shape.gpu_milli
            self.gpu_mem_free[node, gpu] += shape.gpu_memory
        if shape.gpu_count:
            self.kinds[node, pod_kind(shape)] -= 1
        self._refresh(node)

    def set_up(self, node: int, up: bool) -> None:
        if self._journals:
            self._save(node)
        self.releases += up
        self.up[node] = up
        self._refresh(node)

    def _refresh(self, node: int) -> None:
        # A node has a handful of GPUs: plain Python beats numpy's per-call cost.
        row = self.gpu_free[node].tolist()
        self.gpu_left[node] = sum(row)
        self.free_share[node] = self.dims_inv[node] * (
            self.cpu_free[node] * self.cpu_inv[node]
            + self.mem_free[node] * self.mem_inv[node]
            + self.gpu_left[node] * self.gpu_inv[node]
        )
        self.whole_free[node] = row.count(MILLI)
        self.max_free[node] = max(row, default=0)
        self.stamp[node] = next(self._counter)


def _row(array: np.ndarray, node: int) -> object:
    """A node's value in ``array``: a copy of its row, or the scalar."""
    value = array[node]
    return value.copy() if isinstance(value, np.ndarray) else value


def pod_kind(shape: PodShape) -> int:
    """Column of ``ClusterState.kinds`` for a GPU pod: 0 shares a GPU, k uses k GPUs."""
    return 0 if shape.gpu_milli < MILLI else shape.gpu_count
