"""Asset checks: the specs each asset declares, and the pure functions that evaluate them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from d23_pipeline.analytics.outcome_classes import shown_code
from d23_pipeline.defs.keys import (
    LOGS,
    OUTCOME_KPIS_MONTHLY,
    OUTCOME_MIX_DAILY,
    OUTCOME_MIX_MONTHLY,
    RAW_LOGS,
)
from d23_pipeline.defs.metadata import markdown_table
from d23_pipeline.defs.partitions import monthly_partitions

# The specs load with the definitions (the assets declare them); the checks that query the
# warehouse import it (DuckDB, and Arrow through the field contract) only when they run.
if TYPE_CHECKING:
    from datetime import datetime

    import duckdb

    from d23_pipeline.landing.snapshot import SliceRecord, Snapshot
    from d23_pipeline.warehouse.store import MergeSummary

# Above this share of a month's served rows, rejects are an ERROR rather than a WARN: a few bad
# rows are the source's problem to fix, a percent means the contract moved under us.
REJECT_ERROR_SHARE = 0.01
# Above this share of a month's attempts in codes the mapping does not know, the month's rates
# are no longer comparable with other months': the mapping file needs those codes.
UNMAPPED_ERROR_SHARE = 0.02

# Every check below is per month (the partitions of the asset it checks), so the UI keeps a
# failing month's result visible next to other months' passing ones. Dagster 1.13 flags
# partitioned checks as a preview; the warning would repeat on every load of the definitions.
warnings.filterwarnings("ignore", ".*partitions_def on an AssetCheckSpec", dg.PreviewWarning)

# Not blocking: the rows of an unverified slice are still merged (they may add and update);
# d23/logs' slices_verified check then fails the run, after the merge.
ROWS_MATCH_API_TOTAL = dg.AssetCheckSpec(
    "rows_match_api_total",
    asset=RAW_LOGS,
    partitions_def=monthly_partitions,
    description=(
        "Every slice's rows served (landed + rejected) are consistent with the API's exact "
        "counts taken before and after its walk."
    ),
)
REJECTED_ROWS = dg.AssetCheckSpec(
    "rejected_rows",
    asset=RAW_LOGS,
    partitions_def=monthly_partitions,
    description=(
        "WARN when any row of the month broke the D23 contract (d23/logs quarantines them in "
        f"d23.rejected_rows); ERROR above {REJECT_ERROR_SHARE:.0%} of the month's served rows."
    ),
)
PUBLIC_ID_UNIQUE = dg.AssetCheckSpec(
    "public_id_unique",
    asset=LOGS,
    partitions_def=monthly_partitions,
    blocking=True,
    description="One row per public_id in d23.logs.",
)
ONLY_ALLOWLISTED_COLUMNS = dg.AssetCheckSpec(
    "only_allowlisted_columns",
    asset=LOGS,
    partitions_def=monthly_partitions,
    blocking=True,
    description="d23.logs stores the 9 D23 fields and _-prefixed bookkeeping columns only.",
)
SLICES_VERIFIED = dg.AssetCheckSpec(
    "slices_verified",
    asset=LOGS,
    partitions_def=monthly_partitions,
    blocking=True,
    description=(
        "Every slice of the merged read is proven complete; an unverified slice added and "
        "updated rows but deleted none, and fails the run so that it is read again (warns "
        "only, if its count just moved after its read)."
    ),
)
DELETIONS_WITHIN_LIMIT = dg.AssetCheckSpec(
    "deletions_within_limit",
    asset=LOGS,
    partitions_def=monthly_partitions,
    blocking=True,
    description=(
        "The merge marked deleted no more than the allowed share of the month's live rows, or "
        "an operator confirmed the deletions for this run."
    ),
)
CONFLICTING_VERSIONS = dg.AssetCheckSpec(
    "conflicting_versions",
    asset=LOGS,
    partitions_def=monthly_partitions,
    description=(
        "WARN when the read served versions the merge cannot take: a public_id more than once "
        "with the same updated_at and other values (the version read last is kept, the others "
        "are quarantined in d23.rejected_rows), or with other values under an updated_at older "
        "than the stored version's (the stored version is kept)."
    ),
)
DELETIONS_PROVEN = dg.AssetCheckSpec(
    "deletions_proven",
    asset=LOGS,
    partitions_def=monthly_partitions,
    description=(
        "WARN when the read found rows gone from the source that it could not prove gone from "
        "the month: none is marked deleted, and they stay live (the active ones counted as "
        "attempts in the KPIs) until a read proves them gone."
    ),
)
UNMAPPED_OUTCOMES = dg.AssetCheckSpec(
    "unmapped_outcome_codes",
    asset=OUTCOME_MIX_MONTHLY,
    partitions_def=monthly_partitions,
    description="WARN when the month holds outcome codes the mapping file does not classify.",
)

BROKEN_FLAGS_OUTSIDE_PROMISES = dg.AssetCheckSpec(
    "broken_flags_on_promises_only",
    asset=OUTCOME_MIX_MONTHLY,
    partitions_def=monthly_partitions,
    description=(
        "WARN when attempts flagged is_ptp_broken carry codes the mapping does not class as a "
        "promise: the broken-promise share does not count them."
    ),
)

KPI_RATES_IN_RANGE = dg.AssetCheckSpec(
    "rates_within_0_and_1",
    asset=OUTCOME_KPIS_MONTHLY,
    partitions_def=monthly_partitions,
    description="Every KPI of the month is a share: between 0 and 1, or empty without attempts.",
)
KPI_ATTEMPTS_MATCH_MIX = dg.AssetCheckSpec(
    "attempts_equal_outcome_mix",
    asset=OUTCOME_KPIS_MONTHLY,
    partitions_def=monthly_partitions,
    description="The month's attempts equal the sum of its outcome mix (d23.outcome_mix_monthly).",
)
KPI_UNMAPPED_SHARE = dg.AssetCheckSpec(
    "unmapped_share",
    asset=OUTCOME_KPIS_MONTHLY,
    partitions_def=monthly_partitions,
    description=(
        "ERROR when more than "
        f"{UNMAPPED_ERROR_SHARE:.0%} of the month's attempts have outcome codes the mapping does "
        "not classify: its contact rate, RPC rate and PTP per attempt then undercount, and the "
        "rates over RPCs or promises may be off either way."
    ),
)
DAILY_RATES_IN_RANGE = dg.AssetCheckSpec(
    "rates_within_0_and_1",
    asset=OUTCOME_MIX_DAILY,
    partitions_def=monthly_partitions,
    description="Every daily KPI of the month is between 0 and 1, or empty without attempts.",
)


def _result(spec: dg.AssetCheckSpec, **kwargs: Any) -> dg.AssetCheckResult:
    # A failure always says why in its description, which the UI's check list and the
    # backfill command's --wait show (not the metadata): what was found, when nothing better.
    if not kwargs.get("passed") and not kwargs.get("description"):
        metadata = kwargs.get("metadata", {})
        found = "; ".join(f"{name}: {str(value)[:200]}" for name, value in metadata.items())
        kwargs["description"] = f"{spec.description} Found {found}." if found else spec.description
    return dg.AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, **kwargs)


def _listed(items: Iterable[object]) -> str:
    """Items as one line of text, or "none": an empty JSON list sat behind the UI's [Show JSON].
    Separated by "; ", which no count's thousands separator is mistaken for."""
    return "; ".join(map(str, items)) or "none"


def slice_table(slices: list[SliceRecord], limit: int = 40) -> str:
    """Slices as a markdown table: which day of the month, what it served against its counts,
    and why that does (not) prove it complete."""
    rows = [
        {
            "since": s.window.since_text,
            "until": s.window.until_text,
            "served": s.served,
            "count_before": s.total_before,
            "count_after": s.total_after,
            "reads": s.reads,
            "verified": s.verified,
            "why": s.proof.why,
        }
        for s in slices[:limit]
    ]
    more = f"\n\n… and {len(slices) - limit} more" if len(slices) > limit else ""
    return markdown_table(rows, empty="_none_") + more


def _proof_metadata(snapshot: Snapshot) -> dict[str, object]:
    unverified = snapshot.unverified
    return {
        "slices": len(snapshot.slices),
        "slices_verified": len(snapshot.slices) - len(unverified),
        "unverified_slices": dg.MetadataValue.md(slice_table(unverified)),
    }


def describe_unverified(snapshot: Snapshot) -> str:
    """One line naming the unverified slices with their counts, for logs and check results."""
    unverified = snapshot.unverified
    parts = [f"{s.window}: {s.proof.reason}" for s in unverified]
    reads = max(s.reads for s in unverified)
    if snapshot.refuted:
        advice = (
            "The daily refresh and run retries read the month again; if it persists, lower "
            "D23_SLICE_HOURS and report these windows to the API team."
        )
    else:
        why = {s.left_as_read for s in unverified}
        advice = "The month's next read (the daily refresh's, or a backfill's) lands what moved."
        if "moved" in why:
            advice += (
                " If every read says a count moved, rows are being logged into days already read "
                "as the month is read, and a read at a quieter hour proves them."
            )
        if "uncounted" in why:
            advice += (
                " If every read says the API gave no exact count, its counts time out once the "
                "month is read: report these windows to the API team."
            )
    return (
        f"{snapshot.partition}: {len(parts)} slice(s) not proven complete after "
        f"{f'up to {reads} reads' if reads > 1 else 'one read'}, so no row in them was marked "
        f"deleted: {'; '.join(parts[:5])}{' ...' if len(parts) > 5 else ''}. {advice}"
    )


def rows_match_api_total(snapshot: Snapshot) -> dg.AssetCheckResult:
    """Whether every slice served what the API's counts around its walk allow."""
    return _result(
        ROWS_MATCH_API_TOTAL,
        passed=not snapshot.refuted,
        severity=dg.AssetCheckSeverity.ERROR,
        description=describe_unverified(snapshot) if snapshot.refuted else None,
        metadata={"served_rows": snapshot.rows + snapshot.rejects, **_proof_metadata(snapshot)},
    )


def slices_verified(snapshot: Snapshot) -> dg.AssetCheckResult:
    """ERROR (the run fails, to be read again) for a slice its counts did not prove; WARN for
    one only the read's count of the month once done left as read (its count had moved, or the
    API gave none exactly): read again at once, it would most likely move again, as rows logged
    late keep coming, and fail the month every time; or cost a read of the month on an API
    whose counts time out."""
    return _result(
        SLICES_VERIFIED,
        passed=not snapshot.unverified,
        severity=dg.AssetCheckSeverity.ERROR if snapshot.refuted else dg.AssetCheckSeverity.WARN,
        description=describe_unverified(snapshot) if snapshot.unverified else None,
        metadata=_proof_metadata(snapshot),
    )


def _rows_allowed(live_rows: int, max_share: float) -> int:
    """The most deletions a merge marks unconfirmed: n with n / live_rows <= max_share, compared
    as the merge compares (max_share * live_rows is 28.999999999999996 for 0.29 of 100)."""
    allowed = int(max_share * live_rows)
    while allowed < live_rows and (allowed + 1) / live_rows <= max_share:
        allowed += 1
    return allowed


def describe_held_deletions(partition: str, summary: MergeSummary, max_share: float) -> str:
    """Why a merge marked nothing deleted, and how an operator lets it."""
    return (
        f"{partition}: the read proved {summary.deletions_proven} of {summary.live_rows} live "
        f"rows ({summary.deletion_share:.2%}) gone from the source, more than the allowed "
        f"{max_share:.2%} (at most {_rows_allowed(summary.live_rows, max_share)} rows); none was "
        "marked deleted. If the source really lost them, confirm "
        "once by re-running d23/logs and the assets downstream of it (selection 'd23/logs*') "
        "for this month with run config "
        '{"ops": {"d23__logs": {"config": {"confirm_deletions": true}}}} '
        "(the UI's launchpad, or --config-json with dagster asset materialize)."
    )


def deletions_proven(snapshot: Snapshot, summary: MergeSummary) -> dg.AssetCheckResult:
    """Whether every row the read found gone from its instant was proven gone or found again,
    and every live row of its verified slices was weighed by it."""
    parts = [
        f"{u.rows} rows look deleted at the source (e.g. {', '.join(u.examples)}), but {u.reason}"
        for u in snapshot.unproven
    ]
    if summary.not_weighed:
        parts.append(
            f"{summary.not_weighed} rows were merged by another read of the month after this "
            "one looked for rows gone (two runs of the month at once), so it could not weigh them"
        )
    return _result(
        DELETIONS_PROVEN,
        passed=not parts,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{snapshot.partition}: {'; '.join(parts)}. None of them was marked deleted; they "
            "stay live (the active ones counted as attempts in the KPIs) until a read proves "
            "them gone"
            if parts
            else None
        ),
        metadata={"unproven_deletions": snapshot.unproven_rows + summary.not_weighed},
    )


def conflicting_versions(partition: str, summary: MergeSummary) -> dg.AssetCheckResult:
    found = []
    if summary.conflicting_versions:
        found.append(
            "the read served ids again under an updated_at it had served them with, holding "
            "other values; quarantined in d23.rejected_rows: "
            f"{summary.conflicting_versions:,} (the version read last is kept)"
        )
    if summary.older_versions:
        found.append(
            "rows were served with other values under an updated_at older than the stored "
            f"version's: {summary.older_versions:,} (e.g. "
            f"{', '.join(summary.older_version_examples)}); the stored versions are kept "
            "(latest updated_at wins), so those rows differ from the source until it gives them "
            "a newer updated_at"
        )
    return _result(
        CONFLICTING_VERSIONS,
        passed=not found,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{partition}: {'; '.join(found)}. Report those ids to the API team"
        if found
        else None,
        metadata={
            "conflicting_versions": summary.conflicting_versions,
            "older_versions_served": summary.older_versions,
            "older_version_examples": _listed(summary.older_version_examples),
        },
    )


def deletions_within_limit(
    partition: str, summary: MergeSummary, max_share: float
) -> dg.AssetCheckResult:
    return _result(
        DELETIONS_WITHIN_LIMIT,
        passed=not summary.deletions_held,
        description=(
            describe_held_deletions(partition, summary, max_share)
            if summary.deletions_held
            else None
        ),
        metadata={
            "deletions_proven": summary.deletions_proven,
            "marked_deleted": summary.marked_deleted,
            "live_rows_before_merge": summary.live_rows,
            "deletion_share": dg.MetadataValue.float(round(summary.deletion_share, 6)),
            "max_deletion_share": dg.MetadataValue.float(max_share),
        },
    )


def rejected_rows(
    rows: int, rejects: int, by_reason: Sequence[Mapping[str, Any]] = ()
) -> dg.AssetCheckResult:
    """Fails, WARN or ERROR by their share, when the read quarantined rows; ``by_reason``: per
    reason, the rows and a few ids, so the check says what broke without a query."""
    served = rows + rejects
    share = rejects / served if served else 0.0
    metadata: dict[str, Any] = {"rejected_rows": rejects, "rejected_share": round(share, 6)}
    if by_reason:
        metadata["rejects_by_reason"] = dg.MetadataValue.md(markdown_table(by_reason))
    if not rejects:
        return _result(REJECTED_ROWS, passed=True, metadata=metadata)
    severity = (
        dg.AssetCheckSeverity.ERROR if share > REJECT_ERROR_SHARE else dg.AssetCheckSeverity.WARN
    )
    return _result(REJECTED_ROWS, passed=False, severity=severity, metadata=metadata)


def public_id_unique(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse.store import duplicate_public_ids

    duplicates = duplicate_public_ids(con)
    return _result(
        PUBLIC_ID_UNIQUE,
        passed=not duplicates,
        metadata={"duplicated_public_ids": _listed(d[0] for d in duplicates)},
    )


def only_allowlisted_columns(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    from d23_pipeline.schema import D23_FIELDS
    from d23_pipeline.warehouse.store import table_columns

    unexpected = [
        name
        for name, _ in table_columns(con, "logs")
        if name not in D23_FIELDS and not name.startswith("_")
    ]
    return _result(
        ONLY_ALLOWLISTED_COLUMNS,
        passed=not unexpected,
        metadata={"unexpected_columns": _listed(unexpected)},
    )


def unmapped_outcome_codes(con: duckdb.DuckDBPyConnection, month: object) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse import sql

    return _codes_warning(
        UNMAPPED_OUTCOMES,
        con,
        sql.UNMAPPED_OUTCOMES,
        {"month": month},
        found="codes the outcome mapping does not classify, with their attempts",
        advice="counted as attempts only. Add them to the mapping file (D23_OUTCOME_MAPPING) "
        "and re-materialize the month",
        metadata_key="unmapped_codes",
    )


def broken_flags_on_promises_only(
    con: duckdb.DuckDBPyConnection, since: datetime, until: datetime
) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse import sql

    return _codes_warning(
        BROKEN_FLAGS_OUTSIDE_PROMISES,
        con,
        sql.BROKEN_FLAGS_OUTSIDE_PROMISES,
        {"since": since, "until": until},
        found="attempts flagged is_ptp_broken under codes not classed as a promise",
        advice="the broken-promise share does not count them. If a code is a promise, class it "
        "so in the mapping file (D23_OUTCOME_MAPPING) and re-materialize the month",
        metadata_key="broken_flags_outside_promises",
    )


def _codes_warning(
    spec: dg.AssetCheckSpec,
    con: duckdb.DuckDBPyConnection,
    statement: str,
    params: dict[str, Any],
    *,
    found: str,
    advice: str,
    metadata_key: str,
) -> dg.AssetCheckResult:
    """WARN naming the codes ``statement`` finds, with their attempts (ten in the text)."""
    from d23_pipeline.warehouse.store import execute

    rows = [(shown_code(code), n) for code, n in execute(con, statement, params).fetchall()]
    codes = ", ".join(f"{code} {n:,}" for code, n in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return _result(
        spec,
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{found}: {codes}{more}; {advice}" if rows else None,
        metadata={metadata_key: _listed(f"{code}: {n:,}" for code, n in rows)},
    )


def _rates_in_range(
    spec: dg.AssetCheckSpec, con: duckdb.DuckDBPyConnection, statement: str, params: dict
) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse.store import execute

    bad = execute(con, statement, params).fetchall()
    return _result(
        spec,
        passed=not bad,
        metadata={"rates_out_of_range": _listed(" ".join(map(str, row)) for row in bad)},
    )


def kpi_rates_in_range(con: duckdb.DuckDBPyConnection, month: object) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse import sql

    return _rates_in_range(KPI_RATES_IN_RANGE, con, sql.KPI_RATES_OUT_OF_RANGE, {"month": month})


def daily_rates_in_range(
    con: duckdb.DuckDBPyConnection, since: object, until: object
) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse import sql

    return _rates_in_range(
        DAILY_RATES_IN_RANGE,
        con,
        sql.DAILY_RATES_OUT_OF_RANGE,
        {"since": since, "until": until},
    )


def kpi_attempts_match_mix(con: duckdb.DuckDBPyConnection, month: object) -> dg.AssetCheckResult:
    from d23_pipeline.warehouse import sql
    from d23_pipeline.warehouse.store import execute

    kpi_attempts, mix_attempts, rebuild_due = execute(
        con, sql.KPI_ATTEMPTS_AND_MIX_ATTEMPTS, {"month": month}
    ).fetchone()
    # Due: a merge of another month changed this month's rows, and this month's KPIs wait for
    # its mix to be rebuilt (by that month's outcome-mix steps); the mix may be ahead of them.
    return _result(
        KPI_ATTEMPTS_MATCH_MIX,
        passed=kpi_attempts == mix_attempts or rebuild_due,
        description=(
            "the month's KPIs are due for a rebuild from its rebuilt outcome mix (a merge of "
            "another month changed its rows); that month's KPI step does it"
            if rebuild_due and kpi_attempts != mix_attempts
            else None
        ),
        metadata={
            "kpi_attempts": kpi_attempts,
            "outcome_mix_attempts": int(mix_attempts),
            "kpi_rebuild_due": rebuild_due,
        },
    )


def kpi_unmapped_share(attempts: int, unmapped_attempts: int) -> dg.AssetCheckResult:
    share = unmapped_attempts / attempts if attempts else 0.0
    passed = share <= UNMAPPED_ERROR_SHARE
    return _result(
        KPI_UNMAPPED_SHARE,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None
        if passed
        else (
            f"{unmapped_attempts:,} of the month's {attempts:,} attempts ({share:.2%}) have "
            f"outcome codes the mapping does not classify, more than {UNMAPPED_ERROR_SHARE:.0%}: "
            "its contact rate, RPC rate and PTP per attempt undercount, and the rates over RPCs "
            "or promises (PTP per RPC, refusal rate, broken-promise share) may be off either "
            "way. The codes are in the "
            "unmapped_outcome_codes check of d23/outcome_mix_monthly; add them to the mapping "
            "file (D23_OUTCOME_MAPPING) and re-materialize the month"
        ),
        metadata={
            "unmapped_attempts": unmapped_attempts,
            "unmapped_share_percent": round(share * 100, 2),
            "threshold_percent": UNMAPPED_ERROR_SHARE * 100,
        },
    )
