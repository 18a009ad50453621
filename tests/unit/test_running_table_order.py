"""``RunningTable.label``: rows' labels sort as (priority, latest start first, name).

Victim searches rank candidates by lost work and then by these labels, so
the labels must order rows exactly as those keys do, whatever the order rows
come and go in, and after the table numbers them all again.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.policy.running_table import RunningTable
from shoal.policy.snapshot import Running
from tests.unit.builders import workload


def _run(name: str, priority: int = 0, start: float = 0.0) -> Running:
    return Running(workload=workload(name, "t", 0, priority=priority), bindings=(),
                   usage={}, start_time=start)


def _by_label(table: RunningTable) -> list[str]:
    rows = sorted(table.slot.values(), key=lambda slot: float(table.label[slot]))
    assert len({float(table.label[slot]) for slot in rows}) == len(rows)  # all distinct
    return [table.run(slot).name for slot in rows]


def _by_key(table: RunningTable) -> list[str]:
    runs = sorted(table, key=lambda r: (r.workload.priority, -r.start_time, r.name))
    return [r.name for r in runs]


def test_labels_stay_in_order_when_every_row_goes_into_the_same_gap() -> None:
    # Each name sorts just after the one before it and before "b": every new
    # row halves the same gap, until no number is left in it and the table
    # numbers all rows again (more than once in 200 rows).
    table = RunningTable()
    table.add(_run("a"))
    table.add(_run("b"))
    name = "az"
    for _ in range(200):
        table.add(_run(name))
        name += "z"
    assert _by_label(table) == _by_key(table)
    assert _by_key(table)[-1] == "b"


def test_a_row_replaced_or_removed_keeps_the_others_in_order() -> None:
    table = RunningTable()
    for i in range(10):
        table.add(_run(f"j{i}", priority=i % 3, start=float(i % 4)))
    table.add(_run("j3", priority=2, start=9.0))  # replaced: a new place
    table.remove("j5")
    table.remove("j0")
    table.add(_run("j0", priority=1, start=0.5))
    assert _by_label(table) == _by_key(table)
    assert "j5" not in _by_label(table)


@settings(max_examples=200, deadline=None)
@given(st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "remove"]),
        st.sampled_from([f"n{i}" for i in range(12)]),
        st.sampled_from([0, 100]),
        st.sampled_from([0.0, 60.0, 120.0]),
    ),
    max_size=60,
))
def test_labels_sort_as_the_keys_whatever_comes_and_goes(
    steps: list[tuple[str, str, int, float]],
) -> None:
    table = RunningTable(capacity=1)
    for action, name, priority, start in steps:
        if action == "add":
            table.add(_run(name, priority, start))
        else:
            table.remove(name)
    assert _by_label(table) == _by_key(table)
    alive = np.flatnonzero(table.alive[: table.size])
    assert sorted(alive.tolist()) == sorted(table.slot.values())
