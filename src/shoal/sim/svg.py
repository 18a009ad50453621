"""Tiny inline-SVG line charts for the simulation HTML report.

The report must open offline, from a file, with no JavaScript, so charts are
plain SVG strings built here: a plot area with axes, "nice" ticks, axis labels,
a legend in a right-hand gutter (so it never covers the data) and one polyline
per series.  Every piece of text goes through :func:`html.escape` because series
names come from user-written scenario files.
"""

from __future__ import annotations

import html
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Colour-blind-friendly palette (Okabe-Ito, minus yellow, which vanishes on white).
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#E69F00",
    "#000000",
    "#999999",
)

#: Upper bound on points per polyline; more than this only bloats the file.
MAX_POINTS = 600


def series_style(index: int) -> tuple[str, bool]:
    """(colour, dashed) for the ``index``-th series.

    Past the palette, colours repeat with a dashed stroke so series 0 and 8 stay
    distinguishable (clusters with a dozen tenants are common).
    """
    return PALETTE[index % len(PALETTE)], (index // len(PALETTE)) % 2 == 1


#: Styles for the class names used below; the embedding page includes this once
#: so each chart does not repeat a <style> block.
CHART_CSS = """
svg.chart { max-width: 100%; height: auto; display: block; margin: 8px 0; }
svg .chart-title { font-size: 15px; font-weight: 600; fill: #1f2328; }
svg .plot-bg { fill: #fff; stroke: none; }
svg .grid { stroke: #eaeef2; stroke-width: 1; }
svg .axis { stroke: #57606a; stroke-width: 1.2; fill: none; }
svg .tick { font-size: 11px; fill: #57606a; }
svg .axis-label { font-size: 12px; fill: #1f2328; }
svg .legend { font-size: 12px; fill: #1f2328; }
"""

Formatter = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    """One line on a chart; ``color=None`` takes the next palette colour."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None
    dashed: bool = False


def downsample(
    xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """Reduce a series to at most ``max_points`` points, keeping its shape.

    Keeps the first and last point and, for each of ``(max_points - 2) // 2``
    evenly sized buckets in between, the minimum and the maximum (in x order).
    Min/max rather than plain striding so short spikes - a preemption storm, a
    fragmentation peak - survive the reduction.
    """
    n = min(len(xs), len(ys))
    if n <= max_points:
        return [float(x) for x in xs[:n]], [float(y) for y in ys[:n]]
    buckets = max(1, (max_points - 2) // 2)
    inner = n - 2
    keep = [0]
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        idx = range(lo, hi)
        i_min = min(idx, key=lambda i: ys[i])
        i_max = max(idx, key=lambda i: ys[i])
        keep.extend(sorted({i_min, i_max}))
    keep.append(n - 1)
    return [float(xs[i]) for i in keep], [float(ys[i]) for i in keep]


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks: list[float] = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 10))
    return ticks


def default_format(value: float) -> str:
    """Compact tick label: ``1500`` -> ``1.5k``, ``0.25`` -> ``0.25``."""
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:.6g}"


def _finite(s: Series) -> tuple[list[float], list[float]]:
    # Metrics may contain None/NaN (e.g. an empty window); drop those points
    # rather than letting one bad value wreck the axis range.
    pts = [
        (float(x), float(y))
        for x, y in zip(s.xs, s.ys, strict=False)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _range(
    values: list[float], fixed: tuple[float, float] | None, *, snap: bool
) -> tuple[float, float]:
    """Axis span: ``fixed`` if given, else the data span, snapped out to round ticks if ``snap``.

    x is left tight (lines should reach both edges: a 0-83 h run on a 0-100 h
    axis wastes a sixth of the width); y snaps so the top gridline is labelled.
    """
    if fixed is not None:
        return fixed
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi <= lo:  # a flat line still needs a non-zero span to be drawn
        lo, hi = lo - 1.0, hi + 1.0
    if not snap:
        return lo, hi
    ticks = nice_ticks(lo, hi)
    return ticks[0], ticks[-1]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 900,
    height: int = 380,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    y_from_zero: bool = False,
    x_format: Formatter = default_format,
    y_format: Formatter = default_format,
    max_points: int = MAX_POINTS,
    chart_id: str | None = None,
) -> str:
    """Return an ``<svg>`` element drawing ``series`` as lines on shared axes.

    ``y_from_zero`` anchors the y axis at 0 so shares and utilisations are not
    visually exaggerated.  ``chart_id`` names the clip path; ids share one namespace across the whole
    HTML page, so pass distinct ids when two charts could otherwise coincide.
    """
    esc = html.escape
    data = [(s, *downsample(*_finite(s), max_points=max_points)) for s in series]
    data = [d for d in data if d[1]]
    x0, x1 = _range([x for d in data for x in d[1]], x_range, snap=False)
    ys = [y for d in data for y in d[2]] + ([0.0] if y_from_zero else [])
    y0, y1 = _range(ys, y_range, snap=True)
    # Margins: left for y tick labels + axis title, right gutter for the legend.
    left, right, top, bottom = 64, 170, 36, 52
    height = max(height, top + 20 * len(data) + bottom)  # many tenants: grow, don't clip legend
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    # Deterministic id (not hash(), which is salted per process) keeps output reproducible.
    key = repr((title, x_label, y_label, [s.name for s in series])).encode()
    clip = "clip-" + re.sub(r"[^A-Za-z0-9_-]", "-", chart_id or format(zlib.crc32(key), "x"))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f'<defs><clipPath id="{clip}"><rect x="{left}" y="{top}" width="{pw}" '
        f'height="{ph}"/></clipPath></defs>',
        f'<text x="{left}" y="22" class="chart-title">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot-bg"/>',
    ]
    for t in nice_ticks(x0, x1):
        if x0 <= t <= x1:
            x = sx(t)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" class="grid"/>')
            out.append(
                f'<text x="{x:.1f}" y="{top + ph + 16}" class="tick" '
                f'text-anchor="middle">{esc(x_format(t))}</text>'
            )
    for t in nice_ticks(y0, y1):
        if y0 <= t <= y1:
            y = sy(t)
            out.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" class="grid"/>'
            )
            out.append(
                f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" '
                f'text-anchor="end">{esc(y_format(t))}</text>'
            )
    out.append(f'<path d="M{left},{top} V{top + ph} H{left + pw}" class="axis"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 10}" class="axis-label" '
        f'text-anchor="middle">{esc(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(16,{top + ph / 2:.1f}) rotate(-90)" '
        f'class="axis-label" text-anchor="middle">{esc(y_label)}</text>'
    )

    lx, ly = left + pw + 16, top + 8
    auto = 0  # style index, advanced only by series without an explicit colour
    for s, xs, ys in data:
        color, dashed = s.color, s.dashed
        if color is None:
            color, auto_dash = series_style(auto)
            dashed, auto = dashed or auto_dash, auto + 1
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"'
            f'{dash} clip-path="url(#{clip})"><title>{esc(s.name)}</title></polyline>'
        )
        # Long names would run off the gutter; the full name stays in the tooltip.
        label = s.name if len(s.name) <= 20 else s.name[:19] + "\u2026"
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{color}" '
            f'stroke-width="3"{dash}/>'
        )
        out.append(
            f'<text x="{lx + 28}" y="{ly + 4}" class="legend">{esc(label)}'
            f"<title>{esc(s.name)}</title></text>"
        )
        ly += 20
    out.append("</svg>")
    return "\n".join(out)
