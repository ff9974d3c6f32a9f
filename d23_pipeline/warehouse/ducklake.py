"""The server-backed warehouse: DuckLake, Parquet files under a data path with the catalog in
PostgreSQL, queried by DuckDB with the same SQL as the embedded file (``sql.py``).

Every process opens its own in-memory DuckDB and attaches the lake; there is no file lock.
Readers see the last committed snapshot while writers write. Writers are optimistic: two
transactions that both change one table (a month's MERGE rewrites rows of ``d23.logs``) cannot
both commit, so the one that commits second fails with a conflict and :func:`retry_on_conflict`
runs it again from the start, on the other's result.

Extensions come from the ``duckdb-extension-*`` packages pinned with DuckDB and are loaded from
their files; DuckDB's automatic download and loading of extensions is switched off.
"""

from __future__ import annotations

import importlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from d23_pipeline.warehouse import ducklake_sql, sql

T = TypeVar("T")

# The catalog's driver first: attaching a DuckLake on PostgreSQL needs postgres_scanner loaded.
EXTENSIONS = ("postgres_scanner", "ducklake")
CONFLICT_ATTEMPTS = 30
_CONFLICT_DELAY_S = (0.05, 3.0)  # first and longest wait between attempts
_PASSWORDS = re.compile(r"(password\s*=\s*)('[^']*'|\S+)|(://[^:/@\s]*:)([^@\s]*)(@)", re.I)


class WarehouseConnectionError(RuntimeError):
    """The DuckLake catalog could not be opened; the message never holds the DSN's password."""


def extension_path(name: str) -> Path:
    """The extension file that ``duckdb-extension-<name>`` ships for the installed DuckDB."""
    package = importlib.import_module(f"duckdb_extension_{name}")
    folder = Path(package.__file__ or "").parent / "extensions" / f"v{duckdb.__version__}"
    path = folder / f"{name}.duckdb_extension"
    if not path.is_file():
        raise WarehouseConnectionError(
            f"no {name} extension for DuckDB {duckdb.__version__} at {path}: install the pinned "
            "set (pip install -c constraints.txt .)"
        )
    return path


def redact(message: str, dsn: str) -> str:
    """``message`` without the connection string or any password in it."""
    message = message.replace(dsn, "<D23_WAREHOUSE_DSN>") if dsn else message
    return _PASSWORDS.sub(
        lambda m: f"{m[1]}***" if m[1] else f"{m[3]}***{m[5]}",
        message,
    )


def is_conflict(exc: BaseException) -> bool:
    """A commit that lost against another writer's: the transaction may simply run again."""
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()


def retry_on_conflict(
    work: Callable[[], T],
    *,
    attempts: int = CONFLICT_ATTEMPTS,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``work`` (one whole transaction) again while it fails on a write conflict.

    Harmless on the embedded DuckDB file, where writers queue on a lock and never conflict.
    """
    first, longest = _CONFLICT_DELAY_S
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except duckdb.Error as exc:
            if not is_conflict(exc) or attempt == attempts:
                raise
            delay = random.uniform(first, min(longest, first * 2**attempt))
            if on_retry is not None:
                on_retry(
                    f"another writer committed first (attempt {attempt} of {attempts}); "
                    f"running the transaction again in {delay:.2f} s"
                )
            time.sleep(delay)
    raise AssertionError("unreachable")


# One in-memory DuckDB per process and lake, shared by every session on it: loading the two
# extensions (DuckDB checks their signatures) and attaching the catalog cost about a second, so
# they happen once. Each session is a cursor of its own: own transaction, own temp tables.
_LAKES: dict[tuple[str, str], duckdb.DuckDBPyConnection] = {}
_LAKES_LOCK = threading.Lock()


class DuckLakeWarehouse:
    """DuckLake with its catalog in the PostgreSQL database ``dsn`` and data under ``data_path``."""

    def __init__(self, dsn: str, data_path: str) -> None:
        self._dsn = dsn
        self.data_path = data_path

    def __repr__(self) -> str:  # the DSN holds a password
        return f"DuckLakeWarehouse(dsn=***, data_path={self.data_path!r})"

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A session on the lake; closed whatever happens. Readers and writers alike see the
        last committed snapshot; ``read_only`` is accepted for the embedded file's sake."""
        con = self._lake().cursor()
        try:
            con.execute(ducklake_sql.USE_CATALOG)
            con.execute(sql.SESSION_SETUP)
            yield con
        finally:
            con.close()

    def _lake(self) -> duckdb.DuckDBPyConnection:
        """This process's DuckDB with the lake attached and schema ``d23`` created if missing."""
        key = (self._dsn, self.data_path)
        with _LAKES_LOCK:
            lake = _LAKES.get(key)
            if lake is not None:
                return lake
            lake = duckdb.connect(
                config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
            )
            try:
                for name in EXTENSIONS:
                    lake.execute(ducklake_sql.load_extension(extension_path(name)))
                self._attach(lake)
                lake.execute(ducklake_sql.USE_CATALOG)
                retry_on_conflict(lambda: lake.execute(sql.CREATE_SCHEMA))
            except BaseException:
                lake.close()
                raise
            _LAKES[key] = lake
            return lake

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        statement = ducklake_sql.attach(self._dsn, self.data_path)
        try:
            retry_on_conflict(lambda: con.execute(statement))
        except duckdb.Error as exc:
            raise WarehouseConnectionError(
                f"cannot open the DuckLake catalog named by D23_WAREHOUSE_DSN: "
                f"{redact(str(exc), self._dsn)}"
            ) from None
