"""Asset checks evaluated directly: what passes, what warns, what blocks."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from d23_pipeline.client import Window, WindowTotal
from d23_pipeline.client.completeness import judge
from d23_pipeline.defs import checks
from d23_pipeline.landing.snapshot import SliceRecord, Snapshot
from d23_pipeline.warehouse.store import MergeSummary, Warehouse

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
        assert "served 90, counts 100 before / 100 after" in result.description
        assert result.metadata["slices_verified"].value == 1


def test_held_deletions_fail_and_say_how_to_confirm() -> None:
    summary = MergeSummary(
        snapshot_rows=2100,
        inserted=0,
        updated=0,
        restored=0,
        moved_in=0,
        marked_deleted=0,
        rejects=0,
        live_rows=3000,
        deletions_proven=900,
        deletions_held=True,
    )

    result = checks.deletions_within_limit("2026-04-01", summary, 0.02)

    assert not result.passed
    assert "2026-04-01" in result.description and "30.0%" in result.description
    assert '"confirm_deletions": true' in result.description


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
