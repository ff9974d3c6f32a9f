"""The outcome dashboard as an analyst sees it: opened from disk in a real headless Chromium.

The months are materialized through the real assets against the simulator, so the page tested
is the one the pipeline writes. Chromium is Debian's (``make test`` installs it); playwright only
drives it and never downloads a browser.
"""

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from browser import chromium_page
from harness import Pipeline
from plotly.subplots import make_subplots

from d23_pipeline.analytics import dashboard
from d23_pipeline.analytics.outcome_classes import load_outcome_classes
from d23_pipeline.analytics.outcome_mix import (
    rebuild_outcome_kpis_monthly,
    rebuild_outcome_mix_daily,
    rebuild_outcome_mix_monthly,
)
from d23_pipeline.defs.assets.dashboard import outcome_dashboard
from d23_pipeline.kpis import COUNTS, KPI_NAMES, shown_percent
from d23_pipeline.months import month_window
from d23_pipeline.simulator import BadRows, Simulator, SimulatorConfig, serve
from d23_pipeline.warehouse.store import Warehouse

MONTHS = ("2026-04", "2026-05", "2026-06")
CHARTS = {"kpi-trend", "kpi-by-channel", "kpi-by-source", "outcome-mix", "weekday-hour",
          "channel-daily"}  # fmt: skip
# A slice the merge could not prove complete (inserted by hand: the merge fills this table).
HOSTILE_CODE = "<img src=x onerror=console.error('injected')>"
UNVERIFIED = ("2026-05-01", "2026-05-07 00:00:00+00", "2026-05-08 00:00:00+00", 41, 45, 45)
# The traces hovered, by the start of their names as the page hands them to plotly.
HOVERED = {
    "outcome-mix": dashboard.chart_label(HOSTILE_CODE),
    "kpi-by-channel": dashboard.chart_label("CALL "),
}


@dataclass
class Page:
    tiles: dict[str, str]
    charts: dict[str, int]
    legends: dict[str, list[str]]
    hovers: dict[str, str]  # per chart, the drawn hover of the first point of HOVERED's trace
    text: str
    console_errors: list[str]
    requests: list[str]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    sim = Simulator(
        SimulatorConfig(months=MONTHS, rows_per_month=900, bad_rows=BadRows(bad_timestamp=2))
    )
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path_factory.mktemp("dash"))
        for month in MONTHS:
            pipeline.materialize(month)
        yield pipeline


@pytest.fixture(scope="module")
def page(materialized: Pipeline) -> Page:
    warehouse = Warehouse(materialized.warehouse_path)
    with warehouse.connect() as con:
        con.execute(
            "INSERT INTO d23.slice_verification VALUES "
            "(?, ?, ?, ?, ?, ?, false, 2, now()), (?, ?, ?, 40, 40, 40, true, 1, now())",
            [*UNVERIFIED, *UNVERIFIED[:3]],
        )
        # An outcome code from the API is data, never markup: it must show as text. Its
        # channel, padded, is another channel than CALL and must not read as a second CALL.
        con.execute(
            "INSERT INTO d23.outcome_mix_monthly VALUES ('2026-04-01', 'CALL ', 'AGENT', ?, "
            "false, false, false, false, false, 3, 0)",
            [HOSTILE_CODE],
        )
    # The dashboard alone, as a run of any month would rebuild it.
    dg.materialize([outcome_dashboard], resources=materialized.resources())
    return _open(materialized.dashboard_path)


def _open(path: Path) -> Page:
    console_errors: list[str] = []
    requests: list[str] = []
    with chromium_page() as page:
        page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        # Anything but the file itself is refused, so a CDN script would fail loudly too.
        page.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith("file:") else route.abort()
            ),
        )
        page.goto(path.as_uri())
        page.wait_for_function(
            "[...document.querySelectorAll('.chart .js-plotly-plot')]"
            ".every(g => g._fullLayout && g.querySelector('.main-svg'))",
            timeout=30_000,
        )
        charts = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.chart')].map(c => "
            "[c.dataset.chart, c.querySelector('.js-plotly-plot')._fullData.length]))"
        )
        tiles = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.tile')].map(t => "
            "[t.dataset.kpi, t.querySelector('.value').innerText]))"
        )
        legends = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.chart')].map(c => "
            "[c.dataset.chart, [...c.querySelectorAll('.legendtext')].map(t => t.textContent)]))"
        )
        hovers = page.evaluate(
            """hovered => Object.fromEntries(Object.entries(hovered).map(([chart, name]) => {
                const g = document.querySelector('#chart-' + chart);
                const i = g._fullData.findIndex(t => t.name.startsWith(name));
                if (i < 0) return [chart, ''];
                Plotly.Fx.hover(g, [{curveNumber: i, pointNumber: 0}]);
                return [chart, g.querySelector('.hoverlayer').textContent];
            }))""",
            HOVERED,
        )
        text = page.inner_text("body")
    return Page(tiles, charts, legends, hovers, text, console_errors, requests)


def test_the_page_renders_offline_without_errors(page: Page) -> None:
    assert page.console_errors == []
    assert [u for u in page.requests if not u.startswith("file:")] == []
    assert set(page.charts) == CHARTS
    assert all(traces > 0 for traces in page.charts.values()), page.charts


def test_channels_and_codes_from_the_api_are_drawn_as_typed_and_told_apart(page: Page) -> None:
    assert "CALL" in page.legends["kpi-by-channel"]
    assert '"CALL "' in page.legends["kpi-by-channel"]  # not a second "CALL"
    assert f"{HOSTILE_CODE} (unmapped)" in page.legends["outcome-mix"]
    assert page.hovers["outcome-mix"].startswith(f"{HOSTILE_CODE} (unmapped), Apr 2026: ")
    assert '"CALL ", Apr 2026: ' in page.hovers["kpi-by-channel"]  # after the KPI's name


def test_kpi_tiles_show_the_warehouse_values_of_the_latest_ended_month(
    materialized: Pipeline, page: Page
) -> None:
    rows = materialized.query("SELECT * FROM d23.outcome_kpis_monthly ORDER BY month")
    names = [d[0] for d in materialized.query("DESCRIBE d23.outcome_kpis_monthly")]
    latest = dict(zip(names, rows[-1], strict=True))

    assert latest["month"] == date(2026, 6, 1)
    assert page.tiles == {name: dashboard.percent(latest[name]) for name in dashboard.KPI_LABELS}
    assert "KPIs, Jun 2026" in page.text
    assert "change against May 2026" in page.text


def test_open_data_quality_problems_are_listed(page: Page) -> None:
    # The unverified slice of 7 May (not the verified one), and the simulator's rows with
    # broken timestamps.
    assert "2026-05\t2026-05-07 00:00\t2026-05-08 00:00\t41\t45\t45\t2" in page.text
    assert "\t40\t40\t40\t" not in page.text
    freshness_row = r"2026-05\t[\d,]+\t[\d,]+\t[^\t]+\tsettled\t1\t2\t0"
    assert re.search(freshness_row, page.text)
    assert "updated_at is not an ISO-8601 timestamp with offset" in page.text
    assert f"2026-04\t{HOSTILE_CODE}\t3" in page.text  # listed as unmapped, as plain text
    assert "D23 carries no agent or account identifier" in page.text


def test_months_read_soon_after_their_end_are_maturing() -> None:
    june = date(2026, 6, 1)
    read = datetime(2026, 7, 10, tzinfo=UTC)

    assert dashboard.month_status(june, read, datetime(2026, 6, 20, tzinfo=UTC)) == "partial"
    assert dashboard.month_status(june, read, datetime(2026, 12, 1, tzinfo=UTC)) == "maturing"
    late_read = datetime(2026, 8, 2, tzinfo=UTC)
    assert dashboard.month_status(june, late_read, datetime(2026, 12, 1, tzinfo=UTC)) == "settled"


def test_a_month_read_with_no_rows_shows_when_it_was_read(tmp_path: Path) -> None:
    # The simulator holds April only: May is read, proven empty, and has no row to stamp.
    sim = Simulator(SimulatorConfig(months=("2026-04",), rows_per_month=50))
    before = datetime.now(UTC)
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize("2026-05")
    now = datetime(2026, 8, 1, tzinfo=UTC)

    with Warehouse(pipeline.warehouse_path).connect(read_only=True) as con:
        data = dashboard.gather(con, load_outcome_classes(), "UTC", now)

    (may,) = [f for f in data.freshness if f.month == date(2026, 5, 1)]
    assert may.rows == 0 and may.last_read is not None  # it said "never", and "maturing" forever
    assert may.last_read >= before


def test_tiles_show_the_latest_month_with_attempts_and_the_change_between_the_rates_shown(
    tmp_path: Path,
) -> None:
    # The simulator holds March and April: May is read and has no attempts.
    sim = Simulator(SimulatorConfig(months=("2026-03", "2026-04"), rows_per_month=50))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        for month in ("2026-03", "2026-04", "2026-05"):
            pipeline.materialize(month)
    now = datetime(2026, 8, 1, tzinfo=UTC)
    with Warehouse(pipeline.warehouse_path).connect(read_only=True) as con:
        data = dashboard.gather(con, load_outcome_classes(), "UTC", now)
    march, april, may = data.kpis
    assert may["attempts"] == 0  # its rates are n/a: the tiles showed nothing but "n/a"
    # Rates a hair apart on either side of a rounding step: both are shown as 35.2%.
    april = {**april, "contact_rate": 0.35249}
    march = {**march, "contact_rate": 0.35151}

    dashboard.write_dashboard(tmp_path / "page.html", replace(data, kpis=[march, april, may]))

    html = (tmp_path / "page.html").read_text()
    assert "<h2>KPIs, Apr 2026</h2>" in html
    # June and July, ended and never read, are named: April is not the latest month there is.
    assert (
        f"({april['attempts']:,}; May 2026 had none; Jun 2026, Jul 2026 without KPIs), change "
        "against Mar 2026"
    ) in html
    tile = re.search(r'data-kpi="contact_rate">(.*?)</div></div>', html)
    assert tile is not None
    assert '<div class="value">35.2%</div>' in tile[1]
    assert '<div class="delta">+0.0 pp (was 35.2%)' in tile[1]
    assert (
        f'<div class="of">{april["contacts"]:,} of {april["attempts"]:,} attempts</div>' in tile[1]
    )
    # A refusal rate is of right-party contacts, not of attempts: the tile says so.
    refusals = re.search(r'data-kpi="refusal_rate">(.*?)</div></div>', html)
    assert refusals is not None
    assert f"{april['refusals']:,} of {april['rpcs']:,} right-party contacts" in refusals[1]
    # With March empty too, April has nothing to compare against, and says why.
    dashboard.write_dashboard(
        tmp_path / "page.html", replace(data, kpis=[{**march, "attempts": 0}, april, may])
    )
    assert "no attempts in Mar 2026 to compare against" in (tmp_path / "page.html").read_text()


def test_a_maturing_months_broken_promise_share_is_not_compared_and_a_partial_month_not_drawn(
    tmp_path: Path,
) -> None:
    months = ("2026-02", "2026-03", "2026-04", "2026-05")
    sim = Simulator(SimulatorConfig(months=months, rows_per_month=80))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        for month in months:
            pipeline.materialize(month)
    with Warehouse(pipeline.warehouse_path).connect(read_only=True) as con:
        data = dashboard.gather(
            con, load_outcome_classes(), "UTC", datetime(2026, 9, 1, tzinfo=UTC)
        )
    february, march, april, may = data.kpis
    assert february["broken_promises"] and march["broken_promises"] and april["broken_promises"]
    # April read a week after it ended, May still running: as on May 20th.
    status = {date(2026, 4, 1): "maturing", date(2026, 5, 1): "partial"}
    freshness = [replace(f, status=status.get(f.month, "settled")) for f in data.freshness]
    data = replace(data, freshness=freshness, generated_at=datetime(2026, 5, 20, tzinfo=UTC))

    dashboard.write_dashboard(tmp_path / "page.html", data)

    html = (tmp_path / "page.html").read_text()
    assert "<h2>KPIs, Apr 2026</h2>" in html
    broken = re.search(r'data-kpi="broken_promise_share">(.*?)</div></div>', html)
    assert broken is not None
    # The latest comparison no promise still to break can move: March against February.
    share = dashboard.BROKEN_PROMISE_SHARE.name
    points = shown_percent(march[share]) - shown_percent(february[share])
    settled = f"Mar 2026 {dashboard.percent(march[share])}, {points:+} pp against Feb 2026"
    assert broken[1].endswith(
        f'<div class="delta">not compared: Apr 2026 still maturing; last settled: {settled}'
    )
    contact = re.search(r'data-kpi="contact_rate">(.*?)</div></div>', html)
    assert contact is not None and " pp (was " in contact[1]  # the other rates still compare
    partial = data.months_in("partial")
    trend = dashboard.kpi_trend_chart(data.kpis, partial)
    lines = {t["name"]: t["y"] for t in trend["data"]}
    assert lines["Broken-promise share"][3] is None  # May's share: days, not weeks, to break
    assert lines["Broken-promise share"][2] == float(shown_percent(april[share]))
    assert lines["Contact rate"][3] == float(shown_percent(may["contact_rate"]))
    contact = next(t for t in trend["data"] if t["name"] == "Contact rate")
    assert contact["customdata"][3] == [may["contacts"], may["attempts"]]
    assert "(%{customdata[0]:,} of %{customdata[1]:,} attempts)" in contact["hovertemplate"]
    # May runs: named so and drawn hollow, not read as a month's change.
    assert trend["data"][0]["x"] == ["Feb 2026", "Mar 2026", "Apr 2026", "May 2026 (so far)"]
    assert trend["data"][0]["marker"]["symbol"] == ["circle"] * 3 + ["circle-open"]
    split = dashboard.kpi_split_chart(data.kpis_by_channel, "communication_type", partial)
    panels = {(t["name"], t["yaxis"]): t for t in split["data"]}
    broken_axis = f"y{list(dashboard.KPI_LABELS).index(share) + 1}"
    assert all(  # the same in every channel's panel
        t["y"][t["x"].index("May 2026 (so far)")] is None
        for (_, axis), t in panels.items()
        if axis == broken_axis and "May 2026 (so far)" in t["x"]
    )
    assert any(
        "May 2026 (so far)" in t["x"] for (_, axis), t in panels.items() if axis == broken_axis
    )


def test_months_with_an_earlier_mapping_or_kpis_behind_their_mix_are_listed_once_until_rebuilt(
    tmp_path: Path,
) -> None:
    months = ("2026-04", "2026-05")
    sim = Simulator(SimulatorConfig(months=months, rows_per_month=200))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        for month in months:
            pipeline.materialize(month)
    # The analyst now counts a left message as a contact, and recounts May only.
    contact = dashboard.OutcomeClass(True, is_rpc=False, is_promise=False, is_refusal=False)
    classes = {**load_outcome_classes(), "LEFT_MESSAGE": contact}
    april, may = (date.fromisoformat(f"{m}-01") for m in months)
    now = datetime(2026, 6, 10, tzinfo=UTC)  # May the last month ended: none missing
    with Warehouse(pipeline.warehouse_path).connect() as con:
        rebuild_outcome_mix_monthly(con, may, *month_window(months[1]), classes)
        listed = dashboard.gather(con, classes, "UTC", now)
        rebuild_outcome_mix_monthly(con, april, *month_window(months[0]), classes)
        for month in (april, may):
            rebuild_outcome_kpis_monthly(con, month)
        monthly_only = dashboard.gather(con, classes, "UTC", now)
        for month in months:
            rebuild_outcome_mix_daily(con, *month_window(month), classes)
        after = dashboard.gather(con, classes, "UTC", now)

    # The panels count April's left messages as contacts, its stored mix and KPIs did not,
    # and neither month's daily table does. April is listed once, under the other mapping,
    # whose rebuild rebuilds its daily table too.
    assert listed.other_mapping == [{"month": april, "outcome_option": "LEFT_MESSAGE"}]
    assert listed.mix_behind_logs == [may]
    # May's mix counts them as contacts now, its KPIs (the tiles, the trend) not yet.
    assert listed.kpis_behind_mix == [may]
    dashboard.write_dashboard(tmp_path / "listed.html", listed)
    page = (tmp_path / "listed.html").read_text()
    assert "<td>2026-04</td><td>LEFT_MESSAGE</td>" in page
    start = page.index("<h3>KPIs older than their outcome mix</h3>")
    section = page[start : page.index("<h3>", start + 1)]
    assert "<tbody><tr><td>2026-05</td></tr></tbody>" in section
    assert listed.problem_count() == 3
    # The monthly mix and KPIs rebuilt (the selection 'd23/outcome_mix_monthly*'), the daily
    # table not: its months stay listed, the page naming the selection that rebuilds it too.
    assert (monthly_only.other_mapping, monthly_only.kpis_behind_mix) == ([], [])
    assert monthly_only.mix_behind_logs == [april, may]
    dashboard.write_dashboard(tmp_path / "monthly_only.html", monthly_only)
    page = (tmp_path / "monthly_only.html").read_text()
    assert "still counts with an earlier outcome mapping" in page
    assert "'d23/outcome_mix_monthly*,d23/outcome_mix_daily*'" in page
    assert (after.other_mapping, after.kpis_behind_mix, after.mix_behind_logs) == ([], [], [])
    assert after.problem_count() == 0


def test_the_channel_panel_draws_the_days_of_loaded_months_up_to_now_only() -> None:
    # January and March loaded, February not (a backfill failed), today 12 March: neither
    # February nor the rest of March is a day with 0 attempts.
    now = datetime(2026, 3, 12, 9, tzinfo=UTC)
    days = dashboard.local_days(
        dashboard.counted_until([date(2026, 1, 1), date(2026, 3, 1)], now, {}), "UTC"
    )

    assert days[0] == date(2026, 1, 1) and days[30] == date(2026, 1, 31)
    assert days[31:] == [date(2026, 3, d) for d in range(1, 13)]
    # In New York, UTC March runs from 28 February 19:00 to 31 March 20:00 local.
    new_york = dashboard.local_days({date(2026, 3, 1): datetime(2027, 1, 1, tzinfo=UTC)},
                                    "America/New_York")  # fmt: skip
    assert (new_york[0], new_york[-1], len(new_york)) == (date(2026, 2, 28), date(2026, 3, 31), 32)


def test_the_channel_panel_stops_at_a_months_last_read_and_marks_that_day_partial() -> None:
    # July last read on 17 July 03:10, its refreshes failed since; today 20 July. The days
    # after that read are unknown, not days with 0 attempts, and the 17th is counted in part.
    july, june = date(2026, 7, 1), date(2026, 6, 1)
    read = datetime(2026, 7, 17, 3, 10, tzinfo=UTC)
    until = dashboard.counted_until([july], datetime(2026, 7, 20, 12, tzinfo=UTC), {july: read})

    days = dashboard.local_days(until, "UTC")

    assert days == [date(2026, 7, d) for d in range(1, 18)]
    assert dashboard.partial_days(days, until, "UTC") == {date(2026, 7, 17)}
    # June read a day after it ended: whole in Kolkata but for its first day, which reaches
    # into May (not shown); its last local day reaches into July, read since.
    until = {june: datetime(2026, 7, 2, tzinfo=UTC), july: read}
    kolkata = dashboard.local_days(until, "Asia/Kolkata")
    assert dashboard.partial_days(kolkata, until, "Asia/Kolkata") == {
        date(2026, 6, 1),
        date(2026, 7, 17),
    }
    cut_june = {june: datetime(2026, 6, 28, 3, 10, tzinfo=UTC), july: read}
    assert dashboard.partial_days(dashboard.local_days(cut_june, "UTC"), cut_june, "UTC") == {
        date(2026, 6, 28),
        date(2026, 7, 17),
    }


def test_the_dashboard_assets_problem_count_is_the_pages(tmp_path: Path) -> None:
    # The month that ended last (the asset runs on today's clock): no month missing after it.
    month = f"{datetime.now(UTC).replace(day=1) - timedelta(days=1):%Y-%m}"
    sim = Simulator(SimulatorConfig(months=(month,), rows_per_month=50))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize(month)
    # The mix as if counted with another mapping, the KPIs left as they were: two problems.
    with Warehouse(pipeline.warehouse_path).connect() as con:
        con.execute("UPDATE d23.outcome_mix_monthly SET is_contact = NOT is_contact")

    result = dg.materialize([outcome_dashboard], resources=pipeline.resources())

    (materialization,) = result.asset_materializations_for_node("d23__outcome_dashboard")
    assert materialization.metadata["open_data_quality_problems"].value == 2
    assert "<p class='summary'>2 open problem(s).</p>" in pipeline.dashboard_path.read_text()


# -- the figures as plotly.py would have built them --------------------------------------------
# The dashboard writes Plotly's figure JSON itself (plotly's figure classes cost the run ~22 MB).
# What plotly.py added to a figure, the grid of make_subplots, the template and the "Blues" scale,
# is checked against plotly.py itself, so an upgrade that changes them shows here.

GRIDS = [
    (lambda: dashboard.kpi_split_chart([], "communication_type"),
     {"rows": 2, "cols": 3, "subplot_titles": list(dashboard.KPI_LABELS.values())}),
    (lambda: dashboard.weekday_hour_chart([], "UTC"),
     {"rows": 2, "cols": 1, "subplot_titles": ("Contact rate", "RPC rate"),
      "vertical_spacing": 0.2}),
    (lambda: dashboard.channel_daily_chart([]),
     {"rows": 4, "cols": 1, "subplot_titles": ("Attempts", "Contacts", "RPCs", "Promises to pay"),
      "shared_xaxes": True}),
]  # fmt: skip


@pytest.mark.parametrize(("chart", "grid"), GRIDS)
def test_chart_grids_are_laid_out_as_make_subplots_lays_them_out(
    chart: Callable[[], dict[str, Any]], grid: dict[str, Any]
) -> None:
    layout = chart()["layout"]
    expected = make_subplots(**grid).to_plotly_json()["layout"]
    del expected["template"]  # plotly.py's default; the charts set plotly_white

    assert layout["annotations"] == expected.pop("annotations")
    for name, axis in expected.items():  # the charts add titles and ranges to the axes
        assert {key: layout[name][key] for key in axis} == axis, name


def test_template_and_colour_scale_are_plotly_pys() -> None:
    fig = dashboard.weekday_hour_chart([], "UTC")

    assert fig["layout"]["template"] == pio.templates["plotly_white"].to_plotly_json()
    blues = go.Heatmap(colorscale="Blues").colorscale
    assert fig["data"][0]["colorscale"] == [list(stop) for stop in blues]


# -- hour x weekday in the lender's time zone --------------------------------------------------

# Europe/Berlin leaves CET (UTC+1) for CEST (UTC+2) at 01:00 UTC on Sunday 29 March 2026.
# (UTC instant, outcome) and, worked out by hand, the local weekday (ISO) and hour.
BERLIN_ROWS = [
    ("2026-03-28T12:30:00", "RPC", (6, 13)),  # Sat 13:30 CET
    ("2026-03-29T00:30:00", "NO_ANSWER", (7, 1)),  # Sun 01:30 CET, before the change
    ("2026-03-29T01:30:00", "PTP", (7, 3)),  # Sun 03:30 CEST: 02:xx does not exist
    ("2026-03-29T01:45:00", "NO_ANSWER", (7, 3)),
    ("2026-03-29T12:30:00", "WRONG_NUMBER", (7, 14)),  # Sun 14:30 CEST
    ("2026-03-31T22:30:00", "BUSY", (3, 0)),  # Wed 1 April 00:30 CEST, still March in UTC
]


def _berlin_march(tmp_path: Path) -> dashboard.DashboardData:
    """The dashboard's data for BERLIN_ROWS, March's KPIs built, read in Europe/Berlin."""
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    classes = load_outcome_classes()
    with warehouse.connect() as con:
        for i, (at, outcome, _) in enumerate(BERLIN_ROWS):
            stamp = datetime.fromisoformat(at).replace(tzinfo=UTC)
            con.execute(
                "INSERT INTO d23.logs VALUES (?, 'CALL', 'AGENT', ?, true, false, ?, ?, ?, "
                "'2026-03-01', ?, ?, NULL)",
                [f"id{i}", outcome, stamp, stamp, stamp, stamp, stamp],
            )
        march = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
        rebuild_outcome_mix_monthly(con, date(2026, 3, 1), *march, classes)
        rebuild_outcome_kpis_monthly(con, date(2026, 3, 1))
        return dashboard.gather(con, classes, "Europe/Berlin", datetime(2026, 12, 1, tzinfo=UTC))


def test_weekday_hour_rates_follow_the_lender_clock_across_dst(tmp_path: Path) -> None:
    data = _berlin_march(tmp_path)

    cells = {(r["weekday"], r["hour"]): (r["attempts"], r["contacts"], r["rpcs"])
             for r in data.weekday_hour}  # fmt: skip
    # WRONG_NUMBER is a contact but not a right-party one; PTP and RPC are both.
    assert cells == {
        (6, 13): (1, 1, 1),
        (7, 1): (1, 0, 0),
        (7, 3): (2, 1, 1),
        (7, 14): (1, 1, 0),
        (3, 0): (1, 0, 0),
    }
    rpc = dashboard.weekday_hour_matrix(data.weekday_hour, "rpcs")
    assert rpc[6][3] == 50.0 and rpc[6][2] is None and rpc[5][13] == 100.0
    # Days are the lender's days too: the last row counts on Wednesday 1 April.
    days = {str(r["day"]): r["attempts"] for r in data.channel_daily}
    assert {day: n for day, n in days.items() if n} == {
        "2026-03-28": 1, "2026-03-29": 4, "2026-04-01": 1
    }  # fmt: skip


# (zone, UTC month, instants at the zone's edges): the panels place each row by the zone's offset
# as zoneinfo gives it (dashboard.utc_offset_spans, sql.ATTEMPTS_BY_LOCAL_TIME), to the second.
EDGE_ZONES = [
    # The IANA database changes Moldova's clocks at 00:00 UTC; DuckDB's ICU at 01:00.
    ("Europe/Chisinau", "2026-10", ["2026-10-25T00:30:00", "2026-10-24T23:59:59.999"]),
    # Offset changes at 00:01 local, inside a quarter hour: spring forward, then back a day.
    ("America/St_Johns", "2010-03", ["2010-03-14T03:30:30", "2010-03-14T03:31:30"]),
    ("America/St_Johns", "2010-11", ["2010-11-07T02:30:30", "2010-11-07T02:31:30"]),
    # Half-hour DST (+11 to +10:30) and a quarter-hour offset (+5:45).
    ("Australia/Lord_Howe", "2026-04", ["2026-04-04T14:59:59.999", "2026-04-04T15:00:00"]),
    ("Asia/Kathmandu", "2026-05", ["2026-05-01T00:14:59.999", "2026-05-01T00:15:00"]),
    # An offset of -0:44:30: a local hour begins inside a quarter hour.
    ("Africa/Monrovia", "1971-01", ["1971-01-01T00:44:00", "1971-01-01T00:44:45"]),
    # Before 1970 the epoch counts down: a day must round down, not towards 1970.
    ("UTC", "1969-12", ["1969-12-31T23:59:59.999", "1969-12-01T00:00:00"]),
]


@pytest.mark.parametrize(("zone", "month", "edges"), EDGE_ZONES)
def test_each_attempt_counts_in_its_own_local_hour_and_day_in_any_zone(
    tmp_path: Path, zone: str, month: str, edges: list[str]
) -> None:
    since, until = month_window(month)
    edge_stamps = [datetime.fromisoformat(edge + "+00:00") for edge in edges]
    codes = ["PTP", "WRONG_NUMBER", "NO_ANSWER"]
    classes = load_outcome_classes()
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.connect() as con:
        # Every 7 min 13.7 s through the month, and the edges: every quarter hour holds rows.
        con.execute(
            "CREATE TEMP TABLE stamps AS SELECT stamp FROM ("
            "  SELECT $since + i * INTERVAL 433700 MILLISECOND AS stamp FROM range(6200) AS r(i)"
            "  UNION ALL SELECT unnest($edges)"
            ") WHERE stamp < $until",
            {"since": since, "until": until, "edges": edge_stamps},
        )
        con.execute(
            "INSERT INTO d23.logs SELECT 'id' || row_number() OVER (), 'CALL', 'AGENT', "
            "$codes[1 + row_number() OVER () % 3], true, false, stamp, stamp, stamp, $partition, "
            "stamp, stamp, NULL "
            "FROM stamps",
            {"codes": codes, "partition": f"{month}-01"},
        )
        stamps = con.execute("SELECT communicated_at, outcome_option FROM d23.logs").fetchall()
        rebuild_outcome_mix_monthly(con, since.date(), since, until, classes)
        rebuild_outcome_mix_daily(con, since, until, classes)
        rebuild_outcome_kpis_monthly(con, since.date())
        data = dashboard.gather(con, classes, zone, datetime(2026, 12, 1, tzinfo=UTC))

    hours: dict[tuple[int, int], tuple[int, int]] = {}  # (weekday, hour): (attempts, contacts)
    days: dict[date, int] = {}
    for at, code in stamps:
        local = at.astimezone(ZoneInfo(zone))
        attempts, contacts = hours.get((local.isoweekday(), local.hour), (0, 0))
        contact = classes[code].is_contact
        hours[(local.isoweekday(), local.hour)] = (attempts + 1, contacts + contact)
        days[local.date()] = days.get(local.date(), 0) + 1
    assert {(r["weekday"], r["hour"]): (r["attempts"], r["contacts"])
            for r in data.weekday_hour} == hours  # fmt: skip
    assert {r["day"]: r["attempts"] for r in data.channel_daily if r["attempts"]} == days
    # The month's edges count in it, and its mix counts d23.logs as it is.
    assert data.mix_behind_logs == []


def test_channel_lines_drop_to_zero_on_days_without_attempts(tmp_path: Path) -> None:
    data = _berlin_march(tmp_path)

    # March in UTC runs from 1 March 01:00 to 1 April 02:00 in Berlin: 32 local days, each on
    # the line, so a day without attempts shows 0 rather than a line across it.
    trace = dashboard.channel_daily_chart(data.channel_daily)["data"][0]
    assert [str(day) for day in trace["x"]] == [f"2026-03-{d:02d}" for d in range(1, 32)] + [
        "2026-04-01"
    ]
    assert trace["y"][29] == 0 and trace["y"][27] == 1  # 30 March none, 28 March one
    # The page says why its first and last day of a month hold fewer hours.
    dashboard.write_dashboard(tmp_path / "page.html", data)
    assert "months are UTC months" in (tmp_path / "page.html").read_text()


def test_writing_the_page_removes_the_files_of_writes_killed_midway(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    killed, running = tmp_path / ".page.html.k1lled.tmp", tmp_path / ".page.html.runn1ng.tmp"
    other = tmp_path / ".other.html.k1lled.tmp"
    for leftover in (killed, running, other):
        leftover.write_text("half a page")
    hours_ago = datetime.now(UTC).timestamp() - dashboard.ABANDONED_WRITE_S - 60
    for old in (killed, other):
        os.utime(old, (hours_ago, hours_ago))

    dashboard.write_dashboard(page, _data())

    assert page.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [page.name, running.name, other.name]
    )


def _data(**fields: Any) -> dashboard.DashboardData:
    """A page's data with nothing in it but ``fields``, generated in June 2026."""
    empty: dict[str, Any] = {f.name: [] for f in dataclasses.fields(dashboard.DashboardData)}
    return dashboard.DashboardData(
        **empty | {"generated_at": datetime(2026, 6, 10, tzinfo=UTC), "timezone": "UTC"} | fields
    )


def test_deletions_not_applied_count_as_an_open_problem() -> None:
    pending = {"partition": "2026-05-01", "reason": "held", "rows": 9, "attempts": 9}
    assert _data(deletions_pending=[pending]).problem_count() == 1


def test_a_months_doubts_are_the_open_problems_that_touch_its_counts() -> None:
    at, april, may = datetime(2026, 5, 3, tzinfo=UTC), date(2026, 4, 1), date(2026, 5, 1)
    data = _data(
        unverified_slices=[{"partition": "2026-05-01", "slice_since": at, "slice_until": at,
                            "served": 1, "total_before": 2, "total_after": 2, "reads": 2,
                            "read_at": at}],
        deletions_pending=[{"partition": "2026-05-01", "reason": r, "rows": 3, "attempts": 2,
                            "read_at": at} for r in ("held", "not proven")],
        other_mapping=[{"month": may, "outcome_option": "BUSY"}],
        mix_behind_logs=[may],
        kpis_behind_mix=[may],
        # April's rejects and unmapped codes are left out of, or counted in, its KPIs by design.
        rejected=[{"partition": "2026-04-01", "reason": "bad", "rows": 1}],
        unmapped=[{"month": april, "outcome_option": "ODD", "attempts": 1}],
    )  # fmt: skip

    assert data.doubts_about(may) == [
        "4 attempts counted that its last read did not find (deletions not applied)",
        "1 slice not proven complete",
        "counted with another outcome mapping",
        "outcome mix older than d23.logs",
        "KPIs older than their outcome mix",
    ]
    assert data.doubts_about(april) == []


def test_the_tiles_name_the_doubts_of_every_month_they_quote(tmp_path: Path) -> None:
    # April and May maturing: the broken-promise tile quotes March against February instead.
    months = [date(2026, m, 1) for m in (2, 3, 4, 5)]
    counts = {c.column: 10 for c in COUNTS} | {"unmapped_attempts": 0}
    kpis = [{"month": m, **counts, **dict.fromkeys(KPI_NAMES, 0.5)} for m in months]
    freshness = [
        dashboard.MonthFreshness(m, 10, 10, None, status, 0, 0, 0, 0)
        for m, status in zip(months, ("settled", "settled", "maturing", "maturing"), strict=True)
    ]
    at = datetime(2026, 6, 1, tzinfo=UTC)
    data = _data(
        kpis=kpis,
        freshness=freshness,
        deletions_pending=[
            {"partition": "2026-03-01", "reason": "held", "rows": 1, "attempts": 1, "read_at": at}
        ],
        mix_behind_logs=[date(2026, 2, 1)],
    )

    dashboard.write_dashboard(tmp_path / "page.html", data)

    page = (tmp_path / "page.html").read_text()
    assert "last settled: Mar 2026 50.0%, +0.0 pp against Feb 2026" in page
    assert (
        "may not count the source as it is yet (see Open data-quality problems): Mar 2026: 1 "
        "attempt counted that its last read did not find (deletions not applied). Feb 2026: "
        "outcome mix older than d23.logs.</p>"
    ) in page


def test_the_problem_count_counts_every_listed_problem(tmp_path: Path) -> None:
    at, april, may = datetime(2026, 5, 3, tzinfo=UTC), date(2026, 4, 1), date(2026, 5, 1)
    data = _data(
        unverified_slices=[{"partition": "2026-05-01", "slice_since": at, "slice_until": at,
                            "served": 1, "total_before": 2, "total_after": 2, "reads": 2,
                            "read_at": at}],
        rejected=[{"partition": "2026-05-01", "reason": r, "rows": 1} for r in ("a", "b")],
        unmapped=[{"month": may, "outcome_option": "ODD", "attempts": 1}],
        other_mapping=[{"month": may, "outcome_option": c} for c in ("BUSY", "LEFT_MESSAGE")],
        kpis_behind_mix=[april],
        mix_behind_logs=[may],
        deletions_pending=[{"partition": "2026-05-01", "reason": "held", "rows": 1,
                            "attempts": 1, "read_at": at}],
    )  # fmt: skip

    assert data.problem_count() == 8  # the two codes of one month are one problem
    dashboard.write_dashboard(tmp_path / "page.html", data)
    page = (tmp_path / "page.html").read_text()
    assert "<p class='summary'>8 open problem(s).</p>" in page
    # Every code of a month whose mapping changed, not only the first.
    assert "<td>2026-05</td><td>BUSY, LEFT_MESSAGE</td>" in page


def test_the_tiles_compare_only_against_the_month_just_before() -> None:
    march, may = ({"month": date(2026, m, 1), "attempts": 10} for m in (3, 5))
    # April has no KPI row: May is compared with nothing, not with March.
    assert _data(kpis=[march, may]).tile_months() == (may, None)


@pytest.fixture(scope="module")
def october_missing(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """September and November materialized; October never read."""
    months = ("2026-09", "2026-10", "2026-11")
    sim = Simulator(SimulatorConfig(months=months, rows_per_month=150))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path_factory.mktemp("gap"))
        for month in (months[0], months[2]):
            pipeline.materialize(month)
    return pipeline


def _gathered(pipeline: Pipeline, now: datetime, timezone: str = "UTC") -> dashboard.DashboardData:
    with Warehouse(pipeline.warehouse_path).connect(read_only=True) as con:
        return dashboard.gather(con, load_outcome_classes(), timezone, now)


def test_a_month_never_loaded_between_two_loaded_is_named_and_left_a_gap(
    october_missing: Pipeline, tmp_path: Path
) -> None:
    data = _gathered(october_missing, datetime(2026, 12, 20, tzinfo=UTC))
    october = date(2026, 10, 1)

    dashboard.write_dashboard(tmp_path / "page.html", data)

    page = (tmp_path / "page.html").read_text()
    assert "<p>Months Sep 2026 to Nov 2026 (no KPIs for Oct 2026)." in page
    assert "not compared: Oct 2026 has no KPIs" in page  # the tiles show November
    assert data.months_in("no KPIs") == {october} and data.problem_count() == 1
    assert "<td>2026-10</td><td>0</td><td>0</td><td>never</td><td>without KPIs: not read" in page
    assert "Oct 2026 is without KPIs: not read" in page  # the trends' caveats
    # The trends break at October instead of joining September to November.
    trend = dashboard.kpi_trend_chart(data.kpis)["data"][0]
    assert trend["x"] == ["Sep 2026", "Oct 2026", "Nov 2026"] and trend["y"][1] is None
    for line in dashboard.kpi_split_chart(data.kpis_by_channel, "communication_type")["data"]:
        assert line["x"][1] == "Oct 2026" and line["y"][1] is None
    for line in dashboard.channel_daily_chart(data.channel_daily)["data"]:
        gap = line["x"].index(date(2026, 10, 1))
        assert line["y"][gap] is None and line["x"][gap + 1] == date(2026, 11, 1)
    mix = dashboard.outcome_mix_chart(data.outcome_shares)["layout"]["xaxis"]
    assert mix["categoryarray"] == ["Sep 2026", "Oct 2026", "Nov 2026"]  # an empty slot


def test_an_ended_month_missing_after_the_last_loaded_is_named_too(
    october_missing: Pipeline, tmp_path: Path
) -> None:
    # December has ended and was never read; January, just begun, waits for its refresh.
    data = _gathered(october_missing, datetime(2027, 1, 10, tzinfo=UTC))

    dashboard.write_dashboard(tmp_path / "page.html", data)

    page = (tmp_path / "page.html").read_text()
    assert "<p>Months Sep 2026 to Nov 2026 (no KPIs for Oct 2026, Dec 2026)." in page
    assert [f"{f.month:%Y-%m}" for f in data.freshness] == [
        "2026-09", "2026-10", "2026-11", "2026-12"
    ]  # fmt: skip
    assert data.problem_count() == 2


def test_the_last_month_read_without_kpis_is_in_the_panels_that_count_d23_logs(
    tmp_path: Path,
) -> None:
    # November read and merged, its outcome steps not run (a blocking check stopped the run):
    # the page says the weekday-hour and daily panels include what it merged. They ended at
    # the last month with KPIs, October.
    months = ("2026-10", "2026-11")
    sim = Simulator(SimulatorConfig(months=months, rows_per_month=150))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize(months[0])
        pipeline.materialize(months[1], selection="+d23/logs")  # and d23/raw_logs
    (attempts,) = pipeline.query(
        "SELECT count(*) FROM d23.logs WHERE is_active AND _deleted_at IS NULL "
        "AND _partition = '2026-11-01'"
    )

    data = _gathered(pipeline, datetime(2026, 12, 5, tzinfo=UTC))

    assert data.months_in("no KPIs") == {date(2026, 11, 1)}
    november = [r for r in data.channel_daily if r["day"].month == 11]
    assert len({r["day"] for r in november}) == 30
    assert sum(r["attempts"] for r in november) == attempts[0] > 0
    total = sum(k["attempts"] for k in data.kpis) + attempts[0]
    assert sum(r["attempts"] for r in data.weekday_hour) == total


def test_the_running_day_note_cites_the_read_of_the_month_the_local_day_is_in(
    october_missing: Pipeline, tmp_path: Path
) -> None:
    # 03:30 UTC on 1 December is still 30 November in Los Angeles: November's day, November's
    # read, December not loaded.
    data = _gathered(
        october_missing, datetime(2026, 12, 1, 3, 30, tzinfo=UTC), "America/Los_Angeles"
    )
    (november,) = [f.last_read for f in data.freshness if f.month == date(2026, 11, 1)]
    assert november is not None

    dashboard.write_dashboard(tmp_path / "page.html", data)

    read = f"{november.astimezone(ZoneInfo('America/Los_Angeles')):%Y-%m-%d %H:%M}"
    assert (
        f"The last day, 30 Nov 2026, is still running: counted up to its read at {read}."
        in (tmp_path / "page.html").read_text()
    )


def test_the_running_day_note_without_a_recorded_read_says_only_that_it_runs(
    october_missing: Pipeline, tmp_path: Path
) -> None:
    running = _gathered(october_missing, datetime(2026, 11, 20, 12, tzinfo=UTC))
    unread = [
        replace(f, last_read=None) for f in running.freshness
    ]  # loaded before reads were kept

    dashboard.write_dashboard(tmp_path / "page.html", replace(running, freshness=unread))

    assert (
        "The last day, 20 Nov 2026, is still running.</p>" in (tmp_path / "page.html").read_text()
    )


def test_days_only_partly_counted_are_marked_in_the_daily_panel(october_missing: Pipeline) -> None:
    after = datetime(2026, 12, 20, tzinfo=UTC)
    # Los Angeles' days at the UTC months' edges reach into August, October (never read) and
    # December (not shown): only part of each is counted.
    los_angeles = _gathered(october_missing, after, "America/Los_Angeles")
    edges = {date(2026, 8, 31), date(2026, 9, 30), date(2026, 10, 31), date(2026, 11, 30)}
    assert {r["day"] for r in los_angeles.channel_daily if r["partial"]} == edges
    assert not any(r["partial"] for r in _gathered(october_missing, after).channel_daily)
    # In UTC only today is, while November runs.
    running = _gathered(october_missing, datetime(2026, 11, 20, 12, tzinfo=UTC))
    assert {r["day"] for r in running.channel_daily if r["partial"]} == {date(2026, 11, 20)}

    line = dashboard.channel_daily_chart(los_angeles.channel_daily)["data"][0]
    marked = [day for day, size in zip(line["x"], line["marker"]["size"], strict=True) if size]
    assert set(marked) == edges
    sep_30 = line["x"].index(date(2026, 9, 30))
    assert line["text"][sep_30] == " (only part of this day is counted)"
    assert line["hovertemplate"].endswith("%{text}<extra></extra>")


def test_a_month_read_by_a_run_that_stopped_before_its_kpis_shows_its_read(
    tmp_path: Path,
) -> None:
    months = ("2026-09", "2026-10", "2026-11")
    sim = Simulator(SimulatorConfig(months=months, rows_per_month=150))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        for month in (months[0], months[2]):
            pipeline.materialize(month)
        for step in (
            "d23/raw_logs",
            "d23/logs",
            "d23/outcome_mix_monthly",
            "d23/outcome_mix_daily",
        ):
            pipeline.materialize(months[1], selection=step)
    data = _gathered(pipeline, datetime(2026, 12, 10, tzinfo=UTC))

    (october,) = [f for f in data.freshness if f.month == date(2026, 10, 1)]
    assert (october.status, october.rows > 0, october.last_read is not None) == (
        "no KPIs", True, True
    )  # fmt: skip
    # Listed twice (no KPIs; KPIs behind their outcome mix), one problem.
    assert data.kpis_behind_mix == [date(2026, 10, 1)] and data.problem_count() == 1
    # The daily panel counts its days from d23.logs, as the weekday-hour panel does.
    days = {r["day"] for r in data.channel_daily}
    assert date(2026, 10, 15) in days
    # The split panels and the mix show the trend's months: October has a mix, but nothing says
    # whether its rates are final, so it is a gap there as in the trend.
    for line in dashboard.kpi_split_chart(data.kpis_by_source, "interaction_source")["data"]:
        assert line["x"][1] == "Oct 2026" and line["y"][1] is None
    assert {r["month"] for r in data.outcome_shares} == {date(2026, 9, 1), date(2026, 11, 1)}


def test_the_kpi_assets_metadata_says_a_running_months_rates_are_not_final(
    tmp_path: Path,
) -> None:
    month = f"{datetime.now(UTC):%Y-%m}"
    sim = Simulator(SimulatorConfig(months=(month,), rows_per_month=100))
    with serve(sim) as url:
        result = Pipeline(sim, url, tmp_path / "data").materialize(month)

    (kpis,) = [
        m.materialization.metadata
        for m in result.get_asset_materialization_events()
        if m.materialization.asset_key.path[-1] == "outcome_kpis_monthly"
    ]
    assert kpis["month_state"].value == "partial: the month is still running"


def test_a_rate_on_an_exact_tie_reads_the_same_on_its_tile_as_in_its_hover() -> None:
    # Plotly's ".1f" hovers round an exact tie up (JavaScript's toFixed); so do tiles and deltas.
    assert dashboard.percent(1 / 16) == "6.3%"  # 6.25 %: Python's own rounding gave 6.2
    assert dashboard.percent(3 / 16) == "18.8%" and dashboard.percent(0.352) == "35.2%"
    # 28.75 % and 51.25 % exactly, though 0.2875 * 100 is 28.749999999999996: read 28.7 and 51.2.
    assert dashboard.percent(23 / 80) == "28.8%" and dashboard.percent(41 / 80) == "51.3%"
    # What a hover formats with ".1f" (the trends' points, the mix's bars, the heatmap's cells).
    assert dashboard._pct(23 / 80) == 28.8 and f"{dashboard._pct(41 / 80):.1f}" == "51.3"
    # A rate that comes as numpy's or Decimal's (whose reprs name their type) rounds the same.
    assert shown_percent(np.float64(23 / 80)) == shown_percent(Decimal("0.2875")) == Decimal("28.8")
    assert dashboard._points(1 / 16, 0.06) == "+0.3 pp"
    assert dashboard._points(0.06, 1 / 16) == "-0.3 pp" and dashboard._points(0.5, 0.5) == "+0.0 pp"
