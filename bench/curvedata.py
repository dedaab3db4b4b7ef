"""The scale curves' data: points per series, a Markdown table and an SVG chart per curve.

`bench/workloads/curves.py` measures; this module holds the figures and writes them:
``bench/results/curves/<key>.svg`` for each curve and ``bench/results/curves/README.md``
with every chart and its table (committable: the latest run's curves), besides the run's
JSON (gitignored) that holds the same points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import svgchart

POSTROOM = "Postroom"


@dataclass
class Curve:
    """One chart: x (sessions, clients, messages, connections) against one metric, a series
    for Postroom and one for the peer."""

    key: str
    title: str
    x_label: str
    y_label: str
    peer: str
    log_x: bool = True
    log_y: bool = False
    higher_is_better: bool = True
    series: dict[str, dict[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, side: str, x: float, y: float) -> None:
        self.series.setdefault(side, {})[x] = y

    def xs(self) -> list[float]:
        return sorted({x for points in self.series.values() for x in points})

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "x": self.x_label, "y": self.y_label,
                "peer": self.peer, "notes": self.notes,
                "series": {side: sorted(points.items())
                           for side, points in self.series.items()}}

    def svg(self, subtitle: str = "") -> str:
        ordered = {side: sorted(self.series.get(side, {}).items())
                   for side in (POSTROOM, self.peer) if self.series.get(side)}
        return svgchart.line_chart(self.title, self.x_label, self.y_label, ordered,
                                   log_x=self.log_x, log_y=self.log_y, subtitle=subtitle)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(curve: Curve) -> str:
    """| x | Postroom | peer | ratio P/peer |, a row per x measured on either side."""
    mine = curve.series.get(POSTROOM, {})
    theirs = curve.series.get(curve.peer, {})
    lines = [f"| {curve.x_label} | {POSTROOM}: {curve.y_label} | {curve.peer}: {curve.y_label} "
             "| ratio P/peer |", "|---:|---:|---:|---:|"]
    for x in curve.xs():
        p, q = mine.get(x), theirs.get(x)
        ratio = f"{p / q:.2f}x" if p is not None and q else "-"
        shown = f"{int(x):,}" if float(x).is_integer() else _num(x)
        lines.append(f"| {shown} | {_num(p)} | {_num(q)} | {ratio} |")
    return "\n".join(lines)


def markdown(curves: Sequence[Curve], conditions: str) -> str:
    out = ["# Scale curves (`make bench`, workload `curves`)", "",
           f"Written by `bench/run.py`; {conditions}. Units are in each table's header; "
           "the ratio is Postroom / peer (above 1.0x is better for Postroom on a rate, "
           "worse on a time or memory). Described in bench/README.md.", ""]
    for curve in curves:
        if not curve.series:
            continue
        out += [f"## {curve.title}", "", f"![{curve.title}]({curve.key}.svg)", "",
                table(curve), ""]
        out += [f"* {note}" for note in curve.notes]
        if curve.notes:
            out.append("")
    return "\n".join(out)


def write(curves: Sequence[Curve], directory: Path, conditions: str) -> list[Path]:
    """The SVGs and README.md of the curves that have points; the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for curve in curves:
        if not curve.series:
            continue
        path = directory / f"{curve.key}.svg"
        path.write_text(curve.svg(conditions))
        written.append(path)
    index = directory / "README.md"
    index.write_text(markdown(curves, conditions))
    written.append(index)
    return written
