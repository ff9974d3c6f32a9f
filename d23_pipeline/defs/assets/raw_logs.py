"""``d23/raw_logs``: one month of D23, read from the Exports API into a raw snapshot on disk."""

import os
from datetime import timedelta

import dagster as dg

from d23_pipeline.defs import checks, keys
from d23_pipeline.defs.metadata import markdown_table, raw_snapshot_schema
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import ExportsApiResource, LandingZoneResource, WarehouseResource
from d23_pipeline.defs.run_retries import retried_only_when_it_can_help


@dg.asset(
    key=keys.RAW_LOGS,
    partitions_def=monthly_partitions,
    group_name="d23_ingest",
    kinds={"python", "parquet"},
    owners=["team:data-engineering"],
    pool="d23_api",
    check_specs=[checks.ROWS_MATCH_API_TOTAL, checks.REJECTED_ROWS],
    description=(
        "One month of D23 contact outcomes pulled from the Exports API in time slices, each "
        "counted before and after its walk, landed as a Parquet snapshot under $D23_DATA_DIR/raw; "
        "an interrupted month resumes from its finished slices."
    ),
)
def raw_logs(
    context: dg.AssetExecutionContext,
    exports_api: ExportsApiResource,
    landing_zone: LandingZoneResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Read the partition's month from the API into a fresh raw snapshot."""
    # Imported here, not when the definitions load: the client and the landing code bring
    # httpx, Arrow and DuckDB, which only this step needs.
    from d23_pipeline.client import Window
    from d23_pipeline.landing.home import check_landing_home, requested_take_over
    from d23_pipeline.landing.month import read_month

    time_window = context.partition_time_window
    with retried_only_when_it_can_help(context):
        # A warehouse this run could not merge into fails it now, not after a month's download.
        backend = warehouse.warehouse()
        backend.check_usable()
        slices = Window(time_window.start, time_window.end).split(exports_api.slice_size)
        store, partition = landing_zone.store(), context.partition_key
        # Here only checked, so that a read that fails leaves the warehouse as it was.
        check_landing_home(backend, store.root, requested_take_over(os.environ))
        with exports_api.client(
            max_window=store.max_window(partition),
            learned_page_limit=store.learned_page_limit(partition),
        ) as client:
            store.check_source(client.api_host, client.lender_public_id)
            read = read_month(
                client,
                store,
                backend,
                partition=partition,
                slices=slices,
                run_id=context.run.run_id,
                progress=context.log.info,
            )
            store.record_source(client.api_host, client.lender_public_id)
            learned = client.max_window
            store.remember_max_window(partition, learned)
            learned_page = client.learned_page_limit
            store.remember_page_limit(partition, learned_page)
    snapshot = read.snapshot
    stats = snapshot.read_stats
    if snapshot.unverified:
        said = context.log.error if snapshot.refuted else context.log.warning
        said(checks.describe_unverified(snapshot))
    after = [s.total_after for s in snapshot.slices]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": snapshot.rows,
            "dagster/partition_row_count": snapshot.rows,
            "dagster/column_schema": raw_snapshot_schema(),
            "snapshot": dg.MetadataValue.path(str(snapshot.directory)),
            "rejected_rows": snapshot.rejects,
            "slices": len(slices),
            "slices_resumed": read.slices_resumed,
            "slices_verified": len(slices) - len(snapshot.unverified),
            "unverified_slices": dg.MetadataValue.md(checks.slice_table(snapshot.unverified)),
            "slice_rereads": stats["slice_rereads"],
            "slices_changed_after_read": stats["slices_changed_after_read"],
            "slices_uncounted_after_read": stats["slices_uncounted_after_read"],
            "deletion_candidates": read.deletion_candidates,
            "proven_absent": read.proven_absent,
            "deletions_unproven": snapshot.unproven_rows,
            "requests": stats["requests"],
            "pages": stats["pages"],
            "empty_pages": stats["empty_pages"],
            "retries_by_cause": dg.MetadataValue.json(stats["retries"]),
            "window_splits": stats["window_splits"],
            "max_window_minutes": None if learned is None else learned / timedelta(minutes=1),
            "count_splits": stats["count_splits"],
            "final_page_limit": stats["final_page_limit"],
            "learned_page_limit": learned_page,
            "cursor_restarts": stats["cursor_restarts"],
            "ignored_extra_fields": dg.MetadataValue.json(stats["extra_fields"]),
            "api_total": None if None in after else sum(after),
            "preview": dg.MetadataValue.md(markdown_table(snapshot.preview(10))),
        },
        check_results=[
            checks.rows_match_api_total(snapshot),
            checks.rejected_rows(
                snapshot.rows,
                snapshot.rejects,
                snapshot.rejects_by_reason() if snapshot.rejects else (),
            ),
        ],
    )
