"""Asset checks: the specs each asset declares, and the pure functions that evaluate them."""

from __future__ import annotations

import dagster as dg
import duckdb

from d23_pipeline.client import WindowTotal
from d23_pipeline.schema import D23_FIELDS
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.store import execute, table_columns

RAW_LOGS = dg.AssetKey(["d23", "raw_logs"])
LOGS = dg.AssetKey(["d23", "logs"])
OUTCOME_MIX_MONTHLY = dg.AssetKey(["d23", "outcome_mix_monthly"])

# Above this share of a month's served rows, rejects are an ERROR rather than a WARN: a few bad
# rows are the source's problem to fix, a percent means the contract moved under us.
REJECT_ERROR_SHARE = 0.01

ROWS_MATCH_API_TOTAL = dg.AssetCheckSpec(
    "rows_match_api_total",
    asset=RAW_LOGS,
    blocking=True,
    description="Rows served for the month (landed + rejected) equal the API's exact total.",
)
REJECTED_ROWS = dg.AssetCheckSpec(
    "rejected_rows",
    asset=RAW_LOGS,
    description=(
        "WARN when any row of the month broke the D23 contract (d23/logs quarantines them in "
        f"d23.rejected_rows); ERROR above {REJECT_ERROR_SHARE:.0%} of the month's served rows."
    ),
)
PUBLIC_ID_UNIQUE = dg.AssetCheckSpec(
    "public_id_unique", asset=LOGS, blocking=True, description="One row per public_id in d23.logs."
)
ONLY_ALLOWLISTED_COLUMNS = dg.AssetCheckSpec(
    "only_allowlisted_columns",
    asset=LOGS,
    blocking=True,
    description="d23.logs stores the 9 D23 fields and _-prefixed bookkeeping columns only.",
)
UNMAPPED_OUTCOMES = dg.AssetCheckSpec(
    "unmapped_outcome_codes",
    asset=OUTCOME_MIX_MONTHLY,
    description="WARN when the month holds outcome codes the mapping file does not classify.",
)


def _result(spec: dg.AssetCheckSpec, **kwargs: object) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, **kwargs)


def describe_total(total: WindowTotal | None) -> str:
    """``exact``, the API's note (``capped``, ``timeout``, ...), or ``unavailable``."""
    if total is None:
        return "unavailable"
    return "exact" if total.exact else total.note or "not exact"


def rows_match_api_total(
    served: int, before: WindowTotal | None, after: WindowTotal | None
) -> dg.AssetCheckResult:
    """Compare the rows served with the API's count taken before and after the read."""
    counts = [t for t in (before, after) if t is not None and t.exact and t.total is not None]
    metadata = {
        "served_rows": served,
        "api_total_before": before.total if before else None,
        "api_total_after": after.total if after else None,
        "api_total_note": describe_total(after or before),
    }
    if not counts:
        return _result(
            ROWS_MATCH_API_TOTAL,
            passed=True,
            metadata={**metadata, "result": "no exact API total to compare (reported only)"},
        )
    if any(t.total == served for t in counts):
        return _result(ROWS_MATCH_API_TOTAL, passed=True, metadata=metadata)
    if len({t.total for t in counts}) > 1:
        # The source changed while we read; the next refresh of the month settles it.
        return _result(
            ROWS_MATCH_API_TOTAL,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
        )
    return _result(
        ROWS_MATCH_API_TOTAL, passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata
    )


def rejected_rows(rows: int, rejects: int) -> dg.AssetCheckResult:
    served = rows + rejects
    share = rejects / served if served else 0.0
    metadata = {"rejected_rows": rejects, "rejected_share": round(share, 6)}
    if not rejects:
        return _result(REJECTED_ROWS, passed=True, metadata=metadata)
    severity = (
        dg.AssetCheckSeverity.ERROR if share > REJECT_ERROR_SHARE else dg.AssetCheckSeverity.WARN
    )
    return _result(REJECTED_ROWS, passed=False, severity=severity, metadata=metadata)


def public_id_unique(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    duplicates = execute(con, sql.DUPLICATE_PUBLIC_IDS).fetchall()
    return _result(
        PUBLIC_ID_UNIQUE,
        passed=not duplicates,
        metadata={"duplicated_public_ids": [d[0] for d in duplicates]},
    )


def only_allowlisted_columns(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    unexpected = [
        name
        for name, _ in table_columns(con, "logs")
        if name not in D23_FIELDS and not name.startswith("_")
    ]
    return _result(
        ONLY_ALLOWLISTED_COLUMNS, passed=not unexpected, metadata={"unexpected_columns": unexpected}
    )


def unmapped_outcome_codes(con: duckdb.DuckDBPyConnection, month: object) -> dg.AssetCheckResult:
    unmapped = execute(con, sql.UNMAPPED_OUTCOMES, {"month": month}).fetchall()
    return _result(
        UNMAPPED_OUTCOMES,
        passed=not unmapped,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unmapped_codes": {code: int(n) for code, n in unmapped}},
    )
