"""Charts as server-side SVG: no script, no network, colours only through CSS classes.

Each function returns the ``<svg>`` element as :class:`markupsafe.Markup`,
ready to be placed in a page: every piece of text in it (titles, labels that
come from the network such as reverse names and reporter names) went through
:func:`text` first, so the markup is safe to mark safe. Colours, line styles
and fonts come from ``static/charts.css`` by class (``chart-series-KEY`` for a
series, ``chart-grid``, ``chart-axis``...), so light and dark mode follow the
page's ``prefers-color-scheme`` and the CSP needs no inline style. Each chart
has ``role="img"``, an ``aria-label`` and a ``<title>``; the page shows the
same figures in a table under it for people who prefer numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# characters XML 1.0 allows (a name from the network may hold any other one)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_KEY = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_LABEL = 48

WIDTH = 720
HEIGHT = 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 16, 40, 44
_ROW = 24  # a horizontal bar's row
_LABEL_WIDTH = 230  # room for a horizontal bar's label
_MAX_X_LABELS = 8


@dataclass(frozen=True)
class Series:
    """One series: its name in the legend, its CSS key, a value per label (None: no value)."""

    name: str
    key: str  # chart-series-KEY in charts.css: spf, dkim, dmarc, pass, fail
    values: Sequence[float | None]

    def __post_init__(self) -> None:
        if not _KEY.fullmatch(self.key):
            raise ValueError(f"series key {self.key!r} is not a CSS class suffix")


def text(value: object, limit: int = MAX_LABEL) -> str:
    """``value`` as XML text or attribute content: invalid characters dropped, cut to
    ``limit`` characters, ``& < > " '`` escaped."""
    cleaned = _NOT_XML.sub("", str(value))
    if len(cleaned) > limit:
        cleaned = cleaned[:limit - 1] + "\u2026"
    return str(escape(cleaned))


def _num(value: float) -> str:
    """A coordinate: two decimals at most, no exponent."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _open(kind: str, title: str, width: int, height: int, summary: str) -> list[str]:
    label = text(title, 200)
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{label}">',
            f"<title>{label}</title>", f"<desc>{text(summary, 400)}</desc>"]


def _legend(series: Sequence[Series], width: int) -> list[str]:
    parts = ['<g class="chart-legend">']
    x = float(_LEFT)
    for s in series:
        parts.append(f'<rect class="chart-swatch chart-series-{s.key}" x="{_num(x)}" y="10" '
                     'width="12" height="12" rx="2"/>')
        parts.append(f'<text class="chart-text" x="{_num(x + 17)}" y="20">{text(s.name, 32)}'
                     "</text>")
        x += 17 + 6.8 * min(len(s.name), 32) + 16
        if x > width - 60:
            break
    parts.append("</g>")
    return parts


def _empty(width: int, height: int) -> str:
    return (f'<text class="chart-text chart-empty" x="{_num(width / 2)}" '
            f'y="{_num(height / 2)}" text-anchor="middle">No data in this range</text>')


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop ends at 10


def _x_label_indexes(count: int) -> list[int]:
    if count <= _MAX_X_LABELS:
        return list(range(count))
    step = math.ceil(count / _MAX_X_LABELS)
    return list(range(0, count, step))


def _y_axis(plot_w: float, plot_h: float, y_max: float, unit: str, ticks: int = 4) -> list[str]:
    parts = ['<g class="chart-axis">']
    for i in range(ticks + 1):
        value = y_max * i / ticks
        y = _TOP + plot_h - plot_h * i / ticks
        shown = f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
        parts.append(f'<line class="chart-grid" x1="{_LEFT}" y1="{_num(y)}" '
                     f'x2="{_num(_LEFT + plot_w)}" y2="{_num(y)}"/>')
        parts.append(f'<text class="chart-text" x="{_LEFT - 6}" y="{_num(y + 4)}" '
                     f'text-anchor="end">{text(shown + unit)}</text>')
    parts.append("</g>")
    return parts


def _x_axis(labels: Sequence[str], xs: Sequence[float], plot_h: float) -> list[str]:
    parts = ['<g class="chart-axis">']
    baseline = _TOP + plot_h
    for i in _x_label_indexes(len(labels)):
        parts.append(f'<text class="chart-text" x="{_num(xs[i])}" y="{_num(baseline + 18)}" '
                     f'text-anchor="middle">{text(labels[i], 16)}</text>')
    parts.append(f'<line class="chart-baseline" x1="{_LEFT}" y1="{_num(baseline)}" '
                 f'x2="{_num(xs[-1] if xs else _LEFT)}" y2="{_num(baseline)}"/>')
    parts.append("</g>")
    return parts


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
               y_max: float = 100.0, unit: str = "%", width: int = WIDTH,
               height: int = HEIGHT) -> Markup:
    """Lines over time: a point per label per series; a None value breaks its line."""
    _check(labels, series)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    count = len(labels)
    xs = [_LEFT + (plot_w * i / (count - 1) if count > 1 else plot_w / 2) for i in range(count)]
    has_data = any(v is not None for s in series for v in s.values)
    parts = _open("line", title, width, height, _summary(labels, series, unit))
    parts += _legend(series, width)
    parts += _y_axis(plot_w, plot_h, y_max, unit)
    if count:
        parts += _x_axis(labels, xs, plot_h)
    if not has_data:
        parts.append(_empty(width, height))
    for s in series:
        runs: list[list[tuple[float, float]]] = [[]]
        dots = []
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            y = _TOP + plot_h - plot_h * max(0.0, min(value, y_max)) / y_max
            runs[-1].append((xs[i], y))
            dots.append(f'<circle class="chart-dot chart-series-{s.key}" cx="{_num(xs[i])}" '
                        f'cy="{_num(y)}" r="2.5"><title>{text(s.name, 32)} '
                        f"{text(labels[i], 24)}: {_value(value, unit)}</title></circle>")
        parts.append('<g class="chart-series">')
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{_num(x)},{_num(y)}" for x, y in run)
                parts.append(f'<polyline class="chart-line chart-series-{s.key}" '
                             f'points="{points}"/>')
        parts += dots
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above went through text()


def stacked_bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
                      unit: str = "", width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """A bar per label, the series stacked bottom up (None counts as 0)."""
    _check(labels, series)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    count = len(labels)
    totals = [sum((s.values[i] or 0) for s in series) for i in range(count)]
    y_max = nice_max(max(totals, default=0))
    slot = plot_w / count if count else plot_w
    bar = max(1.0, slot * 0.8)
    xs = [_LEFT + slot * i + slot / 2 for i in range(count)]
    parts = _open("bars", title, width, height, _summary(labels, series, unit))
    parts += _legend(series, width)
    parts += _y_axis(plot_w, plot_h, y_max, unit)
    if count:
        parts += _x_axis(labels, xs, plot_h)
    if not any(totals):
        parts.append(_empty(width, height))
    parts.append('<g class="chart-series">')
    for i in range(count):
        base = 0.0
        for s in series:
            value = s.values[i] or 0
            if value <= 0:
                continue
            y1 = _TOP + plot_h - plot_h * (base + value) / y_max
            h = plot_h * value / y_max
            parts.append(f'<rect class="chart-bar chart-series-{s.key}" '
                         f'x="{_num(xs[i] - bar / 2)}" y="{_num(y1)}" width="{_num(bar)}" '
                         f'height="{_num(h)}"><title>{text(labels[i], 24)} {text(s.name, 32)}: '
                         f"{_value(value, unit)}</title></rect>")
            base += value
    parts.append("</g></svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above went through text()


def horizontal_bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
                         unit: str = "", width: int = WIDTH) -> Markup:
    """A row per label (top to bottom), its series stacked left to right, the total after."""
    _check(labels, series)
    count = len(labels)
    height = _TOP + max(count, 1) * _ROW + 16
    left = _LABEL_WIDTH
    plot_w = width - left - _RIGHT - 60  # room for the total after the bar
    totals = [sum((s.values[i] or 0) for s in series) for i in range(count)]
    x_max = nice_max(max(totals, default=0))
    parts = _open("hbars", title, width, height, _summary(labels, series, unit))
    parts += _legend(series, width)
    if not any(totals):
        parts.append(_empty(width, height))
    parts.append('<g class="chart-series">')
    for i in range(count):
        y = _TOP + i * _ROW
        parts.append(f'<text class="chart-text chart-label" x="{left - 8}" y="{y + 15}" '
                     f'text-anchor="end">{text(labels[i], 34)}</text>')
        x = float(left)
        for s in series:
            value = s.values[i] or 0
            if value <= 0:
                continue
            w = plot_w * value / x_max
            parts.append(f'<rect class="chart-bar chart-series-{s.key}" x="{_num(x)}" '
                         f'y="{y + 4}" width="{_num(w)}" height="{_ROW - 8}">'
                         f"<title>{text(labels[i], 64)} {text(s.name, 32)}: "
                         f"{_value(value, unit)}</title></rect>")
            x += w
        parts.append(f'<text class="chart-text chart-total" x="{_num(x + 6)}" y="{y + 15}">'
                     f"{_value(totals[i], unit)}</text>")
    parts.append("</g></svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above went through text()


def _value(value: float, unit: str) -> str:
    shown = f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
    return text(shown + unit)


def _summary(labels: Sequence[str], series: Sequence[Series], unit: str) -> str:
    if not labels:
        return "No data in this range."
    names = ", ".join(s.name for s in series)
    return (f"{names} for {len(labels)} points from {labels[0]} to {labels[-1]}; "
            "the table below the chart has every figure.")


def _check(labels: Sequence[str], series: Sequence[Series]) -> None:
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for "
                             f"{len(labels)} labels")
