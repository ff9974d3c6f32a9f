"""A short read never turns into deletions: slices are proven complete, deletions proven too."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pyarrow.parquet as pq
import pytest
from api import (
    DAY,
    T0,
    checked_transport,
    client,
    count_answer,
    ending_the_walk,
    is_page,
    pid,
    row,
    rows_at,
    simulator,
)
from harness import BOTH_WAREHOUSES, ExportHookSimulator, Pipeline, d23_row, failure_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d23_pipeline.client import (
    ExportsClient,
    Recount,
    SliceDone,
    SlicePage,
    SliceRestart,
    Window,
    WindowTotal,
)
from d23_pipeline.client.completeness import judge, sum_totals
from d23_pipeline.client.exports import AFTER_WALK_COUNTS, served_a_change
from d23_pipeline.client.windows import ONE_MS
from d23_pipeline.definitions import defs
from d23_pipeline.landing import month as month_module
from d23_pipeline.landing.month import MonthRead, read_month
from d23_pipeline.landing.snapshot import SliceRecord, SnapshotStore, rows_path
from d23_pipeline.months import month_window
from d23_pipeline.schema import RejectedRow, format_timestamp, parse_timestamp
from d23_pipeline.schema_arrow import rows_to_batch
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import Faults, SimResponse, Simulator, SimulatorConfig, serve
from d23_pipeline.warehouse.store import Warehouse, merge_snapshot

MONTH = "2026-04"
CONFIRM = {"ops": {"d23__logs": {"config": {"confirm_deletions": True}}}}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _deleted_ids(pipeline: Pipeline) -> set[str]:
    return {
        r[0] for r in pipeline.query("SELECT public_id FROM d23.logs WHERE _deleted_at IS NOT NULL")
    }


def _unverified_slices(pipeline: Pipeline) -> int:
    (count,) = pipeline.query("SELECT count(*) FROM d23.slice_verification WHERE NOT verified")
    return count[0]


def _fault(pipeline: Pipeline, **faults: object) -> None:
    pipeline.sim.faults = dataclasses.replace(Faults(), **faults)


def test_truncated_walks_above_the_total_cap_mark_no_live_row_deleted(pipeline: Pipeline) -> None:
    # The month (1,500 rows) is far above the cap; a day (~50, some more with ties) is counted
    # exactly, or in parts where a busy day is capped.
    pipeline.sim.config.total_cap = 60
    assert pipeline.materialize(MONTH, page_limit=10).success
    _fault(pipeline, truncate_rate=0.3, seed=7)

    result = pipeline.materialize(MONTH, page_limit=10, raise_on_error=False)

    assert not result.success
    assert "slices_verified" in failure_messages(result)["d23__logs"]
    check = _checks(result)["slices_verified"]
    assert not check.passed and "not proven complete" in check.description
    assert "[2026-04-" in check.description and "counts " in check.description
    assert _deleted_ids(pipeline) == set()
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _unverified_slices(pipeline) > 0

    _fault(pipeline)
    clean = pipeline.materialize(MONTH, page_limit=10)

    assert clean.success
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _unverified_slices(pipeline) == 0


def test_a_month_whose_counts_time_out_on_wide_windows_is_proven_in_parts_and_deletes_exactly(
    pipeline: Pipeline,
) -> None:
    # The API gives up counting any window wider than 6 hours (documented: total null,
    # totalNote "timeout"): each day slice is counted in four parts, before and after its walk.
    _fault(pipeline, max_window_for_count=timedelta(hours=6))
    landed = pipeline.materialize(MONTH)
    assert landed.success
    (read,) = landed.asset_materializations_for_node("d23__raw_logs")
    assert read.metadata["count_splits"].value == 90  # 30 days, each day into 2 then 4 parts
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _unverified_slices(pipeline) == 0
    gone = set(pipeline.sim.hard_delete(5, month=MONTH))

    assert pipeline.materialize(MONTH).success

    assert _deleted_ids(pipeline) == gone
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])


def test_a_month_that_grows_and_loses_rows_while_truncated_marks_no_live_row_deleted(
    pipeline: Pipeline,
) -> None:
    pipeline.sim.config.total_cap = 60
    assert pipeline.materialize(MONTH, page_limit=25).success
    _fault(pipeline, truncate_rate=0.3, grow_per_page=1, delete_per_page=1, seed=11)

    result = pipeline.materialize(MONTH, page_limit=25, raise_on_error=False)

    assert not result.success
    existing = {row["public_id"] for row in pipeline.sim.valid_rows(*month_window(MONTH))}
    assert _deleted_ids(pipeline) & existing == set()

    _fault(pipeline)
    clean = pipeline.materialize(MONTH, page_limit=25, run_config=CONFIRM)

    assert clean.success
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _unverified_slices(pipeline) == 0


@BOTH_WAREHOUSES
def test_a_source_that_lost_30_percent_is_not_applied_until_confirmed(pipeline: Pipeline) -> None:
    pipeline.materialize(MONTH)
    live = len(pipeline.expected_rows([MONTH]))
    lost = set(pipeline.sim.hard_delete(round(live * 0.3), month=MONTH))

    held = pipeline.materialize(MONTH, raise_on_error=False)

    assert not held.success
    check = _checks(held)["deletions_within_limit"]
    assert not check.passed
    assert "2026-04-01" in check.description and "30.00%" in check.description
    assert '"confirm_deletions": true' in check.description
    assert _deleted_ids(pipeline) == set()
    # The analyst's page lists the month's deletions held, once it is rebuilt.
    assert pipeline.query("SELECT count(*), bool_and(held) FROM d23.deletions_pending") == [
        (len(lost), True)
    ]
    dg.materialize(
        list(defs.assets), selection="d23/outcome_dashboard", resources=pipeline.resources()
    )
    assert "held until d23/logs runs with confirm_deletions" in pipeline.dashboard_path.read_text()

    assert "selection 'd23/logs*'" in check.description
    confirmed = pipeline.materialize(MONTH, selection="d23/logs*", run_config=CONFIRM)

    assert confirmed.success
    assert _deleted_ids(pipeline) == lost
    assert pipeline.query("SELECT count(*) FROM d23.deletions_pending") == [(0,)]
    assert "every deletion is applied" in pipeline.dashboard_path.read_text()
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    # The month's numbers follow the confirmed deletions.
    attempts = sum(r["is_active"] for r in pipeline.sim.valid_rows(*month_window(MONTH)))
    assert pipeline.query(
        "SELECT attempts FROM d23.outcome_kpis_monthly WHERE month = ?", (f"{MONTH}-01",)
    ) == [(attempts,)]

    # The confirmation was that run's alone: the month's next large loss is held again.
    pipeline.sim.hard_delete(round(live * 0.3), month=MONTH)
    held_again = pipeline.materialize(MONTH, raise_on_error=False)

    assert not _checks(held_again)["deletions_within_limit"].passed
    assert _deleted_ids(pipeline) == lost


@BOTH_WAREHOUSES
def test_a_few_real_deletions_in_verified_slices_are_marked(pipeline: Pipeline) -> None:
    pipeline.materialize(MONTH)
    gone = set(pipeline.sim.hard_delete(5, month=MONTH))

    result = pipeline.materialize(MONTH)

    raw = {
        k: v.value
        for k, v in result.asset_materializations_for_node("d23__raw_logs")[0].metadata.items()
    }
    assert (raw["deletion_candidates"], raw["proven_absent"]) == (5, 5)
    assert _deleted_ids(pipeline) == gone
    # Row counts are of live rows (one month here, so the table's is the month's); the deleted
    # ones are apart.
    logs = result.asset_materializations_for_node("d23__logs")[0].metadata
    live = len(pipeline.expected_rows([MONTH]))
    assert logs["dagster/row_count"].value == logs["table_live_rows"].value == live
    assert logs["table_rows_marked_deleted"].value == 5


def test_an_api_that_ends_every_walk_at_the_same_points_lands_the_month_and_its_deletions(
    pipeline: Pipeline,
) -> None:
    # Every walk that reaches the end of about one instant in 15 stops there, whatever its page
    # size, as where a parent batch ends: each day's first read is short, and a read again from
    # the day's start stopped at the same point, three reads running.
    _fault(pipeline, batch_end_every=15, seed=5)
    assert pipeline.materialize(MONTH, page_limit=10).success
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    gone = set(pipeline.sim.hard_delete(5, month=MONTH))

    result = pipeline.materialize(MONTH, page_limit=10)

    assert result.success
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _deleted_ids(pipeline) == gone
    assert _unverified_slices(pipeline) == 0
    # Days with an end were read twice: the read again walked on past every end at once.
    (reads,) = pipeline.query("SELECT max(reads) FROM d23.slice_verification")
    assert reads[0] == 2


@st.composite
def _read_faults(draw: st.DrawFn) -> Faults:
    return dataclasses.replace(
        Faults(),
        truncate_rate=draw(st.sampled_from([0.0, 0.2, 0.5, 0.9])),
        grow_per_page=draw(st.integers(0, 2)),
        delete_per_page=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 10_000)),
    )


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    faults=_read_faults(),
    page_limit=st.sampled_from([5, 10, 40]),
    total_cap=st.sampled_from([8, 1000]),
    deleted_before=st.integers(0, 6),
)
def test_no_row_that_exists_at_the_end_of_a_read_is_ever_marked_deleted(
    faults: Faults, page_limit: int, total_cap: int, deleted_before: int
) -> None:
    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=120, total_cap=total_cap))
    since, until = month_window(MONTH)
    slices = Window(since, until).split(timedelta(days=2))
    with tempfile.TemporaryDirectory() as tmp, _client(sim, page_limit) as client:
        store, warehouse = SnapshotStore(Path(tmp) / "raw"), Warehouse(Path(tmp) / "w.duckdb")

        def read_and_merge(run_id: str) -> None:
            read = read_month(
                client, store, warehouse, partition=MONTH, slices=slices, run_id=run_id
            )
            with warehouse.connect() as con:
                merge_snapshot(con, read.snapshot, max_deletion_share=1.0)

        read_and_merge("first")
        sim.hard_delete(deleted_before, month=MONTH)
        sim.faults = faults
        read_and_merge("second")

        existing = {row["public_id"] for row in sim.valid_rows(since, until)}
        with warehouse.connect(read_only=True) as con:
            deleted = {
                r[0]
                for r in con.execute(
                    "SELECT public_id FROM d23.logs WHERE _deleted_at IS NOT NULL"
                ).fetchall()
            }
    assert deleted & existing == set()


def test_a_month_read_before_any_merge_weighs_nothing_and_makes_no_warehouse(
    tmp_path: Path,
) -> None:
    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=50))
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with _client(sim, page_limit=20) as client:
        read = read_month(
            client,
            SnapshotStore(tmp_path / "raw"),
            warehouse,
            partition=MONTH,
            slices=Window(*month_window(MONTH)).split(timedelta(days=2)),
            run_id="first",
        )

    assert not warehouse.exists()  # the merge makes it
    assert (read.deletion_candidates, read.proven_absent) == (0, 0)
    assert sum(s.served for s in read.snapshot.slices) == 50


def _client(sim: Simulator, page_limit: int) -> ExportsClient:
    config = sim.config
    return ExportsClient(
        "http://127.0.0.1",
        LoginCredentials(config.lender_slug, config.email, config.password),
        page_limit=page_limit,
        slice_size=timedelta(days=2),
        min_window=timedelta(hours=1),
        transport=sim.transport(),
        sleep=lambda seconds: None,
    )


@pytest.mark.e2e
def test_the_cli_exits_non_zero_naming_the_slices_in_doubt(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=600))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D23_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(tmp_path / "home"),
        "D23_LENDER": sim.config.lender_slug,
        "D23_EMAIL": sim.config.email,
        "D23_PASSWORD": sim.config.password,
        "D23_DATA_DIR": str(tmp_path / "data"),
        "D23_PAGE_LIMIT": "10",
    }
    (tmp_path / "home").mkdir()
    command = [
        str(Path(sys.executable).with_name("dagster")),
        *("asset", "materialize", "-m", "d23_pipeline.definitions", "--select", "*"),
        *("--partition", f"{MONTH}-01"),
    ]
    with serve(sim) as url:
        env["D23_API_URL"] = url
        clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        sim.faults = dataclasses.replace(Faults(), truncate_rate=0.5, seed=3)
        doubtful = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    assert clean.returncode == 0, clean.stderr[-2000:]
    assert doubtful.returncode != 0
    output = doubtful.stdout + doubtful.stderr
    assert "slice(s) not proven complete" in output
    assert "[2026-04-" in output


def test_a_read_whose_walks_could_not_read_on_past_every_end_is_not_proven_complete() -> None:
    # Rows logged late behind its edge can fill the count in place of rows after an end.
    counted = WindowTotal(4, True, None)

    proof = judge(4, counted, counted, 2, read_on_ran_out=True)

    assert not proof.verified
    assert proof.reason == (
        "the API ended its walks early where they could not read on past: more often "
        "than the slice has rows, or inside an instant, before rows no request for it "
        "reaches (served 4; exact counts 4 before, 4 after)"
    )
    assert judge(4, counted, counted, 2).verified


def test_a_first_read_whose_counts_moved_says_it_is_read_again_to_be_proven() -> None:
    moved = judge(10, WindowTotal(10, True, None), WindowTotal(11, True, None))

    assert not moved.verified
    assert moved.reason.startswith("changed while read, by a first read, which does not walk on")
    assert judge(10, WindowTotal(10, True, None), WindowTotal(11, True, None), 2).verified
    assert judge(10, WindowTotal(10, True, None), WindowTotal(10, True, None)).verified
    # Equal counts, but it served a row changed since the count: as many may have left.
    masked = judge(
        10, WindowTotal(10, True, None), WindowTotal(10, True, None), changed_meanwhile=True
    )
    assert not masked.verified
    assert masked.reason.startswith("changed while read, by a first read, which does not walk on")


def test_a_first_read_whose_equal_counts_hide_a_row_come_and_a_row_gone_is_read_again() -> None:
    # Ten rows in the day, one the next day. The walk's second page ends it early, before the
    # tenth row, while the next day's row moves into the day ahead of the cursor and a row the
    # first page served is deleted: 10 served, 10 counted before and after, one row unread.
    rows = [*rows_at(n * 60_000 for n in range(10)), row(10, T0 + timedelta(days=1, hours=1))]
    sim = simulator(rows, page_size=lambda limit: 5)
    answer = checked_transport(sim)
    pages = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal pages
        page = is_page(request)
        pages += page
        if not (page and pages == 2):
            return answer.handle_request(request)
        sim.move_row(pid(10), T0 + timedelta(minutes=5, seconds=30))
        sim.hard_delete_row(pid(0))
        return ending_the_walk(answer.handle_request(request))

    with client(sim, page_limit=5, transport=httpx.MockTransport(handle)) as reader:
        events = list(reader.iter_slices(DAY))

    served = {r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows}
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert pid(9) in served  # the row the early end left unread, found by the read again
    assert done.proof.verified and done.proof.reads == 2


def test_a_reject_served_again_after_a_504_counts_once_in_what_its_read_served() -> None:
    # Rows 2, 3 (bad) and 4 share one instant, where the first page ends. The second page's 504
    # sends the walk back to that instant, and row 2 is deleted meanwhile: the bad row now has
    # no row before it there and is served again. A row moves in behind the cursor and the
    # last page ends the walk before row 9: 10 counted before and after, and 10 served if the
    # bad row counted twice.
    minutes = [0, 1, 2, 2, 2, 5, 6, 7, 8, 9]
    rows = [*rows_at(m * 60_000 for m in minutes), row(10, T0 + timedelta(days=1, hours=1))]
    sim = simulator(rows, page_size=lambda limit: 5)
    sim.corrupt_row(pid(3), "wrong_type", is_active="yes")
    answer = checked_transport(sim)
    pages = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal pages
        page = is_page(request)
        pages += page
        if page and pages == 2:
            sim.hard_delete_row(pid(2))
            sim.move_row(pid(10), T0 + timedelta(minutes=1, seconds=30))
            return httpx.Response(504)
        response = answer.handle_request(request)
        return ending_the_walk(response, without=pid(9)) if page and pages == 4 else response

    with client(sim, page_limit=5, transport=httpx.MockTransport(handle)) as reader:
        events = list(reader.iter_slices(DAY))

    restart = next((i for i, e in enumerate(events) if isinstance(e, SliceRestart)), len(events))
    first_read = [e for e in events[:restart] if isinstance(e, SlicePage)]
    assert [r.public_id for e in first_read for r in e.rejects] == [pid(3)]  # quarantined once
    served = {r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows}
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert pid(9) in served  # the row the early end left unread, found by the read again
    assert done.proof.verified and done.proof.reads == 2


def _when_the_day_is_counted(nth: int, then: Callable[[], None]) -> Callable[[httpx.Request], None]:
    """A hook to call with every request: it runs ``then`` as the day is counted for the
    ``nth`` time (1: the first read's count before its walk; 3: the second read's)."""
    counted = 0

    def hook(request: httpx.Request) -> None:
        nonlocal counted
        params = request.url.params
        whole_day = (params.get("since"), params.get("until")) == (DAY.since_text, DAY.until_text)
        if "includeTotal" in params and whole_day:
            counted += 1
            if counted == nth:
                then()

    return hook


@pytest.mark.parametrize(
    "api_ends", ["walks on a page whose last row is 6", "every page after row 6"]
)
def test_a_read_again_gets_past_an_early_end_inside_an_instant_or_is_not_proven(
    api_ends: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows 5, 6 and 7 share an instant; pages of 2. Reading on from that instant, a page holds
    # the two rows it skips first, and ended there again. Cut after row 6 whatever the page
    # size, row 7 is out of reach of any request. Meanwhile a row moves in ahead of the cursor,
    # and the counts (4 before, 5 after) would take the 4 rows served for all there is.
    at = [T0 + timedelta(minutes=m) for m in (5, 5, 5, 7)]
    rows = [*(row(n, t) for n, t in zip((5, 6, 7, 8), at, strict=True))]
    sim = simulator([*rows, row(50, T0 + timedelta(days=1, hours=3))])
    answer = checked_transport(sim)
    moved_in = _when_the_day_is_counted(
        3, lambda: sim.move_row(pid(50), T0 + timedelta(minutes=7, seconds=30))
    )

    def handle(request: httpx.Request) -> httpx.Response:
        response = answer.handle_request(request)
        moved_in(request)
        if is_page(request):
            response.read()
            ids = [r["public_id"] for r in response.json()["body"]["rows"]]
            if pid(6) in ids and (api_ends == "every page after row 6" or ids[-1] == pid(6)):
                return ending_the_walk(response, without=pid(7))
        return response

    with client(sim, page_limit=2, max_concurrency=1, transport=httpx.MockTransport(handle)) as r:
        events = list(r.iter_slices(DAY))

    restarts = [i for i, e in enumerate(events) if isinstance(e, SliceRestart)]
    last_read = events[restarts[-1] if restarts else 0 :]
    served = {r["public_id"] for e in last_read if isinstance(e, SlicePage) for r in e.rows}
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    if api_ends == "every page after row 6":
        assert pid(7) not in served and not done.proof.verified
        assert "ends walks before rows this read cannot reach" in caplog.text
    else:
        assert pid(7) in served and done.proof.verified


def test_a_read_again_whose_read_on_ends_before_a_row_it_cannot_reach_is_not_proven() -> None:
    # The API ends every walk just before row 2, on whatever page would serve it (an empty one
    # once the walk reads on past row 1). While the second read walks, row 3 moves in ahead of
    # its cursor: counted 2 before and 3 after, it serves 2 (rows 1 and 3).
    rows = [row(1, T0 + timedelta(minutes=5)), row(2, T0 + timedelta(minutes=11))]
    sim = simulator([*rows, row(3, T0 + timedelta(days=1, hours=3))])
    answer = checked_transport(sim)
    moved_in = _when_the_day_is_counted(3, lambda: sim.move_row(pid(3), T0 + timedelta(minutes=3)))

    def handle(request: httpx.Request) -> httpx.Response:
        response = answer.handle_request(request)
        moved_in(request)
        if is_page(request) and pid(2) in response.read().decode():
            return ending_the_walk(response, without=pid(2))
        return response

    with client(sim, page_limit=5, max_concurrency=1, transport=httpx.MockTransport(handle)) as r:
        events = list(r.iter_slices(DAY))

    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert not done.proof.verified


def test_a_bad_row_logged_after_the_count_does_not_stand_in_for_a_row_an_end_left_unread() -> None:
    # Today's window. The API ends every walk just before row 2, on whatever page would serve
    # it. Once the second read has counted the window (2 rows), a bad row is logged in it: the
    # read serves row 1 and the bad row, 2 of the 2 counted, and its read-on past the end
    # serves nothing new. The bad row was logged after the count; row 2 was never served.
    now = datetime.now(UTC).replace(microsecond=0)
    window = Window(now - timedelta(hours=1), now + timedelta(hours=1))
    rows = [row(1, now - timedelta(minutes=50)), row(2, now - timedelta(minutes=40))]
    sim = simulator([*rows, row(3, now + timedelta(days=5))])
    sim.corrupt_row(pid(3), "wrong_type", is_active="yes")
    answer = checked_transport(sim)
    counts = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal counts
        response = answer.handle_request(request)
        if not is_page(request) and request.url.params.get("since") == window.since_text:
            counts += 1
            if counts == 3:
                sim.move_row(pid(3), datetime.now(UTC) + timedelta(seconds=30))
        if is_page(request) and pid(2) in response.read().decode():
            return ending_the_walk(response, without=pid(2))
        return response

    with client(sim, page_limit=5, max_concurrency=1, transport=httpx.MockTransport(handle)) as r:
        events = list(r.iter_slices(window))

    restarts = [i for i, e in enumerate(events) if isinstance(e, SliceRestart)]
    second = events[restarts[0] : restarts[1] if len(restarts) > 1 else None]
    assert pid(3) in {r.public_id for e in second if isinstance(e, SlicePage) for r in e.rejects}
    assert pid(2) not in {
        r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows
    }
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert not done.proof.verified


@pytest.mark.parametrize(
    ("instant_page", "hiccup", "verified"),
    [
        ("served", None, True),
        ("served", "a 504 on the count before an instant's read-on", True),
        ("served", "a 504 on a count of what a part ended in", True),
        ("served", "504s on every count before an instant's read-on", False),
        ("empty, ending the walk", None, False),
    ],
)
def test_a_read_again_is_verified_through_hiccups_on_its_counts_not_past_an_unserved_instant(
    instant_page: str, hiccup: str | None, verified: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # A row logged while the first read walks (5 counted before, 6 after) sends the day to a
    # read again, which reads on past each end: the instant of the last row handed over,
    # counted before and after, then the rest, counted after. A 504 on such a count is a
    # hiccup; a count that never comes proves nothing. An instant's read-on that ends before
    # serving the row handed over there proves nothing: that row may have gone since, and
    # stand in for one after it.
    last = T0 + timedelta(minutes=30)
    rows = [row(n, T0 + timedelta(minutes=n)) for n in range(1, 6)]
    sim = simulator([*rows, row(50, T0 + timedelta(days=1, hours=3))])
    answer = checked_transport(sim)
    logged = _when_the_day_is_counted(1, lambda: sim.move_row(pid(50), last))
    counted: list[str] = []  # the since of each count of less than the day
    timeouts = 0

    def times_out(since: str) -> bool:
        nth = counted.count(since)  # the instant is counted before its read-on first
        if since == format_timestamp(last):
            if hiccup == "504s on every count before an instant's read-on":
                return nth <= AFTER_WALK_COUNTS
            return hiccup == "a 504 on the count before an instant's read-on" and nth == 1
        at_rest = since == format_timestamp(last + ONE_MS)
        return at_rest and hiccup == "a 504 on a count of what a part ended in" and nth == 1

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal timeouts
        params = request.url.params
        whole_day = (params.get("since"), params.get("until")) == (DAY.since_text, DAY.until_text)
        if "includeTotal" in params and not whole_day:
            counted.append(params["since"])
            if times_out(counted[-1]):
                timeouts += 1
                return httpx.Response(504)
        at_last = params.get("since") == format_timestamp(last) and "cursor" not in params
        if is_page(request) and at_last and instant_page != "served":
            return ending_the_walk(answer.handle_request(request), without=pid(50))
        response = answer.handle_request(request)
        logged(request)
        return response

    with client(
        sim, page_limit=3, max_concurrency=1, slice_reads=2, transport=httpx.MockTransport(handle)
    ) as reader:
        events = list(reader.iter_slices(DAY))
        assert reader.max_window is None  # nor did the hiccup narrow later windows

    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert done.proof.reads == 2
    assert done.proof.verified is verified
    never = hiccup == "504s on every count before an instant's read-on"
    assert timeouts == (AFTER_WALK_COUNTS if never else 0 if hiccup is None else 1)
    no_count = f"the API gave no exact count of {Window(last, last + ONE_MS)} before reading on"
    assert (no_count in caplog.text) is never


@pytest.mark.parametrize("deleted", ["before its read-on", "once its read-on served it"])
def test_a_row_handed_over_at_an_instant_and_gone_since_does_not_stand_in_for_one_left_unread(
    deleted: str,
) -> None:
    # Rows 1, 2 and 3 share an instant, and the API ends every walk just before row 3. The read
    # again hands over rows 1 and 2 and reads on at their instant, which ends before row 3
    # again; row 1 is deleted before that read-on, or once it served row 1 again. Counted after
    # the read-on alone, the instant holds 2 rows, and 2 were handed over (or served again).
    instant = T0 + timedelta(minutes=30, milliseconds=123)
    sim = simulator([row(n, instant) for n in (1, 2, 3)])
    answer = checked_transport(sim)
    counts, gone = 0, False

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal counts, gone
        params = request.url.params
        if not is_page(request):
            counts += 1  # 1, 2: the first read's counts; 3: the read again's
            return answer.handle_request(request)
        read_on = counts >= 3 and params["since"] == format_timestamp(instant)
        if read_on and not gone and deleted == "before its read-on":
            sim.hard_delete_row(pid(1))
            gone = True
        response = answer.handle_request(request)
        body = response.read().decode()
        if read_on and not gone and pid(1) in body:
            sim.hard_delete_row(pid(1))
            gone = True
        return ending_the_walk(response, without=pid(3)) if pid(3) in body else response

    with client(sim, page_limit=5, max_concurrency=1, transport=httpx.MockTransport(handle)) as r:
        events = list(r.iter_slices(DAY))

    assert gone
    assert pid(3) not in {
        r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows
    }
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert not done.proof.verified


def test_a_row_logged_before_the_read_began_is_counted_though_after_the_counts_date() -> None:
    # Today's window, and an API whose Date runs 3 s behind the clock that stamps rows (a
    # gateway's, within the slack the client allows). Row 2 was logged 2 s before the read
    # began, so after the count's Date; the API ends every walk just before it. Row 3, served,
    # is then deleted: had row 2 been taken for one logged after the count, row 3 would stand
    # in for it and the read again pass.
    now = datetime.now(UTC)
    window = Window(now - timedelta(hours=1), now + timedelta(hours=1))
    rows = [row(1, now - timedelta(minutes=50)), row(3, now - timedelta(minutes=40))]
    sim = simulator([*rows, row(2, now - timedelta(seconds=2))])
    answer = checked_transport(sim)
    counts = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal counts
        response = answer.handle_request(request)
        if not is_page(request):
            counts += 1
            behind = datetime.now(UTC) - timedelta(seconds=3)
            response.headers["date"] = format_datetime(behind, usegmt=True)
            return response
        body = response.read().decode()
        if counts >= 3 and pid(3) in body:
            sim.hard_delete_row(pid(3))
        if pid(2) in body:
            return ending_the_walk(response, without=pid(2))
        return response

    with client(
        sim,
        page_limit=5,
        max_concurrency=1,
        slice_size=timedelta(hours=2),
        transport=httpx.MockTransport(handle),
    ) as r:
        events = list(r.iter_slices(window))

    assert pid(2) not in {
        r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows
    }
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert not done.proof.verified


@pytest.mark.parametrize(
    "history", ["breaks: a wrong type", "breaks: an updated_at that is no time", "is mended"]
)
def test_a_row_served_again_after_a_504_valid_or_broken_counts_once_in_what_its_read_served(
    history: str,
) -> None:
    # Rows 1, 2 and 3 share an instant, inside which the first page ends. The second page's 504
    # sends the walk back to that instant, and row 2 breaks in place meanwhile (or, bad from
    # the start, is mended): served again, the other way. The walk then ends before row 9: 10
    # counted before and after, and 10 served if row 2 counted twice.
    tied = T0 + timedelta(minutes=2)
    rows = [row(0, T0), *(row(n, tied) for n in (1, 2, 3))]
    rows += [row(n, T0 + timedelta(minutes=n + 1)) for n in range(4, 10)]
    sim = simulator(rows, page_size=lambda limit: 3)
    if history == "is mended":
        sim.corrupt_row(pid(2), "wrong_type", is_active="yes")
    answer = checked_transport(sim)
    pages = ended = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal pages, ended
        page = is_page(request)
        pages += page
        if page and pages == 2:
            if history == "is mended":
                sim.mend_row(pid(2))
            elif history == "breaks: a wrong type":
                sim.corrupt_row(pid(2), "wrong_type", is_active="yes")
            else:
                sim.corrupt_row(pid(2), "bad_timestamp", updated_at="not-a-date")
            return httpx.Response(504)
        response = answer.handle_request(request)
        if page and not ended and pid(9) in response.read().decode():
            ended += 1
            return ending_the_walk(response, without=pid(9))
        return response

    with client(sim, page_limit=3, transport=httpx.MockTransport(handle)) as reader:
        events = list(reader.iter_slices(DAY))

    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert not (done.proof.verified and done.proof.reads == 1)
    assert pid(9) in {r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows}


def test_a_row_that_moves_and_breaks_after_it_was_handed_over_lands_as_a_reject() -> None:
    # Row 2, handed over valid where the first page ends (an instant it shares with row 1),
    # moves 10 s on and breaks; the second page's 504 sends the walk back to that instant, and
    # the re-read serves it broken right after the rows it skips.
    tied = T0 + timedelta(minutes=2)
    rows = [row(0, T0), row(1, tied), row(2, tied)]
    rows += [row(n, T0 + timedelta(minutes=n)) for n in range(3, 10)]
    sim = simulator(rows)
    answer = checked_transport(sim)
    pages = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal pages
        pages += is_page(request)
        if is_page(request) and pages == 2:
            sim.move_row(pid(2), tied + timedelta(seconds=10))
            sim.corrupt_row(pid(2), "wrong_type", is_active="yes")
            return httpx.Response(504)
        return answer.handle_request(request)

    with client(sim, page_limit=3, max_concurrency=1, transport=httpx.MockTransport(handle)) as r:
        events = list(r.iter_slices(DAY))

    restarts = [i for i, e in enumerate(events) if isinstance(e, SliceRestart)]
    last_read = [e for e in events[restarts[-1] if restarts else 0 :] if isinstance(e, SlicePage)]
    assert pid(2) in {r.public_id for e in last_read for r in e.rejects}  # quarantined
    assert pid(2) not in {r["public_id"] for e in last_read for r in e.rows}  # not its old self


@pytest.mark.parametrize("ends", ["after its walk", "while the read weighs a deletion"])
def test_a_slice_that_ends_while_its_month_is_read_is_read_again_after_its_end(
    ends: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two hour slices, the second ending 6 s from now (time for a first read on a busy
    # machine). Once the second is proven complete (or while the read looks up a row gone from
    # the first), a row is logged in its last millisecond, and the read runs on past the
    # slice's end: a read that finished after a window ended must have read it after it ended,
    # on the API's clock too (CLOCK_SLACK, 1 s here, after its end on ours).
    monkeypatch.setattr(month_module, "CLOCK_SLACK", timedelta(seconds=1))
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    slices = Window(end - timedelta(hours=2), end).split(timedelta(hours=1))
    gone = row(3, end - timedelta(minutes=100))
    rows = [row(0, end - timedelta(minutes=90)), row(1, end - timedelta(minutes=30)), gone]
    sim = simulator([*rows, row(2, end + timedelta(days=1))])
    store, warehouse = SnapshotStore(tmp_path / "raw"), Warehouse(tmp_path / "w.duckdb")

    def read(run_id: str, transport: httpx.MockTransport) -> MonthRead:
        with client(sim, slice_size=timedelta(hours=1), transport=transport) as reader:
            return read_month(
                reader, store, warehouse, partition="2026-12-01", slices=slices, run_id=run_id
            )

    first = read("first", checked_transport(sim))
    with warehouse.connect() as con:
        merge_snapshot(con, first.snapshot, max_deletion_share=1)
    sim.hard_delete_row(pid(3))
    answer = checked_transport(sim)
    met = 0
    pages_of_the_second: list[datetime] = []

    def is_trigger(request: httpx.Request) -> bool:
        if ends == "after its walk":  # the second slice's count after its walk
            return not is_page(request) and request.url.params["since"] == slices[1].since_text
        return request.url.params["since"] == gone["communicated_at"]  # its instant's read

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal met
        if is_page(request) and request.url.params["since"] == slices[1].since_text:
            pages_of_the_second.append(datetime.now(UTC))
        response = answer.handle_request(request)
        if "/exports/" in request.url.path and is_trigger(request):
            met += 1
            if met == (2 if ends == "after its walk" else 1):
                assert datetime.now(UTC) < end, "the slice was read after it ended: no history"
                sim.move_row(pid(2), end - ONE_MS)
                time.sleep((end - datetime.now(UTC)).total_seconds() + 0.05)
        return response

    second = read("second", httpx.MockTransport(handle))

    landed = pq.read_table(rows_path(second.snapshot.directory, slices[1])).column("public_id")
    assert pid(2) in landed.to_pylist()
    assert second.snapshot.completed_at >= end
    assert pages_of_the_second[-1] >= end + timedelta(seconds=1)  # read again once surely ended
    assert caplog.text.count("slices ended while this read ran") == 1  # waited, read once
    assert "1 slices ended while this read ran" in caplog.text
    assert second.proven_absent == 1  # the deletion weighed again, with the slice read again


SINCE = "2026-12-05T10:00:00.000Z"


@pytest.mark.parametrize(
    ("updated_at", "reject", "changed"),
    [
        ("2026-12-05T09:59:59.999Z", None, False),  # before the count
        ("2026-12-05T10:00:00.000Z", None, True),  # at it or after
        ("2030-01-01T00:00:00.000Z", None, False),  # stamped in the future: every run else
        (None, {"updated_at": "2026-12-05T10:59:59+01:00"}, False),  # before, in its offset
        (None, {"updated_at": "2026-12-05T12:00:00+01:00"}, True),
        # No updated_at to tell by: logged since the count, or the same bad row served on
        # every read?
        (None, {"updated_at": "not-a-date", "created_at": "2026-12-05T10:00:01Z"}, True),
        (None, {"updated_at": 12345, "created_at": "2026-12-05T09:00:00Z"}, False),
        (None, {"updated_at": "not-a-date"}, False),
    ],
)
def test_a_page_served_a_change_when_a_row_or_reject_changed_after_the_count(
    updated_at: str | None, reject: dict[str, object] | None, changed: bool
) -> None:
    rows = [] if updated_at is None else [row(1, T0) | {"updated_at": updated_at}]
    rejects = [] if reject is None else [RejectedRow("bad", pid(2), reject)]

    assert served_a_change(rows_to_batch(rows), rejects, SINCE) is changed


@pytest.mark.parametrize(
    ("served", "before", "after", "why"),
    [
        (90, 100, 100, "fewer rows than the counts (served 90; exact counts 100 before, 100"),
        (7, None, 7, "no exact count before the walk (served 7; exact counts none before, 7"),
        (4, 5, None, "no exact count after the walk (served 4; exact counts 5 before, none after)"),
        (3, None, None, "no exact count before or after the walk (served 3; exact counts none"),
        (6, 5, 5, "more rows than the counts (served 6; exact counts 5 before, 5 after)"),
    ],
)
def test_an_unverified_slice_says_why_with_what_it_served_against_its_counts(
    served: int, before: int | None, after: int | None, why: str
) -> None:
    proof = judge(served, WindowTotal(before, True, None), WindowTotal(after, True, None))

    assert not proof.verified and why in proof.reason


@pytest.mark.parametrize(
    ("halves", "counted"), [((2**62, 2**62 - 1), 2**63 - 1), ((2**62, 2**62), None)]
)
def test_parts_adding_up_past_a_bigint_give_no_count(
    halves: tuple[int, int], counted: int | None
) -> None:
    # Each part passes the page's own check; their sum past BIGINT failed the month's merge.
    parts = [WindowTotal(total, True, None) for total in halves]
    assert sum_totals(parts).exact_total == counted


def test_a_window_counted_in_parts_is_exact_only_if_every_part_is() -> None:
    # One part the API only estimated (a capped count): the sum proves nothing, so nothing in
    # the slice may be deleted on it.
    total = sum_totals([WindowTotal(40, True, None), WindowTotal(10_000, False, "capped")])

    assert (total.total, total.exact, total.exact_total) == (10_040, False, None)
    assert not judge(10_040, total, total).verified


class _CountGivesUpAt(ExportHookSimulator):
    """The simulator, except that a count of any window holding ``instant`` gives up
    (``total: null``, ``totalNote: "timeout"``), however narrow the window."""

    instant = datetime(2026, 4, 3, 10, 7, tzinfo=UTC)

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if query.get("includeTotal") == "true" and (
            parse_timestamp(query["since"]) <= self.instant < parse_timestamp(query["until"])
        ):
            return path, count_answer(None, "timeout")
        return path, None


def test_a_read_with_a_slice_it_cannot_count_reports_it_unverified_and_no_api_total(
    tmp_path: Path,
) -> None:
    sim = _CountGivesUpAt(SimulatorConfig(months=("2026-04",), rows_per_month=1500))
    with serve(sim) as url, dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        result = pipeline.materialize(
            "2026-04", selection="d23/raw_logs", raise_on_error=False, instance=instance
        )
        errors = [e.user_message for e in instance.all_logs(result.run_id) if e.level == 40]

    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    metadata = {key: value.value for key, value in raw.metadata.items()}
    assert (metadata["slices"], metadata["slices_verified"]) == (30, 29)
    assert metadata["api_total"] is None
    unverified = "| 2026-04-03T00:00:00.000Z | 2026-04-04T00:00:00.000Z | "
    assert unverified in metadata["unverified_slices"]
    assert "| the API gave no exact count" in metadata["unverified_slices"]
    assert metadata["count_splits"] > 0 and metadata["window_splits"] == 0
    assert any("1 slice(s) not proven complete" in message for message in errors), errors


class _MovesRowsInAtFirstPage(ExportHookSimulator):
    """The simulator, except that at the first page of the slice starting at ``since`` (its
    counts before the walk taken), the rows ``moved`` move to 20:00 that day, ahead of the walk."""

    since = "2026-04-10T00:00:00.000Z"
    moved = ("00000000000000000000000a", "00000000000000000000000b")

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if (
            query.get("since") == self.since
            and "includeTotal" not in query
            and "cursor" not in query
        ):
            for n, public_id in enumerate(self.moved):
                self.move_row(public_id, datetime(2026, 4, 10, 20, 0, n, tzinfo=UTC))
        return path, None


class _MovesARowBackWhenItsDayIsRead(ExportHookSimulator):
    """The simulator, except that once ``armed``, at the first page of 28 April (its count
    before the walk taken), the row ``moved`` moves back to 2 April, a slice read before."""

    moved = "0000000000000000000000aa"
    moved_to = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    armed = False

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if (
            self.armed
            and query.get("since") == "2026-04-28T00:00:00.000Z"
            and "includeTotal" not in query
            and "cursor" not in query
        ):
            self.armed = False
            self.move_row(self.moved, self.moved_to)
        return path, None


def _five_days_and_a_mover() -> list[dict[str, Any]]:
    """A row at 10:00 on five April days, and the row _MovesARowBackWhenItsDayIsRead moves, at
    12:00 on the last of them."""
    days = (2, 5, 10, 20, 28)
    rows = [d23_row(f"{n:024x}", f"2026-04-{d:02d}T10:00:00.000Z") for n, d in enumerate(days, 1)]
    return [*rows, d23_row(_MovesARowBackWhenItsDayIsRead.moved, "2026-04-28T12:00:00.000Z")]


@pytest.mark.parametrize("stored_before", [False, True], ids=["first read", "read again"])
def test_a_row_moved_back_into_a_slice_read_earlier_lands_with_the_same_read(
    tmp_path: Path, stored_before: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Every slice passes its own counts: 2 April was read before the move, 28 April after it.
    # Only counting the finished slices again at the end shows that 2 April gained a row.
    sim = _MovesARowBackWhenItsDayIsRead(rows=_five_days_and_a_mover())
    with serve(sim) as url:
        # One request at a time: the slices are read in order, 2 April long before 28 April.
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data", max_concurrency=1)
        if stored_before:
            pipeline.materialize(MONTH)
        sim.armed = True
        with caplog.at_level("WARNING", logger="d23_pipeline.landing"):
            result = pipeline.materialize(MONTH)

    assert not sim.armed  # the row did move during the read
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    ((communicated_at,),) = pipeline.query(
        "SELECT communicated_at FROM d23.logs WHERE public_id = ? AND _deleted_at IS NULL",
        (_MovesARowBackWhenItsDayIsRead.moved,),
    )
    assert communicated_at == _MovesARowBackWhenItsDayIsRead.moved_to
    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    assert raw.metadata["slices_changed_after_read"].value == 1
    assert raw.metadata["slices_verified"].value == 30
    assert any(
        "counts moved after the read in 1 slice ([2026-04-02" in m
        and m.endswith("reading them again")
        for m in caplog.messages
    )


def test_a_row_moved_back_while_the_gateway_answers_no_wide_window_lands(tmp_path: Path) -> None:
    # The gateway 504s windows wider than 6 h: the month's span is not counted at all, and each
    # slice is counted again in the parts its read learned to count it in.
    sim = _MovesARowBackWhenItsDayIsRead(rows=_five_days_and_a_mover())
    sim.faults = dataclasses.replace(Faults(), max_window_for_504=timedelta(hours=6))
    sim.armed = True
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data", max_concurrency=1)
        result = pipeline.materialize(MONTH)

    assert not sim.armed and sim.stats.snapshot()["by_status"].get(504, 0) > 0
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    assert raw.metadata["slices_changed_after_read"].value == 1


def test_a_row_moved_into_a_slice_an_interrupted_read_finished_lands_with_its_resume(
    tmp_path: Path,
) -> None:
    # The resumed read reuses 2 April, finished before the row moved there: counted again at
    # the end, it has gained the row, and is read again.
    mover = "0000000000000000000000d1"
    rows = [
        d23_row("0000000000000000000000d0", "2026-04-02T10:00:00.000Z"),
        d23_row("0000000000000000000000d2", "2026-04-10T10:00:00.000Z"),
        d23_row(mover, "2026-04-28T12:00:00.000Z"),
    ]
    sim = ExportHookSimulator(rows=rows)
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data", max_concurrency=1)
        # Whichever slices the other worker finished meanwhile (2 April is read again: its row
        # changed since its count).
        april_2 = Window(datetime(2026, 4, 2, tzinfo=UTC), datetime(2026, 4, 3, tzinfo=UTC))
        pipeline.materialize_crashing(MONTH, after_slices=5, including=april_2)
        sim.move_row(mover, datetime(2026, 4, 2, 9, tzinfo=UTC))
        result = pipeline.materialize(MONTH)

    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    assert raw.metadata["slices_resumed"].value >= 2
    assert raw.metadata["slices_changed_after_read"].value == 1
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])


class _MovesInBehindTheCursorOfAReadAgain(ExportHookSimulator):
    """At 2 April's first page a row there leaves the month ahead of the walk (its counts
    differ: read again); at the next page of 2 April after that read again's first (asked
    with its cursor, or by a part of its walk shared out to the other worker), a row of May
    (not read: one of a later April slice may have been read already, and a row moving
    between two slices read keeps the month's count) moves to 2 April 00:30, behind the
    cursor."""

    out, mover = "0000000000000000000000a2", "0000000000000000000000b1"
    first_pages = 0
    moved = False

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        since = query.get("since", "")
        if since.startswith("2026-04-02T") and "includeTotal" not in query:
            if since == "2026-04-02T00:00:00.000Z" and "cursor" not in query:
                self.first_pages += 1
                if self.first_pages == 1:
                    self.move_row(self.out, datetime(2026, 5, 5, 10, tzinfo=UTC))
            elif self.first_pages == 2 and not self.moved:
                self.moved = True
                self.move_row(self.mover, datetime(2026, 4, 2, 0, 30, tzinfo=UTC))
        return path, None


def test_a_row_moved_in_behind_the_cursor_of_a_read_verified_between_its_counts_lands(
    tmp_path: Path,
) -> None:
    # The read again of 2 April served 3 rows between its counts 3 and 4: verified, and its
    # count now is its count after. Compared with what it served, it is read again.
    rows = [
        d23_row("0000000000000000000000a1", "2026-04-02T10:00:00.000Z"),
        d23_row(_MovesInBehindTheCursorOfAReadAgain.out, "2026-04-02T12:00:00.000Z"),
        d23_row("0000000000000000000000a3", "2026-04-02T14:00:00.000Z"),
        d23_row("0000000000000000000000a4", "2026-04-02T16:00:00.000Z"),
        d23_row("0000000000000000000000c1", "2026-04-10T10:00:00.000Z"),
        d23_row(_MovesInBehindTheCursorOfAReadAgain.mover, "2026-05-28T12:00:00.000Z"),
    ]
    sim = _MovesInBehindTheCursorOfAReadAgain(rows=rows)
    with serve(sim) as url:
        pipeline = Pipeline(
            sim=sim, api_url=url, data_dir=tmp_path / "data", max_concurrency=1, page_limit=1
        )
        result = pipeline.materialize(MONTH)

    assert sim.moved
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    assert raw.metadata["slices_changed_after_read"].value == 1


class _MovesBackThen504sItsRecount(_MovesARowBackWhenItsDayIsRead):
    """As its parent, and then the next count of 2 April (the end-of-read count) meets one
    passing 504."""

    armed = True
    answered_504 = False

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if (
            not self.armed
            and not self.answered_504
            and query.get("since") == "2026-04-02T00:00:00.000Z"
            and "includeTotal" in query
        ):
            self.answered_504 = True
            return path, SimResponse.gateway_page(504, "Gateway Time-out")
        return super().on_export(path, query)


def test_a_504_on_the_end_of_read_count_is_asked_again_not_taken_for_no_change(
    tmp_path: Path,
) -> None:
    rows = [
        d23_row("0000000000000000000000a1", "2026-04-02T10:00:00.000Z"),
        d23_row(_MovesBackThen504sItsRecount.moved, "2026-04-28T12:00:00.000Z"),
    ]
    sim = _MovesBackThen504sItsRecount(rows=rows)
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data", max_concurrency=1)
        pipeline.materialize(MONTH)

    assert sim.answered_504
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])


class _MovesBackThenCannotCountItsDay(_MovesARowBackWhenItsDayIsRead):
    """As its parent, and from the row's move on, while ``counts_fail``, every count inside
    2 April (the day it moved into) is one the API gives up on."""

    counts_fail = False

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        armed = self.armed
        path, answer = super().on_export(path, query)
        self.counts_fail |= armed and not self.armed
        if (
            self.counts_fail
            and query.get("since", "").startswith("2026-04-02T")
            and "includeTotal" in query
        ):
            return path, count_answer(None, "timeout")
        return path, answer


def test_a_slice_the_end_of_read_count_cannot_count_is_left_as_read_unverified(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The row moved back into 2 April, read before the move; every count of that day now times
    # out, so whether it gained a row is not known: it must not pass as proven complete.
    sim = _MovesBackThenCannotCountItsDay(rows=_five_days_and_a_mover())
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data", max_concurrency=1)
        pipeline.materialize(MONTH)
        sim.armed = True
        with caplog.at_level("WARNING", logger="d23_pipeline.landing"):
            result = pipeline.materialize(MONTH)

        assert not sim.armed and result.success
        (raw,) = result.asset_materializations_for_node("d23__raw_logs")
        assert raw.metadata["slices_uncounted_after_read"].value == 1
        assert raw.metadata["slices_changed_after_read"].value == 0
        assert raw.metadata["slices_verified"].value == 29
        assert any(
            "1 slice could not be counted again once the month was read ([2026-04-02" in m
            for m in caplog.messages
        )
        check = _checks(result)["slices_verified"]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert "[2026-04-02T00:00:00.000Z" in check.description
        assert (
            "the API gave no exact count of it when the read, once done, counted"
            in check.description
        )
        assert "report these windows to the API team" in check.description
        assert _checks(result)["rows_match_api_total"].passed  # it served its own counts
        assert _unverified_slices(pipeline) == 1
        # Left as it was, not deleted: the row's old instant no longer serves it, but 2 April,
        # which now does, proves nothing.
        assert raw.metadata["proven_absent"].value == 0 and _deleted_ids(pipeline) == set()
        ((communicated_at,),) = pipeline.query(
            "SELECT communicated_at FROM d23.logs WHERE public_id = ?",
            (_MovesBackThenCannotCountItsDay.moved,),
        )
        assert communicated_at == datetime(2026, 4, 28, 12, tzinfo=UTC)

        sim.counts_fail = False
        pipeline.materialize(MONTH)  # the month's next read, with the API counting again

    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _unverified_slices(pipeline) == 0


class _RecordsTheRecount:
    """Stands in for the client at the end-of-read count: what it was asked to count."""

    def recount_after_read(
        self, counted: Mapping[Window, int], beside: Mapping[Window, int] | None = None
    ) -> Recount:
        self.asked = (dict(counted), dict(beside or {}))
        return Recount([], [])


def test_the_end_of_read_count_spans_slices_left_as_read_but_not_slices_refuted() -> None:
    # A slice left as read served its counts: what it held joins the span. One its own counts
    # did not prove may hold more or fewer rows than its count by as many as moved elsewhere:
    # kept out of the span, it makes every slice be counted alone.
    days = Window(*month_window(MONTH)).split(timedelta(days=1))[:4]
    verified = SliceRecord(days[0], 5, 0, 1, 6, 6, 6, True, 1)
    left = SliceRecord(days[1], 4, 0, 1, 4, 4, 5, False, 1, left_as_read="uncounted")
    refuted = SliceRecord(days[2], 3, 0, 1, 3, 4, 4, False, 1)
    unended = SliceRecord(
        Window(datetime.now(UTC), datetime.now(UTC) + timedelta(days=1)), 1, 0, 1, 1, 1, 1, True, 1
    )
    client = _RecordsTheRecount()

    month_module._recount(client, [verified, left, refuted, unended], MONTH, read_again=True)  # type: ignore[arg-type]

    assert client.asked == ({days[0]: 6}, {days[1]: 4})


class _MovesARowInAtEveryRecount(ExportHookSimulator):
    """The simulator, except that each time the whole month is counted (as only the count of
    the finished slices at the end of a read does), one more row moves from May into April: the
    first to the 2nd, the next to the 3rd, the last to the 4th. Each into a day of its own: that
    count is asked beside the counts after the last walks, so a row moved into the day being read
    again could be found by that day's own count and read with it."""

    movers = ("0000000000000000000000b1", "0000000000000000000000b2", "0000000000000000000000b3")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = list(self.movers)  # this simulator's own: the class's stays whole

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        whole_month = (query.get("since"), query.get("until")) == (
            "2026-04-01T00:00:00.000Z",
            "2026-05-01T00:00:00.000Z",
        )
        if whole_month and "includeTotal" in query and self.waiting:
            public_id = self.waiting.pop(0)
            day = 1 + int(public_id[-1])
            self.move_row(public_id, datetime(2026, 4, day, 9, 0, tzinfo=UTC))
        return path, None


def test_a_month_still_changing_after_its_reads_again_is_left_unverified_to_its_next_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The end-of-read count, read again, counted again ...: bounded at RECOUNTS counts, the
    # last of which leaves the slice it found moved as read, and says it proves nothing.
    days = (2, 4, 10, 20)
    rows = [d23_row(f"{n:024x}", f"2026-04-{d:02d}T10:00:00.000Z") for n, d in enumerate(days, 1)]
    rows += [d23_row(i, "2026-05-03T10:00:00.000Z") for i in _MovesARowInAtEveryRecount.movers]
    sim = _MovesARowInAtEveryRecount(rows=rows)
    sim.waiting = []  # a first read with nothing moving: every row stored
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize(MONTH)
        sim.waiting = list(_MovesARowInAtEveryRecount.movers)
        # Gone from the source since: 4 April's row, in the slice the last count finds moved.
        sim.hard_delete_row(f"{2:024x}")
        with caplog.at_level("WARNING", logger="d23_pipeline.landing"):
            # Deletions confirmed: only the proof holds the row back, not the share's limit.
            result = pipeline.materialize(MONTH, run_config=CONFIRM)
        stored = {pid for pid, *_ in pipeline.live_rows([MONTH])}
        # The slice left as read proves nothing: no row of it is marked deleted, not even one
        # the source no longer holds.
        assert _deleted_ids(pipeline) == set() and f"{2:024x}" in stored
        assert month_module.RECOUNTS == 3 and not sim.waiting  # three counts, three moves
        assert {"0000000000000000000000b1", "0000000000000000000000b2"} <= stored
        assert "0000000000000000000000b3" not in stored
        (raw,) = result.asset_materializations_for_node("d23__raw_logs")
        assert raw.metadata["slices_changed_after_read"].value == 3
        assert sum("reading them again" in m for m in caplog.messages) == 2
        assert sum("left as read, unverified" in m for m in caplog.messages) == 1
        # The run says so: a warning, not a failure (read again at once, such a month would
        # most likely move again, and fail every time); the outcome steps ran.
        assert result.success
        check = _checks(result)["slices_verified"]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert _checks(result)["rows_match_api_total"].passed
        assert "[2026-04-04T00:00:00.000Z" in check.description
        assert "its count moved after it was read" in check.description
        assert _unverified_slices(pipeline) == 1

        pipeline.materialize(MONTH, run_config=CONFIRM)  # the month's next read

        assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
        assert _deleted_ids(pipeline) == {f"{2:024x}"}
        assert _unverified_slices(pipeline) == 0


def test_api_total_is_the_count_after_the_walk_which_includes_rows_written_while_it_ran(
    tmp_path: Path,
) -> None:
    # 10 April holds 3 rows when counted before its walk; 2 rows of May move in ahead of the
    # walk, which serves all 5, as the count after it says.
    april = [d23_row(f"{n:024x}", f"2026-04-10T0{n}:00:00.000Z") for n in (1, 2, 3)]
    may = [
        d23_row(public_id, "2026-05-02T10:00:00.000Z")
        for public_id in _MovesRowsInAtFirstPage.moved
    ]
    sim = _MovesRowsInAtFirstPage(rows=april + may)
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        result = pipeline.materialize(MONTH, selection="d23/raw_logs")

    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    metadata = {key: value.value for key, value in raw.metadata.items()}
    assert (metadata["api_total"], metadata["dagster/row_count"]) == (5, 5)
    assert metadata["slices_verified"] == 30
