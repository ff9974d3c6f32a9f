"""What an asset's page in the Dagster UI shows: column descriptions and markdown previews."""

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq

from d23_pipeline.defs.metadata import markdown_table, raw_snapshot_schema, schema_from_table
from d23_pipeline.landing.snapshot import EMPTY_FILES
from d23_pipeline.warehouse.store import Warehouse


def test_each_rate_column_says_which_count_it_divides_by_which(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "warehouse.duckdb").connect() as con:
        schema = schema_from_table(con, "outcome_kpis_monthly")
    described = {column.name: column.description for column in schema.columns}

    assert described["refusal_rate"] == (
        "Refusal rate: refusals / rpcs, a share from 0 to 1, not a percentage; empty without rpcs."
    )
    assert described["ptp_per_attempt"].startswith("PTP per attempt: promises / attempts,")


def test_the_raw_snapshots_column_schema_is_its_parquet_files_schema() -> None:
    # Shown on d23/raw_logs' page, stated without pyarrow: the columns a slice's file holds.
    written = pq.read_schema(EMPTY_FILES / "rows.parquet")

    shown = [(column.name, column.type) for column in raw_snapshot_schema().columns]

    assert shown == [(field.name, str(field.type)) for field in written]


def test_a_preview_table_has_a_separator_per_column_escapes_pipes_and_leaves_none_empty() -> None:
    # One separator cell short and the UI renders no table; a bare | in a code splits its cell.
    table = markdown_table([{"outcome_option": "PTP|PARTIAL", "attempts": 3, "_deleted_at": None}])

    assert table.splitlines() == [
        "| outcome_option | attempts | _deleted_at |",
        "|---|---|---|",
        "| PTP\\|PARTIAL | 3 |  |",
    ]


def test_a_preview_shows_times_as_the_api_writes_them() -> None:
    berlin = timezone(timedelta(hours=1))  # a session's time zone must not show through
    row = {
        "communicated_at": datetime(2026, 4, 3, 10, 30, 5, 120000, tzinfo=berlin),
        "created_at": datetime(2026, 4, 3, 9, 30, tzinfo=UTC),
    }

    assert markdown_table([row]).splitlines()[-1] == (
        "| 2026-04-03T09:30:05.120Z | 2026-04-03T09:30:00.000Z |"
    )
