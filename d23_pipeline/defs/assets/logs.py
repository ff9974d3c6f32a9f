"""``d23/logs``: the deduplicated warehouse table, one row per ``public_id``."""

import dagster as dg

from d23_pipeline.defs import checks
from d23_pipeline.defs.metadata import markdown_table, schema_from_table
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import LandingZoneResource, WarehouseResource
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.store import execute, fetch_dicts, merge_snapshot


@dg.asset(
    key=checks.LOGS,
    deps=[checks.RAW_LOGS],
    partitions_def=monthly_partitions,
    group_name="d23_ingest",
    kinds={"duckdb"},
    owners=["team:data-engineering"],
    pool="d23_warehouse",
    check_specs=[checks.PUBLIC_ID_UNIQUE, checks.ONLY_ALLOWLISTED_COLUMNS],
    description=(
        "Table d23.logs: every D23 row once per public_id, latest updated_at winning. Each month's "
        "raw snapshot is merged in one transaction; rows gone from a complete re-read get "
        "_deleted_at."
    ),
)
def logs(
    context: dg.AssetExecutionContext,
    landing_zone: LandingZoneResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Merge the month's latest raw snapshot into d23.logs."""
    partition = context.partition_key
    snapshot = landing_zone.store().current(partition)
    if snapshot is None:
        raise dg.Failure(
            f"No complete raw snapshot for {partition}: materialize d23/raw_logs for it first."
        )
    with warehouse.get_connection() as con:
        summary = merge_snapshot(
            con,
            partition=partition,
            row_files=snapshot.row_files,
            reject_files=snapshot.reject_files,
            read_at=snapshot.completed_at,
        )
        total_rows = execute(con, sql.LOGS_ROW_COUNT).fetchone()[0]
        month_rows = execute(
            con, sql.LOGS_PARTITION_ROW_COUNT, {"partition": partition}
        ).fetchone()[0]
        preview = fetch_dicts(con, sql.LOGS_PREVIEW, {"partition": partition, "limit": 10})
        schema = schema_from_table(con, "logs")
        check_results = [checks.public_id_unique(con), checks.only_allowlisted_columns(con)]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total_rows,
            "dagster/partition_row_count": month_rows,
            "dagster/column_schema": schema,
            "dagster/table_name": "d23.logs",
            "snapshot_rows": summary.snapshot_rows,
            "inserted": summary.inserted,
            "updated": summary.updated,
            "restored": summary.restored,
            "moved_from_other_month": summary.moved_in,
            "marked_deleted": summary.marked_deleted,
            "rejected_rows": summary.rejects,
            "preview": dg.MetadataValue.md(markdown_table(preview)),
        },
        check_results=check_results,
    )
