"""Reading one month from the API into a snapshot, with the evidence its deletions need."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from d23_pipeline.client import ExportsClient, SliceDone, SliceEvent, Window
from d23_pipeline.landing.snapshot import (
    SliceRecord,
    Snapshot,
    SnapshotStore,
    rejects_path,
    rows_path,
)
from d23_pipeline.warehouse.store import (
    WarehouseBackend,
    anonymous_rejects,
    deletion_candidates,
    files_serving_an_id_twice,
    last_deletion,
)

log = logging.getLogger("d23_pipeline.landing")


@dataclass(frozen=True)
class MonthRead:
    """A finished read of one month and what it took."""

    snapshot: Snapshot
    slices_resumed: int
    deletion_candidates: int
    proven_absent: int


def read_month(
    client: ExportsClient,
    store: SnapshotStore,
    warehouse: WarehouseBackend,
    *,
    partition: str,
    slices: Sequence[Window],
    run_id: str,
    progress: Callable[[str], None] = log.info,
) -> MonthRead:
    """Land ``slices`` (one month) as the month's current snapshot, resuming finished slices.

    Rows the warehouse holds for a verified slice but the read did not return are only
    candidates: each is looked up again at its own instant (:meth:`ExportsClient.confirm_absent`)
    and only those proven gone are recorded as absent, the one input a merge deletes from.
    Gone from its instant is not gone from the month, though: a row can have moved into a slice
    read earlier (or by an earlier run), so before anything counts as absent every slice must
    still be proven complete (:func:`_not_moved`), and no bad row without a usable
    ``public_id`` may have been served anywhere in the month: it may be one of those rows.
    ``progress`` hears of every finished slice.
    """
    month = Window(slices[0].since, slices[-1].until)
    with store.begin(partition, slices, run_id) as writer:
        finished = writer.finished
        if finished and _deleted_since(warehouse, writer.started_at):
            log.warning(
                "%s: not resuming the read begun at %s: since then a read proved rows gone, and "
                "one may have moved into a slice it finished; reading every slice again",
                partition,
                writer.started_at.isoformat(timespec="seconds"),
            )
            writer.start_over()
            finished = set()
        if finished:
            log.info("resuming %s: %d/%d slices done", partition, len(finished), len(slices))
        events = client.iter_slices(month, skip=finished)
        writer.land(_reporting(events, client, partition, len(slices), len(finished), progress))
        landed = writer.slices
        row_files = [rows_path(writer.directory, s.window) for s in landed]
        reject_files = [rejects_path(writer.directory, s.window) for s in landed]
        anonymous, twice = 0, set()
        with warehouse.connect(read_only=True) as con:
            candidates = deletion_candidates(
                con,
                row_files,
                reject_files,
                partition=partition,
                verified=[(s.window.since, s.window.until) for s in landed if s.verified],
            )
            if candidates:
                anonymous = anonymous_rejects(con, reject_files)
                twice = files_serving_an_id_twice(con, row_files, reject_files)
        absent = client.confirm_absent(candidates)
        if absent and anonymous:
            log.warning(
                "%s: %d rows look deleted, but the read served %d bad rows without a usable "
                "public_id, and any of them may be one of those rows, moved and broken: none is "
                "marked deleted by this read (see d23.rejected_rows)",
                partition,
                len(absent),
                anonymous,
            )
            absent = set()
        if absent:
            served_twice = {
                r.window
                for r, f, g in zip(landed, row_files, reject_files, strict=True)
                if f in twice or g in twice
            }
            absent = _not_moved(client, landed, served_twice, absent, partition)
        snapshot = writer.complete(client.stats.as_dict(), absent=absent)
    return MonthRead(snapshot, len(finished), len(candidates), len(absent))


def _deleted_since(warehouse: WarehouseBackend, started_at: datetime) -> bool:
    with warehouse.connect(read_only=True) as con:
        last = last_deletion(con)
    return last is not None and last >= started_at


def _not_moved(
    client: ExportsClient,
    landed: Sequence[SliceRecord],
    served_twice: set[Window],
    absent: set[str],
    partition: str,
) -> set[str]:
    """Of the rows proven gone from their instants, those no slice of the month holds now.

    A slice whose read served exactly its count, which did not move during the read and is
    the same now, took no row in, unless a row moved within it as another moved in behind its
    cursor: its count stays the same, and the row that moved ahead of the cursor is served twice
    (``served_twice``: slices that served an id the read served elsewhere too). A count that rose by
    one row and fell by another with no row served twice is the one case this misses. Any other
    slice (unverified, changed while it was read, so a row may have moved in behind its cursor,
    changed since, or in ``served_twice``) is walked again, and a row found there lives on. One such
    walk that is not proven complete leaves nothing provably gone.
    """
    left = set(absent)
    for record in landed:
        if (
            record.window not in served_twice
            and record.verified
            and record.total_before == record.total_after == record.served
            and client.fetch_total(record.window).exact_total == record.served
        ):
            continue
        found = client.served_ids(record.window)
        if found is None:
            log.warning(
                "%s: %d rows look deleted, but slice %s could not be proven complete again, so "
                "one of them may have moved there: none is marked deleted by this read",
                partition,
                len(absent),
                record.window.key,
            )
            return set()
        left -= found
        if not left:
            break
    if len(left) < len(absent):
        log.warning(
            "%s: %d of %d rows gone from their instants were found in another slice of the "
            "month (moved while it was read): not deleted",
            partition,
            len(absent) - len(left),
            len(absent),
        )
    return left


def _reporting(
    events: Iterable[SliceEvent],
    client: ExportsClient,
    partition: str,
    total: int,
    resumed: int,
    progress: Callable[[str], None],
) -> Iterator[SliceEvent]:
    """Pass ``events`` on, telling ``progress`` about each finished slice with an ETA."""
    started, done = time.monotonic(), resumed
    for event in events:
        yield event
        if isinstance(event, SliceDone):
            done += 1
            stats = client.stats.as_dict()
            per_slice = (time.monotonic() - started) / (done - resumed)
            progress(
                f"{partition}: {done}/{total} slices read ({event.slice} "
                f"{'verified' if event.proof.verified else 'NOT verified'}); "
                f"{stats['rows']} rows, {stats['pages']} pages, "
                f"{sum(stats['retries'].values())} retries so far; "
                f"about {per_slice * (total - done):.0f} s left"
            )
