"""Reading one month from the API into a snapshot, with the evidence its deletions need."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from d23_pipeline.client import (
    CLOCK_SLACK,
    ExportsClient,
    Recount,
    SliceDone,
    SliceEvent,
    Window,
)
from d23_pipeline.landing.snapshot import (
    SliceRecord,
    Snapshot,
    SnapshotStore,
    SnapshotWriter,
    StaleReject,
    UnreadableSnapshot,
    rejects_path,
    rows_path,
)
from d23_pipeline.months import month_window
from d23_pipeline.pandas_probes import pandas_probes_refused
from d23_pipeline.warehouse.store import (
    WarehouseBackend,
    anonymous_rejects,
    deletion_candidates,
    last_deletion,
    last_merged_read,
    rejects_elsewhere,
)
from d23_pipeline.wording import counted

log = logging.getLogger("d23_pipeline.landing")


@dataclass(frozen=True)
class MonthRead:
    """A finished read of one month and what it took."""

    snapshot: Snapshot
    slices_resumed: int
    deletion_candidates: int
    proven_absent: int


class _Unprovable(Exception):
    """Why the rows a read found gone from their instants cannot be proven gone by it."""


# Its reader threads too: pyarrow's first conversion of Python values, if any, is in one of them.
@pandas_probes_refused()
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
    read earlier (or by an earlier run), so before anything counts as absent a second read of the
    month must not find it (:func:`_not_moved`), no bad row without a usable ``public_id`` may
    have been served anywhere in the month (it may be one of those rows), and no other month may
    still serve it as a bad row carrying its id (:func:`_not_rejected_elsewhere`; other months'
    bad rows without one are not weighed, or one would hold every month's deletions).
    ``progress`` hears of every finished slice.
    """
    month = Window(slices[0].since, slices[-1].until)
    source = (client.api_host, client.lender_public_id)
    with store.begin(partition, slices, run_id, source) as writer:
        finished = writer.finished
        if finished and _deleted_since(warehouse, store, writer.started_at, partition):
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
        todo = [s for s in slices if s not in finished]
        # When each slice this run read was read from (its read began then or later). Resumed
        # slices had ended when the interrupted read began (SnapshotStore.begin).
        read_from: dict[Window, datetime] = {}
        recounts_left = RECOUNTS
        while True:
            if todo:
                if read_from:  # slices read again: once surely ended on the API's clock too
                    _wait_until_ended(todo)
                began = datetime.now(UTC)
                done_before = len(slices) - len(todo)
                # Closed however the landing ends: its workers stop now, not once a failed
                # step's traceback lets the generator go.
                with contextlib.closing(
                    client.iter_slices(month, skip=set(slices) - set(todo))
                ) as events:
                    writer.land(
                        _reporting(events, client, partition, len(slices), done_before, progress)
                    )
                read_from.update(dict.fromkeys(todo, began))
                todo = _ended_since_read(read_from, datetime.now(UTC), partition)
                if todo:
                    continue
            if recounts_left:
                recounts_left -= 1
                recount = _recount(client, writer.slices, partition, recounts_left > 0)
                writer.left_as_read(recount.uncounted, "uncounted")
                if recount.moved and recounts_left:
                    todo = recount.moved
                    continue
                writer.left_as_read(recount.moved, "moved")
            deletions = _weigh_deletions(client, warehouse, store, writer, month, partition)
            # The read counts as finished now: checked first, every slice that has ended by
            # then was read after it ended, so a month read across its end is not taken for
            # one read after it (the rows logged in its last minutes missing).
            completed_at = datetime.now(UTC)
            todo = _ended_since_read(read_from, completed_at, partition)
            if not todo:
                break
        snapshot = writer.complete(
            client.stats.as_dict(),
            absent=deletions.absent,
            stale_rejects=deletions.stale_rejects,
            unproven=deletions.unproven,
            weighed_until=deletions.weighed_until,
            completed_at=completed_at,
        )
    return MonthRead(snapshot, len(finished), deletions.candidates, len(deletions.absent))


def _first_of(windows: Sequence[Window]) -> str:
    """The first of ``windows``, for a log line, and "..." if there are more."""
    return f"{windows[0]}{', ...' if len(windows) > 1 else ''}"


def _ended_since_read(
    read_from: Mapping[Window, datetime], now: datetime, partition: str
) -> list[Window]:
    """The slices whose window had not surely ended when they were read (the API's clock may
    be behind ours by CLOCK_SLACK) and has ended by ``now``: rows logged in them after their
    walk would be missing. They are read again."""
    ended = [
        s for s, began in read_from.items() if began < s.until + CLOCK_SLACK and s.until <= now
    ]
    if ended:
        log.warning(
            "%s: %d slices ended while this read ran (%s); reading them again, so that rows "
            "logged in them after their walk are not missed",
            partition,
            len(ended),
            _first_of(ended),
        )
    return ended


# Counts of the month's finished slices once all are read: up to this many, each but the last
# followed by a read again of the slices whose counts moved.
RECOUNTS = 3


def _recount(
    client: ExportsClient, landed: Sequence[SliceRecord], partition: str, read_again: bool
) -> Recount:
    """The verified slices, ended by now, whose exact count has moved since their read (or
    their resumed read): a row moved into one of them from a slice read later is in neither
    read. They are read again if ``read_again``; else they are recorded unverified and the
    month's next read picks them up. And those the API no longer counts exactly: they are
    recorded unverified at once, not read again, as reading them again on an API whose counts
    time out would cost up to a read of the month to learn whether a row moved into them.
    (An unverified slice already adds and updates only, and served short of its count.)"""
    now = datetime.now(UTC)
    # What each slice served, or its count after, if lower: a slice verified between its
    # counts, on a read again, served fewer than its count after when a row moved in behind its
    # cursor, so its count now equals the count after but not what it served. (A count after
    # below what it served is a row deleted since, for the month's next read to prove.)
    # Slices an earlier count left as read served their counts too: what they held joins the
    # span's. A slice its own counts did not prove stays out: what it held may differ from its
    # count by as much as a row moved in elsewhere, and its gap has each slice counted alone.
    verified: dict[Window, int] = {}
    left_as_read: dict[Window, int] = {}
    for s in landed:
        if s.total_after is None or s.window.until + CLOCK_SLACK > now:
            continue
        if s.verified:
            verified[s.window] = min(s.served, s.total_after)
        elif s.left_as_read is not None:
            left_as_read[s.window] = min(s.served, s.total_after)
    recount = client.recount_after_read(verified, beside=left_as_read)
    if recount.uncounted:
        log.warning(
            "%s: %s could not be counted again once the month was read (%s): the API's count "
            "timed out, or was not exact; left as read, unverified (such slices delete nothing, "
            "and d23/logs' slices_verified check warns): a row that moved into one of them "
            "during the read lands with the month's next read",
            partition,
            counted(len(recount.uncounted), "slice"),
            _first_of(recount.uncounted),
        )
    if recount.moved:
        log.warning(
            "%s: counts moved after the read in %s (%s), as when a row moves into one from "
            "a slice read later; %s",
            partition,
            counted(len(recount.moved), "slice"),
            _first_of(recount.moved),
            "reading them again"
            if read_again
            else "this was the read's last count of them, so they are left as read, unverified "
            "(they delete nothing, and d23/logs' slices_verified check warns): rows that moved "
            "into them land with the month's next read",
        )
    return recount


def _wait_until_ended(slices: Sequence[Window]) -> None:
    """Wait until ``slices`` have surely ended on the API's clock too (CLOCK_SLACK after their
    end on ours): at most that long, once per slice a read runs across the end of."""
    left = max(s.until for s in slices) + CLOCK_SLACK - datetime.now(UTC)
    if left > timedelta(0):
        time.sleep(left.total_seconds())


@dataclass(frozen=True)
class _Deletions:
    """What a read proved gone and what it could not prove, for its snapshot."""

    candidates: int
    absent: set[str]
    stale_rejects: list[StaleReject]
    unproven: dict[str, str]
    weighed_until: datetime | None


def _weigh_deletions(
    client: ExportsClient,
    warehouse: WarehouseBackend,
    store: SnapshotStore,
    writer: SnapshotWriter,
    month: Window,
    partition: str,
) -> _Deletions:
    """The rows the warehouse holds for the landed slices that the read did not return, and
    which of them it proves gone (see :func:`read_month`)."""
    if not warehouse.exists():  # nothing merged yet, so nothing to miss; made by the merge
        return _Deletions(0, set(), [], {}, None)
    landed = writer.slices
    row_files = [rows_path(writer.directory, s.window) for s in landed]
    reject_files = [rejects_path(writer.directory, s.window) for s in landed]
    anonymous = 0
    with warehouse.connect(read_only=True) as con:
        # First: a read merged between the two is then not missed (see
        # Snapshot.weighed_until), only weighed twice.
        weighed_until = last_merged_read(con, partition)
        candidates = deletion_candidates(
            con,
            row_files,
            reject_files,
            partition=partition,
            verified=[(s.window.since, s.window.until) for s in landed if s.verified],
        )
        if candidates:
            anonymous = anonymous_rejects(con, reject_files)
    lookups = client.confirm_absent(candidates)
    absent = lookups.gone
    stale_rejects: list[StaleReject] = []
    unproven = dict.fromkeys(lookups.not_proven, _INSTANT_NOT_PROVEN) | dict.fromkeys(
        lookups.beside_anonymous, _INSTANT_SERVED_ANONYMOUS
    )
    try:
        if absent and anonymous:
            raise _Unprovable(
                f"the read served {anonymous} bad rows without a usable public_id, and any "
                "of them may be one of those rows, moved and broken (see d23.rejected_rows)"
            )
        if absent:
            absent = _not_moved(client, month, absent, partition)
        if absent:
            absent, stale_rejects, elsewhere = _not_rejected_elsewhere(
                client, warehouse, store, absent, partition
            )
            unproven.update(elsewhere)
    except _Unprovable as exc:
        unproven.update(dict.fromkeys(absent, str(exc)))
        absent = set()
    for reason, rows in Counter(unproven.values()).items():
        log.warning(
            "%s: %d rows look deleted, but %s: this read marks none of them deleted; they "
            "stay live, and counted, until a read proves them gone",
            partition,
            rows,
            reason,
        )
    return _Deletions(len(candidates), absent, stale_rejects, unproven, weighed_until)


_INSTANT_NOT_PROVEN = (
    "the read again of their own instant was not proven complete (it served fewer rows than "
    "the instant's exact count after it)"
)
_INSTANT_SERVED_ANONYMOUS = (
    "the read again of their own instant served a bad row without a usable public_id, and any "
    "of them may be that row, broken (see d23.rejected_rows)"
)


def _deleted_since(
    warehouse: WarehouseBackend, store: SnapshotStore, started_at: datetime, partition: str
) -> bool:
    """Whether a read proved rows gone since ``started_at``: merged, or landed by another
    month's read whose merge is still to come (it marks them deleted after this read resumes)."""
    with warehouse.connect(read_only=True) as con:
        last = last_deletion(con)
    if last is not None and last >= started_at:
        return True
    try:
        return store.proved_gone_since(started_at, excluding=partition)
    except UnreadableSnapshot:
        return True  # it may have; reading every slice again is always safe


def _not_moved(client: ExportsClient, month: Window, absent: set[str], partition: str) -> set[str]:
    """Of the rows proven gone from their instants, those a second read of the month does not
    find: a row may have moved into a slice read earlier, or behind a slice's cursor, while
    another left that slice, so its count did not change. Read as the first read was, at the
    same concurrency; one slice of it not proven complete leaves nothing provably gone.
    """
    found = client.find_served(month, absent)
    if found is None:
        raise _Unprovable(
            "the second read of the month, which looks for rows that moved within it while it "
            "was read, was not proven complete"
        )
    if found:
        log.warning(
            "%s: %d of %d rows gone from their instants were found in the month again (moved "
            "while it was read): not deleted",
            partition,
            len(found),
            len(absent),
        )
    return absent - found


def _not_rejected_elsewhere(
    client: ExportsClient,
    warehouse: WarehouseBackend,
    store: SnapshotStore,
    absent: set[str],
    partition: str,
) -> tuple[set[str], list[StaleReject], dict[str, str]]:
    """Of the rows proven gone, those no other month still serves as a reject (moved there
    and broken on the way), the other months' rejects of them found gone (stale: that month
    was last read before the row went), and those whose other month could not be read again
    completely (unproven, with why). The rejects are those stored and those of other months'
    snapshots landed but not merged yet (a read whose merge waits saw them too). Each such
    reject's whole month is read again: its last read may be older than the row's deletion, and
    a broken row may have moved within that month since."""
    with warehouse.connect(read_only=True) as con:
        elsewhere = set(rejects_elsewhere(con, partition, absent))
    try:
        elsewhere |= set(store.landed_rejects(absent, excluding=partition))
    except UnreadableSnapshot as exc:
        raise _Unprovable(
            f"another month's landed snapshot cannot be read ({exc}) and may hold them as bad rows"
        ) from None
    by_month: dict[str, set[str]] = defaultdict(set)
    for reject in elsewhere:
        by_month[reject.partition].add(reject.public_id)
    spared: set[str] = set()
    unproven: dict[str, str] = {}
    for other, ids in sorted(by_month.items()):
        found = client.find_served(Window(*month_window(other)), ids)
        if found is None:
            why = (
                f"{other[:7]} held them as bad rows, and its read again to see whether it still "
                "serves them was not proven complete"
            )
            unproven.update(dict.fromkeys(ids, why))
        else:
            spared |= found
    if spared:
        log.warning(
            "%s: %d rows gone from this month are still served by another month as bad rows "
            "(moved there and broken on the way, see d23.rejected_rows): not deleted",
            partition,
            len(spared),
        )
    kept = spared | set(unproven)
    stale = [r for r in elsewhere if r.public_id not in kept]
    stale.sort(key=lambda r: (r.public_id, r.partition, r.rejected_at))
    return absent - kept, stale, unproven


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
                f"{partition[:7]}: {done}/{total} slices read ({event.slice} "
                f"{'verified' if event.proof.verified else 'NOT verified'}); "
                f"{stats['rows']} rows, {stats['pages']} pages, "
                f"{sum(stats['retries'].values())} retries so far; "
                f"about {per_slice * (total - done):.0f} s left"
            )
