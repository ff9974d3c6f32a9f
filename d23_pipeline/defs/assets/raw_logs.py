"""``d23/raw_logs``: one month of D23, read from the Exports API into a raw snapshot on disk."""

import dagster as dg

from d23_pipeline.client import (
    ExportsClient,
    ProtocolError,
    RetriesExhaustedError,
    Window,
    WindowTooHeavyError,
    WindowTotal,
)
from d23_pipeline.defs import checks
from d23_pipeline.defs.metadata import markdown_table, schema_from_arrow
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import ExportsApiResource, LandingZoneResource
from d23_pipeline.schema import ARROW_SCHEMA


def _total(client: ExportsClient, window: Window, log: dg.DagsterLogManager) -> WindowTotal | None:
    # A count the API cannot produce is reported, not fatal: the rows are what matter.
    try:
        return client.fetch_total(window)
    except (RetriesExhaustedError, WindowTooHeavyError, ProtocolError) as exc:
        log.warning(f"API total unavailable for {window}: {exc}")
        return None


@dg.asset(
    key=checks.RAW_LOGS,
    partitions_def=monthly_partitions,
    group_name="d23_ingest",
    kinds={"python", "parquet"},
    owners=["team:data-engineering"],
    pool="d23_api",
    check_specs=[checks.ROWS_MATCH_API_TOTAL, checks.REJECTED_ROWS],
    description=(
        "One month of D23 contact outcomes pulled from the Exports API in time slices, landed as "
        "a Parquet snapshot under $D23_DATA_DIR/raw; an interrupted month resumes from its "
        "finished slices."
    ),
)
def raw_logs(
    context: dg.AssetExecutionContext,
    exports_api: ExportsApiResource,
    landing_zone: LandingZoneResource,
) -> dg.MaterializeResult:
    """Read the partition's month from the API into a fresh raw snapshot."""
    time_window = context.partition_time_window
    window = Window(time_window.start, time_window.end)
    partition = context.partition_key
    slices = window.split(exports_api.slice_size)
    store = landing_zone.store()
    with (
        exports_api.client() as client,
        store.begin(partition, slices, context.run.run_id) as writer,
    ):
        finished = writer.finished
        if finished:
            context.log.info(f"Resuming {partition}: {len(finished)}/{len(slices)} slices done")
        total_before = _total(client, window, context.log)
        writer.land(client.iter_slices(window, skip=finished))
        total_after = _total(client, window, context.log)
        read_stats = client.stats.as_dict()
        rows, rejects = writer.counts
        total_check = checks.rows_match_api_total(rows + rejects, total_before, total_after)
        # Rows short of a stable API count are kept for inspection but never merged: the merge
        # would take the missing rows for deletions.
        promote = total_check.passed or total_check.severity == dg.AssetCheckSeverity.WARN
        snapshot = writer.complete(read_stats, promote=promote)
    if not promote:
        context.log.error(
            f"{partition}: {rows + rejects} rows served against a stable API total of "
            f"{total_after.total if total_after else None}; snapshot {snapshot.directory} kept but "
            "not made current, so d23/logs keeps the previous read of this month"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": snapshot.rows,
            "dagster/partition_row_count": snapshot.rows,
            "dagster/column_schema": schema_from_arrow(ARROW_SCHEMA),
            "snapshot": dg.MetadataValue.path(str(snapshot.directory)),
            "rejected_rows": snapshot.rejects,
            "slices": len(slices),
            "slices_resumed": len(finished),
            "requests": read_stats["requests"],
            "pages": read_stats["pages"],
            "empty_pages": read_stats["empty_pages"],
            "retries_by_cause": dg.MetadataValue.json(read_stats["retries"]),
            "window_splits": read_stats["window_splits"],
            "final_page_limit": read_stats["final_page_limit"],
            "ignored_extra_fields": dg.MetadataValue.json(read_stats["extra_fields"]),
            "api_total": total_after.total if total_after else None,
            "api_total_note": checks.describe_total(total_after),
            "promoted": promote,
            "preview": dg.MetadataValue.md(markdown_table(snapshot.preview(10))),
        },
        check_results=[total_check, checks.rejected_rows(snapshot.rows, snapshot.rejects)],
    )
