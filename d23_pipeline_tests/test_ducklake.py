"""DuckLake on a PostgreSQL catalog (D23_WAREHOUSE=ducklake): its settings, its secret, and two
writers of different months taking turns while a reader reads, without a lock file."""

import ast
import contextlib
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pytest
from harness import Lake
from postgres import PostgresServer
from processes import clean_env, run_python
from psycopg2.extensions import parse_dsn
from test_warehouse_merge import Months, row

from d23_pipeline.analytics import dashboard, outcome_mix
from d23_pipeline.analytics.frames import load_outcome_tables
from d23_pipeline.analytics.outcome_classes import load_outcome_classes
from d23_pipeline.analytics.outcome_mix import (
    rebuild_outcome_kpis_monthly,
    rebuild_outcome_mix_monthly,
)
from d23_pipeline.defs.resources import WarehouseResource
from d23_pipeline.months import month_window
from d23_pipeline.settings import SettingsError, load_options
from d23_pipeline.warehouse import ducklake as ducklake_module
from d23_pipeline.warehouse import sql, store
from d23_pipeline.warehouse.ducklake import (
    DuckLakeWarehouse,
    WarehouseConnectionError,
    WarehouseSettingsError,
    redact,
    retry_on_conflict,
    split_password,
)

LATER = "2026-04-03T00:00:00.000Z"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"D23_WAREHOUSE": "sqlite"}, "D23_WAREHOUSE"),
        ({"D23_WAREHOUSE": "postgres"}, "D23_WAREHOUSE"),
        ({"D23_WAREHOUSE": "ducklake", "D23_DUCKLAKE_DATA_PATH": "/lake"}, "D23_WAREHOUSE_DSN"),
        ({"D23_WAREHOUSE": "ducklake", "D23_WAREHOUSE_DSN": "dbname=x"}, "D23_DUCKLAKE_DATA_PATH"),
    ],
)
def test_warehouse_settings_fail_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_options(env)


@pytest.mark.parametrize("warehouse", [{}, {"D23_WAREHOUSE": "duckdb"}], ids=["unset", "duckdb"])
def test_lake_settings_without_d23_warehouse_ducklake_are_refused_not_ignored(
    warehouse: dict[str, str],
) -> None:
    lake = {"D23_WAREHOUSE_DSN": "host=db password=s3cret dbname=d23"}

    with pytest.raises(SettingsError) as refused:
        load_options({**warehouse, **lake})
    with pytest.raises(SettingsError) as both:
        load_options({**warehouse, **lake, "D23_DUCKLAKE_DATA_PATH": "/lake"})

    assert str(refused.value) == (
        "D23_WAREHOUSE_DSN is set, but D23_WAREHOUSE is duckdb (or unset), which does not use "
        "it: set D23_WAREHOUSE=ducklake, or unset D23_WAREHOUSE_DSN"
    )
    assert str(both.value).startswith("D23_WAREHOUSE_DSN and D23_DUCKLAKE_DATA_PATH are set")
    assert str(both.value).endswith("unset D23_WAREHOUSE_DSN and D23_DUCKLAKE_DATA_PATH")
    assert "s3cret" not in f"{refused.value} {both.value}"


def test_ducklake_settings_keep_the_dsn_out_of_the_options(tmp_path: Path) -> None:
    options = load_options(
        {
            "D23_WAREHOUSE": "DuckLake",
            "D23_WAREHOUSE_DSN": "host=db password=s3cret dbname=d23",
            "D23_DUCKLAKE_DATA_PATH": str(tmp_path / "lake"),
        }
    )
    assert (options.warehouse, options.ducklake_data_path) == ("ducklake", str(tmp_path / "lake"))
    assert "s3cret" not in repr(options)
    assert load_options({}).warehouse == "duckdb"


@pytest.mark.parametrize("warehouse", ["duckdb", "ducklake"])
def test_the_warehouse_tables_show_the_store_the_setting_chose(
    tmp_path: Path, warehouse: str
) -> None:
    # The UI's kind icon: a lake's tables are not in a DuckDB file.
    lake = {"D23_WAREHOUSE_DSN": "dbname=d23", "D23_DUCKLAKE_DATA_PATH": str(tmp_path / "lake")}
    probe = (
        "from d23_pipeline.definitions import defs; graph = defs.resolve_asset_graph(); "
        "print({'/'.join(k.path): sorted(graph.get(k).kinds) for k in graph.get_all_asset_keys()})"
    )
    env = clean_env(D23_DATA_DIR=str(tmp_path / "data"), D23_WAREHOUSE=warehouse)

    loaded = run_python(["-c", probe], env | (lake if warehouse == "ducklake" else {}))

    assert loaded.returncode == 0, loaded.stderr
    assert ast.literal_eval(loaded.stdout.strip().splitlines()[-1]) == {
        "d23/raw_logs": ["parquet", "python"],
        "d23/logs": [warehouse],
        "d23/outcome_mix_monthly": [warehouse],
        "d23/outcome_kpis_monthly": [warehouse],
        "d23/outcome_mix_daily": [warehouse],
        "d23/outcome_dashboard": ["html"],
    }


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port={port} user=d23_test password=WRONG-pw-123 dbname=nowhere",
        "postgresql://d23_test:WRONG-pw-123@127.0.0.1:{port}/nowhere",
    ],
)
def test_a_refused_catalog_names_the_setting_never_the_password(
    postgres: PostgresServer, tmp_path: Path, dsn: str
) -> None:
    warehouse = DuckLakeWarehouse(dsn.format(port=postgres.port), str(tmp_path / "lake"))

    with pytest.raises(WarehouseConnectionError) as raised, warehouse.connect():
        pass

    message = str(raised.value)
    assert "D23_WAREHOUSE_DSN" in message and "authentication failed" in message
    assert "WRONG-pw-123" not in message + repr(warehouse)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    # Not even hidden: DuckDB's own error, which quotes the DSN, is not kept as the context.
    assert raised.value.__context__ is None


def test_a_catalog_user_who_cannot_create_tables_is_a_setting_to_fix_not_retried(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    # PostgreSQL 15 lets only a database's owner create tables in its schema public.
    role, password = f"d23_ro_{uuid.uuid4().hex[:8]}", f"Ro-{secrets.token_hex(8)}"
    postgres.administer(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    dsn = parse_dsn(postgres.new_database()) | {"user": role, "password": password}
    warehouse = DuckLakeWarehouse(" ".join(f"{k}={v}" for k, v in dsn.items()), str(tmp_path))

    with pytest.raises(WarehouseSettingsError) as raised, warehouse.connect():
        pass

    message = str(raised.value)
    assert "permission denied for schema public" in message
    assert "make it the database's owner, or grant it CREATE on schema public" in message
    assert password not in message


@pytest.mark.parametrize(
    ("role_options", "revoke_connect", "said", "advice"),
    [
        ("NOLOGIN", False, "is not permitted to log in", ""),
        ("LOGIN", True, "permission denied for database", "grant the DSN's user CONNECT"),
    ],
    ids=["a-role-that-cannot-log-in", "no-connect-on-the-database"],
)
def test_a_catalog_login_a_retry_cannot_mend_is_a_setting_to_fix(
    postgres: PostgresServer,
    tmp_path: Path,
    role_options: str,
    revoke_connect: bool,
    said: str,
    advice: str,
) -> None:
    role, password = f"d23_no_{uuid.uuid4().hex[:8]}", f"No-{secrets.token_hex(8)}"
    dsn = parse_dsn(postgres.new_database()) | {"user": role, "password": password}
    postgres.administer(f"CREATE ROLE {role} {role_options} PASSWORD %s", (password,))
    if revoke_connect:
        postgres.administer(f"REVOKE CONNECT ON DATABASE {dsn['dbname']} FROM PUBLIC")
    warehouse = DuckLakeWarehouse(" ".join(f"{k}={v}" for k, v in dsn.items()), str(tmp_path))

    with pytest.raises(WarehouseSettingsError) as raised, warehouse.connect():
        pass

    message = str(raised.value)
    assert said in message and advice in message
    assert "grant it CREATE on schema public" not in message and password not in message


def test_a_catalog_lost_during_a_commit_is_named_and_retried_not_a_bare_driver_error(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    lake = Lake.create(postgres, tmp_path / "lake")
    database = parse_dsn(lake.dsn)["dbname"]
    warehouse = DuckLakeWarehouse(lake.dsn, str(lake.data_path))

    with pytest.raises(WarehouseConnectionError) as raised, warehouse.connect() as con:
        con.execute(sql.BEGIN)
        con.execute("UPDATE d23.last_merge SET merges = merges + 1")
        # The catalog's server ends every session of the lake (a restart, a failover).
        postgres.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        con.execute(sql.COMMIT)

    message = str(raised.value)
    assert not isinstance(raised.value, WarehouseSettingsError)  # retried
    assert "lost the DuckLake catalog named by D23_WAREHOUSE_DSN" in message
    assert "launch it again once it is back" in message
    assert postgres.password not in message


def test_a_dsn_read_from_a_secrets_file_with_its_newline_opens_the_lake(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    lake = Lake.create(postgres, tmp_path / "lake")
    parts = parse_dsn(lake.dsn)
    # A URL's database name would keep the newline (key=value text ignores it).
    url = (
        f"postgresql://{parts['user']}:{quote(parts['password'], safe='')}@{parts['host']}:"
        f"{parts['port']}/{parts['dbname']}\n"
    )
    resource = WarehouseResource(
        backend="ducklake", dsn=url, ducklake_data_path=str(lake.data_path)
    )

    with resource.get_connection() as con:
        assert con.execute("SELECT 1").fetchone() == (1,)


def test_a_login_the_catalog_refuses_during_a_session_is_a_setting_not_a_lost_catalog(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    role, password = f"d23_lk_{uuid.uuid4().hex[:8]}", f"Lk-{secrets.token_hex(8)}"
    dsn = parse_dsn(postgres.new_database())

    postgres.administer(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    postgres.administer(f"ALTER DATABASE {dsn['dbname']} OWNER TO {role}")
    conninfo = " ".join(f"{k}={v}" for k, v in (dsn | {"user": role, "password": password}).items())
    warehouse = DuckLakeWarehouse(conninfo, str(tmp_path / "lake"))
    with warehouse.connect():
        pass  # attached: the process keeps the lake
    postgres.administer(f"ALTER ROLE {role} NOLOGIN")
    postgres.administer(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
    )

    with pytest.raises(WarehouseSettingsError) as raised, warehouse.connect(read_only=True) as con:
        con.execute("SELECT count(*) FROM d23.logs").fetchall()

    assert "is not permitted to log in" in str(raised.value)
    assert "lost the DuckLake catalog" not in str(raised.value)


@pytest.mark.parametrize("when", ["as a session opens", "during a read"])
def test_a_catalog_that_turns_sessions_away_is_named_as_lost_and_retried(
    postgres: PostgresServer, tmp_path: Path, when: str
) -> None:
    lake = Lake.create(postgres, tmp_path / "lake")
    database = parse_dsn(lake.dsn)["dbname"]
    warehouse = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    with warehouse.connect():
        pass  # attached: the process keeps the lake

    def go_away() -> None:
        """The catalog's database goes away (maintenance): every session of it is ended."""
        postgres.administer(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        postgres.administer(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )

    if when == "as a session opens":
        go_away()
    with (
        pytest.raises(WarehouseConnectionError) as raised,
        warehouse.connect(read_only=True) as con,
    ):
        if when == "during a read":
            go_away()
        con.execute("SELECT count(*) FROM d23.logs").fetchall()

    message = str(raised.value)
    assert not isinstance(raised.value, WarehouseSettingsError)  # retried
    assert "lost the DuckLake catalog named by D23_WAREHOUSE_DSN" in message
    assert "is not currently accepting connections" in message
    assert postgres.password not in message


def test_a_host_name_that_does_not_exist_is_a_setting_a_dns_outage_is_retried() -> None:
    unknown = 'could not translate host name "db.invalid" to address: Name or service not known'
    outage = 'could not translate host name "db" to address: Temporary failure in name resolution'

    assert type(ducklake_module._connection_error("open", unknown)) is WarehouseSettingsError
    assert type(ducklake_module._connection_error("open", outage)) is WarehouseConnectionError


def test_a_pg_service_keeps_its_own_connection_options() -> None:
    conninfo, _ = split_password("service=lake dbname=d23") or ("", None)
    assert "keepalives" not in parse_dsn(conninfo)


def test_a_dsn_with_an_sslmode_libpq_does_not_know_is_a_setting_to_fix(tmp_path: Path) -> None:
    warehouse = DuckLakeWarehouse("host=127.0.0.1 sslmode=requir dbname=d23", str(tmp_path))

    with pytest.raises(WarehouseSettingsError, match="D23_WAREHOUSE_DSN"), warehouse.connect():
        pass


def test_a_data_path_other_than_the_catalogs_names_the_setting_and_no_override(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    lake = Lake.create(postgres, tmp_path / "lake")
    with DuckLakeWarehouse(lake.dsn, str(lake.data_path)).connect():
        pass  # the first connection records the data path

    with (
        pytest.raises(WarehouseSettingsError) as raised,
        DuckLakeWarehouse(lake.dsn, str(tmp_path / "elsewhere")).connect(),
    ):
        pass

    message = str(raised.value)
    assert "does not match existing data path in the catalog" in message
    assert "D23_DUCKLAKE_DATA_PATH must name the data path this catalog recorded" in message
    assert "OVERRIDE_DATA_PATH" not in message


def test_a_dsn_libpq_cannot_read_is_refused_without_quoting_it(tmp_path: Path) -> None:
    # libpq's message would quote the text around the fault: here the password's second word.
    warehouse = DuckLakeWarehouse("host=h password=first second", str(tmp_path / "lake"))

    with (
        pytest.raises(WarehouseConnectionError, match="D23_WAREHOUSE_DSN") as raised,
        warehouse.connect(),
    ):
        pass

    shown = "".join(traceback.format_exception(raised.value))
    assert "first" not in shown and "second" not in shown


def test_a_dsn_holding_bytes_that_are_not_utf8_is_refused_without_quoting_it(
    tmp_path: Path,
) -> None:
    # A Latin-1 env file: libpq's encoder failed on the byte in an error holding the whole DSN.
    dsn = os.fsdecode(b"host=h dbname=d23 password=Gr\xfcn-SECRET")
    lake = str(tmp_path / "lake")
    env = {"D23_WAREHOUSE": "ducklake", "D23_WAREHOUSE_DSN": dsn, "D23_DUCKLAKE_DATA_PATH": lake}

    with pytest.raises(SettingsError, match="D23_WAREHOUSE_DSN holds bytes") as refused:
        load_options(env)
    with (
        pytest.raises(WarehouseConnectionError, match="D23_WAREHOUSE_DSN") as raised,
        DuckLakeWarehouse(dsn, lake).connect(),
    ):
        pass

    shown = [f"{e!s} {e!r}" for e in (refused.value, raised.value)]
    shown.append("".join(traceback.format_exception(raised.value)))
    assert "SECRET" not in " ".join(shown)


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        # libpq would read the user as the host and the password up to '/' as the port.
        ("postgresql://d23:SECRETpw/x@127.0.0.1:5432/d23", "SECRETpw"),
        # libpq ends the user info at the first '@': the password's tail would be the host.
        ("postgresql://d23:pw@SECRETtail@127.0.0.1:5432/d23", "SECRETtail"),
        # A '?' in the password does not end the user info for libpq.
        ("postgresql://d23:pw?x@SECRETtail@127.0.0.1:5432/d23", "SECRETtail"),
        # A password's digits up to '/' would be the port, its rest part of the database name.
        ("postgresql://d23:4242/SECRETtail@127.0.0.1/d23", "4242"),
    ],
)
@pytest.mark.parametrize("read_only", [False, True], ids=["writer", "reader"])
def test_a_uri_dsn_with_an_unencoded_password_is_refused_showing_no_part_of_it(
    tmp_path: Path, dsn: str, fragment: str, read_only: bool
) -> None:
    warehouse = DuckLakeWarehouse(dsn, str(tmp_path / "lake"))

    with pytest.raises(WarehouseConnectionError) as raised, warehouse.connect(read_only):
        pass

    shown = "".join(traceback.format_exception(raised.value))
    assert "D23_WAREHOUSE_DSN" in shown and "percent-encode" in shown
    assert fragment not in shown, shown


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://d23:p%40ss%2Fword@127.0.0.1:5432/d23",  # encoded, as the README says
        "postgresql://d23@%2Fvar%2Frun%2Fpostgresql/d23",  # a unix socket
        "postgresql://d23:pw@[::1]:5432/d23?application_name=a@b",
        "postgresql://d23:pw@h1:5432,h2:5433/d23",
    ],
)
def test_uri_dsns_libpq_reads_as_written_are_accepted(dsn: str) -> None:
    assert split_password(dsn) is not None


def test_a_catalog_connection_gives_up_on_a_silent_host_unless_the_dsn_says_otherwise() -> None:
    # A host that drops packets would otherwise hold a run until TCP gives up, minutes (to
    # connect) or hours (mid-merge) later. The lake tests connect with these options.
    conninfo, _ = split_password("postgresql://d23:pw@db.internal/d23") or ("", None)
    options = parse_dsn(conninfo)
    assert options["connect_timeout"] == "15"
    assert (options["keepalives"], options["keepalives_idle"]) == ("1", "30")
    assert options["tcp_user_timeout"] == "60000"
    conninfo, _ = split_password("host=db dbname=d23 connect_timeout=3 keepalives=0") or ("", "")
    assert parse_dsn(conninfo)["connect_timeout"] == "3"
    assert parse_dsn(conninfo)["keepalives"] == "0"


@pytest.mark.parametrize("form", ["key-value", "uri"])
def test_a_catalog_that_refuses_the_reconnect_after_the_attach_shows_no_password(
    postgres: PostgresServer, tmp_path: Path, form: str
) -> None:
    """The catalog's PostgreSQL restarts or rotates the password after this process attached:
    DuckDB's driver reconnects and its error, a step failure in Dagster's event log, quotes the
    connection string it was given; the password is never in that string. libpq's sslpassword
    (for a client key; unused here) stays in it, and is cut out of the error instead."""
    role, password = f"lake_{uuid.uuid4().hex[:12]}", f"pw-{secrets.token_urlsafe(12)}"
    key_password = f"key-{secrets.token_urlsafe(12)}"
    postgres.administer(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    postgres.administer(f"CREATE DATABASE {role} OWNER {role}")
    dsn = {
        "key-value": f"host={postgres.host} port={postgres.port} user={role} "
        f"password={password} dbname={role} sslpassword={key_password}",
        "uri": f"postgresql://{role}:{password}@{postgres.host}:{postgres.port}/{role}",
    }[form]
    warehouse = DuckLakeWarehouse(dsn, str(tmp_path / "lake"))
    with warehouse.connect() as con:
        con.execute("CREATE TABLE d23.t AS SELECT 1 AS x")

    postgres.administer(f"ALTER ROLE {role} PASSWORD 'rotated-elsewhere'")
    postgres.administer(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
    )
    shown = []
    # A reader's session reconnects through DuckDB's driver; a writer's first opens its own
    # session for the writers' turn.
    for read_only in (True, False, True):
        try:
            with warehouse.connect(read_only=read_only) as con:
                con.execute("SELECT count(*) FROM d23.t").fetchall()
        except (duckdb.Error, WarehouseConnectionError) as exc:
            shown.append("".join(traceback.format_exception(exc)))

    assert len(shown) == 3 and all("password authentication failed" in s for s in shown), shown
    assert "writers' turn" in shown[1] and "writers' turn" not in shown[0] + shown[2]
    assert not [s for s in shown if password in s or key_password in s], shown


def test_a_duckdb_error_raised_while_handling_another_is_redacted_along_its_whole_chain(
    lake: Lake,
) -> None:
    # The inner error rides along as __context__ (no `from`): Dagster logs the traceback whole.
    with (
        pytest.raises(duckdb.Error) as caught,
        DuckLakeWarehouse(lake.dsn, str(lake.data_path)).connect() as con,
    ):
        try:
            con.execute("SELECT error(?)", [f"inner: {lake.dsn}"])
        except duckdb.Error:
            con.execute("SELECT * FROM d23.no_such_table")

    assert lake.dsn not in "".join(traceback.format_exception(caught.value))


def test_redact_hides_key_value_and_uri_passwords() -> None:
    text = "at 'host=h password=p1 dbname=d' and postgresql://u:p2@h/d and PASSWORD = 'p 3x' end"
    shown = redact(text, "")
    assert "p1" not in shown and "p2" not in shown
    # A quoted password with a space in it is hidden whole, not up to the space.
    assert "3x" not in shown and shown.endswith(" end")


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Lake:
    return Lake.create(postgres, tmp_path / "lake")


@contextmanager
def commit_paused_in(thread_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """The first transaction of thread ``thread_name`` waits before its COMMIT until released."""
    paused, release = threading.Event(), threading.Event()
    real = store.transaction

    @contextmanager
    def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        with real(con):
            yield
            if threading.current_thread().name == thread_name and not paused.is_set():
                paused.set()
                release.wait(60)

    monkeypatch.setattr(store, "transaction", transaction)
    try:
        yield paused, release
    finally:
        release.set()


def test_two_months_merged_at_once_take_turns_and_a_reader_never_waits(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    april, may = Months(tmp_path / "april", warehouse), Months(tmp_path / "may", warehouse)
    for months in (april, may):
        months.dir.mkdir()
    april.merge([row("a1")])
    may.merge([row("m1")], partition="2026-05-01")
    retries: list[str] = []
    errors: list[BaseException] = []

    def merge(months: Months, rows: list[dict], partition: str) -> None:
        try:
            retry_on_conflict(
                lambda: months.merge(rows, partition=partition), on_retry=retries.append
            )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    april_rows = [row("a1", updated_at=LATER), row("a2")]
    may_rows = [row("m1", updated_at=LATER), row("m2")]
    with commit_paused_in("april", monkeypatch) as (paused, release):
        april_writer = threading.Thread(
            target=merge, args=(april, april_rows, "2026-04-01"), name="april"
        )
        april_writer.start()
        assert paused.wait(60), "april's merge never reached its commit"
        # April's transaction is open and holds the writers' turn: May's writer waits for it,
        # a reader goes ahead.
        may_writer = threading.Thread(target=merge, args=(may, may_rows, "2026-05-01"), name="may")
        may_writer.start()
        seen = may.logs()
        monkeypatch.setenv("D23_WAREHOUSE", "ducklake")
        monkeypatch.setenv("D23_WAREHOUSE_DSN", lake.dsn)
        monkeypatch.setenv("D23_DUCKLAKE_DATA_PATH", str(lake.data_path))
        tables = load_outcome_tables()
        may_waited = may_writer.is_alive()
        release.set()
        april_writer.join(120)
        may_writer.join(120)

    assert not errors
    # The reader saw the last committed state: neither open merge.
    assert sorted(seen) == ["a1", "m1"]
    assert list(tables.kpis_monthly.columns)[:2] == ["month", "attempts"]
    # Each merge ran once: May's waited for its turn instead of committing first and making
    # April's run again (without turns, April conflicted here and its merge ran twice).
    assert may_waited and retries == []
    logs = april.logs()
    assert sorted(logs) == ["a1", "a2", "m1", "m2"]
    assert {logs[i]["_partition"] for i in ("a1", "a2")} == {"2026-04-01"}
    assert {logs[i]["_partition"] for i in ("m1", "m2")} == {"2026-05-01"}
    assert all(logs[i]["updated_at"] == logs["m1"]["updated_at"] for i in ("a1", "m1"))
    with warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT merges FROM d23.last_merge").fetchone() == (4,)


def _writing(warehouse: DuckLakeWarehouse, outcome: list[BaseException]) -> threading.Thread:
    """A writer's session of ``warehouse`` in another thread (a PostgreSQL session of its own,
    as another host's), started; what it raised goes to ``outcome``."""

    def write() -> None:
        try:
            with warehouse.connect():
                pass
        except BaseException as exc:  # reported by the caller's assertions
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    return writer


def test_a_writer_waits_for_the_turn_no_longer_than_its_lock_timeout(lake: Lake) -> None:
    holder = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    impatient = DuckLakeWarehouse(lake.dsn, str(lake.data_path), lock_timeout_s=0.5)
    outcome: list[BaseException] = []

    with holder.connect():
        _writing(impatient, outcome).join(60)
        with impatient.connect(read_only=True) as con:  # a reader still never waits
            con.execute("SELECT count(*) FROM d23.logs").fetchall()

    assert len(outcome) == 1 and isinstance(outcome[0], store.WarehouseBusyError)
    assert "held the writers' turn for more than 0.5 s" in str(outcome[0])
    with impatient.connect():  # the turn is free again once its holder closed
        pass


def test_a_writer_waiting_for_the_turn_when_the_catalog_goes_says_it_was_lost(
    lake: Lake, postgres: PostgresServer
) -> None:
    holder = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    waiting = DuckLakeWarehouse(lake.dsn, str(lake.data_path), lock_timeout_s=60)
    outcome: list[BaseException] = []

    with holder.connect():
        writer = _writing(waiting, outcome)
        waits = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        deadline = time.monotonic() + 30
        while postgres.query(waits) == [(0,)] and time.monotonic() < deadline:
            time.sleep(0.05)
        # The server ends the waiting session (a failover, an administrator).
        postgres.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        writer.join(60)

    assert len(outcome) == 1 and type(outcome[0]) is WarehouseConnectionError, outcome
    assert "lost the DuckLake catalog named by D23_WAREHOUSE_DSN" in str(outcome[0])


# A writer that waits for the turn, its wait's statement sent ``LATE_S`` seconds after the wait
# began (a signal can come in between), saying when it waits and how it ended.
_WAIT_FOR_THE_TURN = """
import os, signal, sys, time
from d23_pipeline.warehouse import ducklake
# As a Dagster run worker has it: pytest-xdist's workers ignore SIGINT, and children inherit that.
signal.signal(signal.SIGINT, signal.default_int_handler)
interruptible = ducklake._interruptible

def late(session, query):
    def wait():
        print("waiting", flush=True)
        time.sleep(float(os.environ["LATE_S"]))
        query()
    interruptible(session, wait)

ducklake._interruptible = late
lake = ducklake.DuckLakeWarehouse(
    os.environ["LAKE_DSN"], os.environ["LAKE_PATH"], lock_timeout_s=30
)
try:
    with lake.connect():
        print("took the turn")
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def _waiting_for_the_turn(postgres: PostgresServer, lake: Lake) -> int:
    """How many sessions wait for an advisory lock on ``lake``'s catalog database."""
    with contextlib.closing(postgres.connect("postgres")) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s",
            (parse_dsn(lake.dsn)["dbname"],),
        )
        waiting: int = cursor.fetchone()[0]
    return waiting


@pytest.mark.parametrize(
    ("late_s", "signalled_when"),
    [(0, "its wait is at the server"), (1, "its wait's statement has not reached the server")],
)
def test_a_writer_waiting_for_the_turn_stops_at_once_on_sigint(
    lake: Lake, postgres: PostgresServer, late_s: int, signalled_when: str
) -> None:
    # Dagster's Terminate, and Ctrl-C, send SIGINT: libpq's wait held it off until the turn
    # came or the lock timeout ran out (15 minutes), the run left "Canceling" meanwhile. And a
    # cancel that reaches the server before the statement cancels nothing.
    holder = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    env = clean_env(LAKE_DSN=lake.dsn, LAKE_PATH=str(lake.data_path), LATE_S=str(late_s))
    with holder.connect():
        waiter = subprocess.Popen(
            [sys.executable, "-c", _WAIT_FOR_THE_TURN], env=env, stdout=subprocess.PIPE, text=True
        )
        assert waiter.stdout is not None and waiter.stdout.readline() == "waiting\n"
        deadline = time.monotonic() + 60
        while late_s == 0 and _waiting_for_the_turn(postgres, lake) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        signalled = time.monotonic()
        waiter.send_signal(signal.SIGINT)
        out, _ = waiter.communicate(timeout=60)
        stopped = time.monotonic() - signalled

    assert out.strip() == "interrupted" and stopped < late_s + 5, signalled_when
    assert _waiting_for_the_turn(postgres, lake) == 0  # its wait was cancelled at the server too


def test_the_turns_session_asks_the_server_to_end_it_after_a_minute_of_network_silence(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer whose host dies sends no close: the server kept its session, and the turn, for
    # the OS's keepalive time (about 2 h 11 min), every other writer failing after 15 minutes.
    import psycopg2

    sessions: list[Any] = []
    connect = psycopg2.connect

    def connect_noting(*args: Any, **kwargs: Any) -> Any:
        sessions.append(connect(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(psycopg2, "connect", connect_noting)

    with DuckLakeWarehouse(lake.dsn, str(lake.data_path)).connect(), sessions[0].cursor() as cursor:
        settings = {}
        for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
            cursor.execute(f"SHOW {name}")
            settings[name] = cursor.fetchone()[0]
        cursor.execute("SHOW tcp_user_timeout")
        user_timeout = cursor.fetchone()[0]

    assert settings == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
    assert user_timeout == "60000"  # ms


def test_the_catalogs_own_timeouts_neither_cut_a_wait_for_the_turn_nor_end_a_turn(
    lake: Lake, postgres: PostgresServer
) -> None:
    # Managed PostgreSQL often sets these per role or database; they apply to new sessions.
    database = parse_dsn(lake.dsn)["dbname"]
    postgres.administer(f"ALTER DATABASE {database} SET statement_timeout = '1s'")
    postgres.administer(f"ALTER DATABASE {database} SET idle_session_timeout = '1s'")
    holder = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    waiter = DuckLakeWarehouse(lake.dsn, str(lake.data_path), lock_timeout_s=2.5)
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            with waiter.connect():
                outcome.append(AssertionError("took the turn its holder still holds"))
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    with holder.connect():
        time.sleep(1.5)  # the holder's turn session sits idle past idle_session_timeout
        writer = threading.Thread(target=write)
        started = time.monotonic()
        writer.start()
        writer.join(60)
        waited = time.monotonic() - started

    assert len(outcome) == 1 and isinstance(outcome[0], store.WarehouseBusyError), outcome
    assert waited >= 2.5  # not cancelled by statement_timeout after 1 s


def test_a_write_session_nested_in_another_shares_its_turn_however_the_dsn_is_spelled(
    lake: Lake,
) -> None:
    params = parse_dsn(lake.dsn)
    uri = (
        f"postgresql://{params['user']}:{params['password']}@{params['host']}:{params['port']}"
        f"/{params['dbname']}"
    )
    outer = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    nested = DuckLakeWarehouse(uri, str(lake.data_path), lock_timeout_s=1)

    with outer.connect(), nested.connect() as con:  # waited for itself until the timeout
        assert con.execute("SELECT 1").fetchone() == (1,)


@contextmanager
def commits_held_until_both_staged(
    monkeypatch: pytest.MonkeyPatch, where: object = store
) -> Iterator[None]:
    """Each thread's first transaction (of module ``where``) waits before its COMMIT until the
    other's has staged everything too, as two writers that take no turns can (an older version
    of this pipeline, another tool); a transaction run again after a conflict commits at once."""
    monkeypatch.setattr(DuckLakeWarehouse, "_writer_turn", lambda self: contextlib.nullcontext())
    both_staged = threading.Barrier(2, timeout=60)
    held: set[str] = set()
    real = store.transaction

    @contextmanager
    def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        with real(con):
            yield
            if threading.current_thread().name not in held:
                held.add(threading.current_thread().name)
                both_staged.wait()

    monkeypatch.setattr(where, "transaction", transaction)
    try:
        yield
    finally:
        both_staged.abort()


def test_two_first_merges_racing_on_a_row_that_moved_months_leave_one_copy(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither month holds a row yet, so each merge only inserts: without a write both touch,
    # DuckLake would let both commit and "moved" would be stored in both months.
    warehouse = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
    march, april = Months(tmp_path / "march", warehouse), Months(tmp_path / "april", warehouse)
    for months in (march, april):
        months.dir.mkdir()
    in_march = {
        "communicated_at": "2026-03-20T10:00:00.000Z",
        "updated_at": "2026-03-21T00:00:00.000Z",
    }
    read = {  # March read "moved" before it moved to April; April read it after
        "2026-03-01": (march, [row("m1", **in_march), row("moved", **in_march)]),
        "2026-04-01": (april, [row("a1"), row("moved", updated_at=LATER)]),
    }
    retries: list[str] = []
    errors: list[BaseException] = []

    def merge(partition: str) -> None:
        months, rows = read[partition]
        try:
            retry_on_conflict(
                lambda: months.merge(rows, partition=partition), on_retry=retries.append
            )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with commits_held_until_both_staged(monkeypatch):
        writers = [threading.Thread(target=merge, args=(p,), name=p) for p in read]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(120)

    assert not errors
    with warehouse.connect(read_only=True) as con:
        duplicates = store.duplicate_public_ids(con)
    assert duplicates == []
    logs = april.logs()
    assert sorted(logs) == ["a1", "m1", "moved"]
    # Its newest read wins whichever month committed last; the others stay in their months.
    assert {i: logs[i]["_partition"] for i in logs} == {
        "m1": "2026-03-01",
        "moved": "2026-04-01",
        "a1": "2026-04-01",
    }
    # The merge that committed second conflicted and ran again on the other's rows.
    assert len(retries) == 1 and "another writer committed first" in retries[0]


@pytest.fixture
def april(lake: Lake, tmp_path: Path) -> Months:
    """April merged into the lake, three rows, no outcome-mix rows yet."""
    months = Months(tmp_path, DuckLakeWarehouse(lake.dsn, str(lake.data_path)))
    months.merge([row("a"), row("b"), row("c")])
    return months


def test_two_first_rebuilds_of_a_months_outcome_mix_at_once_count_it_once(
    april: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The month has no outcome-mix rows yet, so each rebuild deletes nothing and only inserts.
    warehouse = april.warehouse
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            with warehouse.connect() as con:
                rebuild_outcome_mix_monthly(
                    con, date(2026, 4, 1), *month_window("2026-04"), load_outcome_classes()
                )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with commits_held_until_both_staged(monkeypatch, where=outcome_mix):
        rebuilds = [threading.Thread(target=rebuild, name=f"rebuild-{n}") for n in (1, 2)]
        for thread in rebuilds:
            thread.start()
        for thread in rebuilds:
            thread.join(120)

    assert not errors
    with warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT sum(attempts) FROM d23.outcome_mix_monthly").fetchone() == (3,)


def _first_connection(dsn: str, data_path: str, start: float, results: Any) -> None:
    from d23_pipeline.warehouse.ducklake import DuckLakeWarehouse  # in a process of its own

    while time.time() < start:
        time.sleep(0.001)
    try:
        with DuckLakeWarehouse(dsn, data_path).connect() as con:
            con.execute("SELECT merges FROM d23.last_merge").fetchall()
        results.put("ok")
    except Exception as exc:  # reported by the assertion below
        results.put(f"{type(exc).__name__}: {str(exc)[:300]}")


@pytest.mark.e2e
def test_processes_opening_a_new_lake_at_once_all_connect(lake: Lake) -> None:
    # A first backfill: its months' first steps all create DuckLake's catalog tables at once,
    # and PostgreSQL refuses all creations but one (without the retry, 5 of 6 failed in 3 of 3
    # trials here).
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    start = time.time() + 3  # every process has imported and waits at the same line
    workers = [
        spawn.Process(
            target=_first_connection, args=(lake.dsn, str(lake.data_path), start, results)
        )
        for _ in range(6)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(60)

    assert outcomes == ["ok"] * 6


def test_the_dashboard_shows_one_committed_state_while_a_merge_commits(
    april: Months, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = april.warehouse
    classes = load_outcome_classes()
    with warehouse.connect() as con:
        rebuild_outcome_mix_monthly(con, date(2026, 4, 1), *month_window("2026-04"), classes)
        rebuild_outcome_kpis_monthly(con, date(2026, 4, 1))
    real = dashboard.fetch_dicts
    merged: list[object] = []

    def fetch_dicts(con: duckdb.DuckDBPyConnection, statement: str, params: Any = None) -> Any:
        rows = real(con, statement, params)
        if statement is sql.CONTACT_BY_WEEKDAY_HOUR and not merged:
            # Another run's merge commits between two of the dashboard's queries.
            merged.append(april.merge([row("a"), row("b"), row("c"), row("d")]))
        return rows

    monkeypatch.setattr(dashboard, "fetch_dicts", fetch_dicts)
    with warehouse.connect() as con:
        data = dashboard.gather(con, classes, "UTC", datetime(2026, 5, 10, tzinfo=UTC))

    assert merged
    by_hour = sum(r["attempts"] for r in data.weekday_hour)
    by_channel = sum(r["attempts"] for r in data.channel_daily)
    assert (by_hour, by_channel, data.freshness[0].rows) == (3, 3, 3)


@pytest.mark.parametrize(
    ("failure", "calls"),
    [
        # Another writer won every time: its conflict, after every attempt, not a bare assert.
        (duckdb.TransactionException("Transaction conflict: cannot commit"), 3),
        # Not a conflict: running the transaction again cannot help.
        (duckdb.ConstraintException("Duplicate key violates primary key constraint"), 1),
    ],
)
def test_a_transaction_is_run_again_only_while_it_loses_to_another_writer(
    failure: duckdb.Error, calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ducklake_module, "_CONFLICT_DELAY_S", (0.0, 0.0))
    attempts = []

    def work() -> None:
        attempts.append(1)
        raise failure

    with pytest.raises(type(failure)):
        retry_on_conflict(work, attempts=3)
    assert len(attempts) == calls


def test_a_lake_an_older_version_made_is_refused_naming_the_table_and_left_as_it_was(
    lake: Lake, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DuckLakeWarehouse(lake.dsn, str(lake.data_path)).connect() as con:
        con.execute("ALTER TABLE d23.deletions_pending ADD COLUMN rows BIGINT")
        con.execute("DROP TABLE d23.mix_rebuilds_due")  # a table that version did not have

    for read_only in (False, True):
        monkeypatch.setattr(ducklake_module, "_LAKES", {})  # the lake as a new process finds it
        with (
            pytest.raises(store.WarehouseSchemaError, match=r"d23\.deletions_pending in the Duck"),
            DuckLakeWarehouse(lake.dsn, str(lake.data_path)).connect(read_only=read_only),
        ):
            pass

    catalog = postgres.connect(parse_dsn(lake.dsn)["dbname"])
    with contextlib.closing(catalog), catalog.cursor() as cursor:
        cursor.execute("SELECT table_name FROM ducklake_table WHERE end_snapshot IS NULL")
        tables = {name for (name,) in cursor.fetchall()}
    assert "deletions_pending" in tables and "mix_rebuilds_due" not in tables  # nothing made
