"""Raw monthly snapshots on disk: one Parquet file per slice, plus a manifest.

Layout under ``$D23_DATA_DIR/raw/d23/<partition>/``::

    CURRENT                     id of the last complete snapshot (replaced atomically)
    <snapshot id>/manifest.json which slices are finished, with their counts and proof
    <snapshot id>/<slice>.parquet / <slice>.rejects.parquet
    <snapshot id>/absent.parquet public_ids a proven-complete read no longer returns

A slice counts as finished only once the manifest, rewritten atomically after each slice, lists
it (its rows file is renamed into place just before), so a run that dies keeps every finished
slice and the next run of the month resumes from there. Once complete, ``CURRENT`` moves to the
new snapshot and older ones are removed: re-materializing a month replaces its snapshot. One run
at a time may write a month (``.reading.lock``), so two runs never share an unfinished snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from filelock import FileLock, Timeout

from d23_pipeline.client import SliceDone, SliceEvent, SlicePage, SliceRestart, Window
from d23_pipeline.client.completeness import LeftAsRead, SliceProof
from d23_pipeline.pandas_probes import pandas_probes_refused
from d23_pipeline.schema import RejectedRow
from d23_pipeline.settings import RESUME_MAX_AGE, SettingsError

# pyarrow is imported where a file of rows, rejects or ids is written or read: a month with none
# is landed and merged without it (d23_pipeline/schema_arrow.py).
if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger("d23_pipeline.landing")

# Only the vocabulary columns repeat; dictionary-encoding the unique ids and timestamps doubled
# the cost of writing a slice and made the file larger.
_DICTIONARY_COLUMNS = ["communication_type", "interaction_source", "outcome_option"]
# Row groups of this size keep a slice's buffer small while DuckDB still reads fast. Every open
# slice (one per client worker: D23_MAX_CONCURRENCY + 1) buffers up to this many rows, so the
# landing step's memory is bounded whatever the month's size; at 64,000 a 5M-row month's day
# slices filled their buffers and a 1M-row month's (32,000 rows a day) did not, so the peak still
# grew with the month.
_ROW_GROUP_ROWS = 16_384
# The empty file of each kind (rows, rejects, absent, unproven), as pyarrow writes it: copied
# for a slice or read without any, so such a month never loads pyarrow. Tested against the
# schemas in d23_pipeline_tests/test_empty_month.py, which says how to write them again.
EMPTY_FILES = Path(__file__).with_name("empty_files")


@dataclass(frozen=True)
class StaleReject:
    """Another month's stored reject of a row: its id, month, slice and the read that served it."""

    public_id: str
    partition: str
    slice: Window
    rejected_at: datetime

    def to_manifest(self) -> dict[str, str]:
        return {
            "public_id": self.public_id,
            "partition": self.partition,
            "since": self.slice.since.isoformat(),
            "until": self.slice.until.isoformat(),
            "rejected_at": self.rejected_at.isoformat(),
        }

    @classmethod
    def from_manifest(cls, entry: dict[str, str]) -> StaleReject:
        window = Window(
            datetime.fromisoformat(entry["since"]), datetime.fromisoformat(entry["until"])
        )
        return cls(
            entry["public_id"],
            entry["partition"],
            window,
            datetime.fromisoformat(entry["rejected_at"]),
        )


@dataclass(frozen=True)
class UnprovenDeletions:
    """How many rows a read found gone from their instants but could not prove gone from the
    month for one ``reason``, and a few of their ids: they stay live until a read proves it."""

    rows: int
    reason: str
    examples: list[str]


class SourceMismatchError(SettingsError):
    """The data folder holds another API host's or lender's data than the run reads."""


def _source(api_host: str, lender_public_id: str) -> dict[str, str]:
    # One lender's id in any form uuid.UUID reads (braces, upper case) is one lender.
    return {"api_host": api_host, "lender_public_id": str(uuid.UUID(lender_public_id))}


class SnapshotBusyError(RuntimeError):
    """Another run holds the month's snapshot folder."""


@dataclass(frozen=True)
class SliceRecord:
    """One finished slice as the manifest holds it: its counts and whether its read is proven
    complete (see :mod:`d23_pipeline.client.completeness`)."""

    window: Window
    rows: int
    rejects: int
    pages: int
    served: int
    total_before: int | None
    total_after: int | None
    verified: bool
    reads: int
    left_as_read: LeftAsRead | None = None

    @property
    def proof(self) -> SliceProof:
        """The slice's proof as the client judged it, for its reason."""
        return SliceProof(
            self.served,
            self.total_before,
            self.total_after,
            self.verified,
            self.reads,
            left_as_read=self.left_as_read,
        )

    @classmethod
    def from_manifest(cls, key: str, entry: dict[str, Any]) -> SliceRecord:
        # Manifests written before slices were counted carry no proof: such a read is unverified.
        served = entry.get("served", entry["rows"] + entry["rejects"])
        return cls(
            Window.from_key(key),
            rows=entry["rows"],
            rejects=entry["rejects"],
            pages=entry["pages"],
            served=served,
            total_before=entry.get("total_before"),
            total_after=entry.get("total_after"),
            verified=entry.get("verified", False),
            reads=entry.get("reads", 1),
            # Before there were two reasons, only a moved count was recorded, as a flag.
            left_as_read=entry.get("left_as_read")
            or ("moved" if entry.get("moved_after_read") else None),
        )

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rejects": self.rejects,
            "pages": self.pages,
            "served": self.served,
            "total_before": self.total_before,
            "total_after": self.total_after,
            "verified": self.verified,
            "reads": self.reads,
            "left_as_read": self.left_as_read,
            # What code from before left_as_read reads: such a slice is then read again on
            # resume, and proves nothing, rather than resumed as refuted.
            "moved_after_read": self.left_as_read is not None,
        }


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot of one month, ready to merge."""

    partition: str
    directory: Path
    slices: list[SliceRecord]
    rows: int
    rejects: int
    completed_at: datetime
    read_stats: dict[str, Any]
    # Other months' rejects of rows this read proved gone that it found gone there too.
    stale_rejects: list[StaleReject] = field(default_factory=list)
    # The deletions this read could not prove, one entry per reason (ids in unproven_file).
    unproven: list[UnprovenDeletions] = field(default_factory=list)
    # When its first slice was read (a resumed read: the interrupted one's); every manifest
    # records it. None (a snapshot built in memory, as tests do): taken as completed_at.
    started_at: datetime | None = None
    # Rows its read proved gone (in absent_file); None: landed before the count was recorded.
    absent_rows: int | None = None
    # The last merged read of the month when this read took its deletion candidates (datetime
    # .min: none yet): rows seen by a read merged after it were not weighed by this one. None:
    # landed before this was recorded.
    weighed_until: datetime | None = None

    @property
    def row_files(self) -> list[Path]:
        return [rows_path(self.directory, s.window) for s in self.slices]

    @property
    def reject_files(self) -> list[Path]:
        return [rejects_path(self.directory, s.window) for s in self.slices]

    @property
    def absent_file(self) -> Path:
        """Rows this read proved gone from the source; the only rows a merge may mark deleted."""
        return self.directory / "absent.parquet"

    @property
    def unproven_file(self) -> Path:
        """Rows this read found gone but could not prove gone, with why: never marked deleted."""
        return self.directory / "unproven.parquet"

    @property
    def unproven_rows(self) -> int:
        return sum(u.rows for u in self.unproven)

    @property
    def unverified(self) -> list[SliceRecord]:
        """Slices whose read is not proven complete: they may add and update, never delete."""
        return [s for s in self.slices if not s.verified]

    @property
    def refuted(self) -> list[SliceRecord]:
        """Unverified slices whose read its own counts did not prove: the API ended a walk early
        or could not count. Not those the read's last count of the month left as read
        (:meth:`SnapshotWriter.left_as_read`), as rows still coming into days already read
        do, or that count's timeouts: they served their counts, and the month's next read
        lands what moved."""
        return [s for s in self.unverified if s.left_as_read is None]

    def rejects_by_reason(self, examples: int = 3) -> list[dict[str, Any]]:
        """Per reason, how many rows the read quarantined and the first ``examples`` ids."""
        import pyarrow.parquet as pq

        rows: Counter[str] = Counter()
        ids: dict[str, list[str]] = {}
        for s in self.slices:
            if not s.rejects:
                continue
            path = rejects_path(self.directory, s.window)
            # read_table asks pyarrow's pandas probe, which a read resumed whole has not settled
            with pandas_probes_refused():
                rejects = pq.read_table(path, columns=["reason", "public_id"]).to_pydict()
            for reason, public_id in zip(rejects["reason"], rejects["public_id"], strict=True):
                rows[reason] += 1
                some = ids.setdefault(reason, [])
                if public_id and len(some) < examples:
                    some.append(public_id)
        return [
            {"reason": reason, "rows": n, "examples": ", ".join(ids[reason]) or "(no public_id)"}
            for reason, n in rows.most_common()
        ]

    def preview(self, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` rows of the snapshot, in slice order."""
        with_rows = [s for s in self.slices if s.rows]
        if not with_rows:  # an empty month's slices: nothing for pyarrow to read
            return []
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        for s in with_rows:
            if len(rows) >= limit:
                break
            # One small batch, not the slice: a 5M-row month's slice file is ~160,000 rows.
            with pq.ParquetFile(rows_path(self.directory, s.window)) as file:
                first = next(file.iter_batches(batch_size=limit - len(rows)), None)
            rows += [] if first is None else first.to_pylist()
        return rows


def rows_path(directory: Path, window: Window) -> Path:
    """The valid rows of one finished slice."""
    return directory / f"{window.key}.parquet"


def rejects_path(directory: Path, window: Window) -> Path:
    """The quarantined rows of one finished slice."""
    return directory / f"{window.key}.rejects.parquet"


def _closed_when_read(entries: dict[str, Any], started_at: datetime) -> dict[str, Any]:
    """The finished slices whose window had ended when the interrupted read began. One still
    open then (the month's last day, read before midnight) is read again: reused, it would make
    a read completed after the month ended look like one that saw all of the month."""
    return {
        key: entry for key, entry in entries.items() if Window.from_key(key).until <= started_at
    }


def _intact_slices(directory: Path, entries: dict[str, Any]) -> dict[str, Any]:
    """The manifest's finished slices whose two files are readable Parquet holding the counts
    it recorded; any other (a disk full, a crash before the file reached the disk) is read again
    rather than failing every merge of the month."""
    intact = {}
    for key, entry in entries.items():
        window = Window.from_key(key)
        recorded = (entry["rows"], entry["rejects"])
        if recorded == (0, 0) and _empty_copies(directory, window):  # checked without pyarrow
            rows = rejects = 0
        else:
            rows, rejects = _counts_on_disk(directory, window)
        if (rows, rejects) == recorded:
            intact[key] = entry
        else:
            log.warning("slice %s of %s is damaged on disk; reading it again", key, directory)
    return intact


def _empty_copies(directory: Path, window: Window) -> bool:
    """Whether a slice's two files are the empty files, as copied for a slice without rows."""
    return all(
        path.is_file() and path.read_bytes() == _empty_file(kind)
        for kind, path in [
            ("rows", rows_path(directory, window)),
            ("rejects", rejects_path(directory, window)),
        ]
    )


@cache
def _empty_file(kind: str) -> bytes:
    """The bytes of the empty file of ``kind``, read once: a resume compares every empty slice's."""
    return (EMPTY_FILES / f"{kind}.parquet").read_bytes()


def _counts_on_disk(directory: Path, window: Window) -> tuple[int, int]:
    """The rows and rejects a slice's files hold; -1, -1 if either is missing or damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return (
            pq.read_metadata(rows_path(directory, window)).num_rows,
            pq.read_metadata(rejects_path(directory, window)).num_rows,
        )
    except (OSError, pa.ArrowInvalid):
        return -1, -1


_NO_MERGED_READ = datetime.min.replace(tzinfo=UTC)


def _write_parquet_atomically(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _copy_empty_atomically(kind: str, path: Path) -> None:
    """The empty file of ``kind`` (see ``EMPTY_FILES``) at ``path``."""
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(EMPTY_FILES / f"{kind}.parquet", tmp)
    os.replace(tmp, path)


def _write_ids_atomically(kind: str, columns: dict[str, list[str]], directory: Path) -> None:
    """``columns``, ``public_id`` first, as the snapshot's ``kind`` file: "absent" (the ids its
    read proved gone) or "unproven" (those it could not prove, with why)."""
    path = directory / f"{kind}.parquet"
    if not columns["public_id"]:
        _copy_empty_atomically(kind, path)
        return
    import pyarrow as pa

    from d23_pipeline.schema_arrow import ABSENT_SCHEMA, UNPROVEN_SCHEMA

    schema = ABSENT_SCHEMA if kind == "absent" else UNPROVEN_SCHEMA
    _write_parquet_atomically(pa.table(columns, schema), path)


# How long a page size learned from a gateway's 504s starts the month's later reads.
PAGE_LIMIT_KEPT = timedelta(days=7)


def _expired(learned: tuple[int, datetime]) -> bool:
    return datetime.now(UTC) - learned[1] > PAGE_LIMIT_KEPT


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as file:
        file.write(json.dumps(payload, indent=1, sort_keys=True, default=str))
        file.flush()
        # On disk before it replaces the old one: after a power loss, the old or the new.
        os.fsync(file.fileno())
    os.replace(tmp, path)


@dataclass
class _OpenSlice:
    writer: pq.ParquetWriter
    tmp_path: Path
    buffer: list[pa.RecordBatch] = field(default_factory=list)
    buffered: int = 0
    rejects: list[RejectedRow] = field(default_factory=list)

    def flush(self) -> None:
        if self.buffer:
            import pyarrow as pa

            from d23_pipeline.schema_arrow import ARROW_SCHEMA

            self.writer.write_table(pa.Table.from_batches(self.buffer, ARROW_SCHEMA))
            self.buffer, self.buffered = [], 0


class SnapshotWriter:
    """Writes one month's snapshot slice by slice; knows which slices an earlier run finished."""

    def __init__(
        self, directory: Path, partition: str, manifest: dict[str, Any], lock: FileLock
    ) -> None:
        self.directory = directory
        self.partition = partition
        self._manifest = manifest
        self._lock = lock
        self._open: dict[Window, _OpenSlice] = {}
        self._wrote_pages = False  # a page came: Arrow ran, and may have memory to hand back

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """Drop unfinished slices if the block failed, and let other runs write the month."""
        if exc_type is not None:
            self.abandon()
        self._lock.release()

    @property
    def finished(self) -> set[Window]:
        """The slices an earlier run of this snapshot finished."""
        return {Window.from_key(key) for key in self._manifest["slices"]}

    @property
    def started_at(self) -> datetime:
        """When the read of this snapshot's first slice began."""
        return datetime.fromisoformat(self._manifest["started_at"])

    def start_over(self) -> None:
        """Read every slice again, as of now: an earlier run's finished slices are not reused
        (their files are replaced as the slices are read again)."""
        self._manifest["slices"] = {}
        self._manifest["started_at"] = datetime.now(UTC).isoformat()
        _write_json_atomically(self.directory / "manifest.json", self._manifest)

    @property
    def slices(self) -> list[SliceRecord]:
        """The finished slices, in time order."""
        entries = self._manifest["slices"]
        return [SliceRecord.from_manifest(key, entries[key]) for key in sorted(entries)]

    def write_page(self, page: SlicePage) -> None:
        self._wrote_pages = True
        state = self._open.get(page.slice)
        if state is None:
            import pyarrow.parquet as pq

            from d23_pipeline.schema_arrow import ARROW_SCHEMA

            tmp = self.directory / f"{page.slice.key}.parquet.partial"
            writer = pq.ParquetWriter(tmp, ARROW_SCHEMA, use_dictionary=_DICTIONARY_COLUMNS)
            state = _OpenSlice(writer, tmp)
            self._open[page.slice] = state
        if page.batch.num_rows:
            state.buffer.append(page.batch)
            state.buffered += page.batch.num_rows
            if state.buffered >= _ROW_GROUP_ROWS:
                state.flush()
        state.rejects.extend(page.rejects)

    def restart_slice(self, restart: SliceRestart) -> None:
        """Forget what was written of the slice so far: it is being read again."""
        state = self._open.pop(restart.slice, None)
        if state is not None:
            state.writer.close()
            state.tmp_path.unlink(missing_ok=True)

    def finish_slice(self, done: SliceDone) -> None:
        """Make the slice's files final and record it in the manifest."""
        state = self._open.pop(done.slice, None)
        rows_file = rows_path(self.directory, done.slice)
        rejects_file = rejects_path(self.directory, done.slice)
        if state is None:  # no page served a row or reject: its files are the empty ones
            _copy_empty_atomically("rejects", rejects_file)
            _copy_empty_atomically("rows", rows_file)
        else:
            state.flush()
            state.writer.close()
            _write_parquet_atomically(_rejects_table(done.slice, state.rejects), rejects_file)
            os.replace(state.tmp_path, rows_file)
        proof = done.proof
        record = SliceRecord(
            done.slice,
            done.rows,
            done.rejects,
            done.pages,
            proof.served,
            proof.total_before,
            proof.total_after,
            proof.verified,
            proof.reads,
        )
        self._manifest["slices"][done.slice.key] = record.manifest_entry()
        _write_json_atomically(self.directory / "manifest.json", self._manifest)

    def left_as_read(self, windows: Collection[Window], why: LeftAsRead) -> None:
        """Record ``windows`` as not proven complete, for ``why``: their counts moved after
        their last read, or the API gave none exactly. Their rows still add and update; none of
        them is weighed for deletion."""
        if not windows:  # asked after every count of the month, most often with none
            return
        entries = self._manifest["slices"]
        for window in windows:
            record = SliceRecord.from_manifest(window.key, entries[window.key])
            entries[window.key] = replace(record, verified=False, left_as_read=why).manifest_entry()
        _write_json_atomically(self.directory / "manifest.json", self._manifest)

    def land(self, events: Iterable[SliceEvent]) -> None:
        """Write every page and finished slice of ``events``. On any error the unfinished slices
        are dropped (finished ones stay, for a resume) and the error is raised again."""
        try:
            for event in events:
                if isinstance(event, SliceDone):
                    self.finish_slice(event)
                elif isinstance(event, SliceRestart):
                    self.restart_slice(event)
                else:
                    self.write_page(event)
        except BaseException:
            self.abandon()
            raise
        # Hand what the month's pages freed back to the OS (malloc_trim for the system allocator,
        # see d23_pipeline/__init__.py) before DuckDB's deletion check and merge run in this
        # process: a 1M-row re-read's landing step peaked 17 MB lower than with it done after.
        if self._wrote_pages:
            import pyarrow as pa

            pa.default_memory_pool().release_unused()

    def abandon(self) -> None:
        """Close unfinished slices' writers; their partial files are ignored on resume."""
        for state in self._open.values():
            state.writer.close()
            state.tmp_path.unlink(missing_ok=True)
        self._open.clear()

    def complete(
        self,
        read_stats: dict[str, Any],
        absent: Iterable[str] = (),
        stale_rejects: Sequence[StaleReject] = (),
        unproven: Mapping[str, str] | None = None,
        weighed_until: datetime | None = None,
        completed_at: datetime | None = None,
    ) -> Snapshot:
        """Mark the snapshot complete, with the public_ids its read proved ``absent`` from the
        source, the other months' rejects of them it found stale and the rows it found gone but
        could not prove (``unproven``: public_id -> why), and the month's last merged read when
        it took its deletion candidates (``weighed_until``; None: none), and make it the month's
        current one. ``completed_at``: when the read counts as finished (None: now)."""
        missing = set(self._manifest["slice_keys"]) - set(self._manifest["slices"])
        if missing:
            raise RuntimeError(
                f"snapshot of {self.partition} is missing {len(missing)} slice(s), "
                f"e.g. {min(missing)}; refusing to mark it complete"
            )
        absent_ids = sorted(set(absent))
        _write_ids_atomically("absent", {"public_id": absent_ids}, self.directory)
        # Checked when the snapshot is loaded: without its absent file a merge would prove
        # nothing gone, the rows this read proved gone left live in silence.
        self._manifest["absent_rows"] = len(absent_ids)
        self._manifest["weighed_until"] = (weighed_until or _NO_MERGED_READ).isoformat()
        self._manifest["complete"] = True
        self._manifest["completed_at"] = (completed_at or datetime.now(UTC)).isoformat()
        self._manifest["read_stats"] = read_stats
        self._manifest["stale_rejects"] = [r.to_manifest() for r in stale_rejects]
        unproven = unproven or {}
        ids = sorted(unproven)
        reasons = [unproven[i] for i in ids]
        _write_ids_atomically("unproven", {"public_id": ids, "reason": reasons}, self.directory)
        by_reason: dict[str, list[str]] = {}
        for public_id in ids:
            by_reason.setdefault(unproven[public_id], []).append(public_id)
        self._manifest["unproven_deletions"] = [
            {"rows": len(group), "reason": reason, "examples": group[:5]}
            for reason, group in sorted(by_reason.items())
        ]
        _write_json_atomically(self.directory / "manifest.json", self._manifest)
        pointer = self.directory.parent / "CURRENT"
        _write_json_atomically(pointer, {"snapshot": self.directory.name})
        for other in self.directory.parent.iterdir():
            if other.is_dir() and other != self.directory:
                shutil.rmtree(other, ignore_errors=True)
        return _load_snapshot(self.partition, self.directory)


def _rejects_table(window: Window, rejects: Sequence[RejectedRow]) -> pa.Table:
    import pyarrow as pa

    from d23_pipeline.schema_arrow import REJECT_SCHEMA

    return pa.Table.from_pylist(
        [
            {
                "slice_since": window.since,
                "slice_until": window.until,
                "public_id": r.public_id,
                "reason": r.reason,
                "allowlisted_values": json.dumps(
                    r.values, sort_keys=True, default=str, allow_nan=False
                ),
            }
            for r in rejects
        ],
        REJECT_SCHEMA,
    )


def _load_snapshot(partition: str, directory: Path) -> Snapshot:
    manifest = json.loads((directory / "manifest.json").read_text())
    entries = manifest["slices"]
    slices = [SliceRecord.from_manifest(key, entries[key]) for key in sorted(entries)]
    absent_rows = manifest.get("absent_rows")
    if absent_rows:  # a read that proved none gone: its merge reads no absent file
        _check_absent_file(directory / "absent.parquet", absent_rows)
    return Snapshot(
        partition=partition,
        directory=directory,
        slices=slices,
        rows=sum(s.rows for s in slices),
        rejects=sum(s.rejects for s in slices),
        completed_at=datetime.fromisoformat(manifest["completed_at"]),
        read_stats=manifest.get("read_stats", {}),
        stale_rejects=[StaleReject.from_manifest(e) for e in manifest.get("stale_rejects", [])],
        unproven=[UnprovenDeletions(**u) for u in manifest.get("unproven_deletions") or []],
        started_at=datetime.fromisoformat(manifest["started_at"]),
        absent_rows=absent_rows,
        weighed_until=(
            datetime.fromisoformat(manifest["weighed_until"])
            if "weighed_until" in manifest
            else None
        ),
    )


def _check_absent_file(path: Path, rows: int) -> None:
    """Raise ``ValueError`` unless ``path`` holds the ``rows`` its read proved gone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        found = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(
            f"{path} (the {rows:,} rows its read proved gone) is missing or damaged "
            f"({type(exc).__name__}); read the month again"
        ) from exc
    if found != rows:
        raise ValueError(
            f"{path} holds {found:,} rows, not the {rows:,} its read proved gone; "
            "read the month again"
        )


class UnreadableSnapshot(RuntimeError):
    """A month's last complete snapshot is missing or damaged on disk."""


# The monthly partitions' keys, which name the months' folders.
_PARTITION_KEY = re.compile(r"\d{4}-\d{2}-01")

T = TypeVar("T")


def _proved_gone_since(snapshot: Snapshot, since: datetime) -> bool:
    if snapshot.completed_at < since:
        return False
    if snapshot.absent_rows is not None:
        return snapshot.absent_rows > 0
    # Landed before the count was recorded; before reads were proven, with no absent file: it
    # proved nothing gone.
    import pyarrow.parquet as pq

    path = snapshot.absent_file
    return path.is_file() and pq.read_metadata(path).num_rows > 0


def unwritable_raw_folder(folder: Path, exc: OSError) -> SettingsError:
    """The error of a raw snapshots' folder this user cannot make or write: no retry mends it."""
    return SettingsError(
        f"cannot make the raw snapshots' folder {folder} ({exc.strerror}): set D23_DATA_DIR "
        "(or landing_zone's raw_dir) to a folder this user can write"
    )


class SnapshotStore:
    """Raw D23 snapshots of every month under one root folder."""

    def __init__(self, root: Path, resume_max_age: timedelta = RESUME_MAX_AGE) -> None:
        self.root = Path(root)
        self.resume_max_age = resume_max_age

    def _month_dir(self, partition: str) -> Path:
        return self.root / partition

    def begin(
        self,
        partition: str,
        slices: Sequence[Window],
        run_id: str,
        source: tuple[str, str] | None = None,
    ) -> SnapshotWriter:
        """Resume the month's unfinished snapshot if a recent one read the same slices from the
        same ``source`` (API host, lender id), else start a new one. Use the writer as a context
        manager: it holds the month until the block ends.
        """
        month_dir = self._month_dir(partition)
        try:
            month_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable_raw_folder(month_dir, exc) from None
        lock = FileLock(str(month_dir / ".reading.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise SnapshotBusyError(
                f"another run is reading {partition} right now; this run stops rather than share "
                "its unfinished snapshot (run it again once that run has finished)"
            ) from None
        slice_keys = [w.key for w in slices]
        # A killed first read's slices are another source's if the settings changed since (the
        # folder's source.json is written only once a read completes): never resumed.
        read_from = None if source is None else _source(*source)
        unfinished = self._resumable(month_dir, slice_keys, read_from)
        if unfinished is not None:
            directory, manifest = unfinished
            manifest["run_ids"].append(run_id)
            manifest["slices"] = _closed_when_read(
                _intact_slices(directory, manifest["slices"]),
                datetime.fromisoformat(manifest["started_at"]),
            )
            # Not proven complete after its read (SnapshotWriter.left_as_read): read again.
            manifest["slices"] = {
                key: entry
                for key, entry in manifest["slices"].items()
                if SliceRecord.from_manifest(key, entry).left_as_read is None
            }
        else:
            directory = month_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            directory.mkdir()
            manifest = {
                "partition": partition,
                "slice_keys": slice_keys,
                "started_at": datetime.now(UTC).isoformat(),
                "run_ids": [run_id],
                "complete": False,
                "source": read_from,
                "slices": {},
            }
        _write_json_atomically(directory / "manifest.json", manifest)
        return SnapshotWriter(directory, partition, manifest, lock)

    def _resumable(
        self, month_dir: Path, slice_keys: list[str], source: dict[str, str] | None
    ) -> tuple[Path, dict[str, Any]] | None:
        # Slices older than resume_max_age would mix stale rows into a fresh read.
        newest: tuple[datetime, Path, dict[str, Any]] | None = None
        for directory in month_dir.iterdir():
            manifest_path = directory / "manifest.json"
            if not manifest_path.is_file():
                continue
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:  # damaged on disk: that read cannot be resumed
                log.warning("%s is damaged; not resuming from it", manifest_path)
                continue
            started = datetime.fromisoformat(manifest["started_at"])
            if (
                manifest["complete"]
                or manifest["slice_keys"] != slice_keys
                or manifest.get("source") != source
                or datetime.now(UTC) - started > self.resume_max_age
            ):
                continue
            if newest is None or started > newest[0]:
                newest = (started, directory, manifest)
        return None if newest is None else (newest[1], newest[2])

    def max_window(self, partition: str) -> timedelta | None:
        """The window width to start the month's next read at: twice the widest one the gateway
        answered last time, so a gateway that got faster is found again within two 504s."""
        path = self._month_dir(partition) / "max_window.json"
        if not path.is_file():
            return None
        return 2 * timedelta(milliseconds=json.loads(path.read_text())["milliseconds"])

    def check_source(self, api_host: str, lender_public_id: str) -> None:
        """Refuse, with :class:`SourceMismatchError`, a read of another API host or lender than
        the one these snapshots (and the embedded warehouse beside them) mirror: the demo's or
        staging's rows are not production's, and a read of another source would find every one
        of them gone. The source is recorded by :meth:`record_source` after a first read."""
        held = self._recorded_source()
        claimed = _source(api_host, lender_public_id)
        if held is not None and held != claimed:
            self._refuse(held, f"lender {claimed['lender_public_id']} from {api_host}")

    def check_host(self, api_host: str) -> None:
        """:meth:`check_source` for the API host alone, before a login names the lender: run
        by ``make run``, so that a data folder of another source stops it before the UI."""
        held = self._recorded_source()
        if held is not None and held.get("api_host") != api_host:
            self._refuse(held, f"from {api_host}")

    def _refuse(self, held: dict[str, str], reads: str) -> NoReturn:
        raise SourceMismatchError(
            f"D23_DATA_DIR holds lender {held.get('lender_public_id')}'s data read from "
            f"{held.get('api_host')}; this run reads {reads}. One warehouse mirrors one source "
            "(another's rows would all look deleted): give this source its own D23_DATA_DIR "
            f"(and DAGSTER_HOME), or point D23_API_URL and the credentials back at "
            f"{held.get('api_host')} ({self.root / 'source.json'})"
        )

    def record_source(self, api_host: str, lender_public_id: str) -> None:
        """Record the source of a read the API answered (a mistyped lender id or host, refused
        by the API, must not become the folder's source)."""
        if self._recorded_source() is None:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_json_atomically(self.root / "source.json", _source(api_host, lender_public_id))

    def _recorded_source(self) -> dict[str, str] | None:
        path = self.root / "source.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def remember_max_window(self, partition: str, width: timedelta | None) -> None:
        """Keep the widest window a read of the month learned the gateway answers."""
        path = self._month_dir(partition) / "max_window.json"
        if width is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(path, {"milliseconds": width // timedelta(milliseconds=1)})

    def learned_page_limit(self, partition: str) -> int | None:
        """The page size to start the month's next read at: the largest the gateway answered
        last time it refused larger ones, for :data:`PAGE_LIMIT_KEPT` after it was learned. A
        read at it sees no 504 that would say the gateway takes larger pages again, so it is
        forgotten then, and learned again (12-38 504s in the benchmarks) if the gateway still
        refuses them."""
        kept = self._learned_page_limit(partition)
        return None if kept is None or _expired(kept) else kept[0]

    def remember_page_limit(self, partition: str, rows: int | None) -> None:
        """Keep the page size a read of the month learned (see :meth:`learned_page_limit`),
        with when it was learned: a read that started at it and learned nothing new keeps the
        first date."""
        path = self._page_limit_path(partition)
        if rows is None:
            path.unlink(missing_ok=True)
            return
        kept = self._learned_page_limit(partition)
        if kept is not None and kept[0] == rows and not _expired(kept):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        learned = {"rows": rows, "learned_at": datetime.now(UTC).isoformat()}
        _write_json_atomically(path, learned)

    def _page_limit_path(self, partition: str) -> Path:
        return self._month_dir(partition) / "page_limit.json"

    def _learned_page_limit(self, partition: str) -> tuple[int, datetime] | None:
        path = self._page_limit_path(partition)
        if not path.is_file():
            return None
        learned = json.loads(path.read_text())
        return int(learned["rows"]), datetime.fromisoformat(learned["learned_at"])

    def landed_rejects(self, ids: Collection[str], *, excluding: str) -> list[StaleReject]:
        """The rejects of ``ids`` in every other month's last complete snapshot, merged or not:
        a read whose merge is still to come served them all the same. Raises
        :class:`UnreadableSnapshot` if a month's snapshot cannot be read: it may hold them."""
        import pyarrow as pa

        wanted = pa.array(sorted(ids), pa.string())
        found: list[StaleReject] = []
        for partition in self._other_months(excluding):
            found.extend(self._in_current(partition, lambda s: self._rejects_in(s, wanted)))
        return found

    def proved_gone_since(self, since: datetime, *, excluding: str) -> bool:
        """Whether another month's last complete snapshot, completed at ``since`` or later,
        proved rows gone, merged or not: a read whose merge is still to come proved them all the
        same. Raises :class:`UnreadableSnapshot` if a month's snapshot cannot be read."""
        return any(
            self._in_current(partition, lambda s: s is not None and _proved_gone_since(s, since))
            for partition in self._other_months(excluding)
        )

    def _other_months(self, excluding: str) -> list[str]:
        months = sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
        return [m for m in months if m != excluding and _PARTITION_KEY.fullmatch(m)]

    def _in_current(self, partition: str, read: Callable[[Snapshot | None], T]) -> T:
        failure: Exception | None = None
        # Twice: the month's next read may just have completed, replacing CURRENT and removing
        # the snapshot it replaced.
        for _ in range(2):
            try:
                return read(self.current(partition))
            except (OSError, ValueError, KeyError) as exc:
                failure = exc
        raise UnreadableSnapshot(f"{partition}: {type(failure).__name__}: {failure}")

    @staticmethod
    def _rejects_in(snapshot: Snapshot | None, wanted: pa.Array) -> list[StaleReject]:
        if snapshot is None:
            return []
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        found: list[StaleReject] = []
        for path in snapshot.reject_files:
            table = pq.read_table(path, columns=["slice_since", "slice_until", "public_id"])
            table = table.filter(pc.is_in(table["public_id"], value_set=wanted))
            found.extend(
                StaleReject(
                    r["public_id"],
                    snapshot.partition,
                    Window(r["slice_since"], r["slice_until"]),
                    snapshot.completed_at,
                )
                for r in table.to_pylist()
            )
        return found

    def current(self, partition: str) -> Snapshot | None:
        """The month's last complete snapshot, if any."""
        pointer = self._month_dir(partition) / "CURRENT"
        if not pointer.is_file():
            return None
        name = json.loads(pointer.read_text())["snapshot"]
        return _load_snapshot(partition, self._month_dir(partition) / name)
