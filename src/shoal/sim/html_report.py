"""Self-contained HTML report for ``shoal sim`` results.

Input is the JSON document printed by ``shoal sim --output json`` (a scenario
name plus one result per policy x mode).  Output is a single HTML file with
inline CSS and inline SVG charts (see :mod:`shoal.sim.svg`): no JavaScript, no
network, so it can be attached to a ticket or opened from an air-gapped box.

The renderer is deliberately forgiving: every metric is optional and a missing
one shows as a dash or drops its chart, because older result files and partial
runs should still produce a readable report rather than a traceback.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from shoal.sim.svg import CHART_CSS, Series, default_format, line_chart, series_style

__all__ = ["render_html", "write_html"]

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 24px 0 6px; }
.sub { color: #57606a; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; }
th, td { padding: 5px 12px; border-bottom: 1px solid #d8dee4; text-align: left; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
.ent { white-space: nowrap; }  /* keep "tenant 20%" together when wrapping */
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin: 0 4px 0 12px; vertical-align: baseline; }
footer { color: #57606a; font-size: 0.85em; margin-top: 32px; }
"""

_DASH = "\u2014"


def _esc(value: object) -> str:
    return html.escape(str(value))


def _is_num(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value: object) -> str:
    return f"{value * 100:.1f}%" if _is_num(value) else _DASH


def _scaled(values: Sequence[object], factor: float) -> list[float]:
    # NaN rather than dropping keeps x and y aligned; the chart skips NaN points.
    return [v * factor if _is_num(v) else math.nan for v in values]


def _num(value: object, decimals: int = 1) -> str:
    if not _is_num(value):
        return _DASH
    return f"{value:,.0f}" if isinstance(value, int) else f"{value:,.{decimals}f}"


def _secs(value: object) -> str:
    return _num(value, 2) + " s" if _is_num(value) else _DASH


# Table layouts as (header, metric key, formatter); data, not code, so adding a
# metric is one line.
Column = tuple[str, str, Callable[[object], str]]
_FILL_COLUMNS: list[Column] = [
    ("Allocated at full", "allocated_gpu_fraction_at_full", _pct),
    ("Unallocated at full", "unallocated_gpu_fraction_at_full", _pct),
    ("Failed pods", "failed_pods", _num),
    ("Wall time", "wall_time_s", _secs),
]
_REPLAY_COLUMNS: list[Column] = [
    ("JCT mean (s)", "jct_mean_s", _num),
    ("JCT p50 (s)", "jct_p50_s", _num),
    ("JCT p99 (s)", "jct_p99_s", _num),
    ("Queue delay mean (s)", "queue_delay_mean_s", _num),
    ("GPU allocation mean", "gpu_allocation_mean", _pct),
    ("Fragmentation mean", "fragmentation_mean", _pct),
    ("Preemptions", "preemptions", _num),
    ("Lost GPU-hours", "lost_gpu_hours", lambda v: _num(v, 2)),
]
_TENANT_COLUMNS: list[Column] = [
    ("Entitlement", "entitlement", _pct),
    ("Mean share", "share_mean", _pct),
    ("Queue delay mean (s)", "queue_delay_mean_s", _num),
    ("JCT mean (s)", "jct_mean_s", _num),
]


def _table(
    first: str, labels: Sequence[str], records: Sequence[Mapping[str, Any]], cols: list[Column]
) -> str:
    """One row per record: an escaped label, then right-aligned formatted metrics."""
    head = f"<th>{_esc(first)}</th>" + "".join(
        f'<th class="num">{_esc(h)}</th>' for h, _, _ in cols
    )
    body = "".join(
        f"<tr><td>{_esc(label)}</td>"
        + "".join(f'<td class="num">{_esc(fmt(rec.get(key)))}</td>' for _, key, fmt in cols)
        + "</tr>"
        for label, rec in zip(labels, records, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _labels(results: Sequence[Mapping[str, Any]]) -> list[str]:
    # Two results can share a policy (e.g. different seeds); suffix so legends differ.
    seen: dict[str, int] = {}
    out = []
    for r in results:
        name = str(r.get("policy", "?"))
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def _pct_axis(v: float) -> str:
    return f"{v:g}%"


def _chart(
    series: list[Series], title: str, x_label: str, y_label: str, chart_id: str, pct_x: bool = False
) -> str:
    """Every report chart has a percentage y axis; the fill chart's x axis is one too."""
    x_format = _pct_axis if pct_x else default_format
    return line_chart(
        series,
        title=title,
        x_label=x_label,
        y_label=y_label,
        x_format=x_format,
        y_format=_pct_axis,
        y_from_zero=True,
        chart_id=chart_id,
    )


def _time_axis(max_s: float) -> tuple[float, str]:
    """Pick a time unit so tick labels stay short: (divisor, unit name)."""
    if max_s >= 2 * 3600:
        return 3600.0, "hours"
    if max_s >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _fill_section(results: Sequence[Mapping[str, Any]]) -> str:
    labels = _labels(results)
    series: list[Series] = []
    max_x = 0.0
    for label, r in zip(labels, results, strict=True):
        curve = r.get("metrics", {}).get("fill_curve") or []
        xs = _scaled([p.get("arrived_gpu_fraction") for p in curve], 100)
        ys = _scaled([p.get("allocated_gpu_fraction") for p in curve], 100)
        ok = [x for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
        if ok:
            series.append(Series(label, xs, ys))
            max_x = max(max_x, *ok)
    parts = ["<h2>Fill: how much of the cluster each policy can pack</h2>"]
    if series:
        # y = x is what a perfect packer achieves until the cluster is full.
        d = min(max_x, 100.0)
        series.append(Series("ideal (y = x)", [0.0, d], [0.0, d], color="#8c959f", dashed=True))
        title = "Allocated GPU share vs arrived workload"
        x_label = "Arrived workload (% of GPU capacity)"
        parts.append(_chart(series, title, x_label, "Allocated GPUs (%)", "fill", pct_x=True))
    # wall_time_s sits beside metrics, not in them; merge so one column spec serves.
    records = [{**r.get("metrics", {}), "wall_time_s": r.get("wall_time_s")} for r in results]
    parts.append(_table("Policy", labels, records, _FILL_COLUMNS))
    return "\n".join(parts)


def _replay_section(results: Sequence[Mapping[str, Any]]) -> str:
    labels = _labels(results)
    parts = ["<h2>Replay: job completion, queueing and fairness</h2>"]
    metrics = [r.get("metrics", {}) for r in results]
    parts.append(_table("Policy", labels, metrics, _REPLAY_COLUMNS))

    timelines = [
        (label, r.get("metrics", {}).get("timeline") or {})
        for label, r in zip(labels, results, strict=True)
    ]
    max_t = max(
        (t for _, tl in timelines for t in tl.get("time_s") or [] if _is_num(t)), default=0.0
    )
    div, unit = _time_axis(max_t)
    alloc = [
        Series(label, _scaled(tl["time_s"], 1 / div), _scaled(tl["gpu_allocation"], 100))
        for label, tl in timelines
        if tl.get("time_s") and tl.get("gpu_allocation")
    ]
    if alloc:
        title = "GPU allocation over time"
        parts.append(_chart(alloc, title, f"Time ({unit})", "Allocated GPUs (%)", "alloc"))

    for i, ((label, tl), r) in enumerate(zip(timelines, results, strict=True)):
        parts.append(f"<h3>Tenants under {_esc(label)}</h3>")
        per_tenant = r.get("metrics", {}).get("per_tenant") or []
        shares: Mapping[str, Sequence[float]] = tl.get("tenant_share") or {}
        # Fixed colour per tenant across chart and entitlement list so they read together.
        names = list(shares) + [
            str(t.get("tenant")) for t in per_tenant if str(t.get("tenant")) not in shares
        ]
        style = {n: series_style(k) for k, n in enumerate(names)}
        times = tl.get("time_s") or []
        tenant_series = [
            Series(n, _scaled(times, 1 / div), _scaled(vals, 100), *style[n])
            for n, vals in shares.items()
            if times and vals
        ]
        if tenant_series:
            title = f"Tenant GPU share over time \u2014 {label}"
            y_label = "Share of GPUs (%)"
            parts.append(_chart(tenant_series, title, f"Time ({unit})", y_label, f"tenants-{i}"))
        ent = [(str(t.get("tenant")), t.get("entitlement")) for t in per_tenant]
        if ent:
            items = "".join(
                f'<span class="ent"><span class="swatch" style="background:{style[n][0]}"></span>'
                f"{_esc(n)} {_pct(e)}</span>"
                for n, e in ent
            )
            parts.append(f"<p>Entitlements:{items}</p>")
            tenants = [str(t.get("tenant")) for t in per_tenant]
            parts.append(_table("Tenant", tenants, per_tenant, _TENANT_COLUMNS))
    return "\n".join(parts)


def render_html(report: Mapping[str, Any], title: str) -> str:
    """Render a ``shoal sim --output json`` document as a standalone HTML page."""
    results: list[Mapping[str, Any]] = list(report.get("results") or [])
    fill = [r for r in results if r.get("mode") == "fill"]
    replay = [r for r in results if r.get("mode") == "replay"]
    scenario = report.get("scenario", "unnamed scenario")
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">Scenario <strong>{_esc(scenario)}</strong> \u00b7 '
        f"{len(results)} result(s)</p>",
    ]
    if fill:
        body.append(_fill_section(fill))
    if replay:
        body.append(_replay_section(replay))
    if not (fill or replay):
        body.append("<p>No fill or replay results in this report.</p>")
    body.append("<footer>Generated by <code>shoal sim</code>.</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}{CHART_CSS}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )


def write_html(report: Mapping[str, Any], path: Path, title: str) -> None:
    """Render ``report`` and write it to ``path`` (UTF-8), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, title), encoding="utf-8")
