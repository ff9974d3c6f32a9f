"""The month merge into d23.logs, on hand-made snapshots: who wins, what is deleted, what stays."""

import errno
import json
import os
import re
import tempfile
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import Lake, d23_row

from d23_pipeline.client import Window
from d23_pipeline.landing.snapshot import (
    SliceRecord,
    Snapshot,
    StaleReject,
    UnprovenDeletions,
    rejects_path,
    rows_path,
)
from d23_pipeline.schema_arrow import ABSENT_SCHEMA, ARROW_SCHEMA, REJECT_SCHEMA, UNPROVEN_SCHEMA
from d23_pipeline.settings import SettingsError
from d23_pipeline.warehouse import sql, store
from d23_pipeline.warehouse.backend import open_warehouse
from d23_pipeline.warehouse.ducklake import DuckLakeWarehouse
from d23_pipeline.warehouse.store import (
    MergeSummary,
    Warehouse,
    WarehouseBackend,
    deletion_candidates,
    last_deletion,
    merge_snapshot,
    merge_within_memory_limit,
    rejects_elsewhere,
)

PARTITION = "2026-04-01"
READ_AT = datetime(2026, 5, 2, tzinfo=UTC)
SNAPSHOT_OPTIONS = (
    "rejects", "absent", "partition", "verified", "unverified_days", "read_at", "started_at",
    "stale_rejects", "weighed_until",
)  # fmt: skip


def row(public_id: str, updated_at: str = "2026-04-02T00:00:00.000Z", **changes) -> dict:
    return d23_row(public_id, "2026-04-01T10:00:00.000Z", updated_at=updated_at, **changes)


class Months:
    """Writes snapshots of day slices and merges them, as the logs asset does."""

    def __init__(self, tmp_path: Path, warehouse: WarehouseBackend, part_rows: int | None = None):
        self.dir = tmp_path
        self.warehouse = warehouse
        self.part_rows = part_rows
        self.count = 0
        self.read_at = READ_AT

    def merge(self, *slices: list[dict], **options: object) -> MergeSummary:
        """Merge ``slices`` (one file each); ``options`` as :meth:`snapshot` and merge_snapshot
        take them."""
        snapshot_options = {k: options.pop(k) for k in SNAPSHOT_OPTIONS if k in options}
        return self.merge_snapshot(self.snapshot(*slices, **snapshot_options), **options)

    def merge_snapshot(self, snapshot: Snapshot, **options: object) -> MergeSummary:
        """Merge a snapshot :meth:`snapshot` wrote; ``options`` as merge_snapshot takes them."""
        if self.part_rows is not None:
            options.setdefault("part_rows", self.part_rows)
        with self.warehouse.connect() as con:
            return merge_snapshot(con, snapshot, **options)

    def snapshot(
        self,
        *slices: list[dict],
        rejects: list[dict] = (),
        absent: tuple[str, ...] = (),
        partition: str = PARTITION,
        verified: bool = True,
        unverified_days: Collection[int] = (),
        read_at: datetime | None = None,
        started_at: datetime | None = None,
        stale_rejects: list[StaleReject] = (),
        weighed_until: datetime | None = None,
    ) -> Snapshot:
        """A snapshot of ``slices`` (one file each) whose read proved ``absent`` gone, every
        slice verified unless ``verified`` is false or its day is in ``unverified_days``; read an
        hour after the one before unless ``read_at`` says when (begun then too, unless
        ``started_at`` says when)."""
        self.count += 1
        self.read_at = read_at or READ_AT + timedelta(hours=self.count)
        directory = self.dir / f"snapshot-{self.count}"
        directory.mkdir()
        records = []
        for day, rows in enumerate(slices, start=1):
            window = Window(
                datetime(2026, 4, day, tzinfo=UTC), datetime(2026, 4, day + 1, tzinfo=UTC)
            )
            slice_rejects = list(rejects) if day == 1 else []
            pq.write_table(pa.Table.from_pylist(rows, ARROW_SCHEMA), rows_path(directory, window))
            pq.write_table(
                pa.Table.from_pylist(slice_rejects, REJECT_SCHEMA), rejects_path(directory, window)
            )
            served = len(rows) + len(slice_rejects)
            records.append(
                SliceRecord(
                    window,
                    len(rows),
                    len(slice_rejects),
                    1,
                    served,
                    served,
                    served,
                    verified and day not in unverified_days,
                    1,
                )
            )
        pq.write_table(
            pa.table({"public_id": list(absent)}, ABSENT_SCHEMA), directory / "absent.parquet"
        )
        return Snapshot(
            partition=partition,
            directory=directory,
            slices=records,
            rows=sum(r.rows for r in records),
            rejects=len(rejects),
            completed_at=self.read_at,
            read_stats={},
            started_at=started_at,
            stale_rejects=list(stale_rejects),
            weighed_until=weighed_until,
        )

    def logs(self) -> dict[str, dict]:
        with self.warehouse.connect(read_only=True) as con:
            cursor = con.execute("SELECT * FROM d23.logs")
            names = [d[0] for d in cursor.description]
            return {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}


@pytest.fixture(params=["duckdb", "duckdb-in-parts", "ducklake"])
def months(tmp_path: Path, request: pytest.FixtureRequest) -> Months:
    """Every merge rule holds on both warehouse backends, and when the snapshot is joined
    with d23.logs in parts (here of about one row each: most ids are a part's bound)."""
    if request.param == "duckdb":
        return Months(tmp_path, Warehouse(tmp_path / "warehouse.duckdb"))
    if request.param == "duckdb-in-parts":
        return Months(tmp_path, Warehouse(tmp_path / "warehouse.duckdb"), part_rows=1)
    lake = Lake.create(request.getfixturevalue("postgres"), tmp_path / "lake")
    return Months(tmp_path, DuckLakeWarehouse(lake.dsn, str(lake.data_path)))


def test_duplicates_inside_a_snapshot_collapse_to_the_latest_update(months: Months) -> None:
    summary = months.merge(
        [row("a", "2026-04-02T00:00:00.000Z", outcome_option="RPC")],
        [row("a", "2026-04-03T00:00:00.000Z", outcome_option="PTP"), row("b")],
    )

    logs = months.logs()
    assert set(logs) == {"a", "b"}
    assert logs["a"]["outcome_option"] == "PTP"
    assert summary.inserted == 2


def test_exact_tie_goes_to_the_row_read_last_and_the_other_version_is_quarantined(
    months: Months,
) -> None:
    summary = months.merge(
        [row("a", outcome_option="RPC"), row("b"), row("c", "2026-04-03T00:00:00.000Z")],
        [row("a", outcome_option="PTP"), row("b"), row("c", outcome_option="PTP")],
    )

    assert months.logs()["a"]["outcome_option"] == "PTP"
    # b was served twice alike, c in two versions of different updated_at: nothing to report.
    with months.warehouse.connect(read_only=True) as con:
        ((public_id, since, reason, values),) = con.execute(
            "SELECT public_id, slice_since, reason, allowlisted_values FROM d23.rejected_rows"
        ).fetchall()
    assert (public_id, since.day) == ("a", 1)
    assert reason.startswith("served again by this read with the same updated_at")
    assert json.loads(values) == row("a", outcome_option="RPC")
    assert (summary.rejects, summary.conflicting_versions) == (1, 1)


def test_a_conflicting_version_at_a_slices_first_instant_is_quarantined_in_that_slice_once(
    months: Months,
) -> None:
    midnight = "2026-04-02T00:00:00.000Z"  # day 1's end, day 2's start
    summary = months.merge(
        [row("a")],
        [d23_row("d", midnight, outcome_option="RPC"), d23_row("d", midnight)],
    )

    with months.warehouse.connect(read_only=True) as con:
        rejects = con.execute("SELECT public_id, slice_since FROM d23.rejected_rows").fetchall()
    assert [(public_id, since.day) for public_id, since in rejects] == [("d", 2)]
    assert (summary.rejects, summary.conflicting_versions) == (1, 1)


def test_a_stale_reads_conflicting_versions_are_not_reported_as_quarantined(
    months: Months,
) -> None:
    # The month's rejects stay the newer read's, so these are stored nowhere.
    months.merge([row("b")])

    stale = months.merge(
        [row("a", outcome_option="RPC")], [row("a", outcome_option="PTP")], read_at=READ_AT
    )

    assert (stale.conflicting_versions, stale.rejects) == (0, 0)


def test_a_stale_read_never_overwrites_a_newer_row(months: Months) -> None:
    months.merge([row("a", "2026-04-05T00:00:00.000Z", is_ptp_broken=True)])

    summary = months.merge([row("a", "2026-04-02T00:00:00.000Z", is_ptp_broken=False)])

    assert months.logs()["a"]["is_ptp_broken"] is True
    assert summary.updated == 0


def test_an_older_version_served_after_the_stored_one_was_read_is_counted(months: Months) -> None:
    # The source's updated_at went back: the stored version stays (latest updated_at wins),
    # and the merge says so. A read that finished before the stored version's is only stale.
    months.merge([row("a", "2026-04-05T00:00:00.000Z", is_ptp_broken=True), row("b")])
    older = [row("a", "2026-04-02T00:00:00.000Z", is_ptp_broken=False), row("b")]

    stale = months.merge(older, read_at=READ_AT)
    # Finished after the stored version's read but begun before it (a resumed read, or two
    # reads at once): its slice may have seen the source before that version was written.
    resumed = months.merge(older, started_at=READ_AT)
    newer = months.merge(older)
    alike = months.merge([row("a", "2026-04-02T00:00:00.000Z", is_ptp_broken=True), row("b")])

    assert months.logs()["a"]["is_ptp_broken"] is True
    assert [m.older_versions for m in (stale, resumed, newer, alike)] == [0, 0, 1, 0]
    assert newer.older_version_examples == ["a"]


def test_later_update_wins_and_keeps_first_seen(months: Months) -> None:
    months.merge([row("a")])
    first_seen = months.logs()["a"]["_first_seen_at"]

    summary = months.merge([row("a", "2026-04-20T00:00:00.000Z", is_active=False)])

    logs = months.logs()
    assert logs["a"]["is_active"] is False
    assert logs["a"]["_first_seen_at"] == first_seen
    assert summary.updated == 1


def _statements_run(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict | None]]:
    """The statements ``merge_snapshot`` runs from now on, in order, with their parameters."""
    run: list[tuple[str, dict | None]] = []
    original = store.execute

    def execute(con: duckdb.DuckDBPyConnection, statement: str, params=None):
        run.append((statement, params))
        return original(con, statement, params)

    monkeypatch.setattr(store, "execute", execute)
    return run


def test_a_months_first_read_inserts_its_rows_and_a_read_again_merges(
    months: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _statements_run(monkeypatch)
    first = months.merge([row("a"), row("b"), row("d")])
    first_read_at, stored_b = months.read_at, months.logs()["b"]
    first_ran = {statement for statement, _ in run}
    run.clear()

    changed = row("a", "2026-04-20T00:00:00.000Z", is_active=False)
    again = months.merge([changed, row("b"), row("c")])

    logs = months.logs()
    again_ran = {statement for statement, _ in run}
    assert sql.INSERT_NEW_SNAPSHOT in first_ran and sql.MERGE_SNAPSHOT not in first_ran
    assert sql.MERGE_SNAPSHOT in again_ran and sql.INSERT_NEW_SNAPSHOT not in again_ran
    assert (first.inserted, again.inserted, again.updated) == (3, 1, 1)
    assert sorted(logs) == ["a", "b", "c", "d"]
    assert (logs["a"]["is_active"], logs["a"]["_first_seen_at"]) == (False, first_read_at)
    # Served again as stored: the MERGE leaves it out, and it is still seen by this read.
    assert logs["b"] == stored_b | {"_last_seen_at": months.read_at}
    assert logs["d"]["_last_seen_at"] == first_read_at  # not served again


def test_a_read_older_than_the_last_merged_one_does_not_set_back_when_a_row_was_seen(
    months: Months,
) -> None:
    months.merge([row("a"), row("b")])
    months.merge([row("a"), row("b")])
    seen = months.read_at

    months.merge([row("a"), row("b", "2026-04-05T00:00:00.000Z")], read_at=READ_AT)

    logs = months.logs()
    assert logs["a"]["_last_seen_at"] == logs["b"]["_last_seen_at"] == seen
    assert logs["b"]["updated_at"] == datetime(2026, 4, 5, tzinfo=UTC)  # yet newer data lands


def test_a_first_read_holding_one_row_the_warehouse_has_merges_it_and_inserts_the_rest(
    months: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row already stored (here under another month) is enough to need the MERGE: inserted
    alone, it would be in d23.logs twice."""
    months.merge([row("a")])
    run = _statements_run(monkeypatch)
    moved = row("a", "2026-04-10T00:00:00.000Z", communicated_at="2026-05-01T09:00:00.000Z")
    new = [row(f"n{i}", communicated_at="2026-05-01T10:00:00.000Z") for i in range(3)]

    summary = months.merge([moved, *new], partition="2026-05-01")

    with months.warehouse.connect(read_only=True) as con:
        ids = con.execute("SELECT count(*), count(DISTINCT public_id) FROM d23.logs").fetchone()
    assert ids == (4, 4)
    assert months.logs()["a"]["_partition"] == "2026-05-01"
    assert (summary.inserted, summary.moved_in) == (3, 1)
    assert sql.MERGE_SNAPSHOT in {statement for statement, _ in run}


def test_row_a_reread_proved_gone_is_marked_deleted_then_restored(months: Months) -> None:
    months.merge([row("a"), row("b")])

    gone = months.merge([row("a")], absent=("b",), max_deletion_share=1.0)
    assert gone.marked_deleted == 1
    assert months.logs()["b"]["_deleted_at"] == months.read_at

    back = months.merge([row("a"), row("b")])
    assert back.restored == 1
    assert months.logs()["b"]["_deleted_at"] is None


def test_a_deletion_share_is_of_the_rows_the_month_had_not_of_those_it_gains(
    months: Months,
) -> None:
    kept = [row(f"k{n:03}") for n in range(97)]
    months.merge(kept + [row("x1"), row("x2"), row("x3")])
    late = [row(f"late{n:02}") for n in range(50)]

    # 3 of the 100 rows it had: 3 %, over 2 %, however many late rows the read also brings
    # (3 of the 150 it has after the merge would be 2 %, and let them through).
    held = months.merge(kept + late, absent=("x1", "x2", "x3"), max_deletion_share=0.02)

    assert held.deletions_held and held.marked_deleted == 0
    assert (held.live_rows, round(held.deletion_share, 4)) == (100, 0.03)
    assert all(months.logs()[x]["_deleted_at"] is None for x in ("x1", "x2", "x3"))


def test_a_reject_of_the_same_month_by_an_earlier_read_does_not_hold_its_deletion(
    months: Months,
) -> None:
    # Only another month's reject says a row may live on there; the month's own earlier reject
    # is replaced by this read, which found the row gone.
    months.merge([row("a"), row("r")])
    months.merge([row("a")], rejects=[rejected("r")])

    gone = months.merge([row("a")], absent=("r",), max_deletion_share=1.0)

    assert gone.marked_deleted == 1
    assert months.logs()["r"]["_deleted_at"] == months.read_at


@pytest.mark.parametrize("stale_read", ["first", "second"])
def test_only_the_other_months_rejects_a_read_weighed_let_it_prove_a_row_gone(
    months: Months, stale_read: str
) -> None:
    # r, stored in March, was served as a reject by May's reads at 1 h and 2 h. March's read
    # (3 h) found r gone from March and May's reject at 1 h stale: it may delete r only if the
    # reject May holds now is the one it weighed.
    march, may = "2026-03-01", "2026-05-01"
    at = {n: READ_AT + timedelta(hours=n) for n in range(4)}
    months.merge([row("a"), row("r")], partition=march, read_at=at[0])
    months.merge([row("b")], rejects=[rejected("r")], partition=may, read_at=at[1])
    months.merge([row("b")], rejects=[rejected("r")], partition=may, read_at=at[2])
    weighed = at[1] if stale_read == "first" else at[2]
    window = Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC))

    summary = months.merge(
        [row("a")],
        absent=("r",),
        partition=march,
        read_at=at[3],
        stale_rejects=[StaleReject("r", may, window, weighed)],
        max_deletion_share=1.0,
    )

    deleted = months.logs()["r"]["_deleted_at"] is not None
    assert (summary.marked_deleted, deleted) == ((0, False) if weighed == at[1] else (1, True))


def rejected(public_id: str | None) -> dict:
    return {
        "slice_since": datetime(2026, 4, 1, tzinfo=UTC),
        "slice_until": datetime(2026, 4, 2, tzinfo=UTC),
        "public_id": public_id,
        "reason": "updated_at is not an ISO-8601 timestamp with offset",
        "allowlisted_values": f'{{"public_id": "{public_id}"}}',
    }


def test_a_snapshot_merged_again_after_a_newer_read_brings_no_deleted_row_back(
    months: Months,
) -> None:
    older = months.snapshot([row("a"), row("b")])
    months.merge([row("a"), row("b")])
    months.merge([row("a")], absent=("b",), max_deletion_share=1.0)
    before = months.logs()["b"]

    summary = months.merge_snapshot(older)

    b = months.logs()["b"]
    assert summary.restored == 0
    assert b["_deleted_at"] == before["_deleted_at"]
    assert b["_last_seen_at"] == before["_last_seen_at"]


def test_a_snapshot_merged_again_deletes_no_row_a_newer_read_saw(months: Months) -> None:
    months.merge([row("a"), row("b")])
    proved_gone = months.snapshot([row("a")], absent=("b",))
    months.merge([row("a"), row("b")])

    summary = months.merge_snapshot(proved_gone, max_deletion_share=1.0)

    assert summary.marked_deleted == 0
    assert months.logs()["b"]["_deleted_at"] is None


def test_an_older_read_merged_last_keeps_the_newer_reads_rejects_and_proofs(
    months: Months,
) -> None:
    # Two hosts read the month (DuckLake, raw folders not shared); the older read merges last.
    older = months.snapshot([row("a"), row("b")], read_at=READ_AT)
    newer = months.snapshot([row("a")], rejects=[rejected("b")], read_at=READ_AT + timedelta(1))
    months.merge_snapshot(newer)
    summary = months.merge_snapshot(older)

    assert summary.rejects == 0
    with months.warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT public_id FROM d23.rejected_rows").fetchall() == [("b",)]
        (read_at,) = con.execute("SELECT DISTINCT read_at FROM d23.slice_verification").fetchone()
    assert read_at == READ_AT + timedelta(1)


def test_an_older_read_merged_last_deletes_no_row_the_newer_read_served_as_a_reject(
    months: Months,
) -> None:
    # Two hosts read the month; the newer read served b as a bad row, the older proved it gone.
    months.merge([row("a"), row("b")], read_at=READ_AT)
    older = months.snapshot([row("a")], absent=("b",), read_at=READ_AT + timedelta(hours=1))
    newer = months.snapshot([row("a")], rejects=[rejected("b")], read_at=READ_AT + timedelta(2))
    months.merge_snapshot(newer)
    summary = months.merge_snapshot(older, max_deletion_share=1.0)

    assert (summary.deletions_proven, summary.marked_deleted) == (0, 0)
    assert months.logs()["b"]["_deleted_at"] is None
    assert months.logs()["b"]["_last_seen_at"] == READ_AT + timedelta(2)


def test_a_row_another_months_last_read_served_as_a_reject_is_not_deleted(
    months: Months,
) -> None:
    # r moved from March to May and broke on the way: May serves it only as a reject, so it is
    # still stored in March, where March's read no longer finds it.
    months.merge([row("a"), row("r")], partition="2026-03-01")
    months.merge([row("m")], rejects=[rejected("r")], partition="2026-05-01")

    summary = months.merge(
        [row("a")], absent=("r",), partition="2026-03-01", max_deletion_share=1.0
    )

    assert summary.marked_deleted == 0
    assert months.logs()["r"]["_deleted_at"] is None


def test_a_deleted_row_a_later_read_serves_as_a_reject_comes_back(months: Months) -> None:
    # b moves to May and breaks on the way: April's read proves it gone from April, and May's
    # read serves it only as a reject. It exists, so it keeps its last good version, live.
    months.merge([row("a"), row("b", outcome_option="PTP")])
    months.merge([row("a")], absent=("b",), max_deletion_share=1.0)
    assert months.logs()["b"]["_deleted_at"] is not None

    summary = months.merge([], rejects=[rejected("b")], partition="2026-05-01")

    b = months.logs()["b"]
    assert summary.restored == 1
    assert (b["_deleted_at"], b["_partition"], b["outcome_option"]) == (None, PARTITION, "PTP")
    assert b["_last_seen_at"] == months.read_at
    # April's outcome mix, which left b out, is due for a rebuild, and so is May's, so that the
    # next outcome step of any month rebuilds both should May's own not run.
    with months.warehouse.connect(read_only=True) as con:
        due = con.execute("SELECT CAST(month AS VARCHAR), mix_table FROM d23.mix_rebuilds_due")
        tables = sorted(sql.MIX_TABLES)
        assert sorted(due.fetchall()) == [(m, t) for m in (PARTITION, "2026-05-01") for t in tables]


def test_a_reject_read_before_a_deletion_brings_no_row_back(months: Months) -> None:
    months.merge([row("a"), row("b")])
    earlier = months.snapshot([], rejects=[rejected("b")], partition="2026-05-01")
    months.merge([row("a")], absent=("b",), max_deletion_share=1.0)

    summary = months.merge_snapshot(earlier)

    assert summary.restored == 0
    assert months.logs()["b"]["_deleted_at"] is not None


def test_rejected_row_is_not_taken_for_a_deletion(months: Months) -> None:
    months.merge([row("a"), row("b")])

    summary = months.merge(
        [row("a")], rejects=[rejected("b")], absent=("b",), max_deletion_share=1.0
    )

    assert summary.marked_deleted == 0
    assert months.logs()["b"]["_deleted_at"] is None
    with months.warehouse.connect(read_only=True) as con:
        stored = con.execute(
            "SELECT _partition, public_id, reason FROM d23.rejected_rows"
        ).fetchall()
    assert stored == [(PARTITION, "b", rejected("b")["reason"])]


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


def test_a_read_not_proven_complete_keeps_the_earlier_rejects_it_did_not_serve_again(
    months: Months,
) -> None:
    def stored() -> list[tuple[str, str]]:
        with months.warehouse.connect(read_only=True) as con:
            ids = con.execute("SELECT public_id, reason FROM d23.rejected_rows").fetchall()
        return sorted((public_id or "", reason) for public_id, reason in ids)

    first = [rejected("x"), rejected("y"), rejected(None), rejected("z")]
    months.merge([row("a")], rejects=first)
    # The API ended the walk early: "x" and the row without an id (still broken at the source)
    # were not served; "y" was, fixed; "z" was, still broken, now for another reason.
    z_again = rejected("z") | {"reason": "outcome_option is int, expected a string"}
    months.merge([row("a"), row("y")], rejects=[z_again], verified=False)
    reason = rejected("x")["reason"]
    assert stored() == [("", reason), ("x", reason), ("z", z_again["reason"])]
    # A read proven complete replaces them all.
    months.merge([row("a"), row("y")], rejects=[z_again])
    assert stored() == [("z", z_again["reason"])]


def test_a_reject_without_an_id_served_again_under_a_reworded_reason_is_stored_once(
    months: Months,
) -> None:
    # Stored by a version that named only a row's first problem; this version names them all.
    no_id = rejected(None) | {"reason": "missing field public_id"}
    months.merge([row("a")], rejects=[no_id])
    reworded = no_id | {"reason": "missing field public_id; is_active is str, expected a boolean"}

    months.merge([row("a")], rejects=[reworded], verified=False)

    with months.warehouse.connect(read_only=True) as con:
        stored = con.execute("SELECT reason FROM d23.rejected_rows").fetchall()
    assert stored == [(reworded["reason"],)]


def _alike_without_id(day: int = 1) -> dict:
    """A bad row without an id, in the day's slice, holding what every such row here holds:
    only its slice and its number tell it from another."""
    since = datetime(2026, 4, day, tzinfo=UTC)
    window = {"slice_since": since, "slice_until": since + timedelta(days=1)}
    return rejected(None) | {"allowlisted_values": '{"outcome_option": "PTP"}'} | window


def _reject_days(months: Months) -> list[int]:
    """The day of each stored reject's slice."""
    with months.warehouse.connect(read_only=True) as con:
        stamps = con.execute("SELECT slice_since FROM d23.rejected_rows").fetchall()
    return sorted(since.day for (since,) in stamps)


def test_alike_rejects_without_an_id_are_kept_as_many_as_a_read_not_proven_complete_missed(
    months: Months,
) -> None:
    alike = _alike_without_id()

    months.merge([row("a")], rejects=[alike, alike])
    months.merge([row("a")], rejects=[alike], verified=False)
    assert len(_reject_days(months)) == 2
    months.merge([row("a")], rejects=[alike, alike, alike], verified=False)
    assert len(_reject_days(months)) == 3
    # A read proven complete is the count.
    months.merge([row("a")], rejects=[alike])
    assert len(_reject_days(months)) == 1


def test_alike_rejects_without_an_id_are_matched_in_their_own_slice_only(
    months: Months,
) -> None:
    alike = _alike_without_id
    # Stored day 2's copy first: the copy served again is day 1's, whatever was stored first.
    months.merge([row("a")], [row("b")], rejects=[alike(2), alike(1)])
    months.merge([row("a")], [row("b")], rejects=[alike(1)], unverified_days={1, 2})
    assert _reject_days(months) == [1, 2]
    # Day 1 proven complete serves its copy again; day 2, not proven, served none: its copy
    # stays, not taken by day 1's.
    months.merge([row("a")], [row("b")], rejects=[alike(1)], unverified_days={2})
    assert _reject_days(months) == [1, 2]


def test_a_reject_holding_no_field_is_kept_when_a_read_not_proven_complete_serves_another(
    months: Months,
) -> None:
    # Both store their values as '{}': only the reason tells a list from a string.
    a_list = rejected(None) | {
        "reason": "row is list, expected an object",
        "allowlisted_values": "{}",
    }
    a_string = a_list | {"reason": "row is str, expected an object"}
    months.merge([row("a")], rejects=[a_list])

    months.merge([row("a")], rejects=[a_string], verified=False)

    with months.warehouse.connect(read_only=True) as con:
        stored = con.execute("SELECT reason FROM d23.rejected_rows ORDER BY reason").fetchall()
    assert stored == [(a_list["reason"],), (a_string["reason"],)]


def test_a_row_only_another_months_read_saw_is_no_row_of_a_read_merged_meanwhile(
    months: Months,
) -> None:
    # May's read served April's r as a reject (moved and broken): that marks r seen, but no
    # other read of April merged while April's next read ran.
    months.merge([row("a"), row("r")])
    april_read = months.read_at
    months.merge([row("m", communicated_at="2026-05-03T00:00:00.000Z")],
                 rejects=[rejected("r")], partition="2026-05-01")  # fmt: skip

    summary = months.merge([row("a")], weighed_until=april_read)

    assert summary.not_weighed == 0


def test_other_months_are_untouched_by_a_months_deletions(months: Months) -> None:
    months.merge([row("may", communicated_at="2026-05-03T00:00:00.000Z")], partition="2026-05-01")

    months.merge([row("a")], absent=("may",), max_deletion_share=1.0)

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


def test_a_version_served_under_the_same_updated_at_by_a_later_read_is_kept(
    months: Months,
) -> None:
    # The source changed the row without moving updated_at (its contract says it moves): as
    # within one read, the version read last is kept.
    months.merge([row("a", outcome_option="PTP")])
    summary = months.merge([row("a", outcome_option="NO_ANSWER")])

    assert months.logs()["a"]["outcome_option"] == "NO_ANSWER"
    # Not an older version served: that would fail the conflicting_versions check for no fault.
    assert (summary.older_versions, summary.older_version_examples) == (0, [])


def test_an_older_read_merged_after_a_newer_one_keeps_the_newer_reads_version_of_a_tie(
    months: Months,
) -> None:
    # Its month's d23/logs step run again on its own merges the older read last.
    older = months.snapshot([row("a", outcome_option="PTP"), row("b")])
    newer = months.snapshot([row("a", outcome_option="NO_ANSWER"), row("b")])
    months.merge_snapshot(newer)

    summary = months.merge_snapshot(older)

    assert months.logs()["a"]["outcome_option"] == "NO_ANSWER"
    assert (summary.updated, summary.older_versions) == (0, 0)


def _a_moved_to_may_under_the_same_updated_at(months: Months) -> dict:
    """Rows a and b merged into April; a's version after it moved to May, updated_at unchanged."""
    months.merge([row("a"), row("b")])
    return row("a", communicated_at="2026-05-01T09:00:00.000Z")


def test_a_row_moved_without_a_new_updated_at_is_taken_over_by_its_new_month(
    months: Months,
) -> None:
    moved = _a_moved_to_may_under_the_same_updated_at(months)
    may = months.snapshot([moved], partition="2026-05-01")
    # April's next read proves a gone from April; May's read, before it, merges after it.
    months.merge([row("b")], absent=("a",), max_deletion_share=1.0)

    summary = months.merge_snapshot(may)

    logs = months.logs()
    assert summary.restored == 1
    assert (logs["a"]["_partition"], logs["a"]["_deleted_at"]) == ("2026-05-01", None)


def test_an_older_read_of_its_old_month_merged_last_does_not_take_a_moved_row_back(
    months: Months,
) -> None:
    # Else a later read of April, which no longer serves a, could prove it gone from April
    # while the source holds it in May.
    april = months.snapshot([row("a"), row("b")])
    may = months.snapshot(
        [row("a", communicated_at="2026-05-01T09:00:00.000Z")], partition="2026-05-01"
    )
    months.merge_snapshot(april)
    months.merge_snapshot(may)

    summary = months.merge_snapshot(april)

    assert months.logs()["a"]["_partition"] == "2026-05-01"
    assert summary.moved_in == 0


def test_a_row_missing_from_a_reread_without_proof_is_not_deleted(months: Months) -> None:
    months.merge([row("a"), row("b")])

    summary = months.merge([row("a")], max_deletion_share=1.0)

    assert summary.marked_deleted == 0
    assert months.logs()["b"]["_deleted_at"] is None


def test_deletions_above_the_allowed_share_wait_for_confirmation(months: Months) -> None:
    months.merge([row(f"r{i}") for i in range(100)])
    gone = tuple(f"r{i}" for i in range(3))
    kept = [row(f"r{i}") for i in range(3, 100)]

    held = months.merge(kept, absent=gone, max_deletion_share=0.02)
    assert (held.deletions_held, held.deletions_proven, held.marked_deleted) == (True, 3, 0)
    assert held.deletion_share == pytest.approx(0.03)
    assert all(months.logs()[i]["_deleted_at"] is None for i in gone)

    confirmed = months.merge(kept, absent=gone, max_deletion_share=0.02, confirm_deletions=True)
    assert (confirmed.deletions_held, confirmed.marked_deleted) == (False, 3)
    assert all(months.logs()[i]["_deleted_at"] == months.read_at for i in gone)


@pytest.mark.parametrize(
    ("share", "gone", "held"),
    # 0.29 * 100 is 28.999999999999996 in floating point: 29 of 100 must still pass at 0.29.
    [(0.02, 2, False), (0.02, 3, True), (0.29, 29, False), (0.29, 30, True), (0.57, 57, False)],
)
def test_deletions_at_the_allowed_share_are_applied_and_one_more_is_held(
    months: Months, share: float, gone: int, held: bool
) -> None:
    months.merge([row(f"r{i}") for i in range(100)])

    summary = months.merge(
        [row(f"r{i}") for i in range(gone, 100)],
        absent=tuple(f"r{i}" for i in range(gone)),
        max_deletion_share=share,
    )

    assert (summary.deletions_held, summary.marked_deleted) == (held, 0 if held else gone)


def test_each_merge_replaces_its_months_slice_proofs(months: Months) -> None:
    months.merge([row("a")], [row("b")], verified=False)
    months.merge([row("a")], verified=True)

    with months.warehouse.connect(read_only=True) as con:
        proofs = con.execute(
            "SELECT _partition, slice_since, served, total_before, total_after, verified, reads "
            "FROM d23.slice_verification"
        ).fetchall()
    assert proofs == [(PARTITION, datetime(2026, 4, 1, tzinfo=UTC), 1, 1, 1, True, 1)]


def _write_rows(path: Path, ids: range, updated_at: str, outcome: str) -> None:
    """A slice file of one row per id in ``ids``, written by DuckDB (fast at this size)."""
    con = duckdb.connect()
    try:
        con.execute(
            f"""
            COPY (
                SELECT printf('%024x', i) AS public_id, 'CALL' AS communication_type,
                    'AGENT' AS interaction_source, $outcome AS outcome_option,
                    true AS is_active, false AS is_ptp_broken,
                    '2026-04-01T10:00:00.000Z' AS communicated_at,
                    '2026-04-01T10:00:00.000Z' AS created_at, $updated_at AS updated_at
                FROM range({ids.start}, {ids.stop}) AS t(i)
            ) TO '{path}' (FORMAT parquet)
            """,
            {"outcome": outcome, "updated_at": updated_at},
        )
    finally:
        con.close()


def _big_month(months: Months) -> Snapshot:
    """400,000 rows, then 50,000 of them read again later with a newer update: several times
    what 64 MB holds once DuckDB has staged, deduplicated and joined them."""
    snapshot = months.snapshot([], [])
    first, second = snapshot.row_files
    _write_rows(first, range(400_000), "2026-04-02T00:00:00.000Z", "PTP")
    _write_rows(second, range(350_000, 400_000), "2026-04-03T00:00:00.000Z", "RPC")
    return snapshot


def _bounded(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, limit: str
) -> WarehouseBackend:
    """The warehouse ``backend`` as a run opens it (backend.open_warehouse), within ``limit``."""
    lake = None
    if backend == "ducklake":
        lake = Lake.create(request.getfixturevalue("postgres"), tmp_path / "lake")
    return open_warehouse(
        backend,
        database=tmp_path / "data" / "warehouse.duckdb",
        dsn=lake and lake.dsn,
        ducklake_data_path=lake and str(lake.data_path),
        memory_limit=limit,
    )


@pytest.mark.parametrize(
    ("backend", "spills_to"), [("duckdb", "warehouse.duckdb.tmp"), ("ducklake", "ducklake.tmp")]
)
def test_duckdb_memory_is_bounded_to_one_thread_and_spills_under_the_data_dir(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, spills_to: str
) -> None:
    warehouse = _bounded(tmp_path, request, backend, "48MB")

    with warehouse.connect() as con:
        limit, temp, threads = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
            "current_setting('threads')"
        ).fetchone()

    assert limit.replace(" ", "") in ("48.0MB", "45.7MiB")  # DuckDB prints either unit
    assert Path(temp) == tmp_path / "data" / spills_to
    assert threads == 1


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_a_session_without_a_limit_is_not_held_to_the_last_limit_set(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    # The out-of-memory ladder's last step. A lake's sessions share one DuckDB instance, whose
    # RESET memory_limit left its buffer pool within the limit set before.
    warehouse = _bounded(tmp_path, request, backend, "48MB")
    needs_more = "SELECT len(list(range)) FROM range(10_000_000)"  # 80 MB that cannot spill
    with warehouse.connect() as con, pytest.raises(duckdb.OutOfMemoryException):
        con.execute(needs_more)

    with warehouse.with_memory_limit(None).connect() as con:
        assert con.execute(needs_more).fetchone() == (10_000_000,)


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_a_month_larger_than_the_memory_limit_merges_by_spilling(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    months = Months(tmp_path, _bounded(tmp_path, request, backend, "96MB"))
    snapshot = _big_month(months)

    with months.warehouse.connect() as con:
        first = merge_snapshot(con, snapshot)
        again = merge_snapshot(con, snapshot)
        outcomes = dict(
            con.execute("SELECT outcome_option, count(*) FROM d23.logs GROUP BY ALL").fetchall()
        )

    assert (first.snapshot_rows, first.inserted) == (400_000, 400_000)
    assert outcomes == {"PTP": 350_000, "RPC": 50_000}  # the later update won every duplicate
    assert (again.inserted, again.updated) == (0, 0)


def test_a_lakes_month_is_written_in_small_files_and_read_again_in_parts(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What bounds DuckLake's memory outside DuckDB's limit on a read again: a few rows per
    # data file and per UPDATE (ducklake_sql.SET_TARGET_FILE_SIZE).
    warehouse = _bounded(tmp_path, request, "ducklake", "48MB")
    monkeypatch.setattr(DuckLakeWarehouse, "merge_part_rows", 50_000)
    months = Months(tmp_path, warehouse)
    first, again = months.snapshot([]), months.snapshot([])
    _write_rows(first.row_files[0], range(200_000), "2026-04-02T00:00:00.000Z", "PTP")
    _write_rows(again.row_files[0], range(200_000), "2026-04-03T00:00:00.000Z", "RPC")
    merge_within_memory_limit(warehouse, first)
    run = _statements_run(monkeypatch)

    summary = merge_within_memory_limit(warehouse, again)

    assert (summary.inserted, summary.updated) == (0, 200_000)
    assert sum(statement == sql.MERGE_SNAPSHOT for statement, _ in run) == 4
    with warehouse.connect(read_only=True) as con:
        stored = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE outcome_option = 'RPC') FROM d23.logs"
        ).fetchone()
        files = [
            f
            for (f,) in con.execute(
                "SELECT data_file FROM ducklake_list_files('d23_lake', 'logs', schema => 'd23')"
            ).fetchall()
        ]
        groups = con.execute(
            "SELECT max(row_group_num_rows), sum(row_group_num_rows) FROM ("
            " SELECT DISTINCT file_name, row_group_id, row_group_num_rows"
            " FROM parquet_metadata($files))",
            {"files": files},
        ).fetchone()
    assert stored == (200_000, 200_000)
    # Row groups of about 20,000 rows (the writer cuts them between its vectors), not 122,880.
    assert len(files) > 1 and groups[0] < 25_000 and groups[1] == 200_000, (files, groups)


def test_only_the_read_agains_seen_update_keeps_the_sides_of_its_join_as_written(
    months: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DuckDB's setting is global to the instance a lake's sessions share: set for that
    # statement alone (a 5M-row read again's MERGE ran out of 48 MB with it).
    months.merge([row("a"), row("b")])
    setting = "SELECT current_setting('disabled_optimizers')"
    seen: dict[str, str] = {}
    original = store.execute

    def execute(con: duckdb.DuckDBPyConnection, statement: str, params=None):
        name = {sql.MERGE_SNAPSHOT: "merge", sql.SEEN_AS_ROW: "seen"}.get(statement)
        if name:
            seen[name] = con.execute(setting).fetchone()[0]
        return original(con, statement, params)

    monkeypatch.setattr(store, "execute", execute)
    months.merge([row("a", "2026-04-20T00:00:00.000Z"), row("b")])
    with months.warehouse.connect(read_only=True) as con:
        after = con.execute(setting).fetchone()[0]

    assert seen == {"merge": "", "seen": "build_side_probe_side"}
    assert after == ""


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_a_read_again_out_of_memory_in_its_seen_update_is_merged_again_within_more(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    backend: str,
) -> None:
    warehouse = _bounded(tmp_path, request, backend, "48MB")
    months = Months(tmp_path, warehouse)
    first = months.snapshot([row("a"), row("b")])
    again = months.snapshot([row("a", "2026-04-20T00:00:00.000Z"), row("b")])
    merge_within_memory_limit(warehouse, first)
    original, failed = store.execute, []

    def execute(con: duckdb.DuckDBPyConnection, statement: str, params=None):
        if statement == sql.SEEN_AS_ROW and not failed:  # a real one: it aborts the transaction
            failed.append(statement)
            con.execute("SELECT len(list(range)) FROM range(10_000_000)")
        return original(con, statement, params)

    monkeypatch.setattr(store, "execute", execute)
    summary = merge_within_memory_limit(warehouse, again)

    assert failed and "merging it again within 96MB" in caplog.text
    assert (summary.inserted, summary.updated) == (0, 1)
    with warehouse.connect(read_only=True) as con:
        planning = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
    assert planning == ""


def test_a_large_read_again_is_merged_in_parts_of_about_part_rows_each_row_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    months = Months(tmp_path, Warehouse(tmp_path / "warehouse.duckdb"), part_rows=2_500)
    first = months.snapshot([])
    _write_rows(first.row_files[0], range(10_000), "2026-04-02T00:00:00.000Z", "PTP")
    again = months.snapshot([])
    _write_rows(again.row_files[0], range(10_000), "2026-04-03T00:00:00.000Z", "RPC")
    months.merge_snapshot(first)
    run = _statements_run(monkeypatch)
    summary = months.merge_snapshot(again)

    previews = [params for statement, params in run if statement == sql.MERGE_PREVIEW]

    ids = [f"{i:024x}" for i in range(10_000)]
    per_part = [
        sum(p["low"] <= i <= p["last"] and (p["high"] is None or i < p["high"]) for i in ids)
        for p in previews
    ]
    assert len(per_part) == 4 and all(2_000 <= n <= 3_000 for n in per_part), per_part
    assert sum(per_part) == 10_000
    # No part reaches past the snapshot's ids into those of other months.
    assert previews[0]["low"] == ids[0] and {p["last"] for p in previews} == {ids[-1]}
    assert (summary.inserted, summary.updated) == (0, 10_000)
    with months.warehouse.connect(read_only=True) as con:
        stored = con.execute(
            "SELECT count(*), count(DISTINCT public_id), max(_last_seen_at) = min(_last_seen_at),"
            " count(*) FILTER (WHERE outcome_option = 'RPC') FROM d23.logs"
        ).fetchone()
    assert stored == (10_000, 10_000, True, 10_000)


def test_without_its_temp_directory_the_same_merge_runs_out_of_memory(tmp_path: Path) -> None:
    """What the temp directory is for: the merge above does not fit 64 MB on its own."""
    snapshot = _big_month(Months(tmp_path, Warehouse(tmp_path / "warehouse.duckdb")))
    con = duckdb.connect(
        str(tmp_path / "bare.duckdb"), config={"memory_limit": "64MB", "temp_directory": ""}
    )
    try:
        con.execute(sql.CREATE_SCHEMA)
        with pytest.raises(duckdb.OutOfMemoryException):
            merge_snapshot(con, snapshot)
    finally:
        con.close()


# This month runs out of memory within 8, 16 and 20 MB, even spilling, and needs ~32 MB. (A lake
# within 8 MB cannot even list the 400,000 rows stored: months.logs() fails there.)
@pytest.mark.parametrize(
    ("backend", "limit", "retries"),
    [
        ("duckdb", "20MB", ["within 40MB"]),
        ("duckdb", "8MB", ["within 16MB", "without a limit"]),
        ("ducklake", "20MB", ["within 40MB"]),
    ],
)
def test_a_merge_out_of_memory_runs_again_within_twice_the_limit_then_without_one(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    backend: str,
    limit: str,
    retries: list[str],
) -> None:
    warehouse = _bounded(tmp_path, request, backend, limit)
    months = Months(tmp_path, warehouse)
    snapshot = _big_month(months)

    summary = merge_within_memory_limit(warehouse, snapshot)

    assert (summary.inserted, len(months.logs())) == (400_000, 400_000)
    # Nothing of an attempt that ran out of memory stayed (months.logs() is keyed by id).
    with warehouse.with_memory_limit(None).connect(read_only=True) as con:
        stored = con.execute("SELECT count(*), count(DISTINCT public_id) FROM d23.logs").fetchone()
    assert stored == (400_000, 400_000)
    assert re.findall(r"merging it again (within \S+|without a limit)", caplog.text) == retries


@pytest.mark.parametrize(
    ("limit", "doubled"),
    [
        ("48MB", "96MB"),
        ("1.5GB", "3GB"),
        ("512 MiB", "1024MiB"),
        ("1000000KB", "2000000KB"),
        ("80%", None),
        ("lots", None),
    ],
)
def test_a_memory_limit_doubles_in_its_own_unit(limit: str, doubled: str | None) -> None:
    assert store._doubled(limit) == doubled


def test_a_snapshot_landed_before_reads_were_proven_deletes_nothing(months: Months) -> None:
    months.merge([row("a"), row("b")])
    older = months.snapshot([row("a")], absent=("b",))
    older.absent_file.unlink()  # snapshots landed before this change have no absent.parquet

    summary = months.merge_snapshot(older, max_deletion_share=1.0)

    assert (summary.deletions_proven, summary.marked_deleted) == (0, 0)
    assert months.logs()["b"]["_deleted_at"] is None


# Within one file the version served later is the later answer; the other is quarantined.
def test_two_versions_under_one_updated_at_in_one_slice_keep_the_one_served_later(
    months: Months,
) -> None:
    summary = months.merge([row("a", outcome_option="RPC"), row("a", outcome_option="PTP")])

    assert months.logs()["a"]["outcome_option"] == "PTP"
    with months.warehouse.connect(read_only=True) as con:
        ((values,),) = con.execute("SELECT allowlisted_values FROM d23.rejected_rows").fetchall()
    assert json.loads(values)["outcome_option"] == "RPC"
    assert (summary.inserted, summary.conflicting_versions) == (1, 1)


def test_a_live_row_moved_into_another_month_counts_as_moved_not_restored(
    months: Months,
) -> None:
    months.merge([row("a")])
    moved = row("a", "2026-04-10T00:00:00.000Z", communicated_at="2026-05-01T09:00:00.000Z")

    summary = months.merge([moved], partition="2026-05-01")

    assert (summary.moved_in, summary.restored) == (1, 0)


def test_a_row_moved_without_a_new_updated_at_makes_its_old_months_mix_due(
    months: Months,
) -> None:
    # April's outcome mix still counts a; unless it is rebuilt, a counts in April and in May.
    moved = _a_moved_to_may_under_the_same_updated_at(months)

    summary = months.merge([moved], partition="2026-05-01")

    assert summary.moved_in == 1
    with months.warehouse.connect(read_only=True) as con:
        due = con.execute("SELECT DISTINCT CAST(month AS VARCHAR) FROM d23.mix_rebuilds_due")
        assert sorted(m for (m,) in due.fetchall()) == [PARTITION, "2026-05-01"]


def test_an_older_proof_merged_after_a_newer_one_neither_recounts_nor_redates_the_deletion(
    months: Months,
) -> None:
    months.merge([row("a"), row("b")], read_at=READ_AT)
    older = months.snapshot([row("a")], absent=("b",), read_at=READ_AT + timedelta(hours=1))
    months.merge(
        [row("a")], absent=("b",), read_at=READ_AT + timedelta(hours=2), max_deletion_share=1.0
    )

    summary = months.merge_snapshot(older, max_deletion_share=1.0)

    assert (summary.deletions_proven, summary.marked_deleted) == (0, 0)
    assert months.logs()["b"]["_deleted_at"] == READ_AT + timedelta(hours=2)


# Set back, it would let a read older than the one that last saw the row delete it.
def test_a_reject_served_by_an_older_read_does_not_set_back_when_the_row_was_last_seen(
    months: Months,
) -> None:
    months.merge([row("a"), row("b")], read_at=READ_AT + timedelta(hours=2))

    months.merge([], rejects=[rejected("b")], partition="2026-05-01", read_at=READ_AT)

    assert months.logs()["b"]["_last_seen_at"] == READ_AT + timedelta(hours=2)


def test_a_read_serving_one_id_as_two_rejects_marks_it_seen(months: Months) -> None:
    """The id joins the read's rejects twice: the update must take it once, not fail."""
    months.merge([row("a"), row("b")], read_at=READ_AT)

    later = READ_AT + timedelta(hours=3)
    months.merge([], rejects=[rejected("b"), rejected("b")], partition="2026-05-01", read_at=later)

    assert months.logs()["b"]["_last_seen_at"] == later


def test_a_deletion_share_is_of_the_months_live_rows_not_of_those_already_deleted(
    months: Months,
) -> None:
    months.merge([row(f"r{i:03}") for i in range(100)])
    kept = [row(f"r{i:03}") for i in range(50, 100)]
    months.merge(kept, absent=tuple(f"r{i:03}" for i in range(50)), max_deletion_share=1.0)

    # 2 gone of the 50 rows still live: 4 %, over 2 %, however many were deleted before.
    held = months.merge(kept[2:], absent=("r050", "r051"), max_deletion_share=0.02)

    assert (held.live_rows, held.deletions_held, held.marked_deleted) == (50, True, 0)
    assert months.logs()["r050"]["_deleted_at"] is None


def _candidates(months: Months, reread: Snapshot, verified: Window) -> list[str]:
    """The ids ``reread`` must prove gone, of those communicated within ``verified``."""
    with months.warehouse.connect(read_only=True) as con:
        candidates = deletion_candidates(
            con,
            reread.row_files,
            reread.reject_files,
            partition=PARTITION,
            verified=[(verified.since, verified.until)],
        )
    return [public_id for public_id, _ in candidates]


def test_an_id_a_read_served_twice_is_found_in_whichever_range_of_ids_it_falls(
    months: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "LOGS_PART_ROWS", 3)
    unique = [row(f"r{i:02}") for i in range(20)]
    later = "2026-04-03T00:00:00.000Z"

    def served_twice(*slices: list[dict]) -> bool:
        snapshot = months.snapshot(*slices)
        files = {"files": [str(f) for f in snapshot.row_files]}
        with months.warehouse.connect(read_only=True) as con:
            return store.snapshot_has_duplicates(con, files)

    assert not served_twice(unique)
    assert all(served_twice(unique, [row(twice, later)]) for twice in ("r00", "r09", "r19"))
    months.merge(unique, [row("r19", later)])
    assert len(months.logs()) == 20
    assert months.logs()["r19"]["updated_at"] == datetime(2026, 4, 3, tzinfo=UTC)


def test_a_months_deletion_candidates_are_the_same_weighed_one_range_of_ids_at_a_time(
    months: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Communicated later as their ids run lower: candidates come in time order, not by range.
    stored = [d23_row(f"r{i:02}", f"2026-04-{28 - i % 28:02}T10:00:00.000Z") for i in range(40)]
    months.merge(stored)
    # Gone from the read: ids from the first to the last; one served only as a reject.
    served = [r for r in stored if r["public_id"] not in {"r00", "r13", "r14", "r27", "r39"}]
    reread = months.snapshot(served, rejects=[rejected("r27")])
    month = Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
    whole = _candidates(months, reread, month)

    monkeypatch.setattr(store, "LOGS_PART_ROWS", 6)
    in_ranges = _candidates(months, reread, month)

    assert in_ranges == whole == ["r14", "r13", "r39", "r00"]


# Left out, a row logged at midnight and deleted at the source would stay live for good.
def test_a_row_at_a_verified_slices_first_instant_is_a_deletion_candidate(
    months: Months,
) -> None:
    midnight = "2026-04-02T00:00:00.000Z"  # day 2's first instant
    months.merge([row("a")], [d23_row("m", midnight), d23_row("n", "2026-04-02T10:00:00.000Z")])
    reread = months.snapshot([row("a")], [])  # m and n no longer served

    assert _candidates(months, reread, reread.slices[1].window) == ["m", "n"]
    # Day 1's verified slice ends where day 2 begins: m is no row of it.
    assert _candidates(months, reread, reread.slices[0].window) == []


def test_a_row_the_read_served_only_as_a_reject_is_no_deletion_candidate(months: Months) -> None:
    months.merge([row("a"), row("b"), row("c")])
    # b comes back broken, c not at all; a reject without a usable id rules out no row.
    reread = months.snapshot([row("a")], rejects=[rejected("b"), rejected(None)])

    assert _candidates(months, reread, reread.slices[0].window) == ["c"]


def test_deletions_pending_tell_held_rows_from_rows_not_proven(months: Months) -> None:
    months.merge([row(f"r{i}") for i in range(10)])
    snapshot = months.snapshot([row(f"r{i}") for i in range(2, 8)], absent=("r0", "r1"))
    why = "the second read of the month was not proven complete"
    pq.write_table(
        pa.table({"public_id": ["r8", "r9"], "reason": [why, why]}, UNPROVEN_SCHEMA),
        snapshot.unproven_file,
    )
    snapshot = replace(snapshot, unproven=[UnprovenDeletions(2, why, ["r8", "r9"])])

    summary = months.merge_snapshot(snapshot, max_deletion_share=0.1)
    with months.warehouse.connect(read_only=True) as con:
        pending = con.execute(
            "SELECT public_id, held FROM d23.deletions_pending ORDER BY public_id"
        ).fetchall()

    assert summary.deletions_held
    assert pending == [("r0", True), ("r1", True), ("r8", False), ("r9", False)]


# A read begun between two deletions must not be resumed: the later one may have removed a
# row that moved into a slice it had finished.
def test_the_last_deletion_a_resume_weighs_is_the_latest_one(months: Months) -> None:
    months.merge([row("a"), row("b"), row("c")])
    months.merge([row("a"), row("c")], absent=("b",), max_deletion_share=1.0)
    months.merge([row("a")], absent=("c",), max_deletion_share=1.0)

    with months.warehouse.connect(read_only=True) as con:
        assert last_deletion(con) == months.read_at == months.logs()["c"]["_deleted_at"]


# On DuckLake another host's month may be known only by its stored rejects (its raw folder is
# not this host's).
def test_another_months_stored_reject_of_a_row_is_found_and_the_months_own_is_not(
    months: Months,
) -> None:
    months.merge([row("a")], rejects=[rejected("r")], partition="2026-05-01")
    months.merge([row("b")], rejects=[rejected("r"), rejected("s")])

    with months.warehouse.connect(read_only=True) as con:
        found = rejects_elsewhere(con, PARTITION, {"r", "s"})

    assert [(r.public_id, r.partition) for r in found] == [("r", "2026-05-01")]


def test_a_warehouse_an_older_version_made_is_refused_naming_the_table_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "warehouse.duckdb"
    # d23.deletions_pending as an earlier version made it: a count of rows, not their ids.
    with Warehouse(path).connect() as con:
        con.execute("DROP TABLE d23.deletions_pending")
        con.execute(
            "CREATE TABLE d23.deletions_pending (_partition VARCHAR NOT NULL, rows BIGINT "
            "NOT NULL, held BOOLEAN NOT NULL, reason VARCHAR NOT NULL, read_at TIMESTAMPTZ "
            "NOT NULL)"
        )
        con.execute("INSERT INTO d23.deletions_pending VALUES ('2026-04-01', 7, true, 'x', now())")
        con.execute("DROP TABLE d23.mix_rebuilds_due")  # a table that version did not have

    for read_only in (False, True):
        with (
            pytest.raises(
                store.WarehouseSchemaError, match=r"d23\.deletions_pending in "
            ) as caught,
            Warehouse(path).connect(read_only=read_only),
        ):
            pass
        assert str(path) in str(caught.value) and "rows BIGINT" in str(caught.value)

    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT rows FROM d23.deletions_pending").fetchall() == [(7,)]
    tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    assert ("mix_rebuilds_due",) not in tables  # nothing made in it either
    con.close()


def test_a_warehouse_whose_folder_this_user_cannot_write_is_refused_before_a_run_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data" / "warehouse.duckdb"
    with Warehouse(path).connect():
        pass
    # The file is writable, its folder not: DuckDB could not make its write-ahead log there.
    # (The tests run as root, whom no mode stops.)
    made = tempfile.TemporaryFile

    def refused_in_the_folder(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs["dir"]) == path.parent:
            raise PermissionError(errno.EACCES, "Permission denied")
        return made(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refused_in_the_folder)

    with pytest.raises(
        SettingsError,
        match=f"this user cannot make or write {path.parent} \\(Permission denied\\): ",
    ):
        Warehouse(path).check_usable()


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EMFILE, errno.EIO])
def test_a_passing_fault_of_the_warehouse_disk_is_not_taken_for_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: int
) -> None:
    # A full disk or too many open files: not the folder's fault, and a run retried may pass,
    # so not a SettingsError (which turns a month's run retries off).
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(fault, os.strerror(fault))

    monkeypatch.setattr(tempfile, "TemporaryFile", failing)

    with pytest.raises(OSError) as raised:
        Warehouse(tmp_path / "data" / "warehouse.duckdb").check_usable()
    assert not isinstance(raised.value, SettingsError) and raised.value.errno == fault


@pytest.mark.parametrize("folder", ["/proc/d23_no_such_folder", "/sys/d23_no_such_folder"])
def test_a_warehouse_folder_nothing_can_be_made_in_is_refused_whoever_runs(folder: str) -> None:
    # Root passes every access() check, in /proc and /sys too: only making the folder tells.
    with pytest.raises(SettingsError, match=f"this user cannot make or write {folder} \\("):
        Warehouse(Path(folder) / "warehouse.duckdb").check_usable()
