"""A small line-chart SVG writer for the scale curves (no plotting library needed).

``line_chart`` draws one or more series of (x, y) points with axes, tick labels, grid lines,
a legend, a title and axis titles with units; x and y can be logarithmic. The output is a
standalone SVG document (valid XML) that GitHub and browsers show as an image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
MARKERS = ("circle", "square", "circle", "square")
WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 56, 64

Point = tuple[float, float]


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * magnitude:
            return mult * magnitude
    return 10 * magnitude


def linear_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round tick values covering [low, high] (low is usually 0)."""
    if high <= low:
        high = low + 1
    step = _nice_step(high - low, target)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten covering [low, high] (both > 0)."""
    first = math.floor(math.log10(low))
    last = math.ceil(math.log10(high))
    if last == first:
        last += 1
    return [10.0 ** e for e in range(first, last + 1)]


def fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 and float(value).is_integer():
        return f"{int(value):,}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


class _Axis:
    def __init__(self, values: Sequence[float], log: bool, start: float, end: float,
                 zero: bool) -> None:
        self.log = log and all(v > 0 for v in values)
        if self.log:
            self.ticks = log_ticks(min(values), max(values))
        else:
            low = min(0.0, min(values)) if zero else min(values)
            self.ticks = linear_ticks(low, max(values))
        self.low, self.high = self.ticks[0], self.ticks[-1]
        self.start, self.end = start, end

    def pos(self, value: float) -> float:
        if self.log:
            lo, hi, v = math.log10(self.low), math.log10(self.high), math.log10(value)
        else:
            lo, hi, v = self.low, self.high, value
        frac = (v - lo) / (hi - lo) if hi != lo else 0.5
        return self.start + frac * (self.end - self.start)


def line_chart(title: str, x_label: str, y_label: str, series: Mapping[str, Sequence[Point]], *,
               log_x: bool = False, log_y: bool = False, subtitle: str = "") -> str:
    """An SVG document: a line per series (in the mapping's order), markers on the points."""
    points = [p for pts in series.values() for p in pts]
    xs = [p[0] for p in points] or [1.0]
    ys = [p[1] for p in points] or [1.0]
    x_axis = _Axis(xs, log_x, LEFT, WIDTH - RIGHT, zero=False)
    y_axis = _Axis(ys, log_y, HEIGHT - BOTTOM, TOP, zero=True)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f"<title>{escape(title)}</title>",
           f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15" '
           f'font-weight="bold">{escape(title)}</text>']
    if subtitle:
        # a long subtitle is squeezed to the chart's width rather than cut off
        fit = (f' textLength="{WIDTH - 20}" lengthAdjust="spacingAndGlyphs"'
               if len(subtitle) > 95 else "")
        out.append(f'<text x="{WIDTH / 2}" y="40" text-anchor="middle" fill="#555" '
                   f'font-size="11"{fit}>{escape(subtitle)}</text>')
    # grid and ticks
    for tick in y_axis.ticks:
        y = y_axis.pos(tick)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{escape(fmt_tick(tick))}</text>")
    for tick in x_axis.ticks:
        x = x_axis.pos(tick)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                   f"{escape(fmt_tick(tick))}</text>")
    # axes and their titles
    out.append(f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" '
               f'y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" '
               'stroke="black"/>')
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 22}" '
               f'text-anchor="middle">{escape(x_label + (" (log scale)" if x_axis.log else ""))}'
               "</text>")
    mid = (TOP + HEIGHT - BOTTOM) / 2
    out.append(f'<text x="18" y="{mid}" text-anchor="middle" '
               f'transform="rotate(-90 18 {mid})">'
               f"{escape(y_label + (' (log scale)' if y_axis.log else ''))}</text>")
    # series
    for index, (name, pts) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        ordered = sorted(pts)
        coords = [(x_axis.pos(x), y_axis.pos(y)) for x, y in ordered]
        out.append(f'<g class="series" data-name={quoteattr(name)}>')
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                       f'points="{path}"/>')
        for (x, y), (vx, vy) in zip(coords, ordered, strict=True):
            label = f"<title>{escape(name)}: {fmt_tick(vx)} -> {vy:g}</title>"
            if MARKERS[index % len(MARKERS)] == "circle":
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                           f"{label}</circle>")
            else:
                out.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" '
                           f'fill="{colour}">{label}</rect>')
        out.append("</g>")
    # legend, top left inside the plot, on a white box over the grid and lines
    widest = max((len(name) for name in series), default=0)
    out.append(f'<rect x="{LEFT + 4}" y="{TOP + 1}" width="{34 + 7 * widest}" '
               f'height="{8 + 18 * len(series)}" fill="white" fill-opacity="0.85" '
               'stroke="#ccc"/>')
    for index, name in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        y = TOP + 12 + index * 18
        out.append(f'<rect x="{LEFT + 10}" y="{y - 9}" width="14" height="10" '
                   f'fill="{colour}"/>')
        out.append(f'<text x="{LEFT + 30}" y="{y}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
