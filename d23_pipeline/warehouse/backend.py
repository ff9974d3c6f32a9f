"""Which warehouse a process talks to (``D23_WAREHOUSE``): both give DuckDB connections on which
``d23.logs`` and the other tables resolve, so the merge, checks and KPIs run unchanged."""

from __future__ import annotations

from pathlib import Path

from d23_pipeline.settings import DEFAULT_MEMORY_LIMIT, LOCK_TIMEOUT_S, SettingsError
from d23_pipeline.warehouse.ducklake import DuckLakeWarehouse
from d23_pipeline.warehouse.store import Warehouse, WarehouseBackend


def open_warehouse(
    backend: str,
    *,
    database: Path,
    dsn: str | None = None,
    ducklake_data_path: str | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
) -> WarehouseBackend:
    """The embedded DuckDB file ``database`` (``duckdb``) or the DuckLake (``ducklake``)."""
    if backend == "duckdb":
        return Warehouse(database, lock_timeout_s=lock_timeout_s, memory_limit=memory_limit)
    if backend != "ducklake":
        raise SettingsError(f"D23_WAREHOUSE must be duckdb or ducklake (got {backend!r})")
    if not dsn:
        raise SettingsError("D23_WAREHOUSE_DSN is not set: the DuckLake catalog's PostgreSQL DSN")
    if not ducklake_data_path:
        raise SettingsError("D23_DUCKLAKE_DATA_PATH is not set: the DuckLake's data folder")
    return DuckLakeWarehouse(
        dsn,
        ducklake_data_path,
        lock_timeout_s=lock_timeout_s,
        memory_limit=memory_limit,
        # On this machine whatever the data path: where DuckDB spills a session's work.
        temp_directory=database.with_name("ducklake.tmp"),
    )
