"""Raw snapshots on disk: resuming, replacing, and refusing to call a partial month complete."""

import json
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import d23_row

from d23_pipeline.client import SliceDone, SlicePage, SliceProof, SliceRestart, Window
from d23_pipeline.client.completeness import LeftAsRead
from d23_pipeline.landing import snapshot as snapshot_module
from d23_pipeline.landing.snapshot import (
    PAGE_LIMIT_KEPT,
    SliceRecord,
    Snapshot,
    SnapshotBusyError,
    SnapshotStore,
    SnapshotWriter,
    SourceMismatchError,
    UnreadableSnapshot,
    rejects_path,
    rows_path,
)
from d23_pipeline.schema import RejectedRow
from d23_pipeline.schema_arrow import ABSENT_SCHEMA, REJECT_SCHEMA, rows_to_batch

APRIL = Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 4, tzinfo=UTC))
SLICES = APRIL.split(timedelta(days=1))


def _row(public_id: str, window: Window) -> dict:
    return d23_row(public_id, window.since_text, outcome_option="RPC")


def _land(writer, window: Window, verified: bool = True, rows: int = 1) -> None:
    """A slice of ``rows`` rows (0 or 1) landed: a page event for a row, none for no row."""
    if rows:
        writer.write_page(SlicePage(window, rows_to_batch([_row(window.key, window)]), []))
    proof = SliceProof(
        served=rows, total_before=rows, total_after=rows + (not verified), verified=verified
    )
    writer.finish_slice(SliceDone(window, rows=rows, rejects=0, pages=1, proof=proof))


def test_unfinished_snapshot_resumes_with_its_finished_slices(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0])
        first.write_page(SlicePage(SLICES[1], rows_to_batch([_row("half", SLICES[1])]), []))
        raise RuntimeError("the run dies in the middle of the second slice")

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.directory == first.directory
        assert second.finished == {SLICES[0]}


def test_a_read_is_resumed_only_from_its_own_api_host_and_lender(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    staging = ("stage-v3-api.cleargrid.ai", "3f1c9a52-7b4e-4d0a-9c61-2e8f5b7d4a10")
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "r1", staging) as first:
        _land(first, SLICES[0])
        raise RuntimeError("the run dies after its first slice")

    production = ("v3-api.cleargrid.ai", staging[1])
    with store.begin("2026-04-01", SLICES, "r2", production) as other:
        assert other.directory != first.directory and other.finished == set()
    same = (staging[0], "{" + staging[1].upper() + "}")  # one lender, however written
    with store.begin("2026-04-01", SLICES, "r3", same) as again:
        assert again.directory == first.directory and again.finished == {SLICES[0]}


@pytest.mark.parametrize("why", ["moved", "uncounted"])
def test_a_slice_the_last_count_left_as_read_is_read_again_on_resume(
    tmp_path: Path, why: LeftAsRead
) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0])
        _land(first, SLICES[1])
        first.left_as_read([SLICES[1]], why)
        entry = json.loads((first.directory / "manifest.json").read_text())["slices"][SLICES[1].key]
        raise RuntimeError("the run dies weighing its deletions")

    # As written, and as code from before left_as_read reads it (a slice to read again).
    assert (entry["left_as_read"], entry["moved_after_read"], entry["verified"]) == (
        why,
        True,
        False,
    )

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.finished == {SLICES[0]}


def test_a_slice_left_as_read_reads_so_to_manifests_of_either_form() -> None:
    # Manifests from before a slice could be left as read for an uncounted count said so with
    # a flag: such a slice still proves nothing. And code from before reads that flag alone:
    # a slice left as read for either reason must be read again on its resume, not resumed.
    entry = {"rows": 1, "rejects": 0, "pages": 1, "verified": False, "moved_after_read": True}

    record = SliceRecord.from_manifest(SLICES[1].key, entry)

    assert record.left_as_read == "moved" and "its count moved after" in record.proof.why
    uncounted = replace(record, left_as_read="uncounted").manifest_entry()
    assert uncounted["left_as_read"] == "uncounted" and uncounted["moved_after_read"] is True
    assert replace(record, left_as_read=None).manifest_entry()["moved_after_read"] is False


def test_a_slice_still_open_when_the_interrupted_read_began_is_read_again_on_resume(
    tmp_path: Path,
) -> None:
    # The month's last day read at 22:00, the read interrupted, resumed after midnight.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    closed = Window(hour - timedelta(days=2), hour - timedelta(days=1))
    still_open = Window(closed.until, hour + timedelta(hours=1))
    store = SnapshotStore(tmp_path)
    with (
        pytest.raises(RuntimeError),
        store.begin("2026-12-01", [closed, still_open], "r1") as first,
    ):
        _land(first, closed)
        _land(first, still_open)
        raise RuntimeError("the run dies before its last slice")

    with store.begin("2026-12-01", [closed, still_open], "run-2") as second:
        assert second.directory == first.directory
        assert second.finished == {closed}


def test_a_finished_slice_damaged_on_disk_is_read_again_on_resume(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0])
        _land(first, SLICES[1])
        raise RuntimeError("the machine loses power")
    # The manifest reached the disk, the second slice's file only in part.
    damaged = first.directory / f"{SLICES[1].key}.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.finished == {SLICES[0]}


def test_finished_slices_without_rows_resume_without_reading_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Their files are the shipped empty ones, compared byte for byte: a resumed empty month
    # loads no pyarrow. One of them cut short is read again, as any damaged slice is.
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0], rows=0)
        _land(first, SLICES[1], rows=0)
        raise RuntimeError("the run dies after two empty slices")
    cut = first.directory / f"{SLICES[1].key}.rejects.parquet"
    cut.write_bytes(cut.read_bytes()[:100])

    read_with_pyarrow: list[Window] = []
    counts_on_disk = snapshot_module._counts_on_disk

    def counted(directory: Path, window: Window) -> tuple[int, int]:
        read_with_pyarrow.append(window)
        return counts_on_disk(directory, window)

    monkeypatch.setattr(snapshot_module, "_counts_on_disk", counted)
    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.finished == {SLICES[0]}
    assert read_with_pyarrow == [SLICES[1]]


def test_a_damaged_manifest_starts_the_read_over(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0])
        raise RuntimeError("the machine loses power")
    (first.directory / "manifest.json").write_text('{"partition": "2026-04-01", "sli')

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.directory != first.directory and second.finished == set()


def test_a_month_is_written_by_one_run_at_a_time(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.begin("2026-04-01", SLICES, "run-1"):
        with pytest.raises(SnapshotBusyError, match="another run is reading 2026-04-01"):
            store.begin("2026-04-01", SLICES, "run-2")
        with store.begin("2026-05-01", SLICES, "run-3"):
            pass  # another month is free
    with store.begin("2026-04-01", SLICES, "run-4"):
        pass  # and the month is free again once the first run is done


def test_each_slices_proof_is_kept_through_a_resume(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0], verified=False)
        raise RuntimeError("the run dies after one slice")

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        for window in SLICES[1:]:
            _land(second, window)
        snapshot = second.complete({}, absent=["gone-1", "gone-2"])

    assert [s.verified for s in snapshot.slices] == [False, True, True]
    assert [s.window for s in snapshot.unverified] == [SLICES[0]]
    assert (snapshot.unverified[0].total_before, snapshot.unverified[0].total_after) == (1, 2)
    absent = pq.read_table(snapshot.absent_file).column("public_id").to_pylist()
    assert absent == ["gone-1", "gone-2"]


def test_a_slice_read_again_keeps_only_its_last_read(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.begin("2026-04-01", SLICES, "run-1") as writer:
        first_read = [_row("first-read", SLICES[0]), _row("dropped", SLICES[0])]
        writer.land(
            [
                SlicePage(SLICES[0], rows_to_batch(first_read), []),
                SliceRestart(SLICES[0]),
            ]
        )
        for window in SLICES:
            _land(writer, window)
        snapshot = writer.complete({})

    ids = pq.read_table(snapshot.row_files[0]).column("public_id").to_pylist()
    assert ids == [SLICES[0].key]


def test_stale_unfinished_snapshot_is_read_again(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, resume_max_age=timedelta(hours=24))
    with store.begin("2026-04-01", SLICES, "run-1") as first:
        _land(first, SLICES[0])
    manifest_path = first.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["started_at"] = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    manifest_path.write_text(json.dumps(manifest))

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.directory != first.directory
        assert second.finished == set()


def test_complete_snapshot_replaces_the_previous_one(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for run in ("run-1", "run-2"):
        with store.begin("2026-04-01", SLICES, run) as writer:
            for window in SLICES:
                _land(writer, window)
            snapshot = writer.complete({"requests": 3})

    current = store.current("2026-04-01")
    assert current is not None and current.directory == snapshot.directory
    assert (current.rows, len(current.row_files)) == (3, 3)
    assert [p.name for p in (tmp_path / "2026-04-01").iterdir() if p.is_dir()] == [
        snapshot.directory.name
    ]


def test_partial_snapshot_is_never_marked_complete(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.begin("2026-04-01", SLICES, "run-1") as writer:
        _land(writer, SLICES[0])
        with pytest.raises(RuntimeError, match="missing 2 slice"):
            writer.complete({})
    assert store.current("2026-04-01") is None


def _land_april_with_a_reject(store: SnapshotStore, run_id: str, public_id: str) -> Snapshot:
    with store.begin("2026-04-01", SLICES, run_id) as writer:
        for window in SLICES:
            rejects = (
                [RejectedRow("is_active is str", public_id, {})] if window == SLICES[0] else []
            )
            writer.write_page(SlicePage(window, rows_to_batch([_row(window.key, window)]), rejects))
            served = 1 + len(rejects)
            proof = SliceProof(
                served=served, total_before=served, total_after=served, verified=True
            )
            writer.finish_slice(
                SliceDone(window, rows=1, rejects=len(rejects), pages=1, proof=proof)
            )
        return writer.complete({}, absent=())


def test_another_months_landed_rejects_are_found_while_its_next_read_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    _land_april_with_a_reject(store, "run-1", "moved-and-broken")
    (tmp_path / "not-a-month").mkdir()  # an operator's folder beside the months'
    read_table = pq.read_table

    def april_completes_meanwhile(path: Path, *args: object, **kwargs: object) -> object:
        # April's next read completes now: CURRENT moves on and the old snapshot is removed.
        monkeypatch.setattr(pq, "read_table", read_table)
        _land_april_with_a_reject(SnapshotStore(tmp_path), "run-2", "moved-and-broken")
        return read_table(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", april_completes_meanwhile)

    found = store.landed_rejects({"moved-and-broken", "other"}, excluding="2026-05-01")

    assert [(r.public_id, r.partition, r.slice) for r in found] == [
        ("moved-and-broken", "2026-04-01", SLICES[0])
    ]
    assert found[0].rejected_at == store.current("2026-04-01").completed_at


def test_another_months_snapshot_missing_on_disk_is_reported_not_ignored(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    shutil.rmtree(_land_april_with_a_reject(store, "run-1", "moved-and-broken").directory)

    with pytest.raises(UnreadableSnapshot, match="2026-04-01"):
        store.landed_rejects({"moved-and-broken"}, excluding="2026-05-01")
    with pytest.raises(UnreadableSnapshot, match="2026-04-01"):
        store.proved_gone_since(datetime.now(UTC), excluding="2026-05-01")


def test_another_months_snapshot_that_proved_rows_gone_since_an_instant_is_found(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path)
    with store.begin("2026-04-01", SLICES, "run-1") as writer:
        for window in SLICES:
            _land(writer, window)
        april = writer.complete({}, absent={"gone"})
    with store.begin("2026-03-01", SLICES, "run-1") as writer:  # proved nothing gone
        for window in SLICES:
            _land(writer, window)
        writer.complete({}, absent=())
    at = april.completed_at

    assert store.proved_gone_since(at, excluding="2026-05-01")
    assert not store.proved_gone_since(at + timedelta(microseconds=1), excluding="2026-05-01")
    assert not store.proved_gone_since(at, excluding="2026-04-01")
    _as_landed_before_reads_were_proven(april)
    assert not store.proved_gone_since(at, excluding="2026-05-01")


def _as_landed_before_reads_were_proven(snapshot: Snapshot) -> None:
    """No absent file, and no count of it in the manifest."""
    snapshot.absent_file.unlink()
    manifest = json.loads((snapshot.directory / "manifest.json").read_text())
    del manifest["absent_rows"]
    (snapshot.directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["removed", "emptied"])
def test_a_snapshot_whose_proven_deletions_file_is_lost_is_refused_not_merged_without_them(
    tmp_path: Path, damage: str
) -> None:
    # Without absent.parquet the merge proved nothing gone: the rows this read proved gone stayed
    # live, every check green.
    store = SnapshotStore(tmp_path)
    with store.begin("2026-04-01", SLICES, "run-1") as writer:
        for window in SLICES:
            _land(writer, window)
        april = writer.complete({}, absent={"gone-1", "gone-2"})
    if damage == "removed":
        april.absent_file.unlink()
    else:
        pq.write_table(pa.table({"public_id": ["gone-1"]}, ABSENT_SCHEMA), april.absent_file)

    with pytest.raises(ValueError, match="absent.parquet.*read the month again"):
        store.current("2026-04-01")
    with pytest.raises(UnreadableSnapshot):
        store.proved_gone_since(april.completed_at, excluding="2026-05-01")


def _interrupted(store: SnapshotStore, slices: list[Window], landed: int) -> SnapshotWriter:
    with pytest.raises(RuntimeError), store.begin("2026-04-01", slices, "run-1") as first:
        for window in slices[:landed]:
            _land(first, window)
        raise RuntimeError("the run dies")
    return first


def test_a_read_with_another_slice_plan_starts_afresh(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    first = _interrupted(store, SLICES, 1)

    with store.begin("2026-04-01", [APRIL], "run-2") as second:  # D23_SLICE_HOURS changed
        assert second.directory != first.directory and second.finished == set()


def test_a_finished_slice_whose_file_holds_other_counts_is_read_again(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    first = _interrupted(store, SLICES, 2)
    # Readable, but not what the manifest says it holds: its rows would be lost unverified.
    pq.write_table(rows_to_batch([]).schema.empty_table(), rows_path(first.directory, SLICES[1]))

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.finished == {SLICES[0]}


def test_starting_a_read_over_restarts_its_clock(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    _interrupted(store, SLICES, 1)

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        before = second.started_at
        time.sleep(0.01)
        second.start_over()
        assert second.started_at > before


def test_a_finished_slice_whose_rejects_file_holds_other_counts_is_read_again(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path)
    with (
        pytest.raises(RuntimeError, match="the run dies"),
        store.begin("2026-04-01", SLICES, "run-1") as first,
    ):
        _land(first, SLICES[0])
        bad = RejectedRow("is_active is not a boolean", "broken", {})
        first.write_page(SlicePage(SLICES[1], rows_to_batch([_row("a", SLICES[1])]), [bad]))
        proof = SliceProof(served=2, total_before=2, total_after=2, verified=True)
        first.finish_slice(SliceDone(SLICES[1], rows=1, rejects=1, pages=1, proof=proof))
        raise RuntimeError("the run dies")
    # Readable, but without the bad row the manifest counts: it would be lost unquarantined.
    pq.write_table(REJECT_SCHEMA.empty_table(), rejects_path(first.directory, SLICES[1]))

    with store.begin("2026-04-01", SLICES, "run-2") as second:
        assert second.finished == {SLICES[0]}


def test_a_slice_landed_before_reads_were_counted_is_not_proven_complete() -> None:
    # A manifest written before slices recorded their proof: its rows and rejects were served.
    record = SliceRecord.from_manifest(SLICES[0].key, {"rows": 2, "rejects": 1, "pages": 1})

    assert (record.verified, record.served, record.reads) == (False, 3, 1)
    assert (record.total_before, record.total_after) == (None, None)


LENDER = "f59eb470-2d38-4c41-a1e1-548f2d437096"


def test_snapshots_of_staging_refuse_a_read_of_production_for_the_same_lender(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path / "raw" / "d23")
    store.check_source("v3-api.cleargrid.ai", LENDER)  # nothing recorded yet: any source
    store.record_source("stage-v3-api.cleargrid.ai", LENDER)
    store.check_source("stage-v3-api.cleargrid.ai", LENDER)  # the same source again: fine
    store.check_source("stage-v3-api.cleargrid.ai", "{" + LENDER.upper() + "}")  # one lender

    with pytest.raises(
        SourceMismatchError,
        match="read from stage-v3-api.cleargrid.ai; this run "
        f"reads lender {LENDER} from v3-api.cleargrid.ai",
    ):
        store.check_source("v3-api.cleargrid.ai", LENDER)
    with pytest.raises(SourceMismatchError, match="this run reads lender 0b5e"):
        store.check_source("stage-v3-api.cleargrid.ai", "0b5e" + LENDER[4:])
    store.record_source("v3-api.cleargrid.ai", LENDER)  # the first source stays recorded
    with pytest.raises(SourceMismatchError):
        store.check_source("v3-api.cleargrid.ai", LENDER)


def test_a_learned_page_size_starts_later_reads_for_a_week_from_when_it_was_learned(
    tmp_path: Path,
) -> None:
    store, month = SnapshotStore(tmp_path), "2026-04-01"
    store.remember_page_limit(month, 125)
    assert store.learned_page_limit(month) == 125
    (kept,) = tmp_path.rglob("page_limit.json")
    learned_at = json.loads(kept.read_text())["learned_at"]

    store.remember_page_limit(month, 125)  # a read that started at it and learned nothing new
    assert json.loads(kept.read_text())["learned_at"] == learned_at  # the week runs on

    over_a_week_ago = datetime.now(UTC) - PAGE_LIMIT_KEPT - timedelta(minutes=1)
    kept.write_text(json.dumps({"rows": 125, "learned_at": over_a_week_ago.isoformat()}))
    assert store.learned_page_limit(month) is None  # the gateway may take larger pages again

    store.remember_page_limit(month, 125)  # a read then learned it again: kept a week more
    assert store.learned_page_limit(month) == 125
    store.remember_page_limit(month, None)  # a read that met no such 504
    assert store.learned_page_limit(month) is None
