"""Tests for the self-contained HTML simulation report and its SVG helper."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from shoal.sim.html_report import render_html, write_html
from shoal.sim.svg import MAX_POINTS, Series, downsample, line_chart, nice_ticks


def _fill_result(policy: str, efficiency: float, points: int = 130) -> dict[str, Any]:
    curve = [
        {"arrived_gpu_fraction": a, "allocated_gpu_fraction": min(a, efficiency)}
        for a in (1.2 * i / (points - 1) for i in range(points))
    ]
    return {
        "policy": policy,
        "mode": "fill",
        "wall_time_s": 2.9,
        "seeds": [42, 43],
        "metrics": {
            "fill_curve": curve,
            "unallocated_gpu_fraction_at_full": 1 - efficiency,
            "allocated_gpu_fraction_at_full": efficiency,
            "failed_pods": 120,
            "placed_pods": 10000,
        },
    }


def _replay_result(policy: str, n: int = 5000, timeline: bool = True) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "jct_mean_s": 100.0,
        "jct_p50_s": 80.0,
        "jct_p99_s": 900.0,
        "queue_delay_mean_s": 12.0,
        "gpu_allocation_mean": 0.71,
        "fragmentation_mean": 0.05,
        "preemptions": 3,
        "lost_gpu_hours": 1.5,
        "jobs_completed": 1000,
        "jobs_unfinished": 0,
        "per_tenant": [
            {
                "tenant": "team-alpha",
                "entitlement": 0.5,
                "share_mean": 0.45,
                "queue_delay_mean_s": 10.0,
                "jct_mean_s": 90.0,
            },
            {
                "tenant": "team-beta",
                "entitlement": 0.5,
                "share_mean": 0.26,
                "queue_delay_mean_s": 14.0,
                "jct_mean_s": 110.0,
            },
        ],
    }
    if timeline:
        t = [60.0 * i for i in range(n)]
        alloc = [0.6 + 0.3 * math.sin(i / 300) for i in range(n)]
        metrics["timeline"] = {
            "time_s": t,
            "gpu_allocation": alloc,
            "fragmentation": [0.05] * n,
            "tenant_share": {
                "team-alpha": [a * 0.6 for a in alloc],
                "team-beta": [a * 0.4 for a in alloc],
            },
        }
    return {
        "policy": policy,
        "mode": "replay",
        "wall_time_s": 1.2,
        "seeds": [42],
        "metrics": metrics,
    }


def _polyline_sizes(doc: str) -> list[int]:
    return [len(p.split()) for p in re.findall(r'<polyline points="([^"]*)"', doc)]


def test_fill_report_has_chart_table_and_diagonal() -> None:
    report = {
        "scenario": "alibaba-fill",
        "results": [_fill_result("fgd", 0.954), _fill_result("best-fit", 0.9)],
    }
    doc = render_html(report, "Fill study")
    assert doc.startswith("<!DOCTYPE html>")
    assert doc.count("<svg") == 1
    assert "Allocated GPU share vs arrived workload" in doc
    assert "alibaba-fill" in doc and "Fill study" in doc
    assert "fgd" in doc and "best-fit" in doc
    assert "95.4%" in doc and "4.6%" in doc
    assert 'stroke-dasharray="6 4"' in doc  # the y = x reference
    assert _polyline_sizes(doc) == [130, 130, 2]
    assert "<script" not in doc and "http://" not in doc.replace("http://www.w3.org/2000/svg", "")


def test_replay_report_charts_tenants_and_downsampling() -> None:
    report = {"scenario": "replay-week", "results": [_replay_result("fgd"), _replay_result("drf")]}
    doc = render_html(report, "Replay")
    # One allocation chart + one tenant chart per policy.
    assert doc.count("<svg") == 3
    assert "GPU allocation over time" in doc
    assert doc.count('class="chart-title">Tenant GPU share over time') == 2
    for name in ("fgd", "drf", "team-alpha", "team-beta"):
        assert name in doc
    assert "Entitlements:" in doc and "Lost GPU-hours" in doc
    sizes = _polyline_sizes(doc)
    assert len(sizes) == 6
    assert all(2 < s <= MAX_POINTS for s in sizes)
    # Long time range switches the axis to hours.
    assert "Time (hours)" in doc


def test_text_is_escaped() -> None:
    report = {
        "scenario": "<b>s</b>",
        "results": [_fill_result("<x>", 0.9), _replay_result("<x>", n=50)],
    }
    doc = render_html(report, "T & <title>")
    assert "&lt;x&gt;" in doc and "<x>" not in doc
    assert "&lt;b&gt;s&lt;/b&gt;" in doc
    assert "T &amp; &lt;title&gt;" in doc


def test_result_without_timeline_skips_timeline_charts() -> None:
    report = {"scenario": "s", "results": [_replay_result("fgd", timeline=False)]}
    doc = render_html(report, "No timeline")
    assert "<svg" not in doc
    assert "GPU allocation over time" not in doc
    assert "team-alpha" in doc  # per-tenant table still rendered


def test_sparse_and_empty_reports_do_not_crash() -> None:
    assert "No fill or replay results" in render_html({}, "empty")
    sparse = {
        "results": [
            {"policy": "p", "mode": "replay", "metrics": {}},
            {"policy": "p", "mode": "fill"},
        ]
    }
    doc = render_html(sparse, "sparse")
    assert "\u2014" in doc and "p #2" not in doc  # different modes, separate sections


def test_downsample_keeps_ends_and_extremes() -> None:
    n = 5000
    xs = list(range(n))
    ys = [0.0] * n
    ys[2345] = 99.0  # a one-sample spike must survive
    dx, dy = downsample(xs, ys)
    assert len(dx) <= MAX_POINTS
    assert dx[0] == 0 and dx[-1] == n - 1
    assert 99.0 in dy
    assert dx == sorted(dx)
    assert downsample([1, 2], [3, 4]) == ([1.0, 2.0], [3.0, 4.0])


def test_nice_ticks_and_chart_handle_degenerate_input() -> None:
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    svg = line_chart(
        [Series("flat", [0, 1], [5, 5]), Series("nan", [math.nan], [1])],
        title="t",
        x_label="x",
        y_label="y",
    )
    assert svg.count("<polyline") == 1


def test_write_html(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    write_html({"scenario": "s", "results": [_fill_result("fgd", 0.95)]}, out, "W")
    assert "<svg" in out.read_text(encoding="utf-8")
