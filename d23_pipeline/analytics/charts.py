"""Small SVG charts, embedded as data URIs in markdown metadata for the Dagster UI.

pygal draws them in milliseconds; matplotlib, which drew them as PNGs before, cost a run with
rows ~0.55 s of CPU and ~30 MB on its first chart. The UI shows them in an ``<img>``, where no
script runs, so pygal's tooltip script is left out.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING

from d23_pipeline.kpis import shown_percent

if TYPE_CHECKING:
    from pygal.graph.graph import Graph

# Bars drawn at the most, the rest summed into one; and the longest label shown whole. A month
# of thousands of codes, or of one code thousands of characters long, made an image too large to
# draw (or to hold in the event log).
MAX_BARS = 30
MAX_LABEL = 48

_BAR_COLOUR = "#3b6ea8"
_RATE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _config(colours: Sequence[str], **options: object) -> dict[str, object]:
    """pygal's options for a chart drawn in ``colours``: ``options`` and those every chart
    shares, a fixed size (an ``<img>`` of an SVG without one is drawn 300 px wide) and no
    reference to anything outside the image (pygal's tooltip script; the config it writes
    inline never runs in an ``<img>``)."""
    from pygal.style import Style

    style = Style(
        background="white",
        plot_background="white",
        font_family="DejaVu Sans, Arial, sans-serif",
        # Codes and dates in a monospace font: pygal sizes the margins for 0.6 em per
        # character, which a monospace font matches; a 48-character code was cut off.
        label_font_family="DejaVu Sans Mono, Menlo, Consolas, monospace",
        foreground="#333",
        foreground_strong="#111",
        foreground_subtle="#ccc",
        colors=tuple(colours),
        title_font_size=16,
        label_font_size=11,
        major_label_font_size=11,
        value_font_size=10,
        legend_font_size=11,
    )
    return {
        "style": style,
        "explicit_size": True,
        "js": [],
        "disable_xml_declaration": True,
        "truncate_label": -1,  # labels are cut here, to MAX_LABEL, with an ellipsis
        **options,
    }


def _markdown_image(chart: Graph, alt: str) -> str:
    encoded = base64.b64encode(chart.render(is_unicode=True).encode()).decode()
    return f"![{alt}](data:image/svg+xml;base64,{encoded})"


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str) -> str:
    """A horizontal bar chart, largest first at the top, as a markdown image: the first
    :data:`MAX_BARS` - 1 bars and the rest summed into one."""
    import pygal

    labels = [
        label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…" for label in labels
    ]
    values = list(values)
    if len(labels) > MAX_BARS:
        rest = len(labels) - (MAX_BARS - 1)
        labels = [*labels[: MAX_BARS - 1], f"{rest:,} others"]
        values = [*values[: MAX_BARS - 1], sum(values[MAX_BARS - 1 :])]
    total = sum(values) or 1
    chart = pygal.HorizontalBar(
        **_config(
            (_BAR_COLOUR,),
            width=760,
            height=int(22 * max(len(labels), 3) + 120),
            title=title,
            show_legend=False,
            print_values=True,
            print_values_position="top",
            formatter=lambda v: f"\N{NO-BREAK SPACE}{v:,} ({shown_percent(v / total)}%)",
            x_title="attempts",
            margin_right=90,  # room for the longest bar's label
            # Each bar's label starts at its end rather than straddling it.
            css=("file://style.css", "file://graph.css", "inline:text.value {text-anchor: start}"),
            # Every bar is labelled with its attempts: ticks would only crowd the axis.
            show_x_labels=False,
        )
    )
    # pygal draws the first bar at the bottom. Positions, not the labels, place the bars: two
    # codes cut to the same label keep two bars.
    chart.x_labels = list(reversed(labels))
    chart.add("attempts", list(reversed(values)))
    return _markdown_image(chart, title)


def rate_chart(x: Sequence[date], series: Mapping[str, Sequence[float | None]], title: str) -> str:
    """One line per rate (a share between 0 and 1) over the days ``x``, in percent, as a
    markdown image; a day without a value is a gap in its line, not a zero."""
    import pygal

    shown = [[None if v is None else v * 100 for v in values] for values in series.values()]
    top = max((v for values in shown for v in values if v is not None), default=0)
    chart = pygal.Line(
        **_config(
            _RATE_COLOURS,
            width=800,
            height=380,
            title=title,
            y_title="% (see the KPI definitions)",
            range=(0, max(10, -(-top // 10) * 10)),
            show_dots=False,  # a dot per day doubles the image (a description each)
            allow_interruptions=True,
            legend_at_bottom=True,
            legend_at_bottom_columns=min(len(series), 3) or 1,
            x_label_rotation=30,
            x_labels_major_every=7,
            show_minor_x_labels=False,
        )
    )
    chart.x_labels = [f"{day:%d %b}" for day in x]
    for name, values in zip(series, shown, strict=True):
        chart.add(name, values)
    return _markdown_image(chart, title)
