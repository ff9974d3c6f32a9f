"""The month merge into d23.logs, on hand-made snapshots: who wins, what is deleted, what stays."""

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from d23_pipeline.landing.snapshot import REJECT_SCHEMA
from d23_pipeline.schema import ARROW_SCHEMA
from d23_pipeline.warehouse.store import Warehouse, merge_snapshot

PARTITION = "2026-04-01"
READ_AT = datetime(2026, 5, 2, tzinfo=UTC)


def row(public_id: str, updated_at: str = "2026-04-02T00:00:00.000Z", **changes) -> dict:
    return {
        "public_id": public_id,
        "communication_type": "CALL",
        "interaction_source": "AGENT",
        "outcome_option": "PTP",
        "is_active": True,
        "is_ptp_broken": False,
        "communicated_at": "2026-04-01T10:00:00.000Z",
        "created_at": "2026-04-01T10:00:00.000Z",
        "updated_at": updated_at,
        **changes,
    }


class Months:
    """Writes snapshot files and merges them, as the logs asset does."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.warehouse = Warehouse(tmp_path / "warehouse.duckdb")
        self.count = 0

    def merge(self, *slices: list[dict], rejects: list[dict] = (), partition: str = PARTITION):
        files = []
        for rows in slices:
            self.count += 1
            path = self.dir / f"{self.count:04d}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, ARROW_SCHEMA), path)
            files.append(path)
        reject_path = self.dir / f"{self.count:04d}.rejects.parquet"
        pq.write_table(pa.Table.from_pylist(list(rejects), REJECT_SCHEMA), reject_path)
        with self.warehouse.connect() as con:
            return merge_snapshot(
                con,
                partition=partition,
                row_files=files,
                reject_files=[reject_path],
                read_at=READ_AT,
            )

    def logs(self) -> dict[str, dict]:
        with self.warehouse.connect(read_only=True) as con:
            cursor = con.execute("SELECT * FROM d23.logs")
            names = [d[0] for d in cursor.description]
            return {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}


@pytest.fixture
def months(tmp_path: Path) -> Months:
    return Months(tmp_path)


def test_duplicates_inside_a_snapshot_collapse_to_the_latest_update(months: Months) -> None:
    summary = months.merge(
        [row("a", "2026-04-02T00:00:00.000Z", outcome_option="RPC")],
        [row("a", "2026-04-03T00:00:00.000Z", outcome_option="PTP"), row("b")],
    )

    logs = months.logs()
    assert set(logs) == {"a", "b"}
    assert logs["a"]["outcome_option"] == "PTP"
    assert summary.inserted == 2


def test_exact_tie_goes_to_the_row_read_last(months: Months) -> None:
    months.merge([row("a", outcome_option="RPC")], [row("a", outcome_option="PTP")])

    assert months.logs()["a"]["outcome_option"] == "PTP"


def test_a_stale_read_never_overwrites_a_newer_row(months: Months) -> None:
    months.merge([row("a", "2026-04-05T00:00:00.000Z", is_ptp_broken=True)])

    summary = months.merge([row("a", "2026-04-02T00:00:00.000Z", is_ptp_broken=False)])

    assert months.logs()["a"]["is_ptp_broken"] is True
    assert summary.updated == 0


def test_later_update_wins_and_keeps_first_seen(months: Months) -> None:
    months.merge([row("a")])
    first_seen = months.logs()["a"]["_first_seen_at"]

    summary = months.merge([row("a", "2026-04-20T00:00:00.000Z", is_active=False)])

    logs = months.logs()
    assert logs["a"]["is_active"] is False
    assert logs["a"]["_first_seen_at"] == first_seen
    assert summary.updated == 1


def test_row_missing_from_a_complete_reread_is_marked_deleted_then_restored(
    months: Months,
) -> None:
    months.merge([row("a"), row("b")])

    gone = months.merge([row("a")])
    assert gone.marked_deleted == 1
    assert months.logs()["b"]["_deleted_at"] == READ_AT

    back = months.merge([row("a"), row("b")])
    assert back.restored == 1
    assert months.logs()["b"]["_deleted_at"] is None


def test_rejected_row_is_not_taken_for_a_deletion(months: Months) -> None:
    months.merge([row("a"), row("b")])

    rejected = {
        "slice_since": datetime(2026, 4, 1, tzinfo=UTC),
        "slice_until": datetime(2026, 4, 2, tzinfo=UTC),
        "public_id": "b",
        "reason": "updated_at is not an ISO-8601 timestamp with offset: 'yesterday'",
        "allowlisted_values": '{"public_id": "b"}',
    }
    summary = months.merge([row("a")], rejects=[rejected])

    assert summary.marked_deleted == 0
    assert months.logs()["b"]["_deleted_at"] is None
    with months.warehouse.connect(read_only=True) as con:
        stored = con.execute(
            "SELECT _partition, public_id, reason FROM d23.rejected_rows"
        ).fetchall()
    assert stored == [(PARTITION, "b", rejected["reason"])]


def test_rejects_of_a_month_are_replaced_not_appended(months: Months) -> None:
    rejected = {
        "slice_since": datetime(2026, 4, 1, tzinfo=UTC),
        "slice_until": datetime(2026, 4, 2, tzinfo=UTC),
        "public_id": None,
        "reason": "missing field public_id",
        "allowlisted_values": "{}",
    }
    months.merge([row("a")], rejects=[rejected])
    months.merge([row("a")], rejects=[rejected])

    with months.warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM d23.rejected_rows").fetchone() == (1,)


def test_other_months_are_untouched_by_a_months_deletions(months: Months) -> None:
    months.merge([row("may", communicated_at="2026-05-03T00:00:00.000Z")], partition="2026-05-01")

    months.merge([row("a")])

    assert months.logs()["may"]["_deleted_at"] is None


def test_row_that_moved_month_follows_its_newest_read(months: Months) -> None:
    months.merge([row("a")])
    moved = row("a", "2026-04-10T00:00:00.000Z", communicated_at="2026-05-01T09:00:00.000Z")

    summary = months.merge([moved], partition="2026-05-01")
    months.merge([], partition=PARTITION)

    logs = months.logs()
    assert summary.moved_in == 1
    assert logs["a"]["_partition"] == "2026-05-01"
    assert logs["a"]["_deleted_at"] is None
