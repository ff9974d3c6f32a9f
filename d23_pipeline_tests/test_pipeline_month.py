"""A month through the whole pipeline against the simulator: exact, idempotent, change-aware."""

import dataclasses
import logging
import re
import threading
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from api import GATEWAY_TIMEOUT
from harness import ALL_WAREHOUSES, BOTH_WAREHOUSES, Pipeline, d23_row, failure_messages

from d23_pipeline.definitions import defs
from d23_pipeline.defs.resources import DashboardResource, WarehouseResource
from d23_pipeline.months import month_window
from d23_pipeline.schema import format_timestamp
from d23_pipeline.simulator import SimStats, Simulator, SimulatorConfig, serve
from d23_pipeline.warehouse import sql, store


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


@BOTH_WAREHOUSES
def test_materialized_month_equals_the_source_exactly(pipeline: Pipeline) -> None:
    result = pipeline.materialize("2026-04")

    assert result.success
    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])
    assert pipeline.live_rows(["2026-03", "2026-05"]) == set()
    (duplicates,) = pipeline.query("SELECT count(*) - count(DISTINCT public_id) FROM d23.logs")
    assert duplicates == (0,)


@BOTH_WAREHOUSES
def test_each_finished_slice_is_logged_on_the_run_page_with_the_time_left(
    pipeline: Pipeline,
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    since, until = month_window("2026-04")
    slices = (until - since) // timedelta(hours=pipeline.slice_hours)

    result = pipeline.materialize("2026-04", instance=instance)

    lines = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if " slices read (" in entry.user_message
    ]
    # One line a slice, as it finishes, named by its month, counting up to all of them.
    done = sorted(int(line.split("/")[0].removeprefix("2026-04: ")) for line in lines)
    assert done == list(range(1, slices + 1))
    assert all(line.startswith("2026-04: ") for line in lines)
    assert all(re.search(r"\d+ rows, \d+ pages, \d+ retries so far; about \d+ s left$", line)
               for line in lines)  # fmt: skip


def test_rematerializing_a_month_changes_nothing(pipeline: Pipeline) -> None:
    pipeline.materialize("2026-04")
    before = pipeline.query("SELECT * EXCLUDE (_last_seen_at) FROM d23.logs ORDER BY public_id")

    result = pipeline.materialize("2026-04")

    after = pipeline.query("SELECT * EXCLUDE (_last_seen_at) FROM d23.logs ORDER BY public_id")
    assert after == before
    merged = _metadata(result, "d23__logs")
    assert (merged["inserted"], merged["updated"], merged["marked_deleted"]) == (0, 0, 0)


def test_a_month_whose_cursors_expire_lands_exactly_and_its_run_says_so(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    # Every walk's cursor is refused (500, the API's answer to an expired one) after 3 pages,
    # enough to get past the month's densest stretch of other lenders' entries.
    pipeline.sim.faults = dataclasses.replace(pipeline.sim.faults, cursor_pages=3)
    with caplog.at_level(logging.WARNING, logger="d23_pipeline"):
        result = pipeline.materialize(
            "2026-04", page_limit=100, retry_max_attempts=2, retry_base_delay_s=0.001
        )

    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])
    restarts = _metadata(result, "d23__raw_logs")["cursor_restarts"]
    assert restarts > 0
    warned = [r for r in caplog.records if "without the cursor" in r.getMessage()]
    assert len(warned) == restarts


def test_merging_a_month_never_landed_fails_naming_the_step_to_run_first(
    pipeline: Pipeline,
) -> None:
    pipeline.materialize("2026-03")
    before = pipeline.query("SELECT * FROM d23.logs ORDER BY public_id")

    result = pipeline.materialize("2026-04", selection="d23/logs", raise_on_error=False)

    assert (
        "No complete raw snapshot for 2026-04-01: materialize d23/raw_logs for it first."
        in (failure_messages(result)["d23__logs"])
    )
    assert pipeline.query("SELECT * FROM d23.logs ORDER BY public_id") == before


@BOTH_WAREHOUSES
def test_logs_columns_have_proper_types(pipeline: Pipeline) -> None:
    pipeline.materialize("2026-04")

    types = dict(
        pipeline.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'd23' AND table_name = 'logs'"
        )
    )
    assert types["communicated_at"] == types["updated_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["is_active"] == types["is_ptp_broken"] == "BOOLEAN"
    assert {"_partition", "_first_seen_at", "_last_seen_at", "_deleted_at"} <= set(types)


@ALL_WAREHOUSES
def test_source_changes_land_when_the_month_is_read_again(pipeline: Pipeline) -> None:
    for month in ("2026-03", "2026-04"):
        pipeline.materialize(month)
    sim = pipeline.sim
    broken = sim.break_promises(5, month="2026-04")
    deactivated = sim.deactivate(5, month="2026-04")
    deleted = sim.hard_delete(5, month="2026-04")
    late = sim.add_late_rows(5, month="2026-04")
    moved = sim.move_rows(3, from_month="2026-04", to_month="2026-03")
    assert all(len(ids) >= 3 for ids in (broken, deactivated, deleted, late, moved))

    april = pipeline.materialize("2026-04")
    march = pipeline.materialize("2026-03")

    # April, read first, no longer holds the moved rows; March takes them over.
    gone = _metadata(april, "d23__logs")
    assert (gone["marked_deleted"], gone["deletions_held"]) == (len(deleted) + len(moved), False)
    assert _metadata(march, "d23__logs")["moved_from_other_month"] == len(moved)
    assert pipeline.live_rows(["2026-03", "2026-04"]) == pipeline.expected_rows(
        ["2026-03", "2026-04"]
    )
    marked = {
        r[0] for r in pipeline.query("SELECT public_id FROM d23.logs WHERE _deleted_at IS NOT NULL")
    }
    assert marked == set(deleted)
    (moved_copies,) = pipeline.query(
        "SELECT count(*) FROM d23.logs WHERE public_id IN (SELECT unnest(?))", (moved,)
    )
    assert moved_copies == (len(moved),)


def test_the_allowed_deletion_share_set_for_the_warehouse_is_the_one_the_merge_applies(
    pipeline: Pipeline,
) -> None:
    # 30 % of the month gone: above the default 2 %, within the 50 % this lender allows.
    pipeline.materialize("2026-04")
    (rows,) = pipeline.query("SELECT count(*) FROM d23.logs")
    gone = set(pipeline.sim.hard_delete(rows[0] * 3 // 10, "2026-04"))

    result = _materialize_april_deleting_up_to(pipeline, 0.5)

    assert result.success
    assert _marked_deleted(pipeline) == gone


def _materialize_april_deleting_up_to(
    pipeline: Pipeline, share: float
) -> dg.ExecuteInProcessResult:
    warehouse = WarehouseResource(database=str(pipeline.warehouse_path), max_deletion_share=share)
    return dg.materialize(
        list(defs.assets),
        resources={**pipeline.resources(), "warehouse": warehouse},
        partition_key="2026-04-01",
    )


def _marked_deleted(pipeline: Pipeline) -> set[str]:
    deleted = pipeline.query("SELECT public_id FROM d23.logs WHERE _deleted_at IS NOT NULL")
    return {public_id for (public_id,) in deleted}


def test_a_month_whose_every_row_is_gone_at_the_source_has_them_all_marked_deleted(
    pipeline: Pipeline,
) -> None:
    # Its read serves no row: each slice's files are the empty ones copied (d23_pipeline/landing/
    # empty_files), and the read still weighs every stored row of the month against them.
    pipeline.materialize("2026-04")
    gone = set(pipeline.sim.hard_delete(10**6, "2026-04"))
    assert gone and pipeline.expected_rows(["2026-04"]) == set()

    result = _materialize_april_deleting_up_to(pipeline, 1.0)

    assert result.success
    read = _metadata(result, "d23__raw_logs")
    assert (read["dagster/row_count"], read["rejected_rows"], read["proven_absent"]) == (
        0,
        0,
        len(gone),
    )
    assert _marked_deleted(pipeline) == gone
    assert pipeline.live_rows(["2026-04"]) == set()


@BOTH_WAREHOUSES
def test_a_row_marked_deleted_that_the_api_serves_again_is_restored(pipeline: Pipeline) -> None:
    read_and_merge = "key:d23/raw_logs or key:d23/logs"
    pipeline.materialize("2026-04", selection=read_and_merge)
    ((victim,),) = pipeline.query("SELECT min(public_id) FROM d23.logs")
    with pipeline.warehouse().connect() as con:
        con.execute("UPDATE d23.logs SET _deleted_at = now() WHERE public_id = ?", [victim])

    result = pipeline.materialize("2026-04", selection=read_and_merge)

    merged = _metadata(result, "d23__logs")
    assert (merged["restored"], merged["inserted"], merged["marked_deleted"]) == (1, 0, 0)
    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])


def test_moved_row_read_in_the_new_month_first_is_neither_lost_nor_doubled(
    pipeline: Pipeline,
) -> None:
    pipeline.materialize("2026-04")
    moved = pipeline.sim.move_rows(3, from_month="2026-04", to_month="2026-05")

    pipeline.materialize("2026-05")
    pipeline.materialize("2026-04")

    assert pipeline.live_rows(["2026-04", "2026-05"]) == pipeline.expected_rows(
        ["2026-04", "2026-05"]
    )
    live_moved = pipeline.query(
        "SELECT _partition FROM d23.logs WHERE _deleted_at IS NULL AND public_id IN "
        "(SELECT unnest(?))",
        (moved,),
    )
    assert live_moved == [("2026-05-01",)] * len(moved)


def test_the_slice_hours_setting_sets_how_many_slices_a_month_is_read_in(
    pipeline: Pipeline,
) -> None:
    result = pipeline.materialize("2026-04", selection="d23/raw_logs", slice_hours=120)

    raw = _metadata(result, "d23__raw_logs")
    assert raw["slices"] == 6  # April's 30 days in slices of 5
    assert raw["dagster/row_count"] == len(pipeline.expected_rows(["2026-04"]))


def test_interrupted_month_resumes_from_finished_slices(pipeline: Pipeline) -> None:
    assert not pipeline.materialize_crashing("2026-04", after_slices=10).success

    pipeline.sim.reset_stats()
    resumed = pipeline.materialize("2026-04")
    resumed_pages = pipeline.sim.stats.data_pages
    pipeline.sim.reset_stats()
    full = pipeline.materialize("2026-04")
    full_pages = pipeline.sim.stats.data_pages

    assert _metadata(resumed, "d23__raw_logs")["slices_resumed"] == 10
    assert _metadata(full, "d23__raw_logs")["slices_resumed"] == 0
    assert resumed_pages < full_pages
    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])


def test_failure_mid_merge_leaves_the_table_as_it_was(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.materialize("2026-04")
    pipeline.sim.break_promises(5, month="2026-04")
    pipeline.sim.hard_delete(5, month="2026-04")
    before = pipeline.query("SELECT * FROM d23.logs ORDER BY public_id")
    rejects_before = pipeline.query("SELECT * FROM d23.rejected_rows ORDER BY reason")
    real_execute = store.execute

    def fail_after_the_upsert(con, statement, params=None):
        if statement is sql.MARK_DELETED:
            raise RuntimeError("simulated failure between upsert and delete marking")
        return real_execute(con, statement, params)

    monkeypatch.setattr(store, "execute", fail_after_the_upsert)
    result = pipeline.materialize("2026-04", raise_on_error=False)

    assert not result.success
    assert pipeline.query("SELECT * FROM d23.logs ORDER BY public_id") == before
    assert pipeline.query("SELECT * FROM d23.rejected_rows ORDER BY reason") == rejects_before


def test_materialization_reports_counts_schema_and_read_statistics(pipeline: Pipeline) -> None:
    pipeline.sim.reset_stats()
    result = pipeline.materialize("2026-04", page_limit=50)  # small pages: some come back empty

    raw = _metadata(result, "d23__raw_logs")
    logs = _metadata(result, "d23__logs")
    expected = len(pipeline.expected_rows(["2026-04"]))
    assert raw["dagster/row_count"] == raw["dagster/partition_row_count"] == expected
    served = pipeline.sim.stats
    assert raw["slices"] == 30
    assert raw["requests"] == served.requests  # the login, each slice's two counts, the pages
    assert raw["pages"] == served.data_pages
    # Each slice counted before and after its walk, and the month once at the end: no slice
    # has changed since it was read.
    assert served.by_kind["count"] == 2 * 30 + 1
    assert (raw["slices_verified"], raw["slice_rereads"], raw["deletion_candidates"]) == (30, 0, 0)
    assert raw["deletions_unproven"] == logs["deletions_unproven"] == 0
    assert raw["empty_pages"] == served.empty_pages > 0
    assert raw["retries_by_cause"] == {}
    assert raw["api_total"] == expected + raw["rejected_rows"]
    assert logs["dagster/partition_row_count"] == expected
    assert "public_id" in [c.name for c in logs["dagster/column_schema"].columns]
    # Every column an analyst sees on an asset's page says what it holds.
    for step in (
        "d23__logs",
        "d23__outcome_mix_monthly",
        "d23__outcome_kpis_monthly",
        "d23__outcome_mix_daily",
    ):
        columns = _metadata(result, step)["dagster/column_schema"].columns
        assert [c.name for c in columns if not c.description] == [], step
    assert "| public_id |" in logs["preview"]
    # Times as the API writes them, not as Python prints a datetime.
    assert re.search(r"\| 2026-04-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \|", logs["preview"])
    assert "+00:00" not in logs["preview"] + raw["preview"]
    checks = {
        (e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }
    assert checks == {
        ("raw_logs", "rows_match_api_total"): True,
        ("raw_logs", "rejected_rows"): True,
        ("logs", "public_id_unique"): True,
        ("logs", "only_allowlisted_columns"): True,
        ("logs", "slices_verified"): True,
        ("logs", "deletions_within_limit"): True,
        ("logs", "deletions_proven"): True,
        ("logs", "conflicting_versions"): True,
        ("outcome_mix_monthly", "unmapped_outcome_codes"): True,
        ("outcome_mix_monthly", "broken_flags_on_promises_only"): True,
        ("outcome_mix_daily", "rates_within_0_and_1"): True,
        ("outcome_kpis_monthly", "rates_within_0_and_1"): True,
        ("outcome_kpis_monthly", "attempts_equal_outcome_mix"): True,
        ("outcome_kpis_monthly", "unmapped_share"): True,
    }
    # KPIs as an analyst quotes them: percentages with one decimal.
    kpis = _metadata(result, "d23__outcome_kpis_monthly")
    (rpc_rate,) = pipeline.query(
        "SELECT rpc_rate FROM d23.outcome_kpis_monthly WHERE month = '2026-04-01'"
    )[0]
    assert kpis["rpc_rate (%)"] == round(rpc_rate * 100, 1)
    assert kpis["month"] == "2026-04"  # the asset's page shows the last run's month's KPIs
    # Read months after it ended: its promises have had time to break, its rates are final.
    assert kpis["month_state"] == "settled"
    assert "| rpc_rate | " + f"{rpc_rate * 100:.1f}%" in kpis["kpis"]


def test_the_window_width_learned_from_504s_starts_the_months_next_read(
    pipeline: Pipeline,
) -> None:
    pipeline.sim.faults = dataclasses.replace(
        pipeline.sim.faults, max_window_for_504=timedelta(hours=6)
    )
    pipeline.sim.stats = SimStats(keep_log=True)
    first = pipeline.materialize("2026-04")
    first_widths = _window_widths(pipeline.sim.stats)
    pipeline.sim.stats = SimStats(keep_log=True)
    second = pipeline.materialize("2026-04")
    second_widths = _window_widths(pipeline.sim.stats)

    learned = _metadata(first, "d23__raw_logs")["max_window_minutes"]
    assert learned == _metadata(second, "d23__raw_logs")["max_window_minutes"] == 360
    # The first read starts at a day slice; the second at twice the width the first learned,
    # never wider (two 504s there teach it again).
    assert max(first_widths) == timedelta(days=1)
    assert max(second_widths) == timedelta(hours=12)
    # Its workers (one more than max_concurrency) may each send their first request before
    # those two 504s land, and one 504 alone sets no ceiling (it may be transient), so the
    # first worker to meet one may try the wide width once more.
    workers = pipeline.max_concurrency + 1
    assert 2 <= pipeline.sim.stats.by_status[504] <= workers + 1
    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])


def test_the_page_size_learned_from_504s_starts_the_months_next_read(pipeline: Pipeline) -> None:
    # The gateway refuses pages of more than 100 rows, at any width; the pipeline asks 200.
    pipeline.sim.faults = dataclasses.replace(pipeline.sim.faults, max_limit_for_504=100)
    first = pipeline.materialize("2026-04", retry_base_delay_s=0.001)
    assert pipeline.sim.stats.by_status[504] > 0
    pipeline.sim.stats = SimStats(keep_log=True)
    second = pipeline.materialize("2026-04", retry_base_delay_s=0.001)

    learned = [_metadata(run, "d23__raw_logs")["learned_page_limit"] for run in (first, second)]
    assert learned == [100, 100]
    assert pipeline.sim.stats.by_status.get(504, 0) == 0  # the second read asks 100 from the start
    limits = {e.request.query["limit"] for e in pipeline.sim.stats.log if e.request.kind == "data"}
    assert limits == {"100"}
    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])


def test_a_read_that_lowered_its_page_limit_reports_the_lowest_limit_it_used(
    tmp_path: Path,
) -> None:
    # 201 rows in the last quarter hour of 10 April: the first page (200 rows) ends 15 minutes
    # before its slice does, too narrow to split, so two 504s on the next page halve the page
    # limit there (200 -> 100).
    rows = [d23_row(f"{n:024x}", f"2026-04-10T23:45:00.{n:03d}Z") for n in range(201)]
    sim = Simulator(rows=rows)
    sim.script(GATEWAY_TIMEOUT, times=2, when=lambda r: r.kind == "data" and "cursor" in r.query)
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data", page_limit=200)
        result = pipeline.materialize("2026-04", selection="d23/raw_logs", retry_base_delay_s=0.001)

    raw = _metadata(result, "d23__raw_logs")
    assert (raw["final_page_limit"], raw["dagster/row_count"]) == (100, 201)


def _window_widths(stats: SimStats) -> list[timedelta]:
    """The window width of every page and count request the simulator logged."""
    return [
        datetime.fromisoformat(logged.request.query["until"])
        - datetime.fromisoformat(logged.request.query["since"])
        for logged in stats.log
        if logged.request.kind in ("data", "count")
    ]


def test_the_second_months_assets_report_that_months_numbers(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(months=("2026-04", "2026-05"), rows_per_month=200))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize("2026-04")
        page = DashboardResource(path=str(pipeline.dashboard_path), timezone="Europe/Berlin")
        result = dg.materialize(
            list(defs.assets),
            resources={**pipeline.resources(), "dashboard_file": page},
            partition_key="2026-05-01",
        )
        berlin = pipeline.dashboard_path.read_text()
        # 4 % of May gone (held: above 2 %), and a row served under an older updated_at.
        sim.hard_delete(8, "2026-05")
        victim = sim.valid_rows(*month_window("2026-05"))[10]
        earlier = datetime.fromisoformat(victim["updated_at"]) - timedelta(minutes=1)
        other = "PTP" if victim["outcome_option"] != "PTP" else "RPC"
        sim.corrupt_row(
            victim["public_id"],
            "extra_pii",
            outcome_option=other,
            updated_at=format_timestamp(earlier),
        )
        held = pipeline.materialize("2026-05", raise_on_error=False)
        june = pipeline.materialize("2026-06")  # read, and no attempts: the tiles stay on May

    ((may_rows, all_rows),) = pipeline.query(
        "SELECT count(*) FILTER (WHERE _partition = '2026-05-01'), count(*) FROM d23.logs "
        "WHERE _deleted_at IS NULL"
    )
    logs = _metadata(result, "d23__logs")
    assert logs["dagster/row_count"] == logs["dagster/partition_row_count"] == may_rows
    assert logs["table_live_rows"] == all_rows > may_rows
    ((mix_rows, mix_attempts),) = pipeline.query(
        "SELECT count(*), sum(attempts) FROM d23.outcome_mix_monthly WHERE month = '2026-05-01'"
    )
    mix = _metadata(result, "d23__outcome_mix_monthly")
    assert (mix["dagster/partition_row_count"], mix["attempts"]) == (mix_rows, mix_attempts)
    assert mix["preview"].count("\n| ") == 25  # rows; the header is the first line
    assert mix["preview"].endswith(f"_{mix_rows - 25:,} more rows in d23.outcome_mix_monthly_")
    ((attempts, contacts, contact_rate),) = pipeline.query(
        "SELECT attempts, contacts, contact_rate FROM d23.outcome_kpis_monthly "
        "WHERE month = '2026-05-01'"
    )
    kpis = _metadata(result, "d23__outcome_kpis_monthly")
    assert kpis["attempts"] == attempts == mix_attempts
    rate, table = f"{contact_rate * 100:.1f}%", kpis["kpis"]
    assert f"| contact_rate | {rate} | {contacts:,} contacts | {attempts:,} attempts |" in table
    shown = _metadata(result, "d23__outcome_dashboard")
    assert shown["months"] == ["2026-04", "2026-05"]
    assert shown["tiles_month"] == "2026-05"
    assert shown["tiles_month_doubts"] == "no open problem touches its counts"
    assert shown["contact_rate (%)"] == kpis["contact_rate (%)"] == round(contact_rate * 100, 1)
    assert "times of day and days are in Europe/Berlin" in berlin
    merged = _metadata(held, "d23__logs")
    assert (merged["deletions_proven"], merged["marked_deleted"], merged["deletions_held"]) == (
        8, 0, True
    )  # fmt: skip
    assert (merged["older_versions_served"], merged["conflicting_versions"]) == (1, 0)
    shown = _metadata(june, "d23__outcome_dashboard")
    assert (shown["months"][-1], shown["tiles_month"]) == ("2026-06", "2026-05")
    # May still counts the rows its read found gone and held.
    assert re.fullmatch(
        r"\d+ attempts? counted that its last read did not find \(deletions not applied\)",
        shown["tiles_month_doubts"],
    )


def test_a_data_dir_read_from_one_source_refuses_a_read_of_another(pipeline: Pipeline) -> None:
    # make run's demo, then a real lender (or staging, then production) on the same folder.
    pipeline.materialize("2026-04")
    before = pipeline.live_rows(["2026-04"])
    other = Simulator(SimulatorConfig(seed=7, months=("2026-04",), rows_per_month=300))
    with serve(other) as url:
        stranger = dataclasses.replace(pipeline, sim=other, api_url=url)
        result = stranger.materialize("2026-04", raise_on_error=False)

    assert not result.success
    assert (
        f"D23_DATA_DIR holds lender {pipeline.sim.lender_public_id}'s data read from 127.0.0.1; "
        f"this run reads lender {other.lender_public_id} from 127.0.0.1"
    ) in failure_messages(result)["d23__raw_logs"]
    assert other.stats.by_kind["data"] == other.stats.by_kind["count"] == 0
    assert pipeline.live_rows(["2026-04"]) == before


def test_a_landing_that_fails_midway_leaves_no_reader_thread_running(pipeline: Pipeline) -> None:
    # Its workers stop with the step, not once the failed step's traceback lets the read go
    # (five of them were left waiting to hand on pages, in every test after such a failure).
    before = set(threading.enumerate())

    assert not pipeline.materialize_crashing("2026-04", after_slices=5).success

    left = [t for t in threading.enumerate() if t.name.startswith("d23-") and t not in before]
    assert left == []


def test_a_first_read_killed_midway_is_not_resumed_from_another_source(pipeline: Pipeline) -> None:
    # The folder's first read dies with 10 slices landed; the operator then points D23_API_URL
    # at another host (staging to production): those slices are not that source's rows, and
    # equal counts would have kept them.
    assert not pipeline.materialize_crashing("2026-04", after_slices=10).success
    elsewhere = pipeline.api_url.replace("127.0.0.1", "localhost")

    result = pipeline.materialize("2026-04", selection="d23/raw_logs", api_url=elsewhere)

    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    assert raw.metadata["slices_resumed"].value == 0


def test_a_read_the_api_refused_makes_no_source_of_the_folder(pipeline: Pipeline) -> None:
    # A mistyped D23_LENDER_PUBLIC_ID with a token: the API's 403, then the id mended.
    token = {"token": pipeline.login_token(), "password": None, "email": None, "lender": None}
    mistyped = "00000000-0000-4000-8000-000000000000"

    refused = pipeline.materialize(
        "2026-04", raise_on_error=False, lender_public_id=mistyped, **token
    )
    mended = pipeline.materialize(
        "2026-04", lender_public_id=pipeline.sim.lender_public_id, **token
    )

    assert "is not the token's lender" in failure_messages(refused)["d23__raw_logs"]
    assert mended.success
