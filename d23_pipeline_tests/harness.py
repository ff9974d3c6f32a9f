"""Test harness: the D23 pipeline wired to a simulator and a private data folder."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import httpx
import pyarrow.parquet as pq
import pytest
from postgres import PostgresServer

from d23_pipeline.client import SliceDone, Window
from d23_pipeline.definitions import defs
from d23_pipeline.defs.resources import (
    DashboardResource,
    ExportsApiResource,
    LandingZoneResource,
    OutcomeMappingResource,
    WarehouseResource,
)
from d23_pipeline.landing.snapshot import SnapshotWriter
from d23_pipeline.months import month_window
from d23_pipeline.schema import D23_FIELDS, format_timestamp
from d23_pipeline.simulator import SimResponse, Simulator
from d23_pipeline.warehouse.backend import open_warehouse
from d23_pipeline.warehouse.store import WarehouseBackend

MONTHS = ("2026-03", "2026-04", "2026-05")
# The tests that prove the warehouse exact run once per backend: the embedded DuckDB file and
# DuckLake on the session's throwaway PostgreSQL (the `pipeline` fixture reads the parameter).
BOTH_WAREHOUSES = pytest.mark.parametrize("pipeline", ["duckdb", "ducklake"], indirect=True)
# And a DuckLake whose data path is an S3 bucket (conftest's s3 server).
ALL_WAREHOUSES = pytest.mark.parametrize(
    "pipeline", ["duckdb", "ducklake", "ducklake-s3"], indirect=True
)


@dataclass(frozen=True)
class Lake:
    """A fresh DuckLake: its own catalog database on the test PostgreSQL and a data folder."""

    dsn: str
    data_path: Path | str  # a folder, or an s3:// URL

    @classmethod
    def create(cls, server: PostgresServer, data_path: Path | str) -> Lake:
        return cls(dsn=server.new_database(), data_path=data_path)

    def env(self) -> dict[str, str]:
        """The settings that point the pipeline at this lake."""
        return {
            "D23_WAREHOUSE": "ducklake",
            "D23_WAREHOUSE_DSN": self.dsn,
            "D23_DUCKLAKE_DATA_PATH": str(self.data_path),
        }


def d23_row(public_id: str, at: str, **changes: Any) -> dict[str, Any]:
    """A valid D23 row, a promise to pay by an agent's call communicated, created and updated
    at ``at`` (an API timestamp), with ``changes`` applied; fields in the API's order."""
    return {
        "public_id": public_id,
        "communication_type": "CALL",
        "interaction_source": "AGENT",
        "outcome_option": "PTP",
        "is_active": True,
        "is_ptp_broken": False,
        "communicated_at": at,
        "created_at": at,
        "updated_at": at,
        **changes,
    }


def canonical(row: dict[str, Any]) -> tuple:
    """A row's nine fields, timestamps as the API's strings, for exact comparison."""
    return tuple(
        format_timestamp(row[f]) if isinstance(row[f], datetime) else row[f] for f in D23_FIELDS
    )


@dataclass
class Pipeline:
    """The D23 assets wired to a simulator and a private data folder."""

    sim: Simulator
    api_url: str
    data_dir: Path
    slice_hours: int = 24
    page_limit: int = 200
    max_concurrency: int = 4
    lake: Lake | None = None  # None: the embedded DuckDB file

    @property
    def backend(self) -> str:
        return "duckdb" if self.lake is None else "ducklake"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def dashboard_path(self) -> Path:
        return self.data_dir / "reports" / "outcome_dashboard.html"

    def resources(self, **api_overrides: Any) -> dict[str, Any]:
        # A held token replaces the login: the settings refuse both at once.
        login = {
            "lender": self.sim.config.lender_slug,
            "email": self.sim.config.email,
            "password": self.sim.config.password,
        }
        api = {
            "api_url": self.api_url,
            **({} if api_overrides.get("token") else login),
            "page_limit": self.page_limit,
            "max_concurrency": self.max_concurrency,
            "slice_hours": self.slice_hours,
            **api_overrides,
        }
        return {
            "exports_api": ExportsApiResource(**api),
            "warehouse": self.warehouse_resource(),
            "landing_zone": LandingZoneResource(raw_dir=str(self.data_dir / "raw")),
            "outcome_mapping": OutcomeMappingResource(),
            "dashboard_file": DashboardResource(path=str(self.dashboard_path)),
        }

    def warehouse_resource(self) -> WarehouseResource:
        return WarehouseResource(
            database=str(self.warehouse_path),
            backend=self.backend,
            dsn=None if self.lake is None else self.lake.dsn,
            ducklake_data_path=None if self.lake is None else str(self.lake.data_path),
        )

    def warehouse(self) -> WarehouseBackend:
        lake = self.lake
        if lake is None:
            return open_warehouse("duckdb", database=self.warehouse_path)
        return open_warehouse(
            "ducklake",
            database=self.warehouse_path,
            dsn=lake.dsn,
            ducklake_data_path=str(lake.data_path),
        )

    def materialize(
        self,
        month: str,
        *,
        raise_on_error: bool = True,
        selection: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        instance: dg.DagsterInstance | None = None,
        tags: Mapping[str, str] | None = None,
        **api_overrides: Any,
    ) -> dg.ExecuteInProcessResult:
        """Materialize the D23 assets (all, or ``selection``) for one month, in process."""
        return dg.materialize(
            list(defs.assets),
            selection=selection,
            resources=self.resources(**api_overrides),
            partition_key=f"{month}-01",
            run_config=run_config,
            raise_on_error=raise_on_error,
            instance=instance,
            tags=tags,
        )

    def login_token(self) -> str:
        """A bearer token of the simulator's lender, as a user holding D23_TOKEN has one."""
        config = self.sim.config
        answer = httpx.post(
            f"{self.api_url}/admin/auth/{config.lender_slug}/login",
            json={"email": config.email, "password": config.password},
        )
        return answer.json()["token"]

    def materialize_crashing(
        self, month: str, after_slices: int, *, including: Window | None = None
    ) -> dg.ExecuteInProcessResult:
        """Materialize ``month`` with the run dying right after its ``after_slices``-th slice
        (or the first after it once ``including`` is) is landed and in the manifest, as a killed
        run would; a later run resumes from there."""
        with crashing_after(after_slices, including=including):
            return self.materialize(month, raise_on_error=False)

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self.lake is not None:  # readers need no lock: they read the last committed state
            with self.warehouse().connect(read_only=True) as con:
                return con.execute(statement, list(params)).fetchall()
        # The DuckDB file directly, without the pipeline's lock (tests hold it themselves).
        con = duckdb.connect(str(self.warehouse_path), read_only=True)
        try:
            con.execute("SET TimeZone = 'UTC'")
            return con.execute(statement, list(params)).fetchall()
        finally:
            con.close()

    def live_rows(self, months: Sequence[str] = MONTHS) -> set[tuple]:
        """d23.logs rows not marked deleted, with communicated_at in ``months``."""
        return set().union(*(stored_rows(self.query, month) for month in months))

    def expected_rows(self, months: Sequence[str] = MONTHS) -> set[tuple]:
        """What the source holds now for ``months``: the rows a correct warehouse must equal."""
        return set().union(*(source_rows(self.sim, month) for month in months))


def stored_rows(query: Callable[[str, Sequence[Any]], list[tuple]], month: str) -> set[tuple]:
    """d23.logs rows not marked deleted with communicated_at in ``month``, as :func:`canonical`
    tuples; ``query`` runs a statement with its parameters on the warehouse."""
    columns = ", ".join(D23_FIELDS)
    result = query(
        f"SELECT {columns} FROM d23.logs WHERE _deleted_at IS NULL "
        "AND communicated_at >= ? AND communicated_at < ?",
        month_window(month),
    )
    return {canonical(dict(zip(D23_FIELDS, r, strict=True))) for r in result}


def source_rows(sim: Simulator, month: str) -> set[tuple]:
    """What the source holds now for ``month``: the rows a correct warehouse must equal."""
    return {canonical(r) for r in sim.valid_rows(*month_window(month))}


class SimulatedCrash(RuntimeError):
    """A read stopped midway, as a killed run is."""


@contextlib.contextmanager
def crashing_after(slices: int, *, including: Window | None = None) -> Iterator[None]:
    """Reads within raise :class:`SimulatedCrash` right after their ``slices``-th slice is
    landed and in the manifest (counted across reads), or the first after it once the slice
    ``including`` is; a later read resumes from there."""
    finished = 0
    waiting_for = including
    finish = SnapshotWriter.finish_slice

    def finish_then_crash(writer: SnapshotWriter, done: SliceDone) -> None:
        nonlocal finished, waiting_for
        finish(writer, done)
        finished += 1
        waiting_for = None if done.slice == waiting_for else waiting_for
        if finished >= slices and waiting_for is None:
            raise SimulatedCrash("simulated crash mid-month")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SnapshotWriter, "finish_slice", finish_then_crash)
        yield


def warehouse_digest(path: Path) -> str:
    """A hash of every table in the warehouse file, to show that a failed run changed nothing."""
    if not path.exists():
        return "no warehouse"
    con = duckdb.connect(str(path), read_only=True)
    try:
        digest = hashlib.sha256()
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL"
        ).fetchall()
        for schema, table in tables:
            rows = con.execute(f'SELECT * FROM "{schema}"."{table}" ORDER BY ALL').fetchall()
            digest.update(repr((schema, table, rows)).encode())
        return digest.hexdigest()
    finally:
        con.close()


def failure_messages(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Failed step -> its error message followed by every cause's, as one text."""
    failures = {}
    for event in result.get_step_failure_events():
        error, parts = event.step_failure_data.error, []
        while error is not None:
            parts.append(error.message)
            error = error.cause
        failures[event.step_key] = "\n".join(parts)
    return failures


def _readable_forms(path: Path) -> Iterator[bytes]:
    # Parquet pages, DuckDB blocks and Dagster's zlib-compressed snapshots hide text from a
    # plain byte search, so each is also decoded.
    raw = path.read_bytes()
    yield raw
    if raw[:4] == b"PAR1":
        yield repr(pq.read_table(path).to_pylist()).encode()
    elif raw[8:12] == b"DUCK":
        con = duckdb.connect(str(path), read_only=True)
        try:
            tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
            for schema, table in tables:
                yield repr(con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()).encode()
        finally:
            con.close()
    elif raw.startswith(b"SQLite format 3\x00"):
        yield from _sqlite_cells(path)


def _sqlite_cells(path: Path) -> Iterator[bytes]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        for (table,) in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    if isinstance(cell, str):
                        yield cell.encode()
                    elif isinstance(cell, bytes):
                        yield cell
                        yield _inflate(cell)
    finally:
        con.close()


def _inflate(blob: bytes) -> bytes:
    try:
        return zlib.decompress(blob)
    except zlib.error:
        return b""


def files_containing(root: Path, needles: Iterable[str]) -> dict[str, set[str]]:
    """Files under ``root`` (relative path) -> which of ``needles`` they hold, decoded or not."""
    wanted = [n.encode() for n in needles]
    hits: dict[str, set[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for form in _readable_forms(path):
            found = {n.decode() for n in wanted if n in form}
            if found:
                hits.setdefault(str(path.relative_to(root)), set()).update(found)
    return hits


class ExportHookSimulator(Simulator):
    """The simulator with a hook on export requests, for tests that bend or watch them."""

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        """The path to serve instead, and a response to answer with instead of the simulator."""
        return path, None

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> SimResponse | object:
        if "/exports/" in path:
            path, answer = self.on_export(path, query)
            if answer is not None:
                return answer
        return super().handle(method, path, query, headers, body)
