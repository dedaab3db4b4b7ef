"""The dashboard's SVG charts: well-formed XML, escaped text, classes for colours, edge cases."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml.ElementTree as SafeET
import pytest
from markupsafe import Markup

from postroom_web.dmarc import charts
from postroom_web.dmarc.charts import Series

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script>&\x00\x1b\'"'


def parse(svg: Markup) -> ET.Element:
    return SafeET.fromstring(str(svg), forbid_dtd=True, forbid_entities=True)


def rates(n: int) -> list[Series]:
    return [Series("DMARC", "dmarc", [50.0 + i for i in range(n)]),
            Series("SPF aligned", "spf", [40.0] * n), Series("DKIM aligned", "dkim", [90.0] * n)]


def test_line_chart_is_an_accessible_svg_image():
    root = parse(charts.line_chart("Pass rates", ["d1", "d2", "d3"], rates(3)))
    assert root.tag == SVG + "svg"
    assert root.get("role") == "img" and root.get("aria-label") == "Pass rates"
    assert root.find(SVG + "title").text == "Pass rates"
    assert root.find(SVG + "desc") is not None


def test_line_chart_draws_one_line_per_series_with_classes_not_styles():
    svg = charts.line_chart("t", ["a", "b", "c"], rates(3))
    root = parse(svg)
    lines = root.findall(f".//{SVG}polyline")
    assert [line.get("class") for line in lines] == [
        "chart-line chart-series-dmarc", "chart-line chart-series-spf",
        "chart-line chart-series-dkim"]
    assert "style" not in str(svg) and "<script" not in str(svg)
    assert not any(e.get("fill") or e.get("stroke") for e in root.iter())


def test_line_chart_has_axis_labels_and_a_legend():
    root = parse(charts.line_chart("t", ["2026-03-01", "2026-03-02"], rates(2)))
    texts = [t.text for t in root.iter(SVG + "text")]
    assert {"0%", "50%", "100%", "2026-03-01", "2026-03-02"} <= set(texts)
    assert {"DMARC", "SPF aligned", "DKIM aligned"} <= set(texts)
    assert len(root.findall(f".//{SVG}rect[@class='chart-swatch chart-series-spf']")) == 1


def test_hostile_names_are_escaped_everywhere():
    svg = str(charts.horizontal_bar_chart(HOSTILE, [HOSTILE], [Series(HOSTILE, "pass", [3])]))
    assert "<script" not in svg and "\x00" not in svg and "\x1b" not in svg
    root = parse(Markup(svg))
    assert root.get("aria-label").startswith('<script>alert("x")</script>&')
    assert any(t.text and t.text.startswith("<script>") for t in root.iter(SVG + "text"))
    for fn in (charts.line_chart, charts.stacked_bar_chart):
        out = fn(HOSTILE, [HOSTILE], [Series(HOSTILE, "fail", [1.0])])
        assert "<script" not in str(out)
        parse(out)


def test_a_series_key_must_be_a_class_suffix():
    with pytest.raises(ValueError):
        Series("x", 'a" onload="x', [1])


def test_empty_data_says_so():
    for fn in (charts.line_chart, charts.stacked_bar_chart, charts.horizontal_bar_chart):
        root = parse(fn("t", [], [Series("Pass", "pass", [])]))
        assert "No data in this range" in [t.text for t in root.iter(SVG + "text")]


def test_buckets_without_messages_break_the_line():
    values: list[float | None] = [10.0, 20.0, None, 30.0, 40.0]
    root = parse(charts.line_chart("t", list("abcde"), [Series("DMARC", "dmarc", values)]))
    assert len(root.findall(f".//{SVG}polyline")) == 2
    assert len(root.findall(f".//{SVG}circle")) == 4


def test_one_point_is_a_dot_in_the_middle():
    root = parse(charts.line_chart("t", ["only"], [Series("DMARC", "dmarc", [100.0])]))
    assert root.findall(f".//{SVG}polyline") == []
    (dot,) = root.findall(f".//{SVG}circle")
    assert float(dot.get("cx")) == pytest.approx(52 + (720 - 52 - 16) / 2)
    assert float(dot.get("cy")) == pytest.approx(40)  # 100% is the top of the plot


def test_stacked_bars_stack_pass_under_fail():
    root = parse(charts.stacked_bar_chart("t", ["a"], [Series("Pass", "pass", [30]),
                                                       Series("Fail", "fail", [10])]))
    passed, failed = root.findall(f".//{SVG}rect[@class]")[-2:]
    assert passed.get("class") == "chart-bar chart-series-pass"
    assert float(failed.get("y")) + float(failed.get("height")) == pytest.approx(
        float(passed.get("y")))
    assert float(passed.get("height")) == pytest.approx(3 * float(failed.get("height")))


def test_many_labels_are_thinned_on_the_axis():
    labels = [f"h{i}" for i in range(48)]
    root = parse(charts.stacked_bar_chart("t", labels, [Series("Pass", "pass", [1] * 48)]))
    shown = [t.text for t in root.iter(SVG + "text") if t.text in labels]
    assert 2 <= len(shown) <= 8 and shown[0] == "h0"


def test_values_must_match_the_labels():
    with pytest.raises(ValueError):
        charts.line_chart("t", ["a", "b"], [Series("DMARC", "dmarc", [1.0])])


@pytest.mark.parametrize("value,expected", [(0, 1), (1, 1), (7, 10), (11, 20), (240, 250),
                                            (499, 500), (100_001, 200_000)])
def test_axis_maximum_is_a_round_number(value, expected):
    assert charts.nice_max(value) == expected


def test_long_labels_are_cut():
    assert charts.text("x" * 100, 10) == "x" * 9 + "\u2026"
