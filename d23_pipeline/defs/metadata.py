"""Metadata the Dagster UI understands: row counts, column schemas, markdown previews."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

# Imported by the asset modules when the definitions load: Arrow and DuckDB only where a step
# builds metadata from them.
if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


def schema_from_arrow(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(field.name, str(field.type)) for field in schema])


def schema_from_table(con: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    """The column schema of ``d23.<table>`` as DuckDB reports it."""
    from d23_pipeline.warehouse.store import table_columns

    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind) for name, kind in table_columns(con, table)]
    )


def markdown_table(rows: Sequence[Mapping[str, Any]], empty: str = "_no rows_") -> str:
    """A GitHub-style markdown table of ``rows`` (all share the first row's keys)."""
    if not rows:
        return empty
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row[n]) for n in names) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value).replace("|", "\\|")
