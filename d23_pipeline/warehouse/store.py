"""The DuckDB warehouse: one cross-process lock around the file, and the month merge.

DuckDB lets one process at a time open a database file for writing, and a reader cannot open it
while a writer holds it. Every connection therefore goes through one file lock, held for as
short a time as the work needs; downloads never hold it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from filelock import FileLock

from d23_pipeline.warehouse import sql

# How long a connection waits for another process to finish with the file before failing.
LOCK_TIMEOUT_S = 900.0
_PARAM = re.compile(r"\$([a-z_]+)")


def execute(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Run one statement, passing only the named parameters it uses."""
    wanted = set(_PARAM.findall(statement))
    return con.execute(statement, {k: v for k, v in (params or {}).items() if k in wanted})


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


class Warehouse:
    """The DuckDB file under ``D23_DATA_DIR`` and the lock that serialises access to it."""

    def __init__(self, path: Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file under the lock; the connection is closed whatever happens."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if read_only and not self.path.exists():
                self._create()
            con = duckdb.connect(str(self.path), read_only=read_only)
            try:
                con.execute(sql.SESSION_SETUP)
                if not read_only:
                    con.execute(sql.CREATE_SCHEMA)
                yield con
            finally:
                con.close()

    def _create(self) -> None:
        con = duckdb.connect(str(self.path))
        try:
            con.execute(sql.CREATE_SCHEMA)
        finally:
            con.close()


@dataclass(frozen=True)
class MergeSummary:
    snapshot_rows: int
    inserted: int
    updated: int
    restored: int
    moved_in: int
    marked_deleted: int
    rejects: int


def merge_snapshot(
    con: duckdb.DuckDBPyConnection,
    *,
    partition: str,
    row_files: Sequence[Path],
    reject_files: Sequence[Path],
    read_at: datetime,
) -> MergeSummary:
    """Upsert one month's complete snapshot into ``d23.logs`` in a single transaction.

    Latest ``updated_at`` wins; rows of this month that the snapshot no longer holds get
    ``_deleted_at``; the month's rejected rows are replaced. On any error nothing changes.
    """
    params = {
        "files": [str(f) for f in row_files],
        "partition": partition,
        "read_at": read_at,
    }
    with transaction(con):
        has_duplicates = execute(con, sql.SNAPSHOT_HAS_DUPLICATES, params).fetchone()[0]
        stage = sql.STAGE_SNAPSHOT if has_duplicates else sql.STAGE_UNIQUE_SNAPSHOT
        execute(con, stage, params)
        execute(con, sql.STAGE_REJECTS, {"files": [str(f) for f in reject_files]})
        snapshot_rows = execute(con, sql.SNAPSHOT_ROWS).fetchone()[0]
        inserted, updated, restored, moved_in = execute(con, sql.MERGE_PREVIEW, params).fetchone()
        execute(con, sql.MERGE_SNAPSHOT, params)
        marked_deleted = execute(con, sql.MARK_DELETED, params).fetchone()[0]
        execute(con, sql.DELETE_REJECTS, params)
        rejects = execute(con, sql.INSERT_REJECTS, params).fetchone()[0]
    return MergeSummary(
        snapshot_rows=snapshot_rows,
        inserted=inserted,
        updated=updated,
        restored=restored,
        moved_in=moved_in,
        marked_deleted=marked_deleted,
        rejects=rejects,
    )


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
