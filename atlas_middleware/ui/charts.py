"""Charts as server-rendered SVG: no script, no library, nothing fetched.

Every piece of text that reaches the markup goes through ``escape`` (lane names and learning keys
come from the spans, i.e. from users)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

LANE_CLASSES = {"auto": "lane-auto", "paired": "lane-paired", "coach": "lane-coach"}
_HOUR_NS = 3_600 * 1_000_000_000


def bucket_label(start_ns: int, width_ns: int) -> str:
    when = dt.datetime.fromtimestamp(start_ns / 1e9).astimezone()
    return when.strftime("%m-%d %H:00" if width_ns < 24 * _HOUR_NS else "%Y-%m-%d")


def width_label(width_ns: int) -> str:
    hours = width_ns // _HOUR_NS
    if hours < 24:
        return "hour" if hours == 1 else f"{hours} hours"
    days = hours // 24
    return {1: "day", 7: "week", 28: "4 weeks"}.get(days, f"{days} days")


def lane_class(lane: str) -> str:
    return LANE_CLASSES.get(lane, "lane-other")


def line_chart(
    series: Sequence[dict[str, Any]],
    lines: Sequence[tuple[str, str, str]],
    width_ns: int,
    *,
    width: int = 1200,
    height: int = 260,
) -> Markup:
    """Values in [0, 1] per bucket, one polyline (with dots and tooltips) per ``(key, label,
    css class)`` of ``lines``; a bucket without a value breaks its line."""
    left, right, top, bottom = 40, 12, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(series)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(", ".join(label for _, label, _ in lines))} over time">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )

    def x_at(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    for i in _label_positions(n):
        parts.append(
            f'<text class="axis" x="{x_at(i):.1f}" y="{height - 8}" '
            f'text-anchor="{_anchor(i, n)}">'
            f"{escape(bucket_label(series[i]['start_ns'], width_ns))}</text>"
        )
    for key, label, css in lines:
        runs: list[list[tuple[float, float]]] = [[]]
        dots = []
        for i, point in enumerate(series):
            value = point.get(key)
            if value is None:
                runs.append([])
                continue
            xy = (x_at(i), top + plot_h * (1 - max(0.0, min(1.0, float(value)))))
            runs[-1].append(xy)
            count = point.get("rewarded" if key == "mean_reward" else "judged", point["sessions"])
            tip = (
                f"{label} {float(value):.2f} · {count} sessions · "
                f"{bucket_label(point['start_ns'], width_ns)}"
            )
            dots.append(
                f'<circle class="dot {css}" cx="{xy[0]:.1f}" cy="{xy[1]:.1f}" r="3.5">'
                f"<title>{escape(tip)}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                parts.append(f'<polyline class="line {css}" points="{points}"/>')
        parts.extend(dots)
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(
    buckets: Sequence[int],
    counts: dict[str, dict[int, int]],
    width_ns: int,
    *,
    width: int = 1200,
    height: int = 220,
) -> Markup:
    """Sessions per bucket, split by lane (bars of share, so the mix reads at any volume)."""
    left, right, top, bottom = 40, 12, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(buckets)
    slot = plot_w / n if n else plot_w
    bar = max(2.0, slot * 0.75)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="lane mix">']
    for tick in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{int(tick * 100)}%</text>"
        )
    lanes = sorted(counts)
    for i, start in enumerate(buckets):
        total = sum(counts[lane].get(start, 0) for lane in lanes)
        if not total:
            continue
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        for lane in lanes:
            value = counts[lane].get(start, 0)
            if not value:
                continue
            h = plot_h * value / total
            y -= h
            tip = f"{lane}: {value} of {total} sessions · {bucket_label(start, width_ns)}"
            parts.append(
                f'<rect class="{lane_class(lane)}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}"><title>{escape(tip)}</title></rect>'
            )
    for i in _label_positions(n):
        parts.append(
            f'<text class="axis" x="{left + slot * (i + 0.5):.1f}" y="{height - 8}" '
            f'text-anchor="{_anchor(i, n)}">{escape(bucket_label(buckets[i], width_ns))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def span_bar(offset: float, length: float, css: str) -> Markup:
    """One waterfall bar: ``offset`` and ``length`` as fractions of the trace's duration."""
    x = min(998.0, max(0.0, min(1.0, offset)) * 1000)
    w = max(2.0, min(1.0, length) * 1000)
    return Markup(
        '<svg class="bar" viewBox="0 0 1000 10" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect class="{escape(css)}" x="{x:.1f}" y="0" width="{min(w, 1000 - x):.1f}" '
        'height="10"/></svg>'
    )


def _anchor(i: int, n: int) -> str:
    # The first and last labels grow inwards, so neither is cut at the chart's edge.
    if n > 1 and i == 0:
        return "start"
    if n > 1 and i == n - 1:
        return "end"
    return "middle"


def _label_positions(n: int) -> list[int]:
    if n <= 0:
        return []
    if n <= 6:
        return list(range(n))
    step = -(-(n - 1) // 5)  # at most about six labels
    positions = list(range(0, n, step))
    if positions[-1] != n - 1:
        # The last bucket is labelled; a label too close before it gives way.
        if n - 1 - positions[-1] < step:
            positions[-1] = n - 1
        else:
            positions.append(n - 1)
    return positions
