"""Small inline SVG charts (no JavaScript, no network) for the HTML report and the dashboard.

Every chart is one `<svg id=...>` string, valid XML. Each data point carries its exact value:
bars as `data-label` / `data-value` plus a `<title>` tooltip, lines as `data-series`,
`data-times` and `data-values` on their polyline — so a reader (or a test) can check the
picture against the numbers it came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 12, 26, 34
COLOURS = ("#1f5fa8", "#c2410c", "#15803d", "#7c3aed", "#a16207")
BAR = "#1f5fa8"
NEGATIVE = "#b91c1c"


def exact(value: float) -> str:
    """A number as data: repr keeps every digit, so it round-trips to the same float."""
    return repr(float(value))


def short(value: float) -> str:
    """A number for an axis or a tooltip."""
    return f"{value:.4g}"


def _open(chart_id: str, title: str, height: int = HEIGHT) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" id={quoteattr(chart_id)} class="chart" '
            f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img">',
            f"<title>{escape(title)}</title>",
            f'<text x="{PAD_LEFT}" y="16" class="chart-title">{escape(title)}</text>']


def _y_axis(lo: float, hi: float, height: int) -> tuple[list[str], float, float]:
    """Gridlines and labels; returns them with the value range actually drawn."""
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    parts = []
    bottom = height - PAD_BOTTOM
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = bottom - (bottom - PAD_TOP) * k / 4
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{PAD_LEFT - 4}" y="{y + 4:.1f}" class="tick" '
                     f'text-anchor="end">{escape(short(v))}</text>')
    return parts, lo, hi


def bar_chart(chart_id: str, title: str, labels: Sequence[str], values: Sequence[float],
              height: int = HEIGHT) -> str:
    """Vertical bars from zero (negative ones in red), one per label."""
    parts = _open(chart_id, title, height)
    if not values:
        return "".join([*parts, '<text x="50%" y="50%" class="empty">no data</text></svg>'])
    axis, lo, hi = _y_axis(min(0.0, *values), max(0.0, *values), height)
    parts += axis
    bottom, span = height - PAD_BOTTOM, WIDTH - PAD_LEFT - PAD_RIGHT
    scale = (bottom - PAD_TOP) / (hi - lo)
    zero = bottom - (0.0 - lo) * scale
    step = span / len(values)
    every = max(1, math.ceil(len(values) / 12))  # at most ~12 labels under the axis
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = PAD_LEFT + i * step + step * 0.1
        top = min(zero, zero - value * scale)
        colour = NEGATIVE if value < 0 else BAR
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{step * 0.8:.1f}" '
            f'height="{abs(value) * scale:.1f}" fill="{colour}" data-label={quoteattr(label)} '
            f'data-value="{exact(value)}"><title>{escape(label)}: {escape(short(value))}'
            "</title></rect>")
        if i % every == 0:
            parts.append(f'<text x="{x + step * 0.4:.1f}" y="{bottom + 14}" class="tick" '
                         f'text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{zero:.1f}" '
                 f'y2="{zero:.1f}" class="axis"/>')
    return "".join([*parts, "</svg>"])


def histogram_chart(chart_id: str, title: str, edges: Sequence[float], counts: Sequence[int],
                    height: int = HEIGHT) -> str:
    """A histogram: one bar per bin, labelled by the bin's centre."""
    labels = [short((a + b) / 2) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return bar_chart(chart_id, title, labels, [float(c) for c in counts], height)


def funnel_chart(chart_id: str, title: str, steps: Sequence[tuple[str, int]]) -> str:
    """Horizontal bars, widest first: how many trials reached each step."""
    row = 22
    height = PAD_TOP + row * max(1, len(steps)) + 10
    parts = _open(chart_id, title, height)
    left, span = 150, WIDTH - 150 - PAD_RIGHT - 40
    top_count = max([c for _, c in steps] or [1]) or 1
    for i, (label, count) in enumerate(steps):
        y = PAD_TOP + i * row
        width = span * count / top_count
        parts.append(f'<text x="{left - 6}" y="{y + 15}" class="tick" '
                     f'text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{width:.1f}" '
                     f'height="{row - 6}" fill="{BAR}" data-label={quoteattr(label)} '
                     f'data-value="{exact(count)}"><title>{escape(label)}: {count}</title></rect>')
        parts.append(f'<text x="{left + width + 4:.1f}" y="{y + 15}" class="tick">{count}</text>')
    return "".join([*parts, "</svg>"])


def _seconds(times: Sequence[str]) -> np.ndarray:
    return np.array([np.datetime64(t.replace("+00:00", ""), "s") for t in times]
                    ).astype(np.int64).astype(float)


def line_chart(chart_id: str, title: str, series: dict[str, Sequence[Sequence[object]]],
               domain: tuple[str, str] | None = None, height: int = HEIGHT,
               markers: Sequence[tuple[str, str]] = ()) -> str:
    """Lines over one time axis: `series` maps a name to [[iso time, value], ...]; `markers`
    are (iso time, label) pairs drawn as dashed vertical lines (restarts, say)."""
    parts = _open(chart_id, title, height)
    drawn = {k: v for k, v in series.items() if len(v) > 0}
    if not drawn:
        return "".join([*parts, '<text x="50%" y="50%" class="empty">no data</text></svg>'])
    every_time = [str(t) for pts in drawn.values() for t, _ in pts]
    every_value = [float(v) for pts in drawn.values() for _, v in pts]  # type: ignore[arg-type]
    stamps = _seconds(list(domain) if domain else every_time)
    t_lo, t_hi = float(stamps.min()), float(stamps.max())
    t_span = (t_hi - t_lo) or 1.0
    axis, lo, hi = _y_axis(min(every_value), max(every_value), height)
    parts += axis
    bottom, span = height - PAD_BOTTOM, WIDTH - PAD_LEFT - PAD_RIGHT
    for i, (name, points) in enumerate(drawn.items()):
        times = [str(t) for t, _ in points]
        values = [float(v) for _, v in points]  # type: ignore[arg-type]
        xs = PAD_LEFT + (_seconds(times) - t_lo) / t_span * span
        ys = [bottom - (v - lo) / (hi - lo) * (bottom - PAD_TOP) for v in values]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="1.5" '
            f'points="{coords}" data-series={quoteattr(name)} '
            f'data-times={quoteattr(" ".join(times))} '
            f'data-values="{" ".join(exact(v) for v in values)}"><title>{escape(name)}</title>'
            "</polyline>")
        parts.append(f'<text x="{WIDTH - PAD_RIGHT - 4}" y="{16 + 13 * i}" class="legend" '
                     f'text-anchor="end" fill="{colour}">{escape(name)}</text>')
    for when, label in markers:
        x = PAD_LEFT + (float(_seconds([when])[0]) - t_lo) / t_span * span
        if PAD_LEFT <= x <= WIDTH - PAD_RIGHT:
            parts.append(f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_TOP}" '
                         f'y2="{bottom}" stroke="{NEGATIVE}" stroke-dasharray="3 3" '
                         f'data-time={quoteattr(when)}><title>{escape(label)}</title></line>')
    for t in (t_lo, t_hi):
        label = str(np.datetime64(int(t), "s"))[:10]
        x = PAD_LEFT + (t - t_lo) / t_span * span
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" class="tick" '
                     f'text-anchor="{"start" if t == t_lo else "end"}">{label}</text>')
    return "".join([*parts, "</svg>"])


def drawdown_points(points: Sequence[Sequence[object]]) -> list[list[object]]:
    """[[time, equity], ...] -> [[time, drawdown as a positive fraction], ...]."""
    if not points:
        return []
    equity = np.array([float(e) for _, e in points])  # type: ignore[arg-type]
    drawdown = 1.0 - equity / np.maximum.accumulate(equity)
    return [[t, round(float(d), 6)] for (t, _), d in zip(points, drawdown, strict=True)]


STYLE = """
svg.chart { font: 11px sans-serif; background: #fff; }
svg.chart .chart-title { font-weight: bold; font-size: 12px; }
svg.chart .grid { stroke: #e5e7eb; }
svg.chart .axis { stroke: #374151; }
svg.chart .tick, svg.chart .legend { fill: #374151; }
svg.chart .empty { fill: #6b7280; }
"""
