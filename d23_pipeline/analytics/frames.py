"""Numbers for notebooks: the KPI and outcome-mix tables as pandas DataFrames, in one call.

    from d23_pipeline.analytics.frames import load_outcome_tables

    tables = load_outcome_tables()  # $D23_DATA_DIR/warehouse.duckdb, else data/warehouse.duckdb
    tables.kpis_monthly.tail()

The warehouse is opened read-only and closed before the call returns, so a notebook never
holds it: while any process has the file open, even read-only, DuckDB lets no other process
write it, and while one writes, none may read. With
``D23_WAREHOUSE=ducklake`` it reads the lake instead, the last committed state, never waiting
for a writer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from d23_pipeline.settings import read_data_dir, validate_warehouse
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.ducklake import DuckLakeWarehouse
from d23_pipeline.warehouse.store import (
    Warehouse,
    WarehouseBackend,
    WarehouseBusyError,
    transaction,
)

# What a notebook imports: the loader, and the error it raises while a run writes.
__all__ = ["DEFAULT_WAIT_S", "OutcomeTables", "WarehouseBusyError", "load_outcome_tables"]

# A run holds the warehouse for seconds per step; a notebook should say so rather than hang.
DEFAULT_WAIT_S = 10.0


@dataclass(frozen=True)
class OutcomeTables:
    """``d23.outcome_kpis_monthly``, ``d23.outcome_mix_monthly`` and ``d23.outcome_mix_daily``;
    rates are shares between 0 and 1."""

    kpis_monthly: pd.DataFrame
    mix_monthly: pd.DataFrame
    mix_daily: pd.DataFrame


def _read(warehouse: WarehouseBackend) -> OutcomeTables:
    # One transaction: the three tables as of one commit, while runs write (DuckLake).
    with warehouse.connect(read_only=True) as con, transaction(con):
        return OutcomeTables(
            kpis_monthly=con.execute(sql.OUTCOME_KPIS_ALL).df(),
            mix_monthly=con.execute(sql.OUTCOME_MIX_ALL).df(),
            mix_daily=con.execute(sql.OUTCOME_MIX_DAILY_ALL).df(),
        )


def load_outcome_tables(
    data_dir: str | Path | None = None, wait_s: float = DEFAULT_WAIT_S
) -> OutcomeTables:
    """Read the KPI and mix tables of the warehouse in ``data_dir`` (default: ``D23_DATA_DIR``),
    or of the DuckLake that ``D23_WAREHOUSE=ducklake`` names."""
    # Only the settings that say where the warehouse is: a notebook need not hold the run's.
    warehouse, ducklake_data_path = validate_warehouse(os.environ)
    if warehouse == "ducklake" and ducklake_data_path:
        return _read(DuckLakeWarehouse(os.environ["D23_WAREHOUSE_DSN"], ducklake_data_path))
    path = (
        Path(data_dir if data_dir is not None else read_data_dir(os.environ)) / "warehouse.duckdb"
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"no warehouse at {path}: materialize a month first, or pass the D23_DATA_DIR in use"
        )
    return _read(Warehouse(path, lock_timeout_s=wait_s))
