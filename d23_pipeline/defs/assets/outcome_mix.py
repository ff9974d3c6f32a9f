"""Outcome-mix analytics over ``d23.logs``: the monthly mix, its KPIs, and a daily trend."""

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg

from d23_pipeline.analytics import charts
from d23_pipeline.analytics.outcome_classes import shown_code
from d23_pipeline.defs import checks, keys
from d23_pipeline.defs.metadata import markdown_table, schema_from_table
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import OutcomeMappingResource, WarehouseResource
from d23_pipeline.kpis import kpi_table, percent_metadata

if TYPE_CHECKING:
    import duckdb

# The steps import the warehouse code (DuckDB, Arrow) when they run, not when the definitions
# load; charts.py imports pygal only when it draws.

ATTEMPTS_AND_CLASSES = """
Attempts are active (is_active) log entries still present at the source (no _deleted_at).
Outcome classes come from the outcome mapping file (a promise and a refusal are right-party
contacts, and a right-party contact is a contact).
"""
PROMISES_MATURE = """
Broken promises (and broken_promise_share) of recent months are few until their promises mature:
a promise breaks weeks after it is logged, and promise dates live in D24, not yet enabled.
"""
KPI_DEFINITIONS = f"{ATTEMPTS_AND_CLASSES}\n{kpi_table()}\n{PROMISES_MATURE}"

_COMMON = dict(
    partitions_def=monthly_partitions,
    group_name="d23_analytics",
    kinds={"duckdb"},
    owners=["team:collections-analytics"],
    pool="d23_warehouse",
)


def _month(context: dg.AssetExecutionContext):
    return context.partition_time_window.start.date()


@dg.asset(
    key=keys.OUTCOME_MIX_MONTHLY,
    deps=[keys.LOGS],
    check_specs=[checks.UNMAPPED_OUTCOMES, checks.BROKEN_FLAGS_OUTSIDE_PROMISES],
    description=(
        "Table d23.outcome_mix_monthly: attempts per month x communication_type x "
        "interaction_source x outcome_option, with each code's outcome class.\n"
        + ATTEMPTS_AND_CLASSES
        + PROMISES_MATURE
    ),
    **_COMMON,
)
def outcome_mix_monthly(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    outcome_mapping: OutcomeMappingResource,
) -> dg.MaterializeResult:
    """Rebuild the month's outcome mix from d23.logs."""
    from d23_pipeline.analytics.outcome_mix import rebuild_months_due, rebuild_outcome_mix_monthly

    window = context.partition_time_window
    month = _month(context)
    classes = outcome_mapping.classes()
    with warehouse.get_connection() as con:
        rebuild_outcome_mix_monthly(con, month, window.start, window.end, classes)
        also = rebuild_months_due(
            con,
            "outcome_mix_monthly",
            lambda other, since, until: rebuild_outcome_mix_monthly(
                con, other, since, until, classes
            ),
        )
        metadata = {m: _outcome_mix_metadata(con, m) for m in [month, *also]}
        check_results = [
            checks.unmapped_outcome_codes(con, month),
            checks.broken_flags_on_promises_only(con, window.start, window.end),
        ]
    return dg.MaterializeResult(
        metadata={**metadata[month], **_rebuilt_too(context, metadata)},
        check_results=check_results,
    )


def _as_shown(rows: list[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    """``rows`` with the API's text in ``columns`` as reports show it: "CALL " is a group of
    its own, not a second CALL (:func:`shown_code`)."""
    return [{**r, **{c: shown_code(r[c]) for c in columns}} for r in rows]


def _outcome_mix_metadata(con: "duckdb.DuckDBPyConnection", month: date) -> dict[str, Any]:
    from d23_pipeline.warehouse import sql
    from d23_pipeline.warehouse.store import fetch_dicts

    mix = fetch_dicts(con, sql.OUTCOME_MIX_FOR_MONTH, {"month": month})
    by_outcome = _as_shown(
        fetch_dicts(con, sql.OUTCOME_MIX_BY_OUTCOME, {"month": month}), "outcome_option"
    )
    preview = _as_shown(mix[:25], "communication_type", "interaction_source", "outcome_option")
    rest = (
        f"\n\n_{len(mix) - len(preview):,} more rows in d23.outcome_mix_monthly_"
        if len(mix) > len(preview)
        else ""
    )
    # No chart of an empty month: a chart of no bars says nothing the table does not.
    chart = (
        charts.bar_chart(
            [f"{r['outcome_option']} ({r['outcome_class']})" for r in by_outcome],
            [r["attempts"] for r in by_outcome],
            f"Outcome mix, {month:%B %Y}",
        )
        if by_outcome
        else ""
    )
    return {
        "dagster/partition_row_count": len(mix),
        "dagster/column_schema": schema_from_table(con, "outcome_mix_monthly"),
        "dagster/table_name": "d23.outcome_mix_monthly",
        "attempts": sum(r["attempts"] for r in mix),
        "outcome_mix": dg.MetadataValue.md(markdown_table(by_outcome) + "\n\n" + chart),
        "preview": dg.MetadataValue.md(markdown_table(preview) + rest),
    }


@dg.asset(
    key=keys.OUTCOME_KPIS_MONTHLY,
    deps=[keys.OUTCOME_MIX_MONTHLY],
    check_specs=[
        checks.KPI_RATES_IN_RANGE,
        checks.KPI_ATTEMPTS_MATCH_MIX,
        checks.KPI_UNMAPPED_SHARE,
    ],
    description="Table d23.outcome_kpis_monthly: the month's outcome KPIs.\n" + KPI_DEFINITIONS,
    **_COMMON,
)
def outcome_kpis_monthly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Recompute the month's KPIs from its outcome mix."""
    from d23_pipeline.analytics.outcome_mix import rebuild_months_due, rebuild_outcome_kpis_monthly
    from d23_pipeline.warehouse import sql
    from d23_pipeline.warehouse.store import fetch_dicts

    month = _month(context)
    with warehouse.get_connection() as con:
        rebuild_outcome_kpis_monthly(con, month)
        also = rebuild_months_due(
            con, "outcome_kpis_monthly", lambda other, *_: rebuild_outcome_kpis_monthly(con, other)
        )
        kpis = {
            m: fetch_dicts(con, sql.OUTCOME_KPIS_FOR_MONTH, {"month": m})[0] for m in [month, *also]
        }
        metadata = {m: _outcome_kpis_metadata(con, m, row) for m, row in kpis.items()}
        check_results = [
            checks.kpi_rates_in_range(con, month),
            checks.kpi_attempts_match_mix(con, month),
            checks.kpi_unmapped_share(kpis[month]["attempts"], kpis[month]["unmapped_attempts"]),
        ]
    return dg.MaterializeResult(
        metadata={**metadata[month], **_rebuilt_too(context, metadata)},
        check_results=check_results,
    )


def _outcome_kpis_metadata(
    con: "duckdb.DuckDBPyConnection", month: date, kpis: dict[str, Any]
) -> dict[str, Any]:
    """The month's page entries, ``kpis`` its row of d23.outcome_kpis_monthly."""
    from d23_pipeline.analytics.dashboard import month_state
    from d23_pipeline.warehouse import sql
    from d23_pipeline.warehouse.store import fetch_row

    (last_read,) = fetch_row(con, sql.MONTH_LAST_READ, {"partition": month.isoformat()})
    return {
        "dagster/partition_row_count": 1,
        "dagster/column_schema": schema_from_table(con, "outcome_kpis_monthly"),
        "dagster/table_name": "d23.outcome_kpis_monthly",
        # The asset's page shows the last run's entries: say whose they are.
        "month": f"{month:%Y-%m}",
        # A running or maturing month's rates are not final: the dashboard's words for it.
        "month_state": month_state(month, last_read, datetime.now(UTC)),
        **percent_metadata(kpis),
        "attempts": int(kpis["attempts"]),
        "kpis": dg.MetadataValue.md(_kpi_table(kpis)),
    }


def _rebuilt_too(
    context: dg.AssetExecutionContext, metadata: dict[date, dict[str, Any]]
) -> dict[str, str]:
    """For other months rebuilt because a merge, this run's or an earlier one whose outcome steps
    did not run, changed their rows (d23.mix_rebuilds_due): a materialization of each (so its
    page does not go on showing the numbers it had before), a log line, and metadata naming
    them. ``metadata`` is each month's, this run's first."""
    this_month, *others = metadata
    if not others:
        return {}
    names = ", ".join(f"{m:%Y-%m}" for m in others)
    context.log.info(
        f"also rebuilt {names}: a merge changed rows counted there (d23.mix_rebuilds_due)"
    )
    for month in others:
        context.log_event(
            dg.AssetMaterialization(
                asset_key=context.asset_key,
                partition=month.isoformat(),
                metadata={
                    **metadata[month],
                    "rebuilt_by": f"the run of {this_month:%Y-%m}: a merge changed rows counted "
                    "in this month",
                },
            )
        )
    return {"months_rebuilt_too": names}


def _kpi_table(kpis: dict) -> str:
    """One row per KPI (one 14-column row is cut off in the UI): value, numerator, denominator."""
    from d23_pipeline.analytics.dashboard import KPI_FRACTIONS, percent

    rows = [
        {
            "KPI": name,
            "value": percent(kpis[name]),
            "numerator": f"{kpis[num]:,} {num}",
            "denominator": f"{kpis[den]:,} {den}",
        }
        for name, (num, den) in KPI_FRACTIONS.items()
    ]
    return markdown_table(rows) + f"\n\nUnmapped attempts: {kpis['unmapped_attempts']:,}"


@dg.asset(
    key=keys.OUTCOME_MIX_DAILY,
    deps=[keys.LOGS],
    check_specs=[checks.DAILY_RATES_IN_RANGE],
    description="Table d23.outcome_mix_daily: the KPIs per day, for trend charts.\n"
    + KPI_DEFINITIONS,
    **_COMMON,
)
def outcome_mix_daily(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    outcome_mapping: OutcomeMappingResource,
) -> dg.MaterializeResult:
    """Rebuild the daily trend for the month's days."""
    from d23_pipeline.analytics.outcome_mix import rebuild_months_due, rebuild_outcome_mix_daily

    window = context.partition_time_window
    classes = outcome_mapping.classes()
    with warehouse.get_connection() as con:
        rebuild_outcome_mix_daily(con, window.start, window.end, classes)
        also = rebuild_months_due(
            con,
            "outcome_mix_daily",
            lambda _, since, until: rebuild_outcome_mix_daily(con, since, until, classes),
        )
        metadata = {m: _outcome_mix_daily_metadata(con, m) for m in [_month(context), *also]}
        check = checks.daily_rates_in_range(con, window.start, window.end)
    return dg.MaterializeResult(
        metadata={**metadata[_month(context)], **_rebuilt_too(context, metadata)},
        check_results=[check],
    )


def _outcome_mix_daily_metadata(con: "duckdb.DuckDBPyConnection", month: date) -> dict[str, Any]:
    from d23_pipeline.months import month_window
    from d23_pipeline.warehouse import sql
    from d23_pipeline.warehouse.store import fetch_dicts

    since, until = month_window(f"{month:%Y-%m}")
    days = fetch_dicts(con, sql.OUTCOME_MIX_DAILY_FOR_WINDOW, {"since": since, "until": until})
    metadata: dict[str, Any] = {
        "dagster/partition_row_count": len(days),
        "dagster/column_schema": schema_from_table(con, "outcome_mix_daily"),
        "dagster/table_name": "d23.outcome_mix_daily",
    }
    if days:
        # Every day from the month's first to its last counted, so that a day without attempts
        # is a gap in the lines, not a join of the days on either side.
        by_day = {d["day"]: d for d in days}
        shown = [month + timedelta(days=n) for n in range((max(by_day) - month).days + 1)]
        rates = ("contact_rate", "rpc_rate", "ptp_per_attempt")
        metadata["trend"] = dg.MetadataValue.md(
            charts.rate_chart(
                shown,
                {k: [by_day[day][k] if day in by_day else None for day in shown] for k in rates},
                f"Daily outcome rates, {month:%B %Y}",
            )
        )
    return metadata
