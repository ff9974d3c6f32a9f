"""The server-backed warehouse: DuckLake, Parquet files under a data path with the catalog in
PostgreSQL, queried by DuckDB with the same SQL as the embedded file (``sql.py``).

Every process opens its own in-memory DuckDB and attaches the lake; there is no file lock.
Readers see the last committed snapshot while writers write. Writers take turns: a write session
holds the catalog's writer turn, a PostgreSQL advisory lock, so the writers of every process and
host queue for it as the embedded file's writers queue for its lock. Without turns, DuckLake's
optimistic writers would run a whole merge and lose it at commit to any writer that committed
meanwhile, so a long merge could lose to a stream of short ones until its retries ran out.

Turns are the rule; conflicts stay the safety net for a writer that takes none (an older
version of this pipeline, another tool): of two transactions open at once, the one that commits
second fails with a conflict when one of them deleted or updated rows of a table the other also
wrote to, and :func:`retry_on_conflict` runs it again from the start, on the other's result. Two
that only insert both commit; so that two months' first merges (which only insert) cannot both
store a row that moved between their reads, every merge also updates the one row of
``d23.last_merge`` (``sql.RECORD_MERGE``).

Extensions come from the ``duckdb-extension-*`` packages pinned with DuckDB and are loaded from
their files; DuckDB's automatic download and loading of extensions is switched off.

The catalog's password never reaches DuckDB in a connection string: DuckDB's postgres driver
quotes the string it connects with in its errors, on the ATTACH and on every later reconnect (the
catalog's PostgreSQL restarted, failed over or rotated its password), and such an error becomes a
step failure in Dagster's event log. The password is split off the DSN and handed over as a
temporary DuckDB secret; errors raised in a session are also passed through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from d23_pipeline.settings import DEFAULT_MEMORY_LIMIT, LOCK_TIMEOUT_S, ObjectStore, object_store
from d23_pipeline.warehouse import ducklake_sql, sql
from d23_pipeline.warehouse.store import (
    DUCKDB_THREADS,
    WarehouseBusyError,
    check_schema,
    execute,
    fetch_row,
)

log = logging.getLogger("d23_pipeline.warehouse")

T = TypeVar("T")

# The catalog's driver first: attaching a DuckLake on PostgreSQL needs postgres_scanner loaded.
EXTENSIONS = ("postgres_scanner", "ducklake")
# And for a data path on object storage: S3's protocol, and the AWS SDK's credential chain.
STORAGE_EXTENSIONS = ("httpfs", "aws")
CONFLICT_ATTEMPTS = 30
# How a lake writes, why: ducklake_sql.SET_TARGET_FILE_SIZE. Parts of 250,000 rows still ran a
# 5M-row month read again out of 48 MB; in parts of 100,000 it fits (benchmarks/README.md).
LAKE_MERGE_PART_ROWS = 100_000
LAKE_TARGET_FILE_SIZE = "1MB"
LAKE_ROW_GROUP_ROWS = 20_000
_CONFLICT_DELAY_S = (0.05, 3.0)  # first and longest wait between attempts
# libpq's port: a number, or a list of them for several hosts.
_PORTS = re.compile(r"[\d,]*")
_PASSWORDS = re.compile(r"(password\s*=\s*)('[^']*'|\S+)|(://[^:/@\s]*:)([^@\s]*)(@)", re.I)


NOT_A_DSN = (
    "D23_WAREHOUSE_DSN is not a PostgreSQL connection string libpq can read (not shown: it "
    "holds the password): key=value pairs (host=... port=5432 dbname=... user=... "
    "password=...) with options as libpq spells them (sslmode, not sslmod) and a value "
    "holding spaces, quotes or backslashes in single quotes, \\' and \\\\ escaped; or a "
    "postgresql:// URI whose user and password percent-encode every character but letters, "
    "digits and '-._~' (%40 for '@', %2F for '/', %25 for '%', %23 for '#')"
)


class WarehouseConnectionError(RuntimeError):
    """The DuckLake catalog could not be opened; the message never holds the DSN's password."""


class WarehouseSettingsError(WarehouseConnectionError):
    """The catalog refused what the settings name (a DSN libpq cannot read, a login, a database
    or data path other than the catalog's): unlike a server that is down, no retry mends it."""


# libpq's and DuckLake's words for a refusal of the settings, not of the network.
_REFUSED_SETTINGS = (
    "authentication failed",
    "no password supplied",
    "does not exist",
    "invalid connection option",
    "invalid integer value",
    "DATA_PATH parameter",
    "permission denied",
    "is not permitted to log in",
    "no pg_hba.conf entry",
    "invalid sslmode value",
    "Name or service not known",  # a host name that does not exist (a DNS outage retries)
)
# What to do about some of them, said after the catalog's words.
_WHAT_TO_DO = {
    "permission denied for schema": (
        "the DSN's user must be able to create DuckLake's tables in that database at the "
        "first connection: make it the database's owner, or grant it CREATE on schema public"
    ),
    "permission denied for database": (
        "grant the DSN's user CONNECT on that database (GRANT CONNECT ON DATABASE <database> "
        "TO <user>)"
    ),
    "DATA_PATH parameter": (
        "D23_DUCKLAKE_DATA_PATH must name the data path this catalog recorded at its first "
        "connection; to move the data, see the README (A warehouse several processes write at "
        "once)"
    ),
}
# DuckLake's advice for a data path that differs: an ATTACH option the pipeline does not set,
# which would point the catalog at files that are not its own.
_OVERRIDE_ADVICE = "You can override the DATA_PATH by setting OVERRIDE_DATA_PATH to True."
# What every catalog connection gets unless the DSN says otherwise. Without them libpq waits on
# a host that drops packets until TCP gives up: minutes to connect, and mid-merge the system's
# 2 h 11 min of keepalive, the pool slot held; with them about 15 s and two minutes.
CATALOG_LIBPQ_DEFAULTS = {
    "connect_timeout": "15",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def _connection_error(action: str, failure: str) -> WarehouseConnectionError:
    error = WarehouseSettingsError if _refused_settings(failure) else WarehouseConnectionError
    failure = failure.replace(_OVERRIDE_ADVICE, "").strip()
    advice = "".join(f"; {todo}" for words, todo in _WHAT_TO_DO.items() if words in failure)
    return error(f"cannot {action} named by D23_WAREHOUSE_DSN: {failure}{advice}")


# DuckDB's words when a session's new connection to the catalog fails.
_CONNECTING = "Unable to connect to Postgres"
# libpq's and DuckDB's words for a catalog that went away during a session.
_CATALOG_LOST = (
    'Failed to execute query "ROLLBACK"',  # a COMMIT whose connection was gone
    _CONNECTING,
    "server closed the connection",
    "could not receive data from server",
    "could not send data to server",
    "terminating connection",
    "no connection to the server",
    "SSL SYSCALL error",
)


def _lost_the_catalog(failure: str) -> bool:
    return any(words in failure for words in _CATALOG_LOST)


def _refused_settings(failure: str) -> bool:
    return any(words in failure for words in _REFUSED_SETTINGS)


def _lost_catalog_error(failure: str) -> WarehouseConnectionError:
    """What a step says when the catalog went away under it; ``failure`` already redacted."""
    first = next(iter(failure.strip().splitlines()), "")
    return WarehouseConnectionError(
        "lost the DuckLake catalog named by D23_WAREHOUSE_DSN during the step (it stopped, "
        f"restarted or went off the network: {first}). A transaction open then (a merge's "
        "too) commits whole or not at all, and the month's next merge is exact either way: the "
        "run is retried, and if the catalog stays away, launch it again once it is back"
    )


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


def split_password(dsn: str) -> tuple[str, str | None] | None:
    """``dsn`` (libpq ``key=value`` pairs or a ``postgresql://`` URI) as ``key=value`` pairs
    without its password, and the password; None if libpq cannot read it."""
    # Imported here: the embedded warehouse never needs libpq (4 MB more in every step).
    import psycopg2
    from psycopg2.extensions import make_dsn, parse_dsn

    try:
        params: dict[str, str] = parse_dsn(dsn)
    # libpq's message quotes the DSN around the fault, the password perhaps; the encoder's
    # (a byte that is not UTF-8, if the settings' check was bypassed) holds the whole DSN.
    except (psycopg2.ProgrammingError, UnicodeEncodeError):
        return None
    if "://" in dsn and _misread_uri(params):
        return None
    password = params.pop("password", None)
    if "service" not in params:  # a pg_service.conf service's own options stand
        for option, value in CATALOG_LIBPQ_DEFAULTS.items():
            params.setdefault(option, value)
    conninfo: str = make_dsn(**params)
    return conninfo, password


def _misread_uri(params: dict[str, str]) -> bool:
    """Whether libpq read part of a ``postgresql://`` URI's password as its host, port or
    database: one holding an unencoded '@' or '/' (libpq ends the user info at the first '@' and
    the host at the first '/'), whose pieces its errors would then quote. A database name that
    holds an '@' is refused too, encoded or not: libpq decodes it, and 'user:1234/x@host/db' puts
    a password's piece in the port and the rest in the database name."""
    return (
        "@" in params.get("host", "")
        or "@" in params.get("dbname", "")
        or not _PORTS.fullmatch(params.get("port", ""))
    )


def _database_of(conninfo: str) -> str:
    """The PostgreSQL database ``conninfo`` names, however it is spelled: the writers' turn is
    one advisory lock per database."""
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(conninfo)
    return "|".join(
        (
            params.get("host", ""),
            params.get("port", ""),
            params.get("dbname", params.get("user", "")),
        )
    )


def is_conflict(exc: BaseException) -> bool:
    """A commit that lost against another writer's: the transaction may simply run again."""
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()


def lost_catalog_creation(exc: BaseException) -> bool:
    """The first ATTACH of a new lake, run by several processes at once: DuckLake creates its
    catalog tables in each, and PostgreSQL refuses all but one (the others find them made)."""
    message = str(exc)
    return (
        isinstance(exc, duckdb.Error)
        and "Failed to initialize DuckLake" in message
        and ("already exists" in message or "duplicate key value" in message)
    )


def retry_on_conflict(
    work: Callable[[], T],
    *,
    attempts: int = CONFLICT_ATTEMPTS,
    on_retry: Callable[[str], None] | None = None,
    retryable: Callable[[BaseException], bool] = is_conflict,
) -> T:
    """Run ``work`` (one whole transaction) again while it fails on a write conflict (or
    another failure ``retryable`` says another writer caused).

    Harmless on the embedded DuckDB file, where writers queue on a lock and never conflict.
    """
    first, longest = _CONFLICT_DELAY_S
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except duckdb.Error as exc:
            if not retryable(exc) or attempt == attempts:
                raise
            delay = random.uniform(first, min(longest, first * 2**attempt))
            if on_retry is not None:
                on_retry(
                    f"another writer committed first (attempt {attempt} of {attempts}); "
                    f"running the transaction again in {delay:.2f} s"
                )
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Lake:
    """A process's DuckDB with the lake attached, and the memory limit DuckDB gave it: a session
    without a limit sets that one, since ``RESET memory_limit`` shows it again but leaves DuckDB's
    buffer pool within the last limit set (DuckDB 1.5.5: the out-of-memory ladder's last step
    merged within twice the limit, and a 5M-row month read again failed)."""

    instance: duckdb.DuckDBPyConnection
    own_memory_limit: str


# One in-memory DuckDB per process and lake, shared by every session on it: loading the two
# extensions (DuckDB checks their signatures) and attaching the catalog cost about a second, so
# they happen once. Each session is a cursor of its own: own transaction, own temp tables.
_LAKES: dict[tuple[str, str], _Lake] = {}
_LAKES_LOCK = threading.Lock()
# The catalog databases whose writer turn this thread holds: a write session nested in another
# shares its turn (a second PostgreSQL session would wait for it until its lock timeout).
_TURNS_HELD = threading.local()


def _interruptible(session: Any, query: Callable[[], object]) -> None:
    """Run ``query``, a blocking statement on ``session``, in a thread of its own: libpq's wait
    holds off Python's signal handlers, so Dagster's Terminate and Ctrl-C (SIGINT) would wait
    for the turn too. This thread takes the signal; the statement is cancelled, its exception
    raised here."""
    failed: list[BaseException] = []
    # Not Thread.join: a join the signal interrupts leaves is_alive() False (Python 3.11), and
    # the session, closed while its statement still waits, would wait with it.
    done = threading.Event()

    def run() -> None:
        try:
            query()
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="d23-writer-turn", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except BaseException:
        # Again until it ends: a cancel that reaches the server before the statement does
        # cancels nothing.
        while not done.is_set():
            session.cancel()
            done.wait(0.2)
        raise
    if failed:
        raise failed[0]


class DuckLakeWarehouse:
    """DuckLake with its catalog in the PostgreSQL database ``dsn`` and data under ``data_path``.

    Its sessions run within DuckDB's ``memory_limit`` on one thread, as the embedded file's do,
    spilling to ``temp_directory`` (DuckDB's default when None); on object storage, within
    DuckDB's own limit.
    """

    merge_part_rows = LAKE_MERGE_PART_ROWS

    def __init__(
        self,
        dsn: str,
        data_path: str,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
        temp_directory: Path | None = None,
    ) -> None:
        self._dsn = dsn
        self._split = split_password(dsn)
        self._database = _database_of(self._split[0]) if self._split else ""
        self.data_path = data_path
        self.lock_timeout_s = lock_timeout_s
        # DuckDB's httpfs reads a bucket's Parquet in blocks larger than the default limit (an
        # outcome step failed allocating 76.5 MiB within 48 MB).
        self.memory_limit = None if self._on_object_storage else memory_limit
        self.temp_directory = temp_directory

    def __repr__(self) -> str:  # the DSN holds a password
        return f"DuckLakeWarehouse(dsn=***, data_path={self.data_path!r})"

    def with_memory_limit(self, memory_limit: str | None) -> DuckLakeWarehouse:
        """The same lake, with another DuckDB memory limit (None: DuckDB's own)."""
        return DuckLakeWarehouse(
            self._dsn, self.data_path, self.lock_timeout_s, memory_limit, self.temp_directory
        )

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A session on the lake; closed whatever happens. Readers and writers alike see the
        last committed snapshot; a writer (not ``read_only``) waits for the writers' turn."""
        with contextlib.nullcontext() if read_only else self._writer_turn():
            lake = self._lake()
            con = lake.instance.cursor()
            try:
                limit = self.memory_limit or lake.own_memory_limit
                execute(con, ducklake_sql.SET_MEMORY_LIMIT, {"limit": limit})
                con.execute(ducklake_sql.USE_CATALOG)
                con.execute(sql.SESSION_SETUP)
                yield con
            except BaseException as exc:  # a DuckDB error, or one that holds one in its chain
                self._hide_secrets(exc)
                if isinstance(exc, duckdb.IOException | duckdb.TransactionException):
                    failure = str(exc)
                    # The catalog refused a new connection of this session (a changed password,
                    # a role no longer allowed in): a setting to fix, as at the first one.
                    if _CONNECTING in failure and _refused_settings(failure):
                        raise _connection_error("open the DuckLake catalog", failure) from exc
                    if _lost_the_catalog(failure):
                        raise _lost_catalog_error(failure) from exc
                raise
            finally:
                con.close()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Hold the catalog's writer turn, waiting up to ``lock_timeout_s`` for it."""
        held: set[str] = _TURNS_HELD.__dict__.setdefault("databases", set())
        if self._database in held:
            yield
            return
        import psycopg2  # as in split_password: only DuckLake needs libpq

        conninfo, password = self._checked_split()
        failure: str | None = None
        try:
            session = psycopg2.connect(conninfo, password=password)
        except psycopg2.Error as exc:
            failure = self._redact(str(exc)).strip()
        if failure is not None:  # raised here, not above: the new error would keep libpq's
            raise _connection_error(
                "take the writers' turn on the DuckLake catalog", failure
            ) from None
        try:
            session.autocommit = True
            self._wait_for_turn(session)
            held.add(self._database)
            try:
                yield
            finally:
                held.discard(self._database)
        finally:
            session.close()  # ends the PostgreSQL session, and the turn with it

    def _wait_for_turn(self, session: Any) -> None:
        import psycopg2

        try:
            self._take_turn(session)
        except psycopg2.OperationalError as exc:  # not LockNotAvailable: WarehouseBusyError
            if not _lost_the_catalog(str(exc)):
                raise
            raise _lost_catalog_error(self._redact(str(exc))) from None

    def _take_turn(self, session: Any) -> None:
        import psycopg2.errors

        key = {"key": ducklake_sql.WRITER_TURN_KEY}
        with session.cursor() as cursor:
            cursor.execute(ducklake_sql.NO_STATEMENT_TIMEOUT)
            if session.server_version >= 140000:
                cursor.execute(ducklake_sql.NO_IDLE_SESSION_TIMEOUT)
            cursor.execute(ducklake_sql.TURN_KEEPALIVES)
            if session.server_version >= 120000:
                cursor.execute(ducklake_sql.TURN_USER_TIMEOUT)
            cursor.execute(ducklake_sql.TRY_WRITER_TURN, key)
            if cursor.fetchone()[0]:
                return
            log.warning(
                "another writer of this DuckLake holds the writers' turn; waiting up to %g s",
                self.lock_timeout_s,
            )
            patience = f"{max(1, round(self.lock_timeout_s * 1000))}ms"
            cursor.execute(ducklake_sql.SET_TURN_PATIENCE, {"patience": patience})
            try:
                _interruptible(session, lambda: cursor.execute(ducklake_sql.WAIT_WRITER_TURN, key))
            except psycopg2.errors.LockNotAvailable:
                raise WarehouseBusyError(
                    f"another writer of the DuckLake held the writers' turn for more than "
                    f"{self.lock_timeout_s:g} s (a merge or rebuild of another run or host); "
                    "re-run when it is done"
                ) from None

    def _lake(self) -> _Lake:
        """This process's DuckDB with the lake attached and schema ``d23`` created if missing."""
        key = (self._dsn, self.data_path)
        with _LAKES_LOCK:
            opened = _LAKES.get(key)
            if opened is not None:
                return opened
            config: dict[str, str | bool | int | float | list[str]] = {
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                # Its memory, as the file's: what DuckDB does not track grows with its threads.
                "threads": DUCKDB_THREADS,
            }
            if self.temp_directory is not None:
                # DuckDB makes the folder itself, but not its parents (a new D23_DATA_DIR).
                self.temp_directory.parent.mkdir(parents=True, exist_ok=True)
                config["temp_directory"] = str(self.temp_directory)
            lake = duckdb.connect(config=config)
            try:
                own_memory_limit = str(fetch_row(lake, ducklake_sql.MEMORY_LIMIT)[0])
                store = self._object_store()
                for name in (*STORAGE_EXTENSIONS, *EXTENSIONS) if store else EXTENSIONS:
                    lake.execute(ducklake_sql.load_extension(extension_path(name)))
                if store:
                    self._open_storage(lake, store)
                self._attach(lake)
                lake.execute(ducklake_sql.USE_CATALOG)
                # Before CREATE_SCHEMA: another version's lake is left as it was.
                check_schema(lake, "the DuckLake")
                retry_on_conflict(lambda: lake.execute(sql.CREATE_SCHEMA))
                self._set_file_layout(lake)
            except BaseException as exc:
                lake.close()
                self._hide_secrets(exc)
                raise
            _LAKES[key] = _Lake(lake, own_memory_limit)
            return _LAKES[key]

    @staticmethod
    def _set_file_layout(lake: duckdb.DuckDBPyConnection) -> None:
        execute(lake, ducklake_sql.SET_TARGET_FILE_SIZE, {"size": LAKE_TARGET_FILE_SIZE})
        rows = execute(lake, ducklake_sql.ROW_GROUP_ROWS, {"catalog": ducklake_sql.CATALOG})
        if rows.fetchone() != (str(LAKE_ROW_GROUP_ROWS),):  # a write to the catalog: only once
            retry_on_conflict(
                lambda: execute(
                    lake, ducklake_sql.SET_ROW_GROUP_ROWS, {"rows": LAKE_ROW_GROUP_ROWS}
                )
            )

    def check_usable(self) -> None:
        """Open the catalog (once per process): a DSN, login, database or data path it refuses
        is raised before a run reads the API, not after."""
        self._lake()

    def exists(self) -> bool:
        """A lake is made by its first session; its catalog database exists before that."""
        return True

    def holds(self, folder: Path) -> bool:
        """Never: every host's folders share the lake."""
        return False

    @property
    def _on_object_storage(self) -> bool:
        return "://" in self.data_path

    def _object_store(self) -> ObjectStore | None:
        """The data path's object store, or None for a folder on this machine."""
        return object_store(self.data_path, os.environ) if self._on_object_storage else None

    def _open_storage(self, con: duckdb.DuckDBPyConnection, store: ObjectStore) -> None:
        """Give ``con`` the bucket's credentials and check it can list the data path."""
        # REFRESH auto: DuckDB fetches the keys again once they expire (its documentation; not
        # run here). A role's or a pod's keys last about an hour, and a process reads a busy
        # month and merges it on one session.
        options: dict[str, Any] = {"scope": f"s3://{store.bucket}", "refresh": "auto"}
        if store.region:
            options["region"] = store.region
        if store.endpoint:
            # An S3-compatible store: path-style URLs, which every one of them serves.
            options.update(endpoint=store.endpoint, url_style="path", use_ssl=store.use_ssl)
        failure = None
        try:
            execute(con, ducklake_sql.create_storage_secret(list(options)), options)
        except duckdb.Error as exc:
            failure = str(exc).strip()
        if failure is not None:
            if "Secret Validation Failure" in failure:
                raise WarehouseSettingsError(
                    f"no AWS credentials for the bucket of D23_DUCKLAKE_DATA_PATH "
                    f"({self.data_path}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                    "AWS_SESSION_TOKEN for temporary keys) or AWS_PROFILE, or run with an IAM role"
                )
            raise WarehouseConnectionError(f"cannot use D23_DUCKLAKE_DATA_PATH: {failure}")
        pattern = self.data_path.rstrip("/") + "/*"
        error: type[WarehouseConnectionError] = WarehouseConnectionError
        try:
            execute(con, ducklake_sql.LIST_DATA_PATH, {"pattern": pattern})
        except duckdb.Error as exc:
            failure = str(exc).split("\n\nLINE ", 1)[0].strip()
            # A refusal of the store (no such bucket, a refused key) is the settings' to mend;
            # no answer, a 5xx or being told to slow down (429) may mend itself.
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status < 500 and status != 429:
                error = WarehouseSettingsError
        if failure is not None:
            raise error(f"cannot list D23_DUCKLAKE_DATA_PATH ({self.data_path}): {failure}")

    def _checked_split(self) -> tuple[str, str | None]:
        if self._split is None:
            raise WarehouseSettingsError(NOT_A_DSN)
        return self._split

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        conninfo, password = self._checked_split()
        if password is not None:
            execute(con, ducklake_sql.CREATE_CATALOG_SECRET, {"password": password})
        statement = ducklake_sql.attach(
            conninfo, self.data_path, password_secret=password is not None
        )
        failure = None
        try:
            retry_on_conflict(
                lambda: con.execute(statement),
                retryable=lambda exc: is_conflict(exc) or lost_catalog_creation(exc),
            )
        except duckdb.Error as exc:
            # Raised after this block, not in it: there the new error would keep DuckDB's, with
            # its text, as __context__ (``from None`` only hides that from tracebacks).
            failure = self._redact(str(exc))
        if failure is not None:
            raise _connection_error("open the DuckLake catalog", failure) from None

    def _redact(self, message: str) -> str:
        """``message`` without the DSN, the connection string DuckDB was given, or a password."""
        if self._split is not None and self._split[0]:
            message = message.replace(self._split[0], "<D23_WAREHOUSE_DSN>")
        return redact(message, self._dsn)

    def _hide_secrets(self, exc: BaseException) -> None:
        """Redact the DuckDB errors of ``exc``'s chain in place, keeping their types (a write
        conflict stays one): a new exception would hold the old as ``__context__``. A fallback:
        DuckDB never gets the password (it is in a secret), but a DSN may hold another, such as
        libpq's ``sslpassword``."""
        seen: set[int] = set()
        error: BaseException | None = exc
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, duckdb.Error) and error.args and isinstance(error.args[0], str):
                error.args = (self._redact(error.args[0]), *error.args[1:])
            error = error.__cause__ or error.__context__
