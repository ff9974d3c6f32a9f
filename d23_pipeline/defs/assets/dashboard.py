"""``d23/outcome_dashboard``: the analysts' HTML dashboard over every materialized month.

It is not partitioned: whichever month a run materializes, the page is rebuilt from all months
in the warehouse, so one run of any month (the UI, a backfill, the daily refresh or
``dagster asset materialize --partition``) refreshes it.
"""

from datetime import UTC, datetime

import dagster as dg

from d23_pipeline.defs import keys
from d23_pipeline.defs.dashboard_refresh import MERGES_READ, last_merge
from d23_pipeline.defs.resources import DashboardResource, OutcomeMappingResource, WarehouseResource
from d23_pipeline.kpis import percent_metadata


@dg.asset(
    key=keys.OUTCOME_DASHBOARD,
    deps=[keys.OUTCOME_KPIS_MONTHLY, keys.OUTCOME_MIX_MONTHLY, keys.OUTCOME_MIX_DAILY],
    group_name="d23_analytics",
    kinds={"html"},
    owners=["team:collections-analytics"],
    pool="d23_warehouse",
    description=(
        "$D23_DATA_DIR/reports/outcome_dashboard.html: one self-contained page (open it in a "
        "browser, offline too) with the KPI tiles and trends, the outcome mix, contact and RPC "
        "rates by weekday and hour (D23_REPORT_TIMEZONE), channel productivity per day, data "
        "freshness and open data-quality problems, over every materialized month."
    ),
)
def outcome_dashboard(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    outcome_mapping: OutcomeMappingResource,
    dashboard_file: DashboardResource,
) -> dg.MaterializeResult:
    """Rebuild the dashboard from every month in the warehouse."""
    # Imported when the step runs, not when the definitions load (DuckDB, the warehouse code).
    from d23_pipeline.analytics import dashboard

    timezone = dashboard_file.zone()
    path = dashboard_file.file()
    with dashboard.page_lock(path):
        # Before the warehouse is read: every merge up to this event committed before it.
        merged = last_merge(context.instance)
        with warehouse.get_connection() as con:
            data = dashboard.gather(con, outcome_mapping.classes(), timezone, datetime.now(UTC))
        dashboard.write_dashboard(path, data)
    latest, _ = data.tile_months()
    metadata: dict[str, object] = {
        # No file:// link: browsers refuse to open one from the UI's http:// page.
        "path": dg.MetadataValue.path(str(path)),
        "months": [f"{k['month']:%Y-%m}" for k in data.kpis],
        "open_data_quality_problems": data.problem_count(),
        MERGES_READ: 0 if merged is None else merged.storage_id,
    }
    if latest is not None:
        metadata["tiles_month"] = f"{latest['month']:%Y-%m}"
        metadata.update(percent_metadata(latest))
        metadata["tiles_month_doubts"] = (
            "; ".join(data.doubts_about(latest["month"])) or "no open problem touches its counts"
        )
    return dg.MaterializeResult(metadata=metadata)
