"""The console's server-drawn SVG bar chart (``otakit.server.console.chart``): pure, no server."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from otakit.server.console.chart import version_chart

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: Markup) -> ET.Element:
    """The chart as XML (a syntax error fails the test): the SVG must be well-formed on its own."""
    return ET.fromstring(str(markup))  # noqa: S314 (our own markup, not untrusted input)


def bars(root: ET.Element) -> list[ET.Element]:
    return [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]


def test_one_bar_per_version_in_order_with_widths_proportional_to_counts() -> None:
    counts = [("2.0.0", 6), ("1.5.0", 3), ("1.0.0", 1), ("0.9", 0)]
    root = parse(version_chart(counts, title="Versions of app"))
    found = bars(root)
    assert [(b.get("data-version"), b.get("data-count")) for b in found] == [
        (version, str(n)) for version, n in counts
    ]
    widths = [float(b.get("width", "nan")) for b in found]
    assert widths[0] > 0
    for width, (_, n) in zip(widths, counts, strict=True):
        assert width == pytest.approx(widths[0] * n / 6, abs=0.01)
    tops = [float(b.get("y", "nan")) for b in found]
    assert tops == sorted(tops)
    assert len(set(tops)) == len(tops)
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") != "count"]
    assert labels == ["2.0.0", "1.5.0", "1.0.0", "0.9"]
    shares = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "count"]
    assert shares == ["6 · 60 %", "3 · 30 %", "1 · 10 %", "0 · 0 %"]


def test_accessible_picture_with_title_and_summary() -> None:
    root = parse(version_chart([("1.1", 2), ("1.0", 1)], title="Versions of app"))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("class") == "chart"
    title = root.find(f"{SVG}title")
    assert title is not None
    assert title.text == "Versions of app"
    assert root.get("aria-label") == "Versions of app: 1.1: 2 devices; 1.0: 1 device"
    # each bar's row has its own tooltip, in words
    assert [t.text for t in root.iter(f"{SVG}title")][1:] == ["1.1: 2 devices", "1.0: 1 device"]


def test_one_version_fills_the_bar_area() -> None:
    root = parse(version_chart([("3.0", 42)], title="t"))
    [bar] = bars(root)
    left, width = float(bar.get("x", "nan")), float(bar.get("width", "nan"))
    view = [float(n) for n in root.get("viewBox", "").split()]
    assert width > view[2] / 2
    assert left + width < view[2]
    assert root.get("aria-label") == "t: 3.0: 42 devices"


def test_no_version_says_so() -> None:
    root = parse(version_chart([], title="Versions of app"))
    assert bars(root) == []
    assert root.get("aria-label") == "Versions of app: no device runs it"
    assert "No device runs it" in [t.text for t in root.iter(f"{SVG}text")]
    view = [float(n) for n in root.get("viewBox", "").split()]
    assert len(view) == 4
    assert view[3] > 0


def test_device_supplied_text_is_escaped() -> None:
    evil = '1.0<script>alert("x")</script>&'
    markup = version_chart([(evil, 1)], title='app "<b>"')
    assert isinstance(markup, Markup)
    text = str(markup)
    assert "<script>" not in text
    assert "<b>" not in text
    assert "&lt;script&gt;" in text
    root = parse(markup)  # still valid XML: the escaped text reads back as it was
    [bar] = bars(root)
    assert bar.get("data-version") == evil
    assert evil in [t.text for t in root.iter(f"{SVG}text")]
    assert root.get("aria-label") == f'app "<b>": {evil}: 1 device'
    # Jinja's autoescape leaves the Markup alone (it is escaped once, here)
    assert str(Markup("{}").format(markup)) == text


def test_no_style_attributes_and_long_versions_are_cut_in_the_label_only() -> None:
    long = "1.0.0.dev" + "1" * 50
    markup = version_chart([(long, 5), ("1.0", 1)], title="t")
    assert "style=" not in str(markup)
    root = parse(markup)
    labels = [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") != "count"]
    assert labels[0].endswith("…")
    assert len(labels[0]) <= 32
    assert long.startswith(labels[0][:-1])
    assert bars(root)[0].get("data-version") == long
    assert long in (root.get("aria-label") or "")
    for element in root.iter():
        for name in ("x", "width"):
            if element.get(name) is not None:
                assert float(element.get(name, "nan")) >= 0  # nothing drawn off the left edge
