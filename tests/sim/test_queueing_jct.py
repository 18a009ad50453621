"""The docs' claim about LAS on the public Pollux workloads, held by a replay (no timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "queueing_jct.py"


def load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("queueing_jct", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_las_is_within_ten_percent_of_published_tiresias_and_halves_fifo() -> None:
    bench = load_bench()
    means = {
        order: sum(bench.mean_jct(bench.load(n, 0.0), order) for n in range(1, 9)) / 8
        for order in ("fifo", "las", "srtf")
    }
    published = bench.PUBLISHED_TIRESIAS_MEAN_S
    assert abs(means["las"] / published - 1) < 0.10, means
    assert means["las"] < 0.6 * means["fifo"], means
    assert means["srtf"] < means["las"], means  # knowing durations helps
