"""The charts in the outcome assets' metadata, read back from the SVG the Dagster UI shows."""

import base64
import random
import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest
from browser import chromium_page

from d23_pipeline.analytics import charts
from d23_pipeline.kpis import KPI_NAMES

SVG = "{http://www.w3.org/2000/svg}"
DATA_URI = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<uri>data:image/svg\+xml;base64,[^)]+)\)")
NBSP = "\N{NO-BREAK SPACE}"


def _uri(image: str) -> str:
    match = DATA_URI.fullmatch(image)
    assert match, image[:80]
    return match["uri"]


def _drawn(image: str) -> ET.Element:
    """The SVG document of a markdown image ``charts`` made."""
    return ET.fromstring(base64.b64decode(_uri(image).split(",", 1)[1]))


def _in_group(root: ET.Element, group_class: str, tag: str) -> list[ET.Element]:
    """Every ``tag`` inside the groups whose class list has ``group_class``."""
    return [
        element
        for group in root.iter(f"{SVG}g")
        if group_class in group.get("class", "").split()
        for element in group.iter(f"{SVG}{tag}")
    ]


def _top_first(elements: list[ET.Element]) -> list[ET.Element]:
    return sorted(elements, key=lambda e: float(e.get("y", "0")))


def _bars(image: str) -> list[tuple[str, float, str]]:
    """(code label, bar width, the bar's own label) of each bar, top first."""
    root = _drawn(image)
    labels = _top_first(_in_group(_in_axis(root, "y"), "guides", "text"))
    bars = _top_first(_in_group(root, "bars", "rect"))
    values = _top_first(_in_group(root, "text-overlay", "text"))
    assert len(labels) == len(bars) == len(values)
    return [
        (label.text or "", float(bar.get("width", "0")), value.text or "")
        for label, bar, value in zip(labels, bars, values, strict=True)
    ]


def _in_axis(root: ET.Element, axis: str) -> ET.Element:
    (group,) = [
        g for g in root.iter(f"{SVG}g") if {"axis", axis} <= set(g.get("class", "").split())
    ]
    return group


def _shares(widths: list[float], total: float) -> list[float]:
    return [round(w / sum(widths) * total, 6) for w in widths]


def test_each_outcome_bar_is_labelled_with_its_attempts_and_share_of_all() -> None:
    bars = _bars(charts.bar_chart(["PTP", "RPC", "NO_ANSWER"], [50, 30, 20], "t"))

    assert [(code, label) for code, _, label in bars] == [
        ("PTP", f"{NBSP}50 (50.0%)"),
        ("RPC", f"{NBSP}30 (30.0%)"),
        ("NO_ANSWER", f"{NBSP}20 (20.0%)"),
    ]
    assert _shares([width for _, width, _ in bars], 100) == [50, 30, 20]


def test_a_bars_share_on_an_exact_tie_reads_as_on_the_dashboard() -> None:
    # 71.25 % and 28.75 %: rounded half up, as the tiles and hovers; was "71%" and "29%" (and
    # 1 of 8 read "12%", Python's half-to-even).
    bars = _bars(charts.bar_chart(["PTP", "RPC"], [57, 23], "t"))

    assert [label for _, _, label in bars] == [f"{NBSP}57 (71.3%)", f"{NBSP}23 (28.8%)"]


def test_a_month_of_many_codes_draws_the_largest_and_one_bar_for_the_rest() -> None:
    values = list(range(1000, 0, -1))
    bars = _bars(charts.bar_chart([f"CODE_{n}" for n in range(1000)], values, "t"))

    drawn = [*values[:29], sum(values[29:])]
    assert _shares([width for _, width, _ in bars], sum(values)) == pytest.approx(drawn)
    assert [code for code, _, _ in bars] == [*(f"CODE_{n}" for n in range(29)), "971 others"]


def test_codes_cut_to_the_same_label_keep_a_bar_each() -> None:
    # Placed by label, the second bar was drawn under the first (review: 40 hidden under 50).
    codes = ["CALLBACK_" + "X" * 50 + "_A", "CALLBACK_" + "X" * 50 + "_B"]
    bars = _bars(charts.bar_chart(codes, [50, 40], "t"))

    assert [label for _, _, label in bars] == [f"{NBSP}50 (55.6%)", f"{NBSP}40 (44.4%)"]
    assert _shares([width for _, width, _ in bars], 90) == [50, 40]


def test_a_code_label_is_shown_whole_up_to_48_characters_and_cut_to_48_past_that() -> None:
    whole = "NO_ANSWER_" + "X" * 37 + "Z"  # 48 characters: its last one, Z, stays
    longer = "CALLBACK_" + "X" * 37 + "ABC"  # 49: 47 of them (up to A) and an ellipsis
    bars = _bars(charts.bar_chart([whole, longer], [50, 40], "t"))

    assert [code for code, _, _ in bars] == [whole, "CALLBACK_" + "X" * 37 + "A…"]


def test_a_code_is_drawn_as_text_and_the_image_needs_nothing_from_outside() -> None:
    code = '<img src=x onerror=alert(1)> & "quoted"'
    image = charts.bar_chart([code], [3], "Outcome mix, <April> & more")
    root = _drawn(image)

    assert [c for c, _, _ in _bars(image)] == [code]
    assert "Outcome mix, <April> & more" in [t.text for t in root.iter(f"{SVG}text")]
    assert not [e for e in root.iter() if e.tag in (f"{SVG}img", f"{SVG}image", f"{SVG}a")]
    # Shown in an <img>: a link to a stylesheet, a font or a script would not load there.
    assert not [e.attrib for e in root.iter() if any("href" in k for k in e.attrib)]
    assert b"<?xml-stylesheet" not in base64.b64decode(_uri(image).split(",", 1)[1])


def test_the_mix_chart_of_a_month_of_many_long_codes_stays_a_small_image() -> None:
    # Before: one bar per code, each label whole; 1,000 codes drew an image 31,590 pixels tall.
    labels = [f"{n:03d}" + "X" * 253 for n in range(1000)]
    image = charts.bar_chart(labels, list(range(1000, 0, -1)), "Outcome mix")
    root = _drawn(image)

    assert float(root.get("width", "inf")) < 1200 and float(root.get("height", "inf")) < 1200
    assert len(image) < 60_000, len(image)  # stored in the event log by every run


def test_a_months_daily_rate_chart_is_a_small_image_in_the_event_log() -> None:
    days = [date(2026, 10, 1) + timedelta(days=n) for n in range(31)]
    noise = random.Random(23)  # rates that move day by day, as a month's do
    rates = {name: [noise.random() for _ in days] for name in KPI_NAMES}
    image = charts.rate_chart(days, rates, "Daily rates")

    assert len(_in_group(_drawn(image), "series", "path")) == len(KPI_NAMES)
    assert len(image) < 60_000, len(image)


def _lines_in_percent(image: str) -> list[list[float]]:
    """Each drawn line's points, read off the chart's own y axis."""
    root = _drawn(image)
    ticks = {}  # the value of each tick on the y axis: its height in pixels
    for guide in _in_axis(root, "y").iter(f"{SVG}g"):
        text, path = guide.find(f"{SVG}text"), guide.find(f"{SVG}path")
        if text is not None and path is not None:
            ticks[float(text.text or "")] = float(path.get("d", "").split()[1])
    low, high = min(ticks), max(ticks)
    per_pixel = (high - low) / (ticks[low] - ticks[high])
    paths = [path.get("d", "") for path in _in_group(root, "series", "path")]
    return [
        [low + (ticks[low] - float(y)) * per_pixel for y in re.findall(r"[\d.]+ ([\d.]+)", d)]
        for d in paths
    ]


def test_daily_rates_are_drawn_in_percent_with_a_gap_on_a_day_without_attempts() -> None:
    days = [date(2026, 4, 1) + timedelta(days=n) for n in range(5)]
    image = charts.rate_chart(days, {"contact_rate": [0.5, 0.4, None, 0.25, 0.3]}, "t")

    # Not 0 % on 3 April: nothing was attempted that day.
    lines = _lines_in_percent(image)
    assert [pytest.approx(line, abs=0.01) for line in lines] == [[50, 40], [25, 30]]


def test_chromium_draws_each_chart_at_its_size() -> None:
    days = [date(2026, 4, 1) + timedelta(days=n) for n in range(30)]
    images = [
        charts.bar_chart(["PTP (promise)", "NO_ANSWER (no_contact)"], [3, 7], "Outcome mix"),
        charts.rate_chart(days, {"contact_rate": [0.5] * 30, "rpc_rate": [0.2] * 30}, "Rates"),
    ]
    sizes = [(int(_drawn(i).get("width", "0")), int(_drawn(i).get("height", "0"))) for i in images]
    html = "".join(f'<img alt="chart" src="{_uri(image)}">' for image in images)

    with chromium_page() as page:
        page.set_content(html)
        # decode() fails on an image the browser cannot draw (an SVG that is not valid XML).
        drawn = page.evaluate(
            "Promise.all([...document.images].map("
            "i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])))"
        )
    assert [tuple(size) for size in drawn] == sizes
