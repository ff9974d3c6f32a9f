"""The outcome dashboard: one self-contained HTML file that an analyst opens in a browser.

The charts are Plotly's, written as the JSON its JavaScript draws. That bundle ships inside the
``plotly`` wheel and is inlined once in the page's head, so the file works offline, from a file
share, with no server and no CDN.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
from filelock import FileLock

from d23_pipeline.analytics.outcome_classes import OutcomeClass, quoted, shown_code
from d23_pipeline.analytics.outcome_mix import load_classes
from d23_pipeline.kpis import BROKEN_PROMISE_SHARE, KPI_NAMES, KPIS, shown_percent
from d23_pipeline.months import month_index, month_name, months_between
from d23_pipeline.settings import LOCK_TIMEOUT_S
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.store import execute, fetch_dicts, transaction
from d23_pipeline.wording import counted

KPI_LABELS = {kpi.name: kpi.label for kpi in KPIS}
# Each KPI as numerator / denominator, in the KPI tables' count columns.
KPI_FRACTIONS = {kpi.name: (kpi.numerator.column, kpi.denominator.column) for kpi in KPIS}
KPI_BY_NAME = {kpi.name: kpi for kpi in KPIS}

# A promise breaks weeks after it is logged (the simulator: within two weeks). A month read less
# than this long after its end may still see its broken-promise share rise on the next read.
PROMISE_MATURITY = timedelta(days=30)

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # ISO weekdays 1..7
# One hue per outcome class, darkest and lightest shade, so a code's class reads off its colour
# in the stacked mix; a class's codes get shades evenly spaced between the two, each its own.
CLASS_COLOURS = {
    "promise": ("#1b7837", "#a6dba0"),
    "right_party_contact": ("#2166ac", "#92c5de"),
    "refusal": ("#b2182b", "#f4a582"),
    "contact": ("#e08214", "#fee0b6"),
    "no_contact": ("#4d4d4d", "#e0e0e0"),
    "unmapped": ("#762a83", "#c2a5cf"),
}
LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
                "#7b4173")  # fmt: skip


@dataclass(frozen=True)
class MonthFreshness:
    """How complete a month's numbers are."""

    month: date
    rows: int
    # Its KPIs' attempts: the active rows (rows counts the deactivated ones too); 0 without KPIs.
    attempts: int
    last_read: datetime | None
    status: str  # "partial", "unfinished", "maturing", "settled" or "no KPIs"
    rejected_rows: int
    unmapped_attempts: int
    unverified_slices: int
    # Rows found gone that its last read did not mark deleted (not proven, or held): the active
    # ones still counted as attempts.
    deletions_not_applied: int


@dataclass(frozen=True)
class DashboardData:
    """Everything the page shows, read from the warehouse in one go."""

    generated_at: datetime
    timezone: str
    kpis: list[dict[str, Any]]
    kpis_by_channel: list[dict[str, Any]]
    kpis_by_source: list[dict[str, Any]]
    outcome_shares: list[dict[str, Any]]
    weekday_hour: list[dict[str, Any]]
    channel_daily: list[dict[str, Any]]
    freshness: list[MonthFreshness]
    rejected: list[dict[str, Any]]
    unmapped: list[dict[str, Any]]
    unverified_slices: list[dict[str, Any]]
    # Months whose stored mix classes codes otherwise than the current mapping, and those codes.
    other_mapping: list[dict[str, Any]]
    # Months whose last read left rows that look deleted unmarked (not proven, or held).
    deletions_pending: list[dict[str, Any]]
    # Months whose stored KPIs (tiles, trend) differ from their stored outcome mix (the panels).
    kpis_behind_mix: list[date]
    # Months whose stored outcome mix no longer counts d23.logs as it is (merged since).
    mix_behind_logs: list[date]

    def problem_count(self) -> int:
        """The open data-quality problems the page lists: unverified slices, each month's
        reasons for rejects, unmapped codes, months counted with another mapping, months
        whose outcome mix lags d23.logs or whose KPIs lag their outcome mix, each month's
        reasons for deletions not applied, and months without KPIs (those whose outcome mix
        the KPIs lag are counted once)."""
        return (
            len(self.unverified_slices)
            + len(self.rejected)
            + len(self.unmapped)
            + len({m["month"] for m in self.other_mapping})
            + len(self.kpis_behind_mix)
            + len(self.mix_behind_logs)
            + len(self.deletions_pending)
            + len(self.months_in("no KPIs") - set(self.kpis_behind_mix))
        )

    def doubts_about(self, month: date) -> list[str]:
        """Why ``month``'s KPIs may not count the source as it is: its open data-quality
        problems that touch its counts (not its rejects or unmapped codes, which the KPIs
        leave out or count as attempts by design); empty if there is none."""
        partition = month.isoformat()
        gone = sum(p["attempts"] for p in self.deletions_pending if p["partition"] == partition)
        unverified = sum(1 for s in self.unverified_slices if s["partition"] == partition)
        reasons = []
        if gone:
            reasons.append(
                f"{counted(gone, 'attempt')} counted that its last read did not find "
                "(deletions not applied)"
            )
        if unverified:
            reasons.append(f"{counted(unverified, 'slice')} not proven complete")
        if any(m["month"] == month for m in self.other_mapping):
            reasons.append("counted with another outcome mapping")
        if month in self.mix_behind_logs:
            reasons.append("outcome mix older than d23.logs")
        if month in self.kpis_behind_mix:
            reasons.append("KPIs older than their outcome mix")
        return reasons

    def tile_months(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The KPIs of the latest month that has ended with attempts (a month without any has
        no rate to show), and of the month before it."""
        ended = [k for k in self.ended_months() if k["attempts"]]
        if not ended:
            return None, None
        latest = ended[-1]
        before = [k for k in ended if k["month"] == previous_month(latest["month"])]
        return latest, before[0] if before else None

    def months_in(self, *statuses: str) -> set[date]:
        """The months whose freshness is one of ``statuses``."""
        return {f.month for f in self.freshness if f.status in statuses}

    def ended_months(self) -> list[dict[str, Any]]:
        """The KPIs of the months that have ended and been read since, oldest first."""
        unfinished = self.months_in("unfinished")
        return [
            k
            for k in self.kpis
            if month_end(k["month"]) <= self.generated_at and k["month"] not in unfinished
        ]


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def month_end(month: date) -> datetime:
    return month_start(_shift(month, 1))


def previous_month(month: date) -> date:
    return _shift(month, -1)


def _shift(month: date, months: int) -> date:
    return date.fromisoformat(f"{month_name(month_index(month.isoformat()) + months)}-01")


def month_status(month: date, last_read: datetime | None, now: datetime) -> str:
    """``partial`` while the month runs, ``unfinished`` once it has ended if its last read came
    before its end (its last days are missing), ``maturing`` until a read long enough after its
    end has seen its promises break, ``settled`` after that."""
    if now < month_end(month):
        return "partial"
    if last_read is not None and last_read < month_end(month):
        return "unfinished"
    if last_read is None or last_read < month_end(month) + PROMISE_MATURITY:
        return "maturing"
    return "settled"


def month_state(month: date, last_read: datetime | None, now: datetime) -> str:
    """:func:`month_status` in the page's words, e.g. ``partial: the month is still running``."""
    return _STATUS_TEXT[month_status(month, last_read, now)]


def calendar_months(first: date, last: date) -> list[date]:
    """Every month from ``first`` to ``last``, both included."""
    return [date.fromisoformat(f"{m}-01") for m in months_between(str(first), str(last))]


def not_loaded(kpis: Sequence[Mapping[str, Any]], now: datetime) -> list[date]:
    """The months from the first with KPIs to the last that has ended (or the last with KPIs)
    that have none: never read, or read by a run that stopped before its KPIs. The page names
    them; left out silently, the trends would join the months on either side as if they were
    next to each other, and a month missing at the end would leave the one before it looking
    like the latest. The month just begun is not counted: it waits for its first refresh."""
    if not kpis:
        return []
    utc = now.astimezone(UTC)
    last_ended = previous_month(date(utc.year, utc.month, 1))
    loaded = {k["month"] for k in kpis}
    return [m for m in calendar_months(kpis[0]["month"], max(kpis[-1]["month"], last_ended))
            if m not in loaded]  # fmt: skip


def counted_until(
    months: Collection[date], now: datetime, last_reads: Mapping[date, datetime | None]
) -> dict[date, datetime]:
    """How far each of ``months`` is counted: up to its last read, or ``now`` (a month loaded
    before reads were recorded)."""
    return {m: min(now, last_reads.get(m) or now) for m in months}


def local_days(until: Mapping[date, datetime], timezone: str) -> list[date]:
    """The days in ``timezone`` that the UTC months of ``until`` cover, each month up to its
    instant there (:func:`counted_until`): the days the channel panel draws, 0 where nothing was
    logged (a month not loaded, and days not read yet or still to come, are not drawn at
    all)."""
    zone = ZoneInfo(timezone)
    days: set[date] = set()
    for month, counted_to in until.items():
        start, end = month_start(month), min(month_end(month), counted_to)
        if start >= end:
            continue
        day = start.astimezone(zone).date()
        last = (end - timedelta(microseconds=1)).astimezone(zone).date()
        while day <= last:
            days.add(day)
            day += timedelta(days=1)
    return sorted(days)


def partial_days(days: Sequence[date], until: Mapping[date, datetime], timezone: str) -> set[date]:
    """The ``days`` (in ``timezone``) only partly counted: running past the instant a UTC month
    they fall in is counted up to (:func:`counted_until`: today, or a day the month's last read
    came in), or reaching into a UTC month not in ``until`` (not loaded, or before or after the
    months shown: a month's first or last local day away from UTC)."""
    zone = ZoneInfo(timezone)
    return {day for day in days if _counted_short(day, zone, until)}


def _counted_short(day: date, zone: ZoneInfo, until: Mapping[date, datetime]) -> bool:
    """Whether part of the local ``day`` lies past what its UTC months are counted up to."""
    end = _utc_span(day, zone)[1]
    return any(
        month not in until or until[month] < min(end, month_end(month))
        for month in _utc_months(day, zone)
    )


# Offsets are probed this often, and a change found between two probes is bisected to the
# second: no zone changes its offset twice within 6 hours (changes are months apart).
_OFFSET_PROBE_S = 6 * 3600


def utc_offset_spans(timezone: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Spans tiling ``[since, until)``, each of one UTC offset of ``timezone`` (in seconds), as
    zoneinfo gives them: ``utc_from``, ``utc_until``, ``offset_s``."""
    zone = ZoneInfo(timezone)

    def offset_at(second: int) -> int:
        offset = datetime.fromtimestamp(second, UTC).astimezone(zone).utcoffset()
        return int(offset.total_seconds()) if offset is not None else 0

    first, end = int(since.timestamp()), int(until.timestamp())
    changes = [first]
    probes = [*range(first, end, _OFFSET_PROBE_S), end - 1]
    for before, after in zip(probes, probes[1:], strict=False):
        was = offset_at(before)
        if was != offset_at(after):
            old, new = before, after  # the change is at ``new`` or earlier, after ``old``
            while new - old > 1:
                middle = (old + new) // 2
                old, new = (middle, new) if offset_at(middle) == was else (old, middle)
            changes.append(new)
    edges = [*changes, end]
    return [
        {
            "utc_from": datetime.fromtimestamp(start, UTC),
            "utc_until": datetime.fromtimestamp(stop, UTC),
            "offset_s": offset_at(start),
        }
        for start, stop in zip(edges, edges[1:], strict=False)
    ]


def _utc_span(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC instants a local day runs from and to."""
    start = datetime.combine(day, time.min, zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time.min, zone).astimezone(UTC)
    return start, end


def _utc_months(day: date, zone: ZoneInfo) -> set[date]:
    """The UTC months a local day falls in (two for a month's edge day away from UTC)."""
    start, end = _utc_span(day, zone)
    last = end - timedelta(microseconds=1)
    return {date(start.year, start.month, 1), date(last.year, last.month, 1)}


def gather(
    con: duckdb.DuckDBPyConnection,
    classes: Mapping[str, OutcomeClass],
    timezone: str,
    now: datetime,
) -> DashboardData:
    """Read what the page shows: every month that has KPIs, and the data-quality state, in one
    transaction, so that every panel shows the same committed state (on DuckLake, other runs
    commit while it reads)."""
    with transaction(con):
        return _gather(con, classes, timezone, now)


def _gather(
    con: duckdb.DuckDBPyConnection,
    classes: Mapping[str, OutcomeClass],
    timezone: str,
    now: datetime,
) -> DashboardData:
    kpis = fetch_dicts(con, sql.OUTCOME_KPIS_ALL)
    reads = {r["partition"]: r for r in fetch_dicts(con, sql.MONTHS_LAST_READ)}
    weekday_hour: list[dict[str, Any]] = []
    channel_daily: list[dict[str, Any]] = []
    other_mapping: list[dict[str, Any]] = []
    daily_otherwise: list[date] = []
    if kpis:
        load_classes(con, classes)
        other_mapping = fetch_dicts(con, sql.OTHER_MAPPING_CODES)
        # The months d23.logs holds: a month read by a run that stopped before its KPIs too,
        # also one after the last month with KPIs (the panels count d23.logs, not the KPIs).
        shown = sorted({k["month"] for k in kpis} | {date.fromisoformat(p) for p in reads})
        window = {
            "since": month_start(shown[0]),
            "until": month_end(shown[-1]),
            "timezone": timezone,
        }
        execute(con, sql.CREATE_LOCAL_OFFSETS)
        for span in utc_offset_spans(timezone, window["since"], window["until"]):
            execute(con, sql.INSERT_LOCAL_OFFSET, span)
        execute(con, sql.ATTEMPTS_BY_LOCAL_TIME, window)
        weekday_hour = fetch_dicts(con, sql.CONTACT_BY_WEEKDAY_HOUR)
        daily = {"since": window["since"], "until": window["until"]}
        daily_otherwise = [r["month"] for r in fetch_dicts(con, sql.DAILY_COUNTED_OTHERWISE, daily)]
        last_reads = {date.fromisoformat(p): r["last_read"] for p, r in reads.items()}
        until = counted_until(shown, now, last_reads)
        days = local_days(until, timezone)
        partial = partial_days(days, until, timezone)
        channel_daily = [
            {**r, "partial": r["day"] in partial}
            for r in fetch_dicts(con, sql.CHANNEL_DAILY, {"days": days})
        ]
    rejected = fetch_dicts(con, sql.REJECTED_ROWS_BY_MONTH)
    unmapped = fetch_dicts(con, sql.UNMAPPED_CODES_ALL)
    unverified = fetch_dicts(con, sql.UNVERIFIED_SLICES)
    pending = fetch_dicts(con, sql.DELETIONS_PENDING_ALL)
    freshness = []
    kpis_of = {k["month"]: k for k in kpis}
    # A month merged by a run that stopped before its KPIs is listed whatever the other months.
    read_months = {date.fromisoformat(p) for p in reads}
    for month in sorted({*kpis_of, *not_loaded(kpis, now), *read_months}):
        partition = month.isoformat()
        read = reads.get(partition, {})
        freshness.append(
            MonthFreshness(
                month=month,
                rows=read.get("rows", 0),
                attempts=kpis_of[month]["attempts"] if month in kpis_of else 0,
                last_read=read.get("last_read"),
                status=(
                    month_status(month, read.get("last_read"), now)
                    if month in kpis_of
                    else "no KPIs"
                ),
                rejected_rows=sum(r["rows"] for r in rejected if r["partition"] == partition),
                unmapped_attempts=kpis_of[month]["unmapped_attempts"] if month in kpis_of else 0,
                unverified_slices=sum(1 for s in unverified if s["partition"] == partition),
                deletions_not_applied=sum(
                    r["rows"] for r in pending if r["partition"] == partition
                ),
            )
        )
    return DashboardData(
        generated_at=now,
        timezone=timezone,
        kpis=kpis,
        # The panels of the outcome mix show the months the trend does: a month whose run
        # stopped before its KPIs has a mix, but no partial or maturing state to draw it with.
        kpis_by_channel=_of_months(fetch_dicts(con, sql.OUTCOME_KPIS_BY_CHANNEL), kpis_of),
        kpis_by_source=_of_months(fetch_dicts(con, sql.OUTCOME_KPIS_BY_SOURCE), kpis_of),
        outcome_shares=_of_months(fetch_dicts(con, sql.OUTCOME_SHARES_BY_MONTH), kpis_of),
        weekday_hour=weekday_hour,
        channel_daily=channel_daily,
        freshness=freshness,
        rejected=rejected,
        unmapped=unmapped,
        unverified_slices=unverified,
        other_mapping=other_mapping,
        deletions_pending=pending,
        kpis_behind_mix=[r["month"] for r in fetch_dicts(con, sql.KPIS_BEHIND_MIX)],
        # A month whose monthly mix counts with an earlier mapping is listed as such, its daily
        # table with it: the rebuild that section names rebuilds both.
        mix_behind_logs=sorted(
            {r["month"] for r in fetch_dicts(con, sql.MIX_BEHIND_LOGS)}
            | (set(daily_otherwise) - {m["month"] for m in other_mapping})
        ),
    )


# The outcome steps of a month, as `dagster asset materialize --select` takes them.
_REBUILD_SELECTION = "'d23/outcome_mix_monthly*,d23/outcome_mix_daily*'"


def _of_months(rows: list[dict[str, Any]], months: Collection[date]) -> list[dict[str, Any]]:
    return [r for r in rows if r["month"] in months]


# --- formatting -------------------------------------------------------------------------------


def percent(rate: float | None) -> str:
    """A rate as the page shows it: a percentage with one decimal."""
    return "n/a" if rate is None else f"{shown_percent(rate)}%"


def _points(rate: float | None, before: float | None) -> str:
    # From the two rates as shown: from the exact ones, 35.2% against 35.2% could read +0.1 pp.
    if rate is None or before is None:
        return "no comparison"
    return f"{shown_percent(rate) - shown_percent(before):+} pp"


def _month_label(month: date) -> str:
    return f"{month:%b %Y}"


def _chart_month(month: date, partial: Collection[date]) -> str:
    """A month on a chart's axis, the running (``partial``) one named "so far"."""
    return _month_label(month) + " (so far)" * (month in partial)


def _pct(rate: float | None) -> float | None:
    """``rate`` in percent as the page shows it: a hover's ``.1f`` of it is the tile's digit."""
    return None if rate is None else float(shown_percent(rate))


def _local(moment: datetime | None, timezone: str) -> str:
    return "never" if moment is None else f"{moment.astimezone(ZoneInfo(timezone)):%Y-%m-%d %H:%M}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> str:
    if not rows:
        return f'<p class="ok">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- charts -----------------------------------------------------------------------------------
# Each chart is written as the JSON figure Plotly's JavaScript draws, ``{"data": [traces],
# "layout": {...}}``: plotly's Python figure objects would load its validators (~22 MB, on the
# last step of every run) only to write the same JSON. What they added is done here: the
# plotly_white template inlined, make_subplots' grid, "Blues" as a list of colours.

Figure = dict[str, Any]

# plotly.py's "Blues" (ColorBrewer's), which it sends as a list; plotly.js's own is another scale.
BLUES = ("rgb(247,251,255)", "rgb(222,235,247)", "rgb(198,219,239)", "rgb(158,202,225)",
         "rgb(107,174,214)", "rgb(66,146,198)", "rgb(33,113,181)", "rgb(8,81,156)",
         "rgb(8,48,107)")  # fmt: skip
_CONFIG = {"displaylogo": False, "responsive": True}
# A temporary file of the page older than this is a write that was killed; a write takes seconds.
ABANDONED_WRITE_S = 3600


def _plotly_file(*parts: str) -> Traversable:
    """A file the plotly wheel ships (``package_data``), found without loading its figures."""
    return resources.files("plotly").joinpath("package_data", *parts)


@functools.cache
def _template() -> dict[str, Any]:
    """The plotly_white template, which a figure carries whole (plotly.js knows no names)."""
    template: dict[str, Any] = json.loads(
        _plotly_file("templates", "plotly_white.json").read_bytes()
    )
    return template


def _layout(fig: Figure, height: int, y_title: str | None = None) -> Figure:
    # Legends sit right of the plot, never over the lines.
    fig["layout"].update(
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"x": 1.02, "y": 1, "xanchor": "left"},
        template=_template(),
    )
    if y_title:
        for axis in _axes(fig, "y"):
            axis.update(title={"text": y_title}, rangemode="tozero")
    return fig


def _axes(fig: Figure, letter: str) -> list[dict[str, Any]]:
    """Every ``x`` or ``y`` axis of the figure: each cell's, or the one of a single plot."""
    layout = fig["layout"]
    names = [name for name in layout if name.startswith(f"{letter}axis")] or [f"{letter}axis"]
    return [layout.setdefault(name, {}) for name in names]


def _cell(row: int, col: int, cols: int) -> str:
    """The axes' number of a grid cell (1-based, from the top left, row by row; "" for 1)."""
    number = (row - 1) * cols + col
    return "" if number == 1 else str(number)


def _subplots(
    rows: int,
    cols: int,
    titles: Sequence[str],
    vertical_spacing: float | None = None,
    shared_xaxes: bool = False,
) -> Figure:
    """A figure without traces on a grid of ``rows`` x ``cols`` cells, each titled, laid out as
    plotly's make_subplots(rows, cols, subplot_titles=titles, ...) lays it out."""
    h_gap = 0.2 / cols
    v_gap = 0.5 / rows if vertical_spacing is None else vertical_spacing
    width = (1.0 - h_gap * (cols - 1)) / cols
    height = (1.0 - v_gap * (rows - 1)) / rows
    layout: dict[str, Any] = {"annotations": []}
    for row in range(1, rows + 1):
        # Cells stack up from the bottom. Sizes are summed, not multiplied, as make_subplots
        # sums them: the same floats to the last digit.
        below = rows - row
        bottom = sum([height] * below) + below * v_gap
        y = [max(bottom, 0.0), min(bottom + height, 1.0)]
        for col in range(1, cols + 1):
            left = sum([width] * (col - 1)) + (col - 1) * h_gap
            x = [left, left + width]
            cell = _cell(row, col, cols)
            layout[f"xaxis{cell}"] = {"anchor": f"y{cell}", "domain": x}
            layout[f"yaxis{cell}"] = {"anchor": f"x{cell}", "domain": y}
            if shared_xaxes and row < rows:
                # The bottom cell's axis shows the ticks; the ones above zoom with it.
                layout[f"xaxis{cell}"].update(
                    matches=f"x{_cell(rows, col, cols)}", showticklabels=False
                )
            layout["annotations"].append(
                {"text": titles[(row - 1) * cols + col - 1], "x": sum(x) / 2.0, "y": y[1],
                 "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                 "showarrow": False, "font": {"size": 16}}
            )  # fmt: skip
    return {"data": [], "layout": layout}


def _points_of(rows: Sequence[Mapping[str, Any]], kpi: str, partial: Collection[date]) -> list:
    """``kpi`` of each row in percent; the broken-promise share none for the ``partial``
    months, whose promises have had days, not weeks, to break."""
    skipped = partial if kpi == BROKEN_PROMISE_SHARE.name else ()
    return [None if r["month"] in skipped else _pct(r[kpi]) for r in rows]


def _with_gaps(
    rows: Sequence[Mapping[str, Any]], months: Sequence[date]
) -> list[Mapping[str, Any]]:
    """``rows`` (one per month) with an empty row for each of ``months`` they lack: the line
    breaks there instead of joining the months on either side."""
    by_month = {r["month"]: r for r in rows}
    empty = dict.fromkeys(rows[0], None) if rows else {}
    return [by_month.get(month, {**empty, "month": month}) for month in months]


def _all_months(rows: Sequence[Mapping[str, Any]]) -> list[date]:
    """Every calendar month from the first of ``rows`` to the last."""
    months = sorted({r["month"] for r in rows})
    return calendar_months(months[0], months[-1]) if months else []


def _months_of(
    rows: Sequence[Mapping[str, Any]], partial: Collection[date], rising: Collection[date] = ()
) -> dict[str, Any]:
    """The x values and markers of a trend: the running month named "so far" and drawn
    hollow, so that its few days do not read as a month's change; the ``rising`` months (a
    maturing month's broken-promise share) drawn hollow too, their hover saying why."""
    return {
        "x": [_chart_month(r["month"], partial) for r in rows],
        "marker": {
            "symbol": [
                "circle-open" if r["month"] in partial or r["month"] in rising else "circle"
                for r in rows
            ]
        },
        "text": [", maturing: may still rise" if r["month"] in rising else "" for r in rows],
    }


def _rising(kpi: str, maturing: Collection[date]) -> Collection[date]:
    """The months whose ``kpi`` may still rise: the maturing ones, for the broken-promise
    share (promises still to come due); none for the other KPIs."""
    return maturing if kpi == BROKEN_PROMISE_SHARE.name else ()


def _counts_of(rows: Sequence[Mapping[str, Any]], kpi: str) -> list[list[int]]:
    """Each point's numerator and denominator, for its hover (:func:`_counts_hover`)."""
    numerator, denominator = KPI_FRACTIONS[kpi]
    return [[r[numerator], r[denominator]] for r in rows]


def _counts_hover(kpi: str) -> str:
    """What a point's hover shows after its rate: the counts it is made of, e.g. ``(12 of 40
    right-party contacts)``. A small group's rate moves by whole points with one attempt."""
    counted = KPI_BY_NAME[kpi].denominator.description
    return f" (%{{customdata[0]:,}} of %{{customdata[1]:,}} {counted})"


def _kpi_line(
    rows: Sequence[Mapping[str, Any]],
    kpi: str,
    partial: Collection[date],
    maturing: Collection[date],
    hover_prefix: str = "",
) -> dict[str, Any]:
    """One KPI's line over ``rows`` (one per month): its points, markers and hover, which names
    the KPI and the counts behind each rate."""
    return {
        "type": "scatter",
        **_months_of(rows, partial, _rising(kpi, maturing)),
        "y": _points_of(rows, kpi, partial),
        "customdata": _counts_of(rows, kpi),
        "mode": "lines+markers",
        "hovertemplate": f"{hover_prefix}%{{x}}: %{{y:.1f}}%{_counts_hover(kpi)}%{{text}}"
        f"<extra>{KPI_LABELS[kpi]}</extra>",
    }


# A hover names its line by the trace's name, never by text from the API pasted into the
# template, where "%{...}" would be read as a placeholder.
_TRACE_NAME = "%{fullData.name}"


def chart_label(value: str, joined_by: str | None = None) -> str:
    """A channel, source or outcome code from the API as a chart's legend and hover show it:
    quoted where it would not read unambiguously (:func:`shown_code`: ``"CALL "`` is not a
    second CALL; with ``joined_by``, also where it holds that, so that a pair joined by it reads
    one way only), and what plotly would read as markup in entities, so it shows as typed."""
    shown = shown_code(value)
    if joined_by is not None and shown == value and joined_by in value:
        shown = quoted(value)
    return html.escape(shown, quote=False)


def kpi_trend_chart(
    kpis: Sequence[Mapping[str, Any]],
    partial: Collection[date] = (),
    maturing: Collection[date] = (),
) -> Figure:
    """One line per KPI over the months (see :func:`_points_of` for ``partial``,
    :func:`_months_of` for ``maturing``), broken at months without KPIs."""
    kpis = _with_gaps(kpis, _all_months(kpis))
    traces = [
        {**_kpi_line(kpis, name, partial, maturing), "name": label}
        for name, label in KPI_LABELS.items()
    ]
    return _layout({"data": traces, "layout": {}}, 420, "% (see definitions)")


def kpi_split_chart(
    rows: Sequence[Mapping[str, Any]],
    dimension: str,
    partial: Collection[date] = (),
    maturing: Collection[date] = (),
) -> Figure:
    """One panel per KPI, one line per value of ``dimension`` over the months (see
    :func:`_points_of` for ``partial``, :func:`_months_of` for ``maturing``), broken at months
    without its attempts."""
    fig = _subplots(2, 3, list(KPI_LABELS.values()))
    values = sorted({r[dimension] for r in rows})
    months = _all_months(rows)
    for i, value in enumerate(values):
        # A month the value had no attempts in is a gap in its line, as one without KPIs is.
        mine = _with_gaps([r for r in rows if r[dimension] == value], months)
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        for j, name in enumerate(KPI_LABELS):
            cell = _cell(j // 3 + 1, j % 3 + 1, 3)
            fig["data"].append(
                {
                    **_kpi_line(mine, name, partial, maturing, f"{_TRACE_NAME}, "),
                    "name": chart_label(value),
                    "legendgroup": value,
                    "showlegend": j == 0,
                    "line": {"color": colour},
                    "xaxis": f"x{cell}",
                    "yaxis": f"y{cell}",
                }
            )
    return _layout(fig, 560, "%")


def outcome_mix_chart(
    shares: Sequence[Mapping[str, Any]], partial: Collection[date] = ()
) -> Figure:
    """Each code's share of the month's attempts, stacked to 100 %, coloured by its class; the
    ``partial`` (running) month named "so far", as in the trends, and a month without a mix
    between two with one left an empty slot."""
    codes: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in shares:
        codes.setdefault((r["outcome_class"], r["outcome_option"]), []).append(r)
    per_class = Counter(outcome_class for outcome_class, _ in codes)
    traces = []
    seen: Counter[str] = Counter()
    for (outcome_class, code), rows in sorted(
        codes.items(), key=lambda item: _class_order(item[0])
    ):
        shade = class_shade(outcome_class, seen[outcome_class], per_class[outcome_class])
        seen[outcome_class] += 1
        traces.append(
            {
                "type": "bar",
                "x": [_chart_month(r["month"], partial) for r in rows],
                "y": [_pct(r["share"]) for r in rows],
                "customdata": [r["attempts"] for r in rows],
                "name": f"{chart_label(code)} ({outcome_class})",
                "legendgroup": outcome_class,
                "marker": {"color": shade},
                "hovertemplate": f"{_TRACE_NAME}, %{{x}}: %{{y:.1f}}% "
                "(%{customdata:,} attempts)<extra></extra>",
            }
        )
    slots = [_chart_month(month, partial) for month in _all_months(shares)]
    fig = {
        "data": traces,
        "layout": {
            "barmode": "stack",
            "xaxis": {"type": "category", "categoryorder": "array", "categoryarray": slots},
        },
    }
    return _layout(fig, 480, "% of the month's attempts")


def class_shade(outcome_class: str, index: int, count: int) -> str:
    """The colour of a class's ``index``-th code of ``count``: from its darkest shade (the
    first) to its lightest (the last)."""
    dark, light = CLASS_COLOURS.get(outcome_class, CLASS_COLOURS["unmapped"])
    share = index / (count - 1) if count > 1 else 0.0
    channels = (
        round(int(dark[i : i + 2], 16) * (1 - share) + int(light[i : i + 2], 16) * share)
        for i in (1, 3, 5)
    )
    return "#" + "".join(f"{channel:02x}" for channel in channels)


def _class_order(key: tuple[str, str]) -> tuple[int, str]:
    outcome_class, code = key
    order = list(CLASS_COLOURS)
    return (order.index(outcome_class) if outcome_class in order else len(order), code)


def weekday_hour_matrix(
    rows: Sequence[Mapping[str, Any]], numerator: str
) -> list[list[float | None]]:
    """``numerator`` per attempt, as a percentage, for weekday (rows) x hour (columns)."""
    matrix: list[list[float | None]] = [[None] * 24 for _ in WEEKDAYS]
    for r in rows:
        if r["attempts"]:
            matrix[r["weekday"] - 1][r["hour"]] = _pct(r[numerator] / r["attempts"])
    return matrix


def weekday_hour_chart(rows: Sequence[Mapping[str, Any]], timezone: str) -> Figure:
    fig = _subplots(2, 1, ("Contact rate", "RPC rate"), vertical_spacing=0.2)
    attempts = [[0] * 24 for _ in WEEKDAYS]
    for r in rows:
        attempts[r["weekday"] - 1][r["hour"]] = r["attempts"]
    for i, (numerator, label) in enumerate((("contacts", "contact rate"), ("rpcs", "RPC rate"))):
        cell = _cell(i + 1, 1, 1)
        fig["data"].append(
            {
                "type": "heatmap",
                "z": weekday_hour_matrix(rows, numerator),
                "x": list(range(24)),
                "y": list(WEEKDAYS),
                "customdata": attempts,
                "colorscale": [[k / (len(BLUES) - 1), colour] for k, colour in enumerate(BLUES)],
                "zmin": 0,
                "zmax": 100,  # both panels on one scale, its palest cell 0 %
                "colorbar": {"title": {"text": "%"}, "len": 0.4, "y": 0.8 - i * 0.6},
                "hovertemplate": f"%{{y}} %{{x}}:00: {label} %{{z:.1f}}% "
                "of %{customdata} attempts<extra></extra>",
                "xaxis": f"x{cell}",
                "yaxis": f"y{cell}",
            }
        )
    for axis in _axes(fig, "x"):
        axis["dtick"] = 1
    fig["layout"]["xaxis2"]["title"] = {"text": f"hour of day ({timezone})"}
    for axis in _axes(fig, "y"):
        axis["autorange"] = "reversed"
    return _layout(fig, 560)


def _days_with_gaps(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``rows`` (one per day, in order) with an empty day after each that the next does not
    follow: the days of a month not loaded are left out, and the line breaks there."""
    days: list[Mapping[str, Any]] = []
    for r in rows:
        if days and r["day"] - days[-1]["day"] > timedelta(days=1):
            days.append({"day": days[-1]["day"] + timedelta(days=1)})
        days.append(r)
    return days


def channel_daily_chart(rows: Sequence[Mapping[str, Any]]) -> Figure:
    measures = (("attempts", "Attempts"), ("contacts", "Contacts"), ("rpcs", "RPCs"),
                ("promises", "Promises to pay"))  # fmt: skip
    fig = _subplots(4, 1, [m[1] for m in measures], shared_xaxes=True)
    pairs = sorted({(r["communication_type"], r["interaction_source"]) for r in rows})
    for i, pair in enumerate(pairs):
        mine = _days_with_gaps(
            [r for r in rows if (r["communication_type"], r["interaction_source"]) == pair]
        )
        name = " / ".join(chart_label(part, joined_by=" / ") for part in pair)
        for j, (measure, label) in enumerate(measures):
            cell = _cell(j + 1, 1, 1)
            fig["data"].append(
                {
                    "type": "scatter",
                    "x": [r["day"] for r in mine],
                    "y": [r.get(measure) for r in mine],
                    # A day only partly counted (today, a month's edge day away from UTC) is
                    # marked, so that its drop does not read as a slow day.
                    "mode": "lines+markers",
                    "marker": {
                        "symbol": "circle-open",
                        "size": [7 if r.get("partial") else 0 for r in mine],
                    },
                    "text": [
                        " (only part of this day is counted)" * bool(r.get("partial")) for r in mine
                    ],
                    "name": name,
                    "legendgroup": name,
                    "showlegend": j == 0,
                    "line": {"color": LINE_COLOURS[i % len(LINE_COLOURS)], "width": 1.5},
                    "hovertemplate": (
                        f"{_TRACE_NAME}, %{{x}}: %{{y}} {label.lower()}%{{text}}<extra></extra>"
                    ),
                    "xaxis": f"x{cell}",
                    "yaxis": f"y{cell}",
                }
            )
    for axis in _axes(fig, "y"):
        axis.update(title={"text": "per day"}, rangemode="tozero")
    return _layout(fig, 900)


def _json(value: object) -> str:
    """Compact JSON (days as ISO dates) that cannot close the <script> it is written into:
    outcome codes and channel names come from the API."""
    text = json.dumps(value, separators=(",", ":"), default=date.isoformat)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("/", "\\u002f")


def _chart(name: str, fig: Figure) -> str:
    """The figure drawn into its own div, as plotly's to_html(full_html=False) embeds one."""
    div_id = f"chart-{name}"
    plot = f'"{div_id}", {_json(fig["data"])}, {_json(fig["layout"])}, {_json(_CONFIG)}'
    return (
        f'<div class="chart" data-chart="{name}">'
        f'<div style="height:{fig["layout"]["height"]}px; width:100%;">'
        f'<div id="{div_id}" class="plotly-graph-div" style="height:100%; width:100%;"></div>'
        f"<script>Plotly.newPlot({plot})</script></div></div>"
    )


# --- the page ---------------------------------------------------------------------------------


def _offset_ever(timezone: str) -> bool:
    """Whether ``timezone``'s days ever differ from UTC's (Etc/UTC and GMT never do)."""
    zone = ZoneInfo(timezone)
    return any(datetime(2026, m, 1, tzinfo=zone).utcoffset() for m in (1, 7))


def _page(data: DashboardData) -> tuple[str, str]:
    """The page around Plotly's JavaScript: the HTML before the bundle's text and after it."""
    # The months with KPIs, else (a first month whose run stopped before them) the months read.
    months = [k["month"] for k in data.kpis] or [f.month for f in data.freshness]
    span = f"{_month_label(months[0])} to {_month_label(months[-1])}" if months else "no months yet"
    missing = sorted(data.months_in("no KPIs"))
    if missing:
        span += f" (no KPIs for {', '.join(map(_month_label, missing))})"
    header = (
        "<header><h1>D23 outcome dashboard</h1>"
        f"<p>Months {html.escape(span)}. Generated {_local(data.generated_at, data.timezone)}; "
        f"times of day and days are in {html.escape(data.timezone)} (D23_REPORT_TIMEZONE)"
        + (
            "; months are UTC months, as the warehouse partitions them, so a month's first and "
            "last local day can be partial"
        )
        * _offset_ever(data.timezone)
        + ".</p>"
        "</header>"
    )
    partial, maturing = data.months_in("partial", "unfinished"), data.months_in("maturing")
    if not data.kpis and not data.freshness:
        body = (
            "<p>No month has been read yet: materialize a month in Dagster.</p>"
            + _quality_section(data)
        )
    elif not data.kpis:
        # A first month whose run stopped before its KPIs: what it merged, and what stopped it.
        body = (
            "<p>No month's KPIs have been built yet: the runs of the months below stopped "
            "before them (the problems listed say why). Materialize those months again once "
            "that is mended.</p>" + _freshness_section(data) + _quality_section(data)
        )
    else:
        body = "".join(
            [
                _tiles_section(data),
                "<section id='trends'><h2>KPI trends</h2>",
                _caveats(data),
                _chart("kpi-trend", kpi_trend_chart(data.kpis, partial, maturing)),
                "<h3>By communication_type</h3>",
                _chart(
                    "kpi-by-channel",
                    kpi_split_chart(data.kpis_by_channel, "communication_type", partial, maturing),
                ),
                "<h3>By interaction_source</h3>",
                _chart(
                    "kpi-by-source",
                    kpi_split_chart(data.kpis_by_source, "interaction_source", partial, maturing),
                ),
                _definitions(),
                "</section><section id='mix'><h2>Outcome mix</h2>"
                "<p>Each code's share of the month's attempts; the class in brackets is what the "
                "outcome mapping counts it as (a promise is also an RPC and a contact).</p>",
                _chart("outcome-mix", outcome_mix_chart(data.outcome_shares, partial)),
                "</section><section id='when'><h2>When people are reached</h2>"
                f"<p>Contact and RPC rate by weekday and hour of day in "
                f"{html.escape(data.timezone)}, over all months shown and every channel and "
                "source: attempts the borrower started, IVR attempts and field visits "
                "included.</p>",
                _chart("weekday-hour", weekday_hour_chart(data.weekday_hour, data.timezone)),
                "</section><section id='channels'><h2>Channel productivity</h2>"
                "<p>Attempts, contacts, RPCs and promises per channel and source per day. D23 "
                "carries no agent or account identifier: per-agent benchmarking and per-account "
                f"cohorts need other datasets.{_running_day(data)}</p>",
                _chart("channel-daily", channel_daily_chart(data.channel_daily)),
                "</section>",
                _freshness_section(data),
                _quality_section(data),
            ]
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<title>D23 outcome dashboard</title><style>{_CSS}</style><script type="text/javascript">',
        f"</script></head><body>{header}{body}</body></html>",
    )


def _running_day(data: DashboardData) -> str:
    """A note on the daily panel's last day when it is only partly counted: today, counted up
    to the last read of the UTC month(s) it falls in (its drop is the day not being over), or
    an earlier day in which a month's last read came (the days after it are not read yet)."""
    days = [r["day"] for r in data.channel_daily]
    if not days:
        return ""
    zone = ZoneInfo(data.timezone)
    today, last = data.generated_at.astimezone(zone).date(), max(days)
    months = _utc_months(last, zone)
    reads = [(f.month, f.last_read) for f in data.freshness if f.month in months and f.last_read]
    if last != today:
        end = _utc_span(last, zone)[1]
        reads = [(m, read) for m, read in reads if read < min(end, month_end(m))]
        if not reads:
            return ""
        return (
            f" The days after {last.day} {last:%b %Y} are not read yet: that day is counted up "
            f"to {_reads_text(reads, data.timezone)}."
        )
    running = f" The last day, {today.day} {today:%b %Y}, is still running"
    if not reads:  # a month loaded before reads were recorded
        return f"{running}."
    return f"{running}: counted up to {_reads_text(reads, data.timezone)}."


def _reads_text(reads: Sequence[tuple[date, datetime]], timezone: str) -> str:
    """``its read at ...``, or with two months ``the reads of May 2026 at ... and ...``."""
    if len(reads) == 1:
        return f"its read at {_local(reads[0][1], timezone)}"
    return "the reads of " + " and ".join(
        f"{_month_label(month)} at {_local(read, timezone)}" for month, read in reads
    )


def _tiles_section(data: DashboardData) -> str:
    latest, before = data.tile_months()
    unfinished = data.months_in("unfinished")
    if latest is None:
        unread = (
            f" {', '.join(map(_month_label, sorted(unfinished)))} "
            + (
                "ended after their last reads."
                if len(unfinished) > 1
                else "ended after its last read."
            )
            if unfinished
            else ""
        )
        return (
            "<section id='kpis'><h2>KPIs</h2>"
            f"<p>No month with attempts has ended and been read since yet.{unread}</p></section>"
        )
    ended = data.ended_months()
    previous = previous_month(latest["month"])
    if before is not None:
        compared = f"change against {_month_label(before['month'])}"
    elif any(k["month"] == previous for k in ended):
        compared = f"no attempts in {_month_label(previous)} to compare against"
    elif previous in data.months_in("no KPIs"):
        compared = f"not compared: {_month_label(previous)} has no KPIs"
    elif previous in unfinished:
        compared = f"not compared: {_month_label(previous)} was last read before it ended"
    else:
        compared = "no month before it"
    empty = [_month_label(k["month"]) for k in ended if k["month"] > latest["month"]]
    since = f"; {', '.join(empty)} had none" if empty else ""
    later = sorted(m for m in data.months_in("no KPIs") if m > latest["month"])
    if later:
        since += f"; {', '.join(map(_month_label, later))} without KPIs"
    cut = sorted(m for m in unfinished if m > latest["month"])
    if cut:
        since += f"; {', '.join(map(_month_label, cut))} last read before "
        since += "they ended" if len(cut) > 1 else "it ended"
    # A month's broken-promise share rises for weeks after it ends: against a month with more of
    # them settled, a maturing month's share would read as an improvement.
    unsettled = data.months_in("partial", "maturing")
    young = [m["month"] for m in (latest, before) if m and m["month"] in unsettled]
    tiles = []
    for name, label in KPI_LABELS.items():
        old = before[name] if before else None
        change = _points(latest[name], old) + (f" (was {percent(old)})" if before else "")
        if name == BROKEN_PROMISE_SHARE.name and before and young:
            change = (
                f"not compared: {' and '.join(map(_month_label, young))} still maturing"
                + _last_settled_change(data, name)
            )
        tiles.append(
            f'<div class="tile" data-kpi="{name}"><div class="label">{label}</div>'
            f'<div class="value">{percent(latest[name])}</div>'
            f'<div class="of">{_of_what(latest, name)}</div>'
            f'<div class="delta">{change}</div></div>'
        )
    maturing = latest["month"] in data.months_in("maturing")
    caveat = " Its promises are still maturing: the broken-promise share may rise." * maturing
    # The tiles are what an analyst quotes: a month known to differ from the source says so
    # here, not only in the problems listed at the foot of the page.
    quoted = {m["month"] for m in (latest, before) if m is not None}
    if before and young:  # the broken-promise tile quotes the last settled months instead
        quoted |= {m["month"] for m in _last_settled(data)}
    off = [
        f"{_month_label(month)}: {'; '.join(reasons)}"
        for month in sorted(quoted, reverse=True)
        if (reasons := data.doubts_about(month))
    ]
    warning = (
        "<p class='off'>These figures may not count the source as it is yet (see Open "
        "data-quality problems): "
        f"{html.escape('. '.join(off))}.</p>"
        if off
        else ""
    )
    return (
        f"<section id='kpis'><h2>KPIs, {_month_label(latest['month'])}</h2>"
        f"<p>The latest month that has ended with attempts ({latest['attempts']:,}{since}), "
        f"{compared}; "
        f"pp = percentage points.{caveat}</p>{warning}"
        f"<div class='tiles'>{''.join(tiles)}</div></section>"
    )


def _of_what(kpis: dict[str, Any], name: str) -> str:
    """A tile's rate as its counts, naming the denominator: a refusal rate is of right-party
    contacts, not of attempts."""
    kpi = KPI_BY_NAME[name]
    counts = f"{kpis[kpi.numerator.column]:,} of {kpis[kpi.denominator.column]:,}"
    return f"{counts} {html.escape(kpi.denominator.description)}"


def _last_settled(data: DashboardData) -> list[dict[str, Any]]:
    """The KPIs of the latest settled month with attempts, and of the month before it if that
    is settled with attempts too: the latest comparison that promises still to break cannot
    move."""
    settled = data.months_in("settled")
    months = [k for k in data.ended_months() if k["attempts"] and k["month"] in settled]
    if not months:
        return []
    last = months[-1]
    return [last, *(k for k in months if k["month"] == previous_month(last["month"]))]


def _last_settled_change(data: DashboardData, name: str) -> str:
    """``name`` of the latest settled month with attempts, and its change against the month
    before it."""
    settled = _last_settled(data)
    if not settled:
        return ""
    last, *before = settled
    change = (
        f", {_points(last[name], before[0][name])} against {_month_label(before[0]['month'])}"
        if before
        else ""
    )
    return f"; last settled: {_month_label(last['month'])} {percent(last[name])}{change}"


def _caveats(data: DashboardData) -> str:
    """Which points of the trends are not final, so a dip is not read as a change."""
    notes = [
        f"{_month_label(f.month)} is {_STATUS_TEXT[f.status]}."
        for f in data.freshness
        if f.status != "settled"
    ]
    return f"<p>{html.escape(' '.join(notes))}</p>" if notes else ""


def _definitions() -> str:
    rows = [(KPI_LABELS[n], n, " / ".join(KPI_FRACTIONS[n])) for n in KPI_NAMES]
    return (
        "<details><summary>KPI definitions</summary>"
        + _table(("KPI", "column", "definition"), rows, "")
        + "<p>Attempts are active log entries still present at the source.</p></details>"
    )


_STATUS_TEXT = {
    "partial": "partial: the month is still running",
    "unfinished": "unfinished: last read before it ended, so its last days are missing; the "
    "daily refresh reads it again after its end (or backfill it)",
    "maturing": "maturing: read less than "
    f"{PROMISE_MATURITY.days} days after it ended; its broken-promise share may still rise",
    "settled": "settled",
    "no KPIs": "without KPIs: not read, or its last read's run stopped before them (see its "
    "last read); materialize or backfill it",
}


def _freshness_section(data: DashboardData) -> str:
    rows = [
        (f"{f.month:%Y-%m}", f"{f.rows:,}", f"{f.attempts:,}", _local(f.last_read, data.timezone),
         _STATUS_TEXT[f.status], f.unverified_slices, f.rejected_rows, f.unmapped_attempts,
         f.deletions_not_applied)
        for f in data.freshness
    ]  # fmt: skip
    headers = ("month", "live rows in d23.logs", "attempts (active rows)",
               f"last read ({data.timezone})", "state", "unverified slices", "rejected rows",
               "unmapped attempts", "deletions not applied")  # fmt: skip
    return (
        "<section id='freshness'><h2>Data freshness</h2>"
        + _table(headers, rows, "no months")
        + "<p>Months outside the daily refresh's lookback are only read again by a backfill.</p>"
        "</section>"
    )


def _quality_section(data: DashboardData) -> str:
    slices = [
        (s["partition"][:7], _local(s["slice_since"], "UTC"), _local(s["slice_until"], "UTC"),
         s["served"], s["total_before"], s["total_after"], s["reads"],
         _local(s["read_at"], data.timezone))
        for s in data.unverified_slices
    ]  # fmt: skip
    rejected = [(r["partition"][:7], r["reason"], r["rows"]) for r in data.rejected]
    unmapped = [
        (f"{u['month']:%Y-%m}", shown_code(u["outcome_option"]), u["attempts"])
        for u in data.unmapped
    ]
    remapped: dict[str, list[str]] = {}
    for m in data.other_mapping:
        remapped.setdefault(f"{m['month']:%Y-%m}", []).append(shown_code(m["outcome_option"]))
    other_mapping = [(month, ", ".join(codes)) for month, codes in remapped.items()]
    kpis_behind = [(f"{month:%Y-%m}",) for month in data.kpis_behind_mix]
    mix_behind = [(f"{month:%Y-%m}",) for month in data.mix_behind_logs]
    pending = [
        (p["partition"][:7], f"{p['rows']:,}", f"{p['attempts']:,}", p["reason"],
         _local(p["read_at"], data.timezone))
        for p in data.deletions_pending
    ]  # fmt: skip
    return (
        "<section id='quality'><h2>Open data-quality problems</h2>"
        f"<p class='summary'>{data.problem_count()} open problem(s).</p>"
        "<h3>Unverified slices</h3><p>Slices whose rows served could not be proven complete "
        "against the API's exact counts before and after the read (times in UTC). Where "
        "served equals both counts, rows changed in the slice while or after it was read, the "
        "API could not count it again once the month was read, or the API ended its walks "
        "early; the <code>unverified_slices</code> table of "
        "<code>d23/logs</code>' check <code>slices_verified</code> gives each slice's reason "
        "for the month's last read.</p>"
        + _table(
            (
                "month",
                "since",
                "until",
                "served",
                "total before",
                "total after",
                "reads",
                f"read at ({data.timezone})",
            ),
            slices,
            "every slice read is verified",
        )  # fmt: skip
        + "<h3>Rejected rows</h3><p>Rows that broke the D23 contract, in d23.rejected_rows.</p>"
        + _table(("month", "reason", "rows"), rejected, "no rejected rows")
        + "<h3>Unmapped outcome codes</h3><p>Codes the outcome mapping does not classify; add "
        "them to the mapping file (D23_OUTCOME_MAPPING).</p>"
        + _table(("month", "outcome_option", "attempts"), unmapped, "every code is mapped")
        + "<h3>Months counted with another outcome mapping</h3><p>Their outcome mix, KPIs and "
        "tiles classify these codes as the mapping did when they were last built; the "
        "weekday-hour and channel panels count every month with the current mapping. "
        "Re-materialize d23/outcome_mix_monthly, d23/outcome_mix_daily and the assets "
        f"downstream of them (selection {_REBUILD_SELECTION}) for these months to count them "
        "alike.</p>"
        + _table(("month", "codes classed otherwise"), other_mapping, "every month is current")
        + "<h3>Outcome mix older than d23.logs</h3><p>A merge changed these months' rows "
        "since their outcome mix, KPIs and panels were built, or before they were ever built (a "
        "blocking check stopped the run, or an outcome step failed), or their daily table "
        "(d23.outcome_mix_daily) still counts with an earlier outcome mapping: the page shows "
        "them as they were, or not at all. They follow when the month's outcome steps run "
        "again: after fixing what the failed check or step says, re-materialize "
        "d23/outcome_mix_monthly, d23/outcome_mix_daily and the assets downstream of them "
        f"(selection {_REBUILD_SELECTION}) for the month.</p>"
        + _table(("month",), mix_behind, "every month's outcome mix counts d23.logs as it is")
        + "<h3>KPIs older than their outcome mix</h3><p>The tiles and the trend show these "
        "months' d23/outcome_kpis_monthly as last built, if ever; their outcome mix was rebuilt "
        "since (another mapping, a later read), and the other panels count from it. Re-materialize "
        "d23/outcome_kpis_monthly for these months.</p>"
        + _table(("month",), kpis_behind, "every month's KPIs follow its outcome mix")
        + "<h3>Deletions not applied</h3><p>Rows the month's last read found gone from the "
        "source but did not mark deleted: those active are still counted as attempts in its "
        "KPIs until a read proves them gone, or an operator confirms deletions held above the "
        "allowed share.</p>"
        + _table(
            ("month", "rows", "of them counted as attempts", "why", f"read at ({data.timezone})"),
            pending,
            "every deletion is applied",
        )
        + "<h3>Months without KPIs</h3><p>Months from the first shown to the last that has "
        "ended, and any month read, without KPIs: never read, or their last run stopped before "
        "its KPIs (then the weekday-hour and daily panels, which count d23.logs, include what it "
        "merged). The trends leave a gap there. Materialize them, or backfill the range.</p>"
        + _table(
            ("month",),
            [(f"{month:%Y-%m}",) for month in sorted(data.months_in("no KPIs"))],
            "every month from the first shown to the last that has ended has KPIs",
        )
        + "</section>"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 24px;
       color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 12px; }
.tile .label { color: #555; font-size: 14px; }
.tile .value { font-size: 28px; font-weight: 600; }
.tile .of, .tile .delta { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
th { background: #f4f4f4; }
.ok { color: #1b7837; }
.off { color: #b35806; font-weight: 600; }
"""


def _remove_abandoned_writes(path: Path) -> None:
    """Delete the temporary files of writes of ``path`` killed midway (kill -9, out of memory):
    nothing else removes them, a page's size each. One this old is no write in progress."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if datetime.now(UTC).timestamp() - stale.stat().st_mtime > ABANDONED_WRITE_S:
                stale.unlink()


def page_lock(path: Path) -> FileLock:
    """The lock a run holds from reading the warehouse for the page at ``path`` to replacing it:
    two runs not serialised by the warehouse pool (two ``dagster asset materialize``, DuckLake
    with several writers) would otherwise let the one that read earlier write last, a page
    without the other's month that no later merge is due to mend."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # As long as a warehouse connection waits: a run stuck holding it fails the next one's step.
    return FileLock(str(path.parent / f".{path.name}.lock"), timeout=LOCK_TIMEOUT_S)


def write_dashboard(path: Path, data: DashboardData) -> None:
    """Write the page, Plotly's JavaScript inlined in its head, replacing the file in one step so
    a browser or a file share never sees half a page."""
    before, after = _page(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_writes(path)
    # A name of its own, so two runs writing at once never share a half-written file.
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(before.encode())
            # Copied over in chunks: held as text in the page, the 4.8 MB bundle cost ~15 MB at
            # the peak of the step (the file's bytes, their text, the page, the page encoded).
            with _plotly_file("plotly.min.js").open("rb") as bundle:
                shutil.copyfileobj(bundle, file)
            file.write(after.encode())
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the page from other readers
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
