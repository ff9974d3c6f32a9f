"""Asset checks evaluated directly: what passes, what warns, what blocks."""

from pathlib import Path

import dagster as dg

from d23_pipeline.client import WindowTotal
from d23_pipeline.defs import checks
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
