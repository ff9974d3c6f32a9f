"""Asset checks evaluated directly: what passes, what warns, what blocks."""

from datetime import date
from pathlib import Path

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from harness import Pipeline

from d23_pipeline.client import WindowTotal
from d23_pipeline.definitions import defs
from d23_pipeline.defs import checks
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import OutcomeMappingResource
from d23_pipeline.warehouse.store import Warehouse


def _exact(total: int) -> WindowTotal:
    return WindowTotal(total=total, exact=True, note=None)


def test_rows_matching_an_exact_total_pass() -> None:
    assert checks.rows_match_api_total(100, _exact(100), _exact(100)).passed


def test_rows_short_of_a_stable_exact_total_fail_with_error() -> None:
    result = checks.rows_match_api_total(99, _exact(100), _exact(100))

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR


def test_source_changing_during_the_read_only_warns() -> None:
    result = checks.rows_match_api_total(101, _exact(100), _exact(102))

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.WARN


def test_a_capped_or_missing_total_is_reported_not_failed() -> None:
    capped = WindowTotal(total=100_000, exact=False, note="capped")

    result = checks.rows_match_api_total(250_000, capped, None)

    assert result.passed
    assert result.metadata["api_total_note"].value == "capped"


def test_rejects_warn_then_error_above_the_threshold() -> None:
    assert checks.rejected_rows(1000, 0).passed
    few = checks.rejected_rows(1000, 5)
    many = checks.rejected_rows(1000, 50)

    assert (few.passed, few.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert (many.passed, many.severity) == (False, dg.AssetCheckSeverity.ERROR)


def test_duplicate_public_ids_and_foreign_columns_are_caught(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.connect() as con:
        assert checks.public_id_unique(con).passed
        assert checks.only_allowlisted_columns(con).passed
        for _ in range(2):
            con.execute(
                "INSERT INTO d23.logs VALUES ('dup', 'CALL', 'AGENT', 'PTP', true, false, "
                "now(), now(), now(), '2026-04-01', now(), now(), NULL)"
            )
        con.execute("ALTER TABLE d23.logs ADD COLUMN phone VARCHAR")

        duplicates = checks.public_id_unique(con)
        columns = checks.only_allowlisted_columns(con)

    assert not duplicates.passed
    assert duplicates.metadata["duplicated_public_ids"].value == ["dup"]
    assert not columns.passed
    assert columns.metadata["unexpected_columns"].value == ["phone"]


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

        april = checks.kpi_rates_in_range(con, date(2026, 4, 1))
        may = checks.kpi_rates_in_range(con, date(2026, 5, 1))

    assert april.passed
    assert not may.passed
    assert may.metadata["rates_out_of_range"].value == [
        "2026-05-01 contact_rate 1.2",
        "2026-05-01 rpc_rate 1.2",
    ]


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

    assert not stale.passed
    assert (stale.metadata["kpi_attempts"].value, stale.metadata["outcome_mix_attempts"].value) == (
        10,
        6,
    )


def test_an_unmapped_share_over_the_threshold_is_an_error() -> None:
    assert checks.kpi_unmapped_share(100, 2).passed
    assert checks.kpi_unmapped_share(0, 0).passed
    over = checks.kpi_unmapped_share(100, 3)

    assert (over.passed, over.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert over.metadata["unmapped_share_percent"].value == 3.0


def test_every_check_of_a_monthly_asset_has_the_monthly_partitions() -> None:
    specs = [spec for asset in defs.assets for spec in asset.check_specs]

    assert len(specs) == 9
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
    key = dg.AssetCheckKey(checks.OUTCOME_KPIS_MONTHLY, checks.KPI_UNMAPPED_SHARE.name)
    status = {
        info.partition_key: info.latest_execution_status
        for info in instance.event_log_storage.get_asset_check_partition_info([key])
    }
    assert status == {
        "2026-03-01": AssetCheckExecutionRecordStatus.FAILED,
        "2026-05-01": AssetCheckExecutionRecordStatus.SUCCEEDED,
    }
