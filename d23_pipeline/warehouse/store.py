"""The DuckDB warehouse: one cross-process lock around the file, and the month merge.

DuckDB lets one process at a time open a database file for writing, and a reader cannot open it
while a writer holds it. Every connection therefore goes through one file lock, held for as
short a time as the work needs; downloads never hold it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
from filelock import FileLock, Timeout

from d23_pipeline.client import Window
from d23_pipeline.landing.snapshot import Snapshot, StaleReject
from d23_pipeline.pandas_probes import pandas_probes_refused
from d23_pipeline.settings import (
    DEFAULT_MAX_DELETION_SHARE,
    DEFAULT_MEMORY_LIMIT,
    LOCK_TIMEOUT_S,
    MEMORY_SIZE,
    SettingsError,
    refused_folder,
)
from d23_pipeline.warehouse import sql

# DuckDB's memory beyond DEFAULT_MEMORY_LIMIT (what it does not track: per-thread hash tables,
# buffers) grows with its threads. Merging a 5M-row month in process peaked at 374 MB with two
# threads and 273 MB with one, and used less CPU (22 s against 35 s; the wall time is longer).
# See benchmarks/README.md.
DUCKDB_THREADS = 1
# About as many snapshot rows as the merge joins with d23.logs at once (see sql.SNAPSHOT_IDS):
# a 1M-row month fits DEFAULT_MEMORY_LIMIT whole; a 5M-row one did not, read again or read for
# the first time into a warehouse holding other months. A DuckLake's parts are smaller
# (ducklake.LAKE_MERGE_PART_ROWS).
MERGE_PART_ROWS = 1_000_000
# Rows per range of ids that d23.logs' uniqueness check (sql.DUPLICATE_PUBLIC_IDS), a read's
# deletion candidates (sql.DELETION_CANDIDATES) and the merge's duplicate test
# (sql.SNAPSHOT_HAS_DUPLICATES) hash at once: DuckDB's GROUP BY public_id over 8M rows ran out of
# DEFAULT_MEMORY_LIMIT (6M fitted), in process.
LOGS_PART_ROWS = 2_000_000
_PARAM = re.compile(r"\$([a-z_]+)")
log = logging.getLogger("d23_pipeline.warehouse")
HELD_REASON = (
    "proven gone, but more than the allowed share of the month's live rows "
    "(D23_MAX_DELETION_SHARE): held until d23/logs runs with confirm_deletions"
)
# Run first inside a merge's transaction, on its session: one that raises stops the merge with
# nothing changed (landing/home.py's still_the_home).
MergeGuard = Callable[[duckdb.DuckDBPyConnection], None]
NOT_WEIGHED_REASON = (
    "not weighed: another read of the month merged them after this read looked for rows gone "
    "(two runs of the month at once); the month's next read settles them"
)

_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _doubled(memory_limit: str) -> str | None:
    """Twice a DuckDB size ("48MB" -> "96MB"); None for anything else."""
    size = MEMORY_SIZE.fullmatch(memory_limit.strip())
    if size is None:
        return None
    twice = float(size[1]) * 2
    return f"{int(twice) if twice.is_integer() else twice}{size[2]}{size[3]}B"


def execute(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Run one statement, passing only the named parameters it uses."""
    wanted = set(_PARAM.findall(statement))
    with pandas_probes_refused():
        return con.execute(statement, {k: v for k, v in (params or {}).items() if k in wanted})


def fetch_row(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> tuple[Any, ...]:
    """The row of a statement that always returns exactly one (a count, an aggregate)."""
    row = execute(con, statement, params).fetchone()
    if row is None:  # a broken statement, not a state of the data
        raise RuntimeError(f"no row from {statement.split()[:4]}")
    return row


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All of the block's statements or none of them."""
    con.execute(sql.BEGIN)
    try:
        yield
    except BaseException:
        con.execute(sql.ROLLBACK)
        raise
    con.execute(sql.COMMIT)


class WarehouseBusyError(RuntimeError):
    """Another process holds the warehouse longer than a connection may wait for it."""


class WarehouseSchemaError(RuntimeError):
    """A ``d23`` table has other columns than this version makes: another version made it."""


@functools.cache
def _columns_made() -> dict[str, list[tuple[str, str]]]:
    con = duckdb.connect()
    try:
        con.execute(sql.CREATE_SCHEMA)
        return _d23_columns(con)
    finally:
        con.close()


def _d23_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in execute(con, sql.D23_COLUMNS, {}).fetchall():
        tables.setdefault(table, []).append((column, data_type))
    return tables


def check_schema(con: duckdb.DuckDBPyConnection, warehouse: str) -> None:
    """Refuse a warehouse whose ``d23`` tables another version of this product made (CREATE
    TABLE IF NOT EXISTS keeps a table of another shape), naming the table and its columns,
    before any statement reads or writes them by position or name."""
    found = _d23_columns(con)
    for table, made in _columns_made().items():
        held = found.get(table)
        if held is not None and held != made:
            shown = ", ".join(f"{name} {data_type}" for name, data_type in held)
            expected = ", ".join(f"{name} {data_type}" for name, data_type in made)
            raise WarehouseSchemaError(
                f"d23.{table} in {warehouse} has columns ({shown}); this version of d23-pipeline "
                f"makes it with ({expected}). Another version made this warehouse, and nothing "
                "was changed in it. Run the version that made it, or move the warehouse aside "
                "and backfill the months to build it again from the source."
            )


def _held_by_another_process(exc: duckdb.IOException) -> bool:
    # DuckDB's own file lock: "Could not set lock on file ...: Conflicting lock is held in ..."
    return "conflicting lock" in str(exc).lower()


class Warehouse:
    """The DuckDB file under ``D23_DATA_DIR`` and the lock that serialises access to it."""

    merge_part_rows = MERGE_PART_ROWS

    def __init__(
        self,
        path: Path,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.memory_limit = memory_limit
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)
        # Passed as connection config, not as SET statements: DuckDB's SET takes no prepared
        # parameters, and the config dict needs no quoting of the path. No limit: DuckDB's own.
        self._config: dict[str, str | bool | int | float | list[str]] = {
            "temp_directory": str(self.temp_directory),
            "threads": DUCKDB_THREADS,
        }
        if memory_limit is not None:
            self._config["memory_limit"] = memory_limit

    def with_memory_limit(self, memory_limit: str | None) -> Warehouse:
        """The same file and lock wait, with another DuckDB memory limit (None: DuckDB's own)."""
        return Warehouse(self.path, self.lock_timeout_s, memory_limit=memory_limit)

    @property
    def temp_directory(self) -> Path:
        """Where DuckDB spills what does not fit its memory limit: beside the file, under
        ``D23_DATA_DIR`` (DuckDB deletes its files there when the connection closes)."""
        return self.path.with_name(self.path.name + ".tmp")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file under the lock; the connection is closed whatever happens."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s  # one wait in all, for both locks
        with self._our_lock(read_only):
            if read_only and not self.path.exists():
                self._create()
            con = self._open(read_only, deadline)
            try:
                con.execute(sql.SESSION_SETUP)
                # Before CREATE_SCHEMA: another version's warehouse is left as it was.
                check_schema(con, str(self.path))
                if not read_only:
                    con.execute(sql.CREATE_SCHEMA)
                yield con
            finally:
                con.close()

    @contextmanager
    def _our_lock(self, read_only: bool) -> Iterator[None]:
        try:
            self._acquire_our_lock()
        except OSError as exc:
            # A reader that cannot open the lock file for writing (an analyst's read-only share
            # or mount) reads without it: DuckDB's own lock still keeps it off a file being
            # written, and _open waits for that.
            if not read_only or exc.errno not in _NOT_WRITABLE:
                raise
            locked = False
        else:
            locked = True
        try:
            yield
        finally:
            if locked:
                self._lock.release()

    def _acquire_our_lock(self) -> None:
        """Take the pipeline's own lock, saying so when another run's step holds it."""
        try:
            self._lock.acquire(timeout=0)
            return
        except Timeout:
            # INFO: in a backfill, months' runs take turns at the warehouse as a matter of course.
            log.info(
                "%s is held by another process of the pipeline (a step of another run, reading "
                "or writing, or a notebook's load_outcome_tables); waiting up to %g s for it to "
                "finish",
                self.path,
                self.lock_timeout_s,
            )
        try:
            self._lock.acquire()
        except Timeout:
            raise WarehouseBusyError(
                f"{self.path} is being written by a pipeline run (it held {self.path.name}.lock "
                f"for more than {self.lock_timeout_s:g} s); try again when the run's warehouse "
                "steps have finished"
            ) from None

    def _open(self, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        """Connect, waiting until ``deadline`` for a process that holds DuckDB's own lock without
        taking ours: a notebook's connection, even a read-only one, blocks writers."""
        pause = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=self._config)
            except duckdb.IOException as exc:
                if not _held_by_another_process(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise WarehouseBusyError(
                        f"{self.path} is held by another process for more than "
                        f"{self.lock_timeout_s:g} s ({exc}); close its connection, e.g. a "
                        "notebook's (query through load_outcome_tables, which closes at once)"
                    ) from None
                if pause == 0.05:
                    log.warning(
                        "%s is held by another process (%s); waiting up to %g s for it to close",
                        self.path,
                        exc,
                        self.lock_timeout_s,
                    )
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def check_usable(self) -> None:
        """Raise SettingsError if this user cannot write the file (or make it), before a run
        downloads a month only to fail at its merge; a retry would fail the same way."""
        lock = self.path.with_name(self.path.name + ".lock")
        # The folder too: DuckDB makes its write-ahead log and spill folder beside the file.
        if (refused := refused_folder(self.path.parent)) is not None:
            raise SettingsError(
                f"this user cannot make or write {self.path.parent} ({refused.strerror}): set "
                "D23_DATA_DIR to a folder this user can write"
            )
        for target in (self.path, lock):
            if target.exists() and not os.access(target, os.R_OK | os.W_OK):
                raise SettingsError(
                    f"this user cannot write {target}: make it writable, or set D23_DATA_DIR to "
                    "a folder this user can write"
                )

    def exists(self) -> bool:
        """Whether the file was made."""
        return self.path.exists()

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` lies in the file's folder (the default: both in D23_DATA_DIR)."""
        return folder.resolve().is_relative_to(self.path.resolve().parent)

    def _create(self) -> None:
        con = duckdb.connect(str(self.path), config=self._config)
        try:
            con.execute(sql.CREATE_SCHEMA)
        finally:
            con.close()


class WarehouseBackend(Protocol):
    """Where connections on which ``d23.*`` resolve come from: the file, or a DuckLake."""

    def connect(
        self, read_only: bool = False
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def check_usable(self) -> None:
        """Raise if a run could not write here, naming what to fix, before it reads the API."""

    def exists(self) -> bool:
        """Whether the warehouse was made: reading one that was not would make it."""

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` lies in the warehouse's own folder, so a copy of one copies both."""

    @property
    def memory_limit(self) -> str | None:
        """DuckDB's memory limit of its sessions (None: DuckDB's own)."""

    def with_memory_limit(self, memory_limit: str | None) -> WarehouseBackend:
        """The same warehouse, its sessions within another memory limit."""

    @property
    def merge_part_rows(self) -> int:
        """About how many of a month's rows each statement of its merge writes."""


@dataclass(frozen=True)
class MergeSummary:
    snapshot_rows: int
    inserted: int
    updated: int
    restored: int
    moved_in: int
    marked_deleted: int
    rejects: int
    # Versions of an id served again with its updated_at and other values: rejects of the merge.
    conflicting_versions: int
    # Versions served with other values under an updated_at older than the stored one's, by a
    # read begun after every read that served the row (see sql._OLDER_VERSION): not taken.
    older_versions: int
    older_version_examples: list[str]
    # The month's live rows before the merge: what a deletion share is of.
    live_rows: int
    deletions_proven: int
    deletions_held: bool
    # Live rows another read of the month merged after this one took its deletion candidates:
    # listed in d23.deletions_pending, neither proven gone nor seen (see NOT_WEIGHED_REASON).
    not_weighed: int = 0

    @property
    def deletion_share(self) -> float:
        """Proven deletions as a share of the month's live rows before the merge."""
        return self.deletions_proven / self.live_rows if self.live_rows else 0.0


def merge_snapshot(
    con: duckdb.DuckDBPyConnection,
    snapshot: Snapshot,
    *,
    max_deletion_share: float = DEFAULT_MAX_DELETION_SHARE,
    confirm_deletions: bool = False,
    part_rows: int = MERGE_PART_ROWS,
    guard: MergeGuard | None = None,
) -> MergeSummary:
    """Upsert one month's complete snapshot into ``d23.logs`` in a single transaction.

    Latest ``updated_at`` wins; rows of this month that the snapshot's read proved gone get
    ``_deleted_at``, unless they exceed ``max_deletion_share`` of the month's live rows (before
    the merge) and ``confirm_deletions`` is false (then none is marked and ``deletions_held``
    says so). The month's slice proofs and pending deletions (held, not proven by the read, or
    not weighed by it: merged by another read of the month meanwhile) are replaced, and its
    rejected rows but for those of slices the read could not prove complete that it did not
    serve again. On any error nothing changes, ``guard``'s first. The snapshot is joined with
    ``d23.logs`` by ranges of ``public_id``, in parts of about ``part_rows`` rows.
    """
    partition, read_at = snapshot.partition, snapshot.completed_at
    params = {
        "files": [str(f) for f in snapshot.row_files],
        "partition": partition,
        "read_at": read_at,
    }
    slices = snapshot.slices
    windows = {"since": [s.window.since for s in slices], "until": [s.window.until for s in slices]}
    with transaction(con):
        if guard is not None:
            guard(con)
        has_duplicates = snapshot_has_duplicates(con, params)
        stage = sql.STAGE_SNAPSHOT if has_duplicates else sql.STAGE_UNIQUE_SNAPSHOT
        execute(con, stage, params)
        # A read that proved none gone (absent_rows 0) has nothing to read there; one landed
        # before reads were proven has no file.
        if snapshot.absent_rows != 0 and snapshot.absent_file.is_file():
            execute(con, sql.STAGE_ABSENT, {"files": [str(snapshot.absent_file)]})
        else:
            execute(con, sql.STAGE_NO_ABSENT)
        stale = snapshot.stale_rejects
        execute(
            con,
            sql.STAGE_STALE_REJECTS,
            {
                "ids": [r.public_id for r in stale],
                "partitions": [r.partition for r in stale],
                "rejected_at": [r.rejected_at for r in stale],
            },
        )
        snapshot_rows, parts = _id_ranges(con, part_rows)
        started_at = snapshot.started_at or read_at
        preview = {**params, "started_at": started_at}
        inserted, updated, restored, moved_in, older = (
            sum(counts)
            for counts in zip(
                *(fetch_row(con, sql.MERGE_PREVIEW, {**preview, **part}) for part in parts),
                strict=True,
            )
        )
        older_examples = sorted(
            found
            for part in (parts if older else [])
            for (found,) in execute(con, sql.OLDER_VERSION_EXAMPLES, {**preview, **part}).fetchall()
        )[:5]
        execute(con, sql.STAGE_REJECTS, {"files": [str(f) for f in snapshot.reject_files]})
        conflicting = 0
        if has_duplicates:
            windowed = {**params, **windows}
            conflicting = fetch_row(con, sql.QUARANTINE_CONFLICTING_VERSIONS, windowed)[0]
        identified_rejects = fetch_row(con, sql.ANY_IDENTIFIED_REJECT)[0]
        due = {**params, "mix_tables": list(sql.MIX_TABLES)}
        other_months_due = 0
        if moved_in or restored:
            other_months_due += sum(
                fetch_row(con, sql.MIX_REBUILDS_DUE_FROM_ROWS, {**due, **part})[0] for part in parts
            )
        if identified_rejects:
            other_months_due += fetch_row(con, sql.MIX_REBUILDS_DUE_FROM_REJECTS, due)[0]
        if other_months_due:
            execute(con, sql.MIX_REBUILDS_DUE_FOR_PARTITION, due)
        # Before the merge: a share of the rows the month had, not of those the read also adds
        # (3 gone of 100, with 50 late rows, is not 2 %).
        live_rows = fetch_row(con, sql.LOGS_PARTITION_ROW_COUNT, params)[0]
        # Every row new to d23.logs: an insert does all the MERGE would, at half its cost.
        if inserted == snapshot_rows:
            execute(con, sql.INSERT_NEW_SNAPSHOT, params)
        else:
            for part in parts:
                execute(con, sql.MERGE_SNAPSHOT, {**params, **part})
                with join_sides_as_written(con):
                    execute(con, sql.SEEN_AS_ROW, {**params, **part})
        # Most reads prove nothing gone; the two anti-joins over the month would still cost
        # ~20 % of a 1M-row month's merge (1.2 of 6.3 s) and build a hash table of its ids.
        proven = 0
        if fetch_row(con, sql.ANY_ABSENT)[0]:
            proven = fetch_row(con, sql.DELETIONS_PROVEN, params)[0]
        # The share itself, not share * live_rows: 0.29 * 100 is 28.999999999999996.
        held = not confirm_deletions and proven > 0 and proven / live_rows > max_deletion_share
        marked_deleted = fetch_row(con, sql.MARK_DELETED, params)[0] if proven and not held else 0
        if identified_rejects:
            restored += fetch_row(con, sql.RESTORE_REJECTED, params)[0]
            execute(con, sql.SEEN_AS_REJECT, params)
        # A read older than the month's last merged one (another host's, on DuckLake) still
        # adds and updates rows, but the month's rejects and slice proofs stay the newer read's.
        last_read = fetch_row(con, sql.MONTH_LAST_READ, params)[0]
        rejects = 0
        if conflicting:
            log.warning(
                "%s: %d rows were served again by this read with the same updated_at and other "
                "values; the version read last is kept, the others are rejects of this read",
                partition,
                conflicting,
            )
        if older:
            log.warning(
                "%s: %d rows were served with other values under an updated_at older than the "
                "stored version's (e.g. %s); the stored versions are kept (latest updated_at "
                "wins)",
                partition,
                older,
                ", ".join(older_examples),
            )
        stale_read = last_read is not None and last_read > read_at
        not_weighed = 0
        if stale_read:
            log.warning(
                "%s: this read (finished %s) is older than the one merged last (%s): its rows "
                "are merged; d23.rejected_rows and d23.slice_verification keep the newer read's",
                partition,
                read_at.isoformat(),
                last_read.isoformat(),
            )
        else:
            unverified = snapshot.unverified
            execute(
                con,
                sql.DELETE_REJECTS,
                {
                    "partition": partition,
                    "unverified_since": [s.window.since for s in unverified],
                    "unverified_until": [s.window.until for s in unverified],
                },
            )
            rejects = fetch_row(con, sql.INSERT_REJECTS, params)[0]
            execute(con, sql.DELETE_SLICE_VERIFICATION, params)
            execute(
                con,
                sql.INSERT_SLICE_VERIFICATION,
                {
                    **params,
                    **windows,
                    "served": [s.served for s in slices],
                    "total_before": [s.total_before for s in slices],
                    "total_after": [s.total_after for s in slices],
                    "verified": [s.verified for s in slices],
                    "reads": [s.reads for s in slices],
                },
            )
            execute(con, sql.DELETE_DELETIONS_PENDING, params)
            if held:
                execute(con, sql.INSERT_HELD_PENDING, {**params, "reason": HELD_REASON})
            if snapshot.unproven_rows:
                files = {"files": [str(snapshot.unproven_file)]}
                execute(con, sql.INSERT_UNPROVEN_PENDING, {**params, **files})
            # Only a read of this month merged since can have: another month's read also
            # marks rows of this one seen (served there as rejects, see sql.SEEN_AS_REJECT).
            weighed_until = snapshot.weighed_until
            if weighed_until is not None and last_read is not None and last_read > weighed_until:
                verified = [s.window for s in slices if s.verified]
                not_weighed = fetch_row(
                    con,
                    sql.INSERT_NOT_WEIGHED_PENDING,
                    {
                        **params,
                        "weighed_until": weighed_until,
                        "verified_since": [w.since for w in verified],
                        "verified_until": [w.until for w in verified],
                        "reason": NOT_WEIGHED_REASON,
                    },
                )[0]
            if not_weighed:
                log.warning(
                    "%s: %d rows were merged by another read of the month after this one "
                    "looked for rows gone: %s",
                    partition,
                    not_weighed,
                    NOT_WEIGHED_REASON,
                )
        # DuckLake: makes this merge conflict with any other one open at once (see sql.py).
        # Last, not first: with it ahead of the MERGE, a 1M-row month's merge on the DuckDB
        # file peaked at 413-414 MB in 2 of 3 runs, against 395-407 MB in 4 runs with it last.
        if fetch_row(con, sql.RECORD_MERGE, params)[0] < 1:
            raise RuntimeError(
                "d23.last_merge has lost its row: without it two DuckLake merges can both "
                "commit; insert one (see CREATE_SCHEMA in d23_pipeline/warehouse/sql.py)"
            )
    return MergeSummary(
        snapshot_rows=snapshot_rows,
        inserted=inserted,
        updated=updated,
        restored=restored,
        moved_in=moved_in,
        marked_deleted=marked_deleted,
        rejects=rejects,
        # A stale read's rejects are not the month's (the newer read's stay): none quarantined.
        conflicting_versions=0 if stale_read else conflicting,
        older_versions=older,
        older_version_examples=older_examples,
        live_rows=live_rows,
        deletions_proven=proven,
        deletions_held=held,
        not_weighed=not_weighed,
    )


def snapshot_has_duplicates(con: duckdb.DuckDBPyConnection, params: Mapping[str, Any]) -> bool:
    """Whether the read's row files (``params["files"]``) hold an id more than once; counted one
    range of ids of about ``LOGS_PART_ROWS`` rows at a time."""
    _, ranges = _id_ranges(con, LOGS_PART_ROWS, ids=sql.SNAPSHOT_FILE_IDS, params=params)
    return any(fetch_row(con, sql.SNAPSHOT_HAS_DUPLICATES, {**params, **p})[0] for p in ranges)


def _id_ranges(
    con: duckdb.DuckDBPyConnection,
    part_rows: int,
    *,
    ids: sql.IdSet = sql.SNAPSHOT_IDS,
    params: Mapping[str, Any] | None = None,
) -> tuple[int, list[dict[str, str | None]]]:
    """The rows of the staged snapshot (or of ``ids``, with ``params``), and bounds of public_id
    (``low`` <= id <= ``last``, id < ``high``) cutting them into ``rows / part_rows`` parts
    (rounded up, at least one) of about equal size."""
    rows, first, last = fetch_row(con, ids.span, params)
    parts = -(-rows // part_rows)
    bounds: list[str] = []
    if parts > 1:
        fractions = [i / parts for i in range(1, parts)]
        bounds = sorted(
            set(fetch_row(con, ids.cuts, {**(params or {}), "fractions": fractions})[0])
        )
    return rows, [
        {"low": low, "high": high, "last": last}
        for low, high in zip([first, *bounds], [*bounds, None], strict=True)
    ]


@contextmanager
def join_sides_as_written(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Statements run here build a hash join's table from the side the SQL puts second.

    For SEEN_AS_ROW: its filter on ``_last_seen_at`` has DuckDB guess that side of d23.logs
    small and build from it. On a DuckLake, whose UPDATE reads every column, that table took
    555 MB for a 2M-row month (92 MB from the snapshot's ids). Not for the MERGE, whose sides are
    the other way round: a 5M-row read again ran out of 48 MB there with it.

    Reset after the statements, not if they fail: the transaction has aborted, and DuckDB takes
    no SET in it (the error would hide theirs). Every session resets it (sql.SESSION_SETUP).
    """
    execute(con, sql.KEEP_JOIN_SIDES)
    yield
    execute(con, sql.RESET_JOIN_SIDES)


def merge_within_memory_limit(
    warehouse: WarehouseBackend,
    snapshot: Snapshot,
    *,
    max_deletion_share: float = DEFAULT_MAX_DELETION_SHARE,
    confirm_deletions: bool = False,
    guard: MergeGuard | None = None,
) -> MergeSummary:
    """:func:`merge_snapshot` on its own connection, within the warehouse's memory limit.

    Not all of a merge spills (see ``DEFAULT_MEMORY_LIMIT``): if DuckDB runs out of memory, the
    transaction has rolled back and the month is merged again within twice the limit, then
    without one (as before the limit existed), rather than failing the run.
    """

    def merge(within: WarehouseBackend) -> MergeSummary:
        with within.connect() as con:
            return merge_snapshot(
                con,
                snapshot,
                max_deletion_share=max_deletion_share,
                confirm_deletions=confirm_deletions,
                part_rows=within.merge_part_rows,
                guard=guard,
            )

    if warehouse.memory_limit is None:
        return merge(warehouse)
    bounded = [warehouse.memory_limit]
    if doubled := _doubled(warehouse.memory_limit):
        bounded.append(doubled)
    for limit, retry in zip(bounded, [*bounded[1:], None], strict=True):
        try:
            return merge(warehouse.with_memory_limit(limit))
        except duckdb.OutOfMemoryException as exc:
            log.warning(
                "merging %s within DuckDB's memory_limit %s ran out of memory (%s); merging it "
                "again %s",
                snapshot.partition,
                limit,
                str(exc).splitlines()[0],
                f"within {retry}" if retry else "without a limit",
            )
    return merge(warehouse.with_memory_limit(None))


def duplicate_public_ids(
    con: duckdb.DuckDBPyConnection, part_rows: int | None = None
) -> list[tuple[str, int]]:
    """Up to 20 public_ids ``d23.logs`` holds more than once, with their copies, most first;
    counted one range of ids of about ``part_rows`` (``LOGS_PART_ROWS``) rows at a time."""
    _, ranges = _id_ranges(con, part_rows or LOGS_PART_ROWS, ids=sql.LOGS_IDS)
    found = [
        (public_id, copies)
        for part in ranges
        for public_id, copies in execute(con, sql.DUPLICATE_PUBLIC_IDS, part).fetchall()
    ]
    return sorted(found, key=lambda duplicate: (-duplicate[1], duplicate[0]))[:20]


def deletion_candidates(
    con: duckdb.DuckDBPyConnection,
    snapshot_files: Sequence[Path],
    reject_files: Sequence[Path],
    *,
    partition: str,
    verified: Sequence[tuple[datetime, datetime]],
) -> list[tuple[str, datetime]]:
    """Live rows of the month inside a ``verified`` ``(since, until)`` window that a read's
    files do not hold: what that read must prove gone before any may be marked deleted."""
    if not verified or not snapshot_files:
        return []
    month = {"partition": partition}
    live_rows, parts = _id_ranges(con, LOGS_PART_ROWS, ids=sql.MONTH_LIVE_IDS, params=month)
    if not live_rows:
        return []
    params = {
        **month,
        "files": [str(f) for f in snapshot_files],
        "reject_files": [str(f) for f in reject_files],
        "verified_since": [since for since, _ in verified],
        "verified_until": [until for _, until in verified],
    }
    found = [
        (public_id, communicated_at)
        for part in parts
        for public_id, communicated_at in execute(
            con, sql.DELETION_CANDIDATES, {**params, **part}
        ).fetchall()
    ]
    return sorted(found, key=lambda candidate: (candidate[1], candidate[0]))


def last_merged_read(con: duckdb.DuckDBPyConnection, partition: str) -> datetime | None:
    """When the month's last merged read finished, if any has been merged."""
    last: datetime | None = fetch_row(con, sql.MONTH_LAST_READ, {"partition": partition})[0]
    return last


def last_deletion(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """When a read last marked a row of any month deleted, if ever."""
    last: datetime | None = fetch_row(con, sql.LAST_DELETION)[0]
    return last


def anonymous_rejects(con: duckdb.DuckDBPyConnection, reject_files: Sequence[Path]) -> int:
    """How many bad rows in ``reject_files`` came without a usable ``public_id``."""
    if not reject_files:
        return 0
    count: int = fetch_row(con, sql.ANONYMOUS_REJECTS, {"files": [str(f) for f in reject_files]})[0]
    return count


def rejects_elsewhere(
    con: duckdb.DuckDBPyConnection, partition: str, ids: Collection[str]
) -> list[StaleReject]:
    """The rejects of ``ids`` that months other than ``partition`` hold."""
    found = execute(con, sql.REJECTS_ELSEWHERE, {"partition": partition, "ids": sorted(ids)})
    return [
        StaleReject(public_id, other, Window(since, until), rejected_at)
        for public_id, other, since, until, rejected_at in found.fetchall()
    ]


def fetch_dicts(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows of a query as dicts keyed by column name."""
    cursor = execute(con, statement, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """``(name, DuckDB type)`` of each column of ``d23.<table>``, in order."""
    return execute(con, sql.TABLE_COLUMNS, {"table": table}).fetchall()
