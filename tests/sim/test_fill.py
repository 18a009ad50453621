"""Fill mode on the real openb trace: a golden slice and the paper's headline figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoal.domain.nodes import GpuSpec, NodePoolSpec, expand_pool
from shoal.domain.workload import PodShape
from shoal.sim.fill import inflate, run_fill
from shoal.sim.traces import openb

pytestmark = pytest.mark.trace


def _trace(openb_dir: Path) -> tuple[list, list[PodShape]]:
    trace = openb.load(openb_dir)
    return trace.nodes, [w.pods[0] for w in trace.pods]


def test_trace_matches_its_documented_shape(openb_dir: Path) -> None:
    nodes, shapes = _trace(openb_dir)
    assert len(nodes) == 1213 and sum(n.gpu_count for n in nodes) == 6212
    assert len(shapes) == 8152
    assert sum(1 for s in shapes if s.is_fractional) == 3078


def test_inflation_reaches_the_target_and_is_seeded() -> None:
    shapes = [PodShape(gpu_count=1, gpu_milli=1000), PodShape(gpu_count=1, gpu_milli=500)]
    first = inflate(shapes, capacity_milli=100_000, target=1.3, seed=7)
    again = inflate(shapes, capacity_milli=100_000, target=1.3, seed=7)
    other = inflate(shapes, capacity_milli=100_000, target=1.3, seed=8)
    total = sum(s.gpu_total_milli for s in first)
    assert first == again and first != other
    assert 129_000 <= total <= 130_000


@pytest.mark.parametrize(
    ("policy", "golden"), [("fgd", 0.9738134430727022), ("fgd-exact", 0.9784910836762689)]
)
def test_golden_slice(openb_dir: Path, policy: str, golden: float) -> None:
    nodes, shapes = _trace(openb_dir)
    # 160 nodes and 600 pods keep this fast; the figure is pinned so that any
    # change in placement behaviour shows up here.
    run = run_fill(nodes[:80] + nodes[-80:], shapes[:600], policy, seed=42)
    assert run.arrived[-1] == pytest.approx(1.3, abs=0.01)
    assert np.all(np.diff(run.allocated) >= 0) and np.all(run.allocated <= run.arrived + 1e-9)
    assert run.allocated_at(1.3) == pytest.approx(golden, abs=1e-6)


@pytest.mark.slow
def test_fgd_figure_over_the_documented_seeds(openb_dir: Path) -> None:
    """docs/benchmarks.md: FGD allocates 95.41 % at 130 % arrived, mean of seeds 42-51."""
    nodes, shapes = _trace(openb_dir)
    runs = [run_fill(nodes, shapes, "fgd", seed=seed) for seed in range(42, 52)]
    # Pinned to the last digit: placement decisions must not change, and
    # each seed's figure is a count of placed milli-GPU over capacity.
    assert np.mean([run.allocated_at(1.3) for run in runs]) == pytest.approx(
        0.9540548145986613, abs=1e-12
    )
    assert runs[0].allocated_at(1.3) == pytest.approx(0.9556056300568329, abs=1e-12)


@pytest.mark.slow
def test_fgd_beats_best_fit_like_the_paper(openb_dir: Path) -> None:
    nodes, shapes = _trace(openb_dir)
    fgd = run_fill(nodes, shapes, "fgd", seed=42).allocated_at(1.3)
    best_fit = run_fill(nodes, shapes, "best-fit", seed=42).allocated_at(1.3)
    # Paper (mean of seeds 42-51): FGD 95.39 %, best-fit 93.08 %.
    assert fgd == pytest.approx(0.9539, abs=0.01)
    assert best_fit == pytest.approx(0.9308, abs=0.01)
    assert fgd > best_fit


def test_fill_on_a_synthetic_pool_allocates_everything_below_capacity() -> None:
    nodes = expand_pool("gpu", NodePoolSpec(count=4, cpu=64, memory="256Gi",
                                            gpus=GpuSpec(model="A100", count=8)))
    shapes = [PodShape(cpu=1000, gpu_count=1, gpu_milli=1000)] * 10
    run = run_fill(nodes, shapes, "best-fit", seed=1, target=0.5)
    assert run.failed == 0 and run.allocated[-1] == pytest.approx(0.5)
