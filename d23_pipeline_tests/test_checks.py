"""Asset checks evaluated directly: what passes, what warns, what blocks."""

from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest
from harness import BOTH_WAREHOUSES, Pipeline

from d23_pipeline.client import Window, WindowTotal
from d23_pipeline.client.completeness import judge
from d23_pipeline.definitions import defs
from d23_pipeline.defs import checks, keys
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import OutcomeMappingResource
from d23_pipeline.landing.snapshot import SliceRecord, Snapshot
from d23_pipeline.warehouse.store import MergeSummary, Warehouse, duplicate_public_ids

DAY_1 = Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC))
DAY_2 = Window(datetime(2026, 4, 2, tzinfo=UTC), datetime(2026, 4, 3, tzinfo=UTC))


def _snapshot(*slices: SliceRecord) -> Snapshot:
    return Snapshot(
        partition="2026-04-01",
        directory=Path("unused"),
        slices=list(slices),
        rows=sum(s.rows for s in slices),
        rejects=0,
        completed_at=datetime(2026, 5, 1, tzinfo=UTC),
        read_stats={},
    )


def _slice(window: Window, served: int, before: int | None, after: int | None) -> SliceRecord:
    proof = judge(served, WindowTotal(before, True, None), WindowTotal(after, True, None), 3)
    return SliceRecord(window, served, 0, 1, served, before, after, proof.verified, proof.reads)


def test_slices_serving_their_exact_counts_pass() -> None:
    snapshot = _snapshot(_slice(DAY_1, 100, 100, 100), _slice(DAY_2, 7, 5, 9))

    assert checks.rows_match_api_total(snapshot).passed
    assert checks.slices_verified(snapshot).passed


def test_a_slice_short_of_its_counts_fails_naming_the_window_and_counts() -> None:
    snapshot = _snapshot(_slice(DAY_1, 100, 100, 100), _slice(DAY_2, 90, 100, 100))

    for result in (checks.rows_match_api_total(snapshot), checks.slices_verified(snapshot)):
        assert not result.passed
        assert result.severity == dg.AssetCheckSeverity.ERROR
        assert "[2026-04-02T00:00:00.000Z, 2026-04-03T00:00:00.000Z)" in result.description
        assert "fewer rows than the counts (served 90; exact counts 100 before, 100 after)" in (
            result.description
        )
        # What to do, in the one line `backfill --wait` and the run page show.
        assert "\n" not in result.description
        assert result.description.endswith(
            "if it persists, lower D23_SLICE_HOURS and report these windows to the API team."
        )
        assert result.metadata["slices_verified"].value == 1


def test_a_slice_the_api_could_not_count_after_its_read_warns_and_names_the_api() -> None:
    # Served its counts; at the read's last count of the month, the API gave none exactly.
    uncounted = SliceRecord(DAY_2, 5, 0, 1, 5, 5, 5, False, 1, left_as_read="uncounted")

    warned = checks.slices_verified(_snapshot(_slice(DAY_1, 100, 100, 100), uncounted))

    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert (
        "the API gave no exact count of it when the read, once done, counted" in warned.description
    )
    assert "report these windows to the API team" in warned.description
    assert "a read at a quieter hour" not in warned.description  # that is for moved counts
    assert checks.rows_match_api_total(_snapshot(uncounted)).passed

    moved = replace(uncounted, window=DAY_1, left_as_read="moved")
    both = checks.slices_verified(_snapshot(moved, uncounted)).description
    assert "a read at a quieter hour" in both and "report these windows to the API" in both


def test_a_slice_whose_count_moved_after_its_read_only_warns_unless_another_is_refuted() -> None:
    # Served its counts; at the read's last count of the month, its count had moved.
    moved = SliceRecord(DAY_2, 5, 0, 1, 5, 5, 5, False, 1, left_as_read="moved")

    warned = checks.slices_verified(_snapshot(_slice(DAY_1, 100, 100, 100), moved))
    failed = checks.slices_verified(_snapshot(_slice(DAY_1, 90, 100, 100), moved))

    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert "its count moved after it was read" in warned.description
    assert "The month's next read (the daily refresh's, or a backfill's) lands what moved" in (
        warned.description
    )
    assert checks.rows_match_api_total(_snapshot(moved)).passed  # it served its counts
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert "lower D23_SLICE_HOURS" in failed.description


def test_a_slice_whose_walks_ran_out_of_read_ons_fails_saying_so() -> None:
    # Its counts alone would pass it: the reason must say why it did not.
    proof = judge(
        5, WindowTotal(5, True, None), WindowTotal(5, True, None), 3, read_on_ran_out=True
    )
    ran_out = SliceRecord(DAY_2, 5, 0, 1, 5, 5, 5, proof.verified, 3)

    result = checks.slices_verified(_snapshot(_slice(DAY_1, 100, 100, 100), ran_out))

    assert not result.passed
    assert (
        "the API ended its walks early where they could not read on past: more often "
        "than the slice has rows, or inside an instant, before rows no request for it "
        "reaches (served 5; exact counts 5 before, 5 after)"
    ) in result.description


def _held(live_rows: int, proven: int) -> MergeSummary:
    """A merge that proved ``proven`` of ``live_rows`` gone and held them all."""
    return MergeSummary(
        snapshot_rows=live_rows - proven,
        inserted=0,
        updated=0,
        restored=0,
        moved_in=0,
        marked_deleted=0,
        rejects=0,
        conflicting_versions=0,
        older_versions=0,
        older_version_examples=[],
        live_rows=live_rows,
        deletions_proven=proven,
        deletions_held=True,
    )


def test_held_deletions_fail_and_say_how_to_confirm() -> None:
    result = checks.deletions_within_limit("2026-04-01", _held(3000, 900), 0.02)

    assert not result.passed
    assert "2026-04-01" in result.description and "30.00%" in result.description
    assert '"confirm_deletions": true' in result.description


@pytest.mark.parametrize(
    ("live_rows", "proven", "max_share", "shown"),
    [
        (
            10_000,
            201,
            0.02,
            "201 of 10000 live rows (2.01%) gone from the source, more than "
            "the allowed 2.00% (at most 200 rows)",
        ),
        (
            100,
            30,
            0.29,
            "(30.00%) gone from the source, more than the allowed 29.00% (at most 29 rows)",
        ),
    ],
)
def test_held_deletions_say_how_many_rows_the_limit_allows(
    live_rows: int, proven: int, max_share: float, shown: str
) -> None:
    result = checks.deletions_within_limit("2026-04-01", _held(live_rows, proven), max_share)

    assert shown in result.description


def test_rejects_warn_then_error_above_the_threshold() -> None:
    assert checks.rejected_rows(1000, 0).passed
    few = checks.rejected_rows(1000, 5)
    many = checks.rejected_rows(1000, 50)
    # The share is of the rows served, rejects included: 10 of 1,000 is 1 %, the limit.
    at_limit = checks.rejected_rows(990, 10)
    past_limit = checks.rejected_rows(989, 11)

    assert (few.passed, few.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert (many.passed, many.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert (at_limit.severity, at_limit.metadata["rejected_share"].value) == (
        dg.AssetCheckSeverity.WARN,
        0.01,
    )
    assert past_limit.severity == dg.AssetCheckSeverity.ERROR


def test_duplicate_public_ids_and_foreign_columns_are_caught(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.connect() as con:
        assert checks.public_id_unique(con).passed
        assert checks.only_allowlisted_columns(con).passed
        # A copy marked deleted is a copy: one row per public_id, whatever its state.
        for deleted_at in ("NULL", "now()"):
            con.execute(
                "INSERT INTO d23.logs VALUES ('dup', 'CALL', 'AGENT', 'PTP', true, false, "
                f"now(), now(), now(), '2026-04-01', now(), now(), {deleted_at})"
            )
        con.execute("ALTER TABLE d23.logs ADD COLUMN phone VARCHAR")

        duplicates = checks.public_id_unique(con)
        columns = checks.only_allowlisted_columns(con)

    assert not duplicates.passed and checks.PUBLIC_ID_UNIQUE.blocking  # no mix counts it twice
    assert duplicates.metadata["duplicated_public_ids"].value == "dup"
    assert not columns.passed
    assert columns.metadata["unexpected_columns"].value == "phone"


# A d23.logs row: ``public_id`` is the SQL expression of its id, over ``i`` of ``range``.
_LOGS_ROWS = """
INSERT INTO d23.logs SELECT {public_id}, 'CALL', 'AGENT', 'PTP', true, false, now(), now(), now(),
    '2026-04-01', now(), now(), NULL FROM range($rows) t(i)
"""


@BOTH_WAREHOUSES
def test_the_uniqueness_check_finds_duplicates_in_every_range_of_ids_it_counts_apart(
    pipeline: Pipeline,
) -> None:
    copies = {"0a": 2, "3c": 3, "77": 2, "ff": 4}  # spread from the first id to the last
    with pipeline.warehouse().connect() as con:
        con.execute(_LOGS_ROWS.format(public_id="printf('%02x', i)"), {"rows": 256})
        for public_id, n in copies.items():
            con.execute(_LOGS_ROWS.format(public_id=f"'{public_id}'"), {"rows": n - 1})
        in_parts = duplicate_public_ids(con, part_rows=30)
        whole = duplicate_public_ids(con, part_rows=1_000)

    assert in_parts == whole == [("ff", 4), ("3c", 3), ("0a", 2), ("77", 2)]


def test_the_uniqueness_check_of_a_warehouse_too_big_to_count_at_once_fits_its_memory(
    tmp_path: Path,
) -> None:
    # 8M ids counted at once ran out of the default memory limit (6M fitted), after the merge
    # had committed. Random-looking ids, as no range of them can skip the table's row groups.
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.connect() as con:
        public_id = "printf('%08x%016x', hash(i) >> 32, i)"
        con.execute(_LOGS_ROWS.format(public_id=public_id), {"rows": 8_000_000})
        con.execute(_LOGS_ROWS.format(public_id="'00000000000000000000000a'"), {"rows": 2})

        duplicates = checks.public_id_unique(con)

    assert not duplicates.passed
    assert duplicates.metadata["duplicated_public_ids"].value == "00000000000000000000000a"


def _kpi_row(con, month: str, attempts: int, rpcs: int, unmapped: int = 0) -> None:
    """A KPI row as rebuild_outcome_kpis_monthly writes it, from hand-picked counts."""
    con.execute(
        "INSERT INTO d23.outcome_kpis_monthly VALUES (CAST(? AS DATE), ?, ?, ?, 0, 0, 0, ?, "
        "?, ?, 0, 0, 0, NULL)",
        [month, attempts, rpcs, rpcs, unmapped, rpcs / attempts, rpcs / attempts],
    )


def test_kpi_rates_outside_0_and_1_fail_naming_the_rate(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "warehouse.duckdb").connect() as con:
        _kpi_row(con, "2026-04-01", attempts=10, rpcs=4)
        _kpi_row(con, "2026-05-01", attempts=10, rpcs=12)  # more RPCs than attempts
        _kpi_row(con, "2026-06-01", attempts=10, rpcs=10)  # every attempt an RPC: a rate of 1

        april = checks.kpi_rates_in_range(con, date(2026, 4, 1))
        may = checks.kpi_rates_in_range(con, date(2026, 5, 1))
        june = checks.kpi_rates_in_range(con, date(2026, 6, 1))

    assert april.passed and april.metadata["rates_out_of_range"].value == "none"
    assert june.passed, june.description
    assert not may.passed
    assert may.metadata["rates_out_of_range"].value == (
        "2026-05-01 contact_rate 1.2; 2026-05-01 rpc_rate 1.2"
    )


def test_the_unmapped_codes_warning_names_ten_codes_and_counts_the_rest(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "warehouse.duckdb").connect() as con:
        for n in range(12):
            con.execute(
                "INSERT INTO d23.outcome_mix_monthly VALUES ('2026-04-01', 'CALL', 'AGENT', ?, "
                "false, false, false, false, false, ?, 0)",
                [f"CODE_{n:02d}", 100 - n],
            )
        result = checks.unmapped_outcome_codes(con, date(2026, 4, 1))

    named = ", ".join(f"CODE_{n:02d} {100 - n}" for n in range(10))
    assert result.description.startswith(
        f"codes the outcome mapping does not classify, with their attempts: {named} and 2 more;"
    )


def test_an_empty_or_padded_code_is_named_so_it_can_be_told_from_a_blank_or_its_neighbour(
    tmp_path: Path,
) -> None:
    with Warehouse(tmp_path / "warehouse.duckdb").connect() as con:
        for code, attempts in (("", 11), ("PTP ", 3), ("P\x00TP", 2), ("LEFT_MESSAGE", 1)):
            con.execute(
                "INSERT INTO d23.outcome_mix_monthly VALUES ('2026-04-01', 'CALL', 'AGENT', ?, "
                "false, false, false, false, false, ?, 0)",
                [code, attempts],
            )
        result = checks.unmapped_outcome_codes(con, date(2026, 4, 1))

    assert '"" 11, "PTP " 3, "P\\u0000TP" 2, LEFT_MESSAGE 1;' in result.description
    assert result.metadata["unmapped_codes"].value.startswith('"": 11')


def test_kpi_attempts_must_equal_the_sum_of_the_outcome_mix(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "warehouse.duckdb").connect() as con:
        _kpi_row(con, "2026-04-01", attempts=10, rpcs=4)
        for outcome, attempts in (("RPC", 4), ("NO_ANSWER", 6)):
            con.execute(
                "INSERT INTO d23.outcome_mix_monthly VALUES ('2026-04-01', 'CALL', 'AGENT', ?, "
                "true, true, true, false, false, ?, 0)",
                [outcome, attempts],
            )
        assert checks.kpi_attempts_match_mix(con, date(2026, 4, 1)).passed

        con.execute("DELETE FROM d23.outcome_mix_monthly WHERE outcome_option = 'RPC'")
        stale = checks.kpi_attempts_match_mix(con, date(2026, 4, 1))

        # Rows moved to another month: its steps rebuild this month's mix, then its KPIs.
        con.execute(
            "INSERT INTO d23.mix_rebuilds_due VALUES ('2026-04-01', 'outcome_kpis_monthly')"
        )
        waiting = checks.kpi_attempts_match_mix(con, date(2026, 4, 1))

    assert not stale.passed
    assert (stale.metadata["kpi_attempts"].value, stale.metadata["outcome_mix_attempts"].value) == (
        10,
        6,
    )
    assert waiting.passed and waiting.metadata["kpi_rebuild_due"].value is True
    assert "due for a rebuild" in waiting.description


def test_an_unmapped_share_over_the_threshold_is_an_error() -> None:
    assert checks.kpi_unmapped_share(100, 2).passed
    assert checks.kpi_unmapped_share(0, 0).passed
    over = checks.kpi_unmapped_share(100, 3)

    assert (over.passed, over.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert over.metadata["unmapped_share_percent"].value == 3.0
    # What the UI's check list and `backfill --wait` show: the figures and what to do.
    assert over.description.startswith("3 of the month's 100 attempts (3.00%) have outcome codes")
    assert "D23_OUTCOME_MAPPING" in over.description


def test_every_failed_check_says_why_in_its_description() -> None:
    failed = checks._result(checks.KPI_RATES_IN_RANGE, passed=False, metadata={"bad": ["x 1.5"]})

    assert failed.description == (f"{checks.KPI_RATES_IN_RANGE.description} Found bad: ['x 1.5'].")
    assert checks._result(checks.KPI_RATES_IN_RANGE, passed=True).description is None


def test_only_the_checks_that_guard_the_merge_block_the_steps_after_it() -> None:
    specs = [spec for asset in defs.assets for spec in asset.check_specs]

    blocking = {(spec.asset_key.to_user_string(), spec.name) for spec in specs if spec.blocking}

    # Rejected rows (an ERROR over 1 %) wait in d23.rejected_rows: the month's good rows still
    # merge and count.
    assert blocking == {
        ("d23/logs", "public_id_unique"),
        ("d23/logs", "only_allowlisted_columns"),
        ("d23/logs", "slices_verified"),
        ("d23/logs", "deletions_within_limit"),
    }


def test_every_check_of_a_monthly_asset_has_the_monthly_partitions() -> None:
    specs = [spec for asset in defs.assets for spec in asset.check_specs]

    assert len(specs) == 14
    assert all(spec.partitions_def == monthly_partitions for spec in specs)


def test_a_failing_month_stays_visible_after_a_passing_later_one(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # March with a mapping that does not know NO_ANSWER (about a third of attempts), then May
    # with the shipped one; the instance is what the UI's Checks tab reads.
    partial = tmp_path / "partial.yaml"
    partial.write_text("promise: [PTP]\nright_party_contact: [RPC]\n")
    instance = dg.DagsterInstance.ephemeral()
    march = dg.materialize(
        list(defs.assets),
        instance=instance,
        partition_key="2026-03-01",
        resources={
            **pipeline.resources(),
            "outcome_mapping": OutcomeMappingResource(mapping_path=str(partial)),
        },
    )
    may = pipeline.materialize("2026-05", instance=instance)

    assert {e.partition for e in march.get_asset_check_evaluations()} == {"2026-03-01"}
    assert {e.partition for e in may.get_asset_check_evaluations()} == {"2026-05-01"}
    key = dg.AssetCheckKey(keys.OUTCOME_KPIS_MONTHLY, checks.KPI_UNMAPPED_SHARE.name)
    status = {
        info.partition_key: info.latest_execution_status.value
        for info in instance.event_log_storage.get_asset_check_partition_info([key])
    }
    assert status == {
        "2026-03-01": "FAILED",
        "2026-05-01": "SUCCEEDED",
    }
