"""Small PNG charts, embedded as data URIs in markdown metadata for the Dagster UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot() -> Any:
    """matplotlib's pyplot, imported on the first chart: it costs ~30 MB and ~0.3 s, which the
    definitions (loaded by the webserver, the daemon and every run) should not pay."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _markdown_image(fig: Figure, alt: str) -> str:
    from PIL import Image  # matplotlib's own dependency

    plt = _pyplot()
    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    # Every run stores its charts in the event log: a palette of 256 colours looks the same
    # and takes a third of the bytes (a month's daily rates: 121 KB as drawn, 45 KB).
    drawn.seek(0)
    with Image.open(drawn) as image:
        palette = image.convert("RGB").quantize(colors=256)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


# Bars drawn at the most, the rest summed into one; and the longest label shown whole. A month
# of thousands of codes, or of one code thousands of characters long, made an image too large to
# draw (or to hold in the event log).
MAX_BARS = 30
MAX_LABEL = 48


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str) -> str:
    """A horizontal bar chart, largest first at the top, as a markdown image: the first
    :data:`MAX_BARS` - 1 bars and the rest summed into one."""
    labels = [
        label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…" for label in labels
    ]
    values = list(values)
    if len(labels) > MAX_BARS:
        rest = len(labels) - (MAX_BARS - 1)
        labels = [*labels[: MAX_BARS - 1], f"{rest:,} others"]
        values = [*values[: MAX_BARS - 1], sum(values[MAX_BARS - 1 :])]
    fig, ax = _pyplot().subplots(figsize=(7, 0.35 * max(len(labels), 3) + 1))
    # Positions, not the labels, place the bars: two codes cut to the same label keep two bars.
    bars = ax.barh(range(len(labels)), list(reversed(values)), color="#3b6ea8")
    ax.set_yticks(range(len(labels)), list(reversed(labels)))
    total = sum(values) or 1
    ax.bar_label(bars, labels=[f" {v:,} ({v / total:.0%})" for v in reversed(values)], fontsize=8)
    ax.margins(x=0.2)
    ax.set_title(title)
    ax.set_xlabel("attempts")
    return _markdown_image(fig, title)


def rate_chart(
    x: Sequence[object], series: Mapping[str, Sequence[float | None]], title: str
) -> str:
    """One line per rate (a share between 0 and 1) over ``x``, in percent, as a markdown image."""
    fig, ax = _pyplot().subplots(figsize=(8, 3.5))
    for name, values in series.items():
        ax.plot(list(x), [float("nan") if v is None else v * 100 for v in values], label=name)
    ax.set_title(title)
    ax.set_ylabel("% (see the KPI definitions)")
    ax.set_ylim(bottom=0)
    # Right of the axes, never over the lines.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.autofmt_xdate()
    return _markdown_image(fig, title)
