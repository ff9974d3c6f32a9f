"""Metadata the Dagster UI understands: row counts, column schemas, markdown previews."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dagster as dg

from d23_pipeline.kpis import CONTACTS, KPIS, PROMISES, REFUSALS, RPCS

# Imported by the asset modules when the definitions load: DuckDB only where a step builds
# metadata from it.
if TYPE_CHECKING:
    import duckdb


# What each column of d23.logs and the outcome tables holds, shown with the column schema on
# each asset's page; a name means the same in every table it appears in.
COLUMN_DESCRIPTIONS = {
    "public_id": "The log entry's stable id at the source; the key rows are merged on.",
    "communication_type": "Channel of the contact attempt, e.g. CALL, WHATSAPP, SMS.",
    "interaction_source": "Who logged the attempt, e.g. AGENT, IVR, BORROWER.",
    "outcome_option": "Outcome code logged for the attempt, e.g. PTP, RPC, NO_ANSWER.",
    "is_active": "False: the entry was deactivated at the source (then not an attempt).",
    "is_ptp_broken": "The promise to pay tied to this entry was broken.",
    "communicated_at": "When the contact happened (UTC); its month is the row's month.",
    "created_at": "When the entry was created at the source (UTC).",
    "updated_at": "When the entry last changed at the source (UTC); the latest version wins.",
    "_partition": "The month (partition key) whose read last took this row.",
    "_first_seen_at": "When the read that first landed this row finished.",
    "_last_seen_at": "When the latest read that served this row finished.",
    "_deleted_at": "When a read proved the row gone from the source; empty until one does.",
    "month": "The month (its first day), by communicated_at in UTC.",
    "day": "The day, by communicated_at in UTC.",
    "is_mapped": "The month's outcome mapping classifies this code (else: an attempt only).",
    "is_contact": "The month's outcome mapping counts this code as a contact.",
    "is_rpc": "The month's outcome mapping counts this code as a right-party contact.",
    "is_promise": "The month's outcome mapping counts this code as a promise to pay.",
    "is_refusal": "The month's outcome mapping counts this code as a refusal.",
    "attempts": (
        "Attempts of the row's month, day or group: entries active in d23.logs and not marked "
        "deleted (a row gone at the source counts until a read proves it gone)."
    ),
    "broken_promises": "Attempts counted as promises whose promise was broken.",
    "unmapped_attempts": "Attempts whose code the outcome mapping does not classify.",
    **{
        count.column: f"Attempts counted as {count.description}."
        for count in (CONTACTS, RPCS, PROMISES, REFUSALS)
    },
    **{
        kpi.name: f"{kpi.label}: {kpi.numerator.column} / {kpi.denominator.column}, a share "
        f"from 0 to 1, not a percentage; empty without {kpi.denominator.column}."
        for kpi in KPIS
    },
}


def raw_snapshot_schema() -> dg.TableSchema:
    """The columns of a raw snapshot's rows: the nine D23 fields, as its Parquet files hold
    them (``d23_pipeline.schema_arrow.ARROW_SCHEMA``: its timestamps are text)."""
    from d23_pipeline.schema import BOOL_FIELDS, D23_FIELDS  # a step's, not the definitions'

    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, "bool" if name in BOOL_FIELDS else "string") for name in D23_FIELDS
        ]
    )


def schema_from_table(con: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    """The column schema of ``d23.<table>`` as DuckDB reports it, each column described."""
    from d23_pipeline.warehouse.store import table_columns

    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind, description=COLUMN_DESCRIPTIONS.get(name))
            for name, kind in table_columns(con, table)
        ]
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
    if isinstance(value, datetime) and value.tzinfo is not None:
        from d23_pipeline.schema import format_timestamp  # a step's, not the definitions'

        return format_timestamp(value)  # as the API writes it, so a row reads as its JSON did
    return "" if value is None else str(value).replace("|", "\\|")
