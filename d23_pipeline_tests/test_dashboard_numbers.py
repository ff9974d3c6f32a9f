"""The dashboard's numbers on a small hand-built warehouse whose counts all differ: each count
under its own heading, each month in every panel, each problem listed and counted."""

import dataclasses
import html
import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from d23_pipeline.analytics import dashboard
from d23_pipeline.analytics.outcome_classes import load_outcome_classes
from d23_pipeline.analytics.outcome_mix import (
    rebuild_outcome_kpis_monthly,
    rebuild_outcome_mix_monthly,
)
from d23_pipeline.kpis import shown_percent
from d23_pipeline.months import month_window
from d23_pipeline.warehouse.store import Warehouse

APRIL, MAY = date(2026, 4, 1), date(2026, 5, 1)
# (public_id, month, day, communication_type, interaction_source, outcome, is_active)
ROWS = [
    ("a1", APRIL, 2, "CALL", "AGENT", "PTP", True),
    ("a2", APRIL, 3, "CALL", "AGENT", "WRONG_NUMBER", True),
    ("a3", APRIL, 3, "SMS", "IVR", "MYSTERY_CODE", True),
    ("m1", MAY, 4, "CALL", "AGENT", "RPC", True),
    ("m2", MAY, 5, "CALL", "AGENT", "NO_ANSWER", True),
    ("m3", MAY, 5, "SMS", "IVR", "NO_ANSWER", False),  # deactivated: no attempt, still a row
    ("m4", MAY, 6, "SMS", "IVR", "MYSTERY_CODE", True),
    ("m5", MAY, 7, "SMS", "IVR", "MYSTERY_CODE", True),
    ("m6", MAY, 7, "SMS", "IVR", "MYSTERY_CODE", True),
]
READ_AT = datetime(2026, 7, 15, 22, 30, tzinfo=UTC)  # 16 July 00:30 in Berlin: both settle
AFTER = datetime(2026, 6, 10, tzinfo=UTC)  # both months ended, May the last to


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """April and May built, and May's read left problems: one slice unverified, three rows
    rejected, two rows found gone but not marked deleted (one of them deactivated)."""
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    classes = load_outcome_classes()
    with warehouse.connect() as con:
        for public_id, month, day, channel, source, outcome, active in ROWS:
            at = datetime(month.year, month.month, day, 10, tzinfo=UTC)
            con.execute(
                "INSERT INTO d23.logs VALUES (?, ?, ?, ?, ?, false, ?, ?, ?, ?, ?, ?, NULL)",
                [public_id, channel, source, outcome, active, at, at, at, f"{month}", at, at],
            )
        for month in (APRIL, MAY):
            rebuild_outcome_mix_monthly(con, month, *month_window(f"{month:%Y-%m}"), classes)
            rebuild_outcome_kpis_monthly(con, month)
        con.execute(
            "INSERT INTO d23.slice_verification VALUES "
            "('2026-04-01', '2026-04-01', '2026-04-02', 3, 3, 3, true, 1, ?), "
            "('2026-05-01', '2026-05-01', '2026-05-02', 5, 5, 5, true, 1, ?), "
            "('2026-05-01', '2026-05-02', '2026-05-03', 4, 6, 6, false, 2, ?)",
            [READ_AT, READ_AT, READ_AT],
        )
        for i, reason in enumerate(["bad timestamp"] * 2 + ["bad outcome"]):
            con.execute(
                "INSERT INTO d23.rejected_rows VALUES ('2026-05-01', '2026-05-01', "
                "'2026-05-02', ?, ?, '{}', ?)",
                [f"x{i}", reason, READ_AT],
            )
        con.execute(
            "INSERT INTO d23.deletions_pending VALUES ('2026-05-01', 'm2', false, 'unproven', ?), "
            "('2026-05-01', 'm3', false, 'unproven', ?)",
            [READ_AT, READ_AT],
        )
    return warehouse


def _gather(warehouse: Warehouse, now: datetime = AFTER, timezone: str = "UTC"):
    with warehouse.connect(read_only=True) as con:
        return dashboard.gather(con, load_outcome_classes(), timezone, now)


def _page(tmp_path: Path, data: dashboard.DashboardData) -> str:
    dashboard.write_dashboard(tmp_path / "page.html", data)
    return (tmp_path / "page.html").read_text()


def _table(page: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after ``heading``, each as {column header: cell text}."""
    table = page[page.index(heading) :]
    table = table[: table.index("</table>")]
    headers = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    return [
        dict(zip(headers, map(html.unescape, re.findall(r"<td>(.*?)</td>", row)), strict=True))
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    ]


def _figure(page: str, name: str) -> list[dict[str, Any]]:
    """The traces of chart ``name`` as the page hands them to Plotly."""
    start = page.index(f'Plotly.newPlot("chart-{name}", ') + len(f'Plotly.newPlot("chart-{name}", ')
    traces, _ = json.JSONDecoder().raw_decode(page, start)
    return traces


def _on_20_may(data: dashboard.DashboardData) -> dashboard.DashboardData:
    """``data`` as on 20 May: April ended and read in its first days (maturing), May runs."""
    status = {APRIL: "maturing", MAY: "partial"}
    freshness = [dataclasses.replace(f, status=status[f.month]) for f in data.freshness]
    return dataclasses.replace(data, freshness=freshness)


# -- freshness: each month's own counts, under their own headings ------------------------------


def test_the_freshness_of_each_month_counts_its_own_rows_and_problems(warehouse: Warehouse) -> None:
    data = _gather(warehouse)

    counts = {
        f.month: (f.rows, f.unverified_slices, f.rejected_rows, f.unmapped_attempts,
                  f.deletions_not_applied)
        for f in data.freshness
    }  # fmt: skip
    # Rows in d23.logs include May's deactivated one; both of May's unmarked rows are counted,
    # the deactivated one too.
    assert counts == {APRIL: (3, 0, 0, 1, 0), MAY: (6, 1, 3, 3, 2)}


def test_the_freshness_table_shows_each_count_under_its_heading(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    page = _page(tmp_path, _gather(warehouse))

    may = _table(page, "<h2>Data freshness</h2>")[1]
    assert may == {
        "month": "2026-05",
        "live rows in d23.logs": "6",
        "attempts (active rows)": "5",  # the deactivated row is no attempt
        "last read (UTC)": "2026-07-15 22:30",
        "state": "settled",
        "unverified slices": "1",
        "rejected rows": "3",
        "unmapped attempts": "3",
        "deletions not applied": "2",
    }


def test_the_freshness_table_counts_the_rows_not_marked_deleted(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    with warehouse.connect() as con:
        con.execute(
            "UPDATE d23.logs SET _deleted_at = now() WHERE public_id = "
            "(SELECT min(public_id) FROM d23.logs WHERE _partition = '2026-05-01')"
        )

    may = _table(_page(tmp_path, _gather(warehouse)), "<h2>Data freshness</h2>")[1]

    assert may["live rows in d23.logs"] == "5"  # of the 6 it holds


def test_deletions_not_applied_show_rows_attempts_and_the_local_read_time(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    page = _page(tmp_path, _gather(warehouse, timezone="Europe/Berlin"))

    assert _table(page, "<h3>Deletions not applied</h3>") == [
        {
            "month": "2026-05",
            "rows": "2",
            "of them counted as attempts": "1",
            "why": "unproven",
            "read at (Europe/Berlin)": "2026-07-16 00:30",
        }
    ]


def test_every_reason_for_rejects_is_listed_with_its_rows(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    page = _page(tmp_path, _gather(warehouse))

    assert _table(page, "<h3>Rejected rows</h3>") == [
        {"month": "2026-05", "reason": "bad timestamp", "rows": "2"},
        {"month": "2026-05", "reason": "bad outcome", "rows": "1"},
    ]


# -- the panels: every month shown, each number in its own panel -------------------------------


def test_the_weekday_hour_and_channel_panels_count_every_month_shown(warehouse: Warehouse) -> None:
    data = _gather(warehouse)

    # Eight attempts: April's three and May's five active rows.
    assert sum(r["attempts"] for r in data.weekday_hour) == 8
    assert sum(r["attempts"] for r in data.channel_daily) == 8
    days = sorted({r["day"] for r in data.channel_daily})
    assert (days[0], days[-1], len(days)) == (APRIL, date(2026, 5, 31), 61)


def test_the_pages_trend_leaves_out_only_the_partial_months_broken_promise_share(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    data = _on_20_may(_gather(warehouse, now=datetime(2026, 5, 20, tzinfo=UTC)))
    assert data.months_in("maturing") == {APRIL} and data.months_in("partial") == {MAY}

    trend = {t["name"]: t["y"] for t in _figure(_page(tmp_path, data), "kpi-trend")}

    assert trend["Broken-promise share"] == [0.0, None]  # April's one promise is not broken
    assert trend["Contact rate"] == [66.7, 20.0]  # drawn as the tiles show it, to 0.1 pp


def test_a_maturing_months_broken_promise_share_is_drawn_hollow_and_says_it_may_rise(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    data = _on_20_may(_gather(warehouse, now=datetime(2026, 5, 20, tzinfo=UTC)))
    page = _page(tmp_path, data)

    for chart in ("kpi-trend", "kpi-by-channel", "kpi-by-source"):
        for line in _figure(page, chart):
            april = line["x"].index("Apr 2026")
            broken = line["hovertemplate"].endswith("<extra>Broken-promise share</extra>")
            assert line["marker"]["symbol"][april] == ("circle-open" if broken else "circle")
            assert line["text"][april] == (", maturing: may still rise" if broken else "")
            assert "%{text}<extra>" in line["hovertemplate"]


def test_the_daily_panel_says_its_last_day_is_still_running(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    on_20_may = _gather(warehouse, now=datetime(2026, 5, 20, 12, tzinfo=UTC))
    read = {f.month: f.last_read for f in on_20_may.freshness}[MAY]
    assert read is not None

    running = _page(tmp_path, on_20_may)
    ended = _page(tmp_path, _gather(warehouse))

    note = "The last day, 20 May 2026, is still running: counted up to its read at"
    assert f"{note} {read:%Y-%m-%d %H:%M}." in running
    assert "is still running: counted up to" not in ended


def test_a_month_last_read_before_it_ended_is_not_shown_as_ended(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    # May's last read came on 7 May (its later refreshes failed, or the daemon was down); on
    # 10 June its last weeks are missing: May is no finished month to headline or compare.
    with warehouse.connect() as con:
        con.execute("UPDATE d23.slice_verification SET read_at = ? WHERE _partition = '2026-05-01'",
                    [datetime(2026, 5, 7, 12, tzinfo=UTC)])  # fmt: skip
    data = _gather(warehouse)
    page = _page(tmp_path, data)

    assert {f.month: f.status for f in data.freshness}[MAY] == "unfinished"
    assert data.tile_months()[0]["month"] == APRIL
    tiles = page[page.index("<section id='kpis'>") :].split("</p>")[0]
    assert "<h2>KPIs, Apr 2026</h2>" in tiles
    assert "May 2026 last read before it ended" in tiles
    states = {r["month"]: r["state"] for r in _table(page, "<h2>Data freshness</h2>")}
    assert states["2026-05"].startswith("unfinished: last read before it ended")
    # The daily panel ends on 7 May, that day drawn as counted in part, and says so.
    days = [r["day"] for r in data.channel_daily]
    assert max(days) == date(2026, 5, 7)
    assert {r["day"] for r in data.channel_daily if r["partial"]} == {date(2026, 5, 7)}
    note = "The days after 7 May 2026 are not read yet: that day is counted up to its read at"
    assert f"{note} 2026-05-07 12:00." in page
    # The trend draws May hollow, as a month counted so far.
    for line in _figure(page, "kpi-trend"):
        assert line["marker"]["symbol"][line["x"].index("May 2026 (so far)")] == "circle-open"


def test_the_trends_say_which_months_are_maturing_or_partial(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    page = _page(tmp_path, _on_20_may(_gather(warehouse, now=datetime(2026, 5, 20, tzinfo=UTC))))

    caveats = page[page.index("<h2>KPI trends</h2>") :].split("</p>")[0]
    assert "Apr 2026 is maturing: read less than 30 days after it ended" in caveats
    assert "May 2026 is partial: the month is still running." in caveats
    states = {r["month"]: r["state"] for r in _table(page, "<h2>Data freshness</h2>")}
    assert states["2026-05"] == "partial: the month is still running"


def test_the_split_panels_draw_one_line_per_channel_and_source_with_its_own_rates(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    data = _gather(warehouse)
    page = _page(tmp_path, data)

    for chart, dimension in (("kpi-by-channel", "communication_type"),
                             ("kpi-by-source", "interaction_source")):  # fmt: skip
        rows = data.kpis_by_channel if chart == "kpi-by-channel" else data.kpis_by_source
        traces = _figure(page, chart)
        lines = {(t["name"], t["hovertemplate"].split("<extra>")[1]): t for t in traces}
        assert {name for name, _ in lines} == {r[dimension] for r in rows}
        for r in rows:
            line = lines[(r[dimension], "Contact rate</extra>")]
            month = line["x"].index(f"{r['month']:%b %Y}")
            rate = r["contact_rate"]  # drawn in percent
            assert line["y"][month] == (None if rate is None else float(shown_percent(rate)))
            # A small group's rate, hovered, says how few attempts it comes from.
            assert line["customdata"][month] == [r["contacts"], r["attempts"]]
            assert line["hovertemplate"].endswith(
                "(%{customdata[0]:,} of %{customdata[1]:,} attempts)%{text}"
                "<extra>Contact rate</extra>"
            )
            refusals = lines[(r[dimension], "Refusal rate</extra>")]
            assert refusals["customdata"][month] == [r["refusals"], r["rpcs"]]
            assert "of %{customdata[1]:,} right-party contacts)" in refusals["hovertemplate"]
        if chart == "kpi-by-channel":
            sms = lines[("SMS", "Contact rate</extra>")]
            assert (sms["x"], sms["y"]) == (["Apr 2026", "May 2026"], [0.0, 0.0])  # no contact


def test_the_header_names_the_first_and_last_month_shown(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    assert "<p>Months Apr 2026 to May 2026. Generated" in _page(tmp_path, _gather(warehouse))


def test_each_outcome_mix_bar_is_the_codes_percentage_named_and_shaded_by_class() -> None:
    shares = [
        {"month": APRIL, "outcome_option": code, "outcome_class": cls, "attempts": n,
         "share": n / 8}
        for code, cls, n in (("BUSY", "no_contact", 2), ("NO_ANSWER", "no_contact", 4),
                             ("PTP", "promise", 1), ("ODD", "unmapped", 1))
    ]  # fmt: skip

    bars = {t["name"]: t for t in dashboard.outcome_mix_chart(shares)["data"]}

    assert list(bars) == ["PTP (promise)", "BUSY (no_contact)", "NO_ANSWER (no_contact)",
                          "ODD (unmapped)"]  # fmt: skip
    assert bars["NO_ANSWER (no_contact)"]["y"] == [50.0]
    running = dashboard.outcome_mix_chart(shares, partial={APRIL})["data"][0]
    assert running["x"] == ["Apr 2026 (so far)"]
    assert bars["NO_ANSWER (no_contact)"]["customdata"] == [4]
    assert "(%{customdata:,} attempts)" in bars["NO_ANSWER (no_contact)"]["hovertemplate"]
    darkest, lightest = dashboard.CLASS_COLOURS["no_contact"]
    assert bars["BUSY (no_contact)"]["marker"]["color"] == darkest
    assert bars["NO_ANSWER (no_contact)"]["marker"]["color"] == lightest


def test_names_from_the_api_read_one_way_only_and_are_never_read_as_a_hover_template(
    warehouse: Warehouse,
) -> None:
    renamed = {"m1": ("A / B", "C"), "m2": ("A", "B / C"), "m4": ("X %{y}", "AGENT")}
    with warehouse.connect() as con:
        for public_id, (channel, source) in renamed.items():
            con.execute(
                "UPDATE d23.logs SET communication_type = ?, interaction_source = ? "
                "WHERE public_id = ?",
                [channel, source, public_id],
            )
        rebuild_outcome_mix_monthly(con, MAY, *month_window("2026-05"), load_outcome_classes())
        rebuild_outcome_kpis_monthly(con, MAY)
    data = _gather(warehouse)

    daily = dashboard.channel_daily_chart(data.channel_daily)["data"]
    split = dashboard.kpi_split_chart(data.kpis_by_channel, "communication_type")["data"]

    groups = {t["name"]: t["legendgroup"] for t in daily}
    # One pair joined by " / " is not taken for another, in its name or its legend group.
    assert {'"A / B" / C', 'A / "B / C"', "X %{y} / AGENT"} <= set(groups)
    assert groups['"A / B" / C'] != groups['A / "B / C"']
    assert {"X %{y}", "A / B"} <= {t["name"] for t in split}  # alone, it reads one way
    for trace in [*daily, *split]:
        assert trace["hovertemplate"].startswith("%{fullData.name}, ")
        assert "X %{y}" not in trace["hovertemplate"] and "A / B" not in trace["hovertemplate"]


def test_a_code_holding_quotes_is_not_taken_for_another_code_quoted() -> None:
    shares = [
        {"month": APRIL, "outcome_option": code, "outcome_class": "unmapped", "attempts": 1,
         "share": 0.5}
        for code in ('"PTP "', "PTP ")
    ]  # fmt: skip

    names = [t["name"] for t in dashboard.outcome_mix_chart(shares)["data"]]

    assert sorted(names) == ['"PTP " (unmapped)', '"\\"PTP \\"" (unmapped)']


def test_every_code_of_a_class_gets_its_own_shade_however_many_it_has() -> None:
    codes = [f"CODE_{i}" for i in range(7)]  # more than any palette the mix chart had
    shares = [{"month": APRIL, "outcome_option": code, "outcome_class": "right_party_contact",
               "attempts": 1, "share": 1 / 7} for code in codes]  # fmt: skip

    colours = [t["marker"]["color"] for t in dashboard.outcome_mix_chart(shares)["data"]]

    assert len(set(colours)) == 7
    assert colours[0] == dashboard.CLASS_COLOURS["right_party_contact"][0]


def test_the_weekday_hour_panels_draw_the_contact_and_the_rpc_rate(warehouse: Warehouse) -> None:
    rows = _gather(warehouse).weekday_hour

    contact, rpc = dashboard.weekday_hour_chart(rows, "UTC")["data"]
    # One colour scale for both panels, from 0 to 100 %: the palest cell is none, not the least.
    assert (contact["zmin"], contact["zmax"], rpc["zmin"], rpc["zmax"]) == (0, 100, 0, 100)

    # Every attempt at 10:00 UTC. Mon: an RPC; Tue: no answer; Wed: an unmapped code; Thu: a
    # promise and two unmapped; Fri: a wrong number (a contact, not an RPC) and an unmapped.
    drawn = {day: (contact["z"][day - 1][10], rpc["z"][day - 1][10]) for day in (1, 2, 3, 4, 5)}
    assert drawn == {
        1: (100.0, 100.0),
        2: (0.0, 0.0),
        3: (0.0, 0.0),
        4: (33.3, 33.3),
        5: (50.0, 0.0),
    }
    assert all(v is None for row in contact["z"] for h, v in enumerate(row) if h != 10)


def test_each_channel_panel_draws_its_own_measure(warehouse: Warehouse) -> None:
    rows = _gather(warehouse).channel_daily

    traces = dashboard.channel_daily_chart(rows)["data"]

    call = [r for r in rows if r["communication_type"] == "CALL"]
    panels = {t["yaxis"]: t["y"] for t in traces if t["name"] == "CALL / AGENT"}
    measures = {"y": "attempts", "y2": "contacts", "y3": "rpcs", "y4": "promises"}
    assert panels == {axis: [r[m] for r in call] for axis, m in measures.items()}
    assert (sum(panels["y2"]), sum(panels["y3"])) == (3, 2)  # the wrong number: a contact only


# -- month states, problem count --------------------------------------------------------------


def test_a_month_ends_at_its_last_instant_and_settles_with_a_read_30_days_after() -> None:
    june, end = date(2026, 6, 1), datetime(2026, 7, 1, tzinfo=UTC)
    later = datetime(2026, 12, 1, tzinfo=UTC)

    assert dashboard.month_status(june, None, end - timedelta(microseconds=1)) == "partial"
    assert dashboard.month_status(june, None, end) == "maturing"
    # Read on its last day, and not since: its last hours are missing.
    last_day = end - timedelta(hours=21)
    assert dashboard.month_status(june, last_day, later) == "unfinished"
    assert dashboard.month_status(june, end, later) == "maturing"
    days_30 = end + timedelta(days=30)
    assert dashboard.month_status(june, days_30 - timedelta(microseconds=1), later) == "maturing"
    assert dashboard.month_status(june, days_30, later) == "settled"
