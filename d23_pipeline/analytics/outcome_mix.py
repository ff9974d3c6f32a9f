"""Rebuild a month of the outcome-mix tables from ``d23.logs``.

Each rebuild replaces exactly one month (or that month's days) inside one transaction, so a
re-run is idempotent and a failure leaves the previous numbers in place. The same transaction
takes the month off ``d23.mix_rebuilds_due``, where a merge of another month puts the months whose
rows it changed (:func:`rebuild_months_due`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import date, datetime
from typing import Any

import duckdb

from d23_pipeline.analytics.outcome_classes import OutcomeClass
from d23_pipeline.months import month_window
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.ducklake import retry_on_conflict
from d23_pipeline.warehouse.store import execute, fetch_row, transaction


def load_classes(con: duckdb.DuckDBPyConnection, classes: Mapping[str, OutcomeClass]) -> None:
    """The mapping as the session's temp table ``outcome_classes``, which the SQL joins."""
    con.execute(sql.CREATE_OUTCOME_CLASSES)
    if classes:
        flags = {
            f.name: [getattr(c, f.name) for c in classes.values()] for f in fields(OutcomeClass)
        }
        execute(con, sql.INSERT_OUTCOME_CLASSES, {"codes": list(classes), **flags})


# The table each mix table is built from, rather than from d23.logs.
_BUILT_FROM = {"outcome_kpis_monthly": "outcome_mix_monthly"}


def _replace(
    con: duckdb.DuckDBPyConnection,
    delete: str,
    insert: str,
    params: Mapping[str, Any],
    mix_table: str,
    month: date,
) -> None:
    due = {"mix_table": mix_table, "month": month, "built_from": _BUILT_FROM.get(mix_table, "")}

    def replace() -> None:
        with transaction(con):
            execute(con, delete, params)
            execute(con, insert, params)
            execute(con, sql.MIX_REBUILD_DONE, due)
            # On DuckLake: conflicts with any other rebuild open at once (see sql.py).
            if fetch_row(con, sql.RECORD_MIX_REBUILD)[0] < 1:
                raise RuntimeError(
                    "d23.mix_rebuilds has lost its row: insert one (see CREATE_SCHEMA in "
                    "d23_pipeline/warehouse/sql.py)"
                )

    retry_on_conflict(replace)


def rebuild_months_due(
    con: duckdb.DuckDBPyConnection,
    mix_table: str,
    rebuild: Callable[[date, datetime, datetime], object],
) -> list[date]:
    """Rebuild, with ``rebuild(month, since, until)``, the months of ``mix_table`` that a merge of
    another month changed rows of; the KPIs only once their month's mix is rebuilt."""
    params = {"mix_table": mix_table, "built_from": _BUILT_FROM.get(mix_table, "")}
    months = [month for (month,) in execute(con, sql.MIX_REBUILDS_DUE, params).fetchall()]
    for month in months:
        rebuild(month, *month_window(f"{month:%Y-%m}"))
    return months


def rebuild_outcome_mix_monthly(
    con: duckdb.DuckDBPyConnection,
    month: date,
    since: datetime,
    until: datetime,
    classes: Mapping[str, OutcomeClass],
) -> None:
    """Replace ``month`` in ``d23.outcome_mix_monthly``."""
    load_classes(con, classes)
    params = {"month": month, "since": since, "until": until}
    _replace(
        con,
        sql.DELETE_OUTCOME_MIX_MONTHLY,
        sql.INSERT_OUTCOME_MIX_MONTHLY,
        params,
        "outcome_mix_monthly",
        month,
    )


def rebuild_outcome_kpis_monthly(con: duckdb.DuckDBPyConnection, month: date) -> None:
    """Replace ``month`` in ``d23.outcome_kpis_monthly`` from the month's outcome mix."""
    params = {"month": month}
    _replace(
        con,
        sql.DELETE_OUTCOME_KPIS_MONTHLY,
        sql.INSERT_OUTCOME_KPIS_MONTHLY,
        params,
        "outcome_kpis_monthly",
        month,
    )


def rebuild_outcome_mix_daily(
    con: duckdb.DuckDBPyConnection,
    since: datetime,
    until: datetime,
    classes: Mapping[str, OutcomeClass],
) -> None:
    """Replace the days of ``[since, until)`` in ``d23.outcome_mix_daily``."""
    load_classes(con, classes)
    params = {"since": since, "until": until}
    _replace(
        con,
        sql.DELETE_OUTCOME_MIX_DAILY,
        sql.INSERT_OUTCOME_MIX_DAILY,
        params,
        "outcome_mix_daily",
        since.date(),
    )
