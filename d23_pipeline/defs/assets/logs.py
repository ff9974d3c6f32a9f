"""``d23/logs``: the deduplicated warehouse table, one row per ``public_id``."""

import os
from typing import TYPE_CHECKING

import dagster as dg

from d23_pipeline.defs import checks, keys
from d23_pipeline.defs.metadata import markdown_table, schema_from_table
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.resources import LandingZoneResource, WarehouseResource
from d23_pipeline.defs.run_retries import (
    DELETIONS_HELD_TAG,
    not_retried,
    retried_only_when_it_can_help,
)

if TYPE_CHECKING:
    from d23_pipeline.landing.snapshot import Snapshot
    from d23_pipeline.warehouse.store import MergeSummary


class LogsMergeConfig(dg.Config):
    """Per-run choices of the merge."""

    confirm_deletions: bool = False
    """Apply the proven deletions of this run even above the warehouse's max_deletion_share."""


@dg.asset(
    key=keys.LOGS,
    deps=[keys.RAW_LOGS],
    partitions_def=monthly_partitions,
    group_name="d23_ingest",
    kinds={"duckdb"},
    owners=["team:data-engineering"],
    pool="d23_warehouse",
    check_specs=[
        checks.PUBLIC_ID_UNIQUE,
        checks.ONLY_ALLOWLISTED_COLUMNS,
        checks.SLICES_VERIFIED,
        checks.DELETIONS_WITHIN_LIMIT,
        checks.DELETIONS_PROVEN,
        checks.CONFLICTING_VERSIONS,
    ],
    description=(
        "Table d23.logs: every D23 row once per public_id, latest updated_at winning. Each month's "
        "raw snapshot is merged in one transaction; a row gets _deleted_at only when a read proven "
        "complete for its slice no longer returns it, a read of its own instant confirms it, and "
        "a second read of the month does not find it moved."
    ),
)
def logs(
    context: dg.AssetExecutionContext,
    config: LogsMergeConfig,
    landing_zone: LandingZoneResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Merge the month's latest raw snapshot into d23.logs."""
    # Imported when the step runs, not when the definitions load (DuckDB, Arrow).
    from d23_pipeline.landing.home import (
        claim_landing_home,
        requested_take_over,
        still_the_home,
    )
    from d23_pipeline.warehouse import sql
    from d23_pipeline.warehouse.ducklake import retry_on_conflict
    from d23_pipeline.warehouse.store import fetch_dicts, fetch_row, merge_within_memory_limit

    partition = context.partition_key
    max_share = warehouse.allowed_deletion_share()  # read once: it may come from a variable
    store = landing_zone.store()
    snapshot = store.current(partition)
    if snapshot is None:
        raise dg.Failure(
            f"No complete raw snapshot for {partition}: materialize d23/raw_logs for it first."
        )
    # What the read weighed, it weighed in this folder: only the reads of the warehouse's
    # landing folder may be merged (landing/home.py). The first merge records the folder, and
    # each merge checks it again in its own transaction.
    backend, take_over = warehouse.warehouse(), requested_take_over(os.environ)
    with retried_only_when_it_can_help(context), backend.connect() as con:
        retry_on_conflict(lambda: claim_landing_home(backend, con, store.root, take_over))
    guard = still_the_home(store.root)

    def merge(snapshot: "Snapshot") -> "MergeSummary":
        # DuckLake: a writer of another month that committed first makes this one run again.
        with retried_only_when_it_can_help(context):  # the guard's refusal
            return retry_on_conflict(
                lambda: merge_within_memory_limit(
                    warehouse.warehouse(),
                    snapshot,
                    max_deletion_share=max_share,
                    confirm_deletions=config.confirm_deletions,
                    guard=guard,
                ),
                on_retry=context.log.warning,
            )

    try:
        summary = merge(snapshot)
    except Exception as exc:
        # Another run's read of the month completed meanwhile and removed this snapshot's files
        # (the merge rolled back): its newer snapshot is the one to merge. Any other failure is
        # the step's.
        newer = None if snapshot.directory.exists() else store.current(partition)
        if newer is None or newer.directory == snapshot.directory:
            raise
        context.log.warning(
            f"{partition}: another run's read of the month replaced the snapshot this step was "
            f"merging (read {snapshot.completed_at.isoformat()}; the merge stopped with "
            f"{type(exc).__name__}: {exc}); merging its newer one (read "
            f"{newer.completed_at.isoformat()})"
        )
        snapshot = newer
        summary = merge(snapshot)
    # Recorded the moment the merge commits: a step that fails after it (the warehouse busy for
    # the counts below, the process killed) has no materialization, and the dashboard's sensors
    # would take the month for unchanged.
    context.log_event(
        dg.AssetObservation(
            asset_key=keys.LOGS,
            partition=partition,
            metadata={"merged": True, "snapshot_rows": summary.snapshot_rows},
        )
    )
    with warehouse.get_connection() as con:
        live_rows, deleted_rows = fetch_row(con, sql.LOGS_ROW_COUNT)
        month_rows = fetch_row(con, sql.LOGS_PARTITION_ROW_COUNT, {"partition": partition})[0]
        preview = fetch_dicts(con, sql.LOGS_PREVIEW, {"partition": partition, "limit": 10})
        schema = schema_from_table(con, "logs")
        check_results = [
            checks.public_id_unique(con),
            checks.only_allowlisted_columns(con),
            checks.slices_verified(snapshot),
            checks.deletions_within_limit(partition, summary, max_share),
            checks.deletions_proven(snapshot, summary),
            checks.conflicting_versions(partition, summary),
        ]
    if snapshot.unverified:
        said = context.log.error if snapshot.refuted else context.log.warning
        said(checks.describe_unverified(snapshot))
    if summary.deletions_held:
        context.log.error(checks.describe_held_deletions(partition, summary, max_share))
        # A first run is retried: the rows may have moved to a month whose read merges later
        # (a backfill's), and a new read of a slice its counts did not prove may verify it. Its
        # retry, which inherits the run's tags, stops there if it holds them again: another
        # would read the whole month again.
        if context.run.tags.get(DELETIONS_HELD_TAG) and not snapshot.refuted:
            not_retried(
                context,
                "the read proved more rows gone than D23_MAX_DELETION_SHARE allows, again after "
                "a retry. Confirm the deletions as the check deletions_within_limit says, or "
                "launch the month again once the source has them back.",
            )
        else:
            context.instance.add_run_tags(context.run.run_id, {DELETIONS_HELD_TAG: "true"})
    return dg.MaterializeResult(
        metadata={
            # The month's, as d23/raw_logs' count is: the UI plots it per partition, where the
            # whole table's count, taken whenever each month happened to merge, read as noise.
            "dagster/row_count": month_rows,
            "dagster/partition_row_count": month_rows,
            "table_live_rows": live_rows,
            "table_rows_marked_deleted": deleted_rows,
            "dagster/column_schema": schema,
            "dagster/table_name": "d23.logs",
            "snapshot_rows": summary.snapshot_rows,
            "inserted": summary.inserted,
            "updated": summary.updated,
            "restored": summary.restored,
            "moved_from_other_month": summary.moved_in,
            "marked_deleted": summary.marked_deleted,
            "deletions_proven": summary.deletions_proven,
            "deletions_held": summary.deletions_held,
            "deletions_unproven": snapshot.unproven_rows + summary.not_weighed,
            "rejected_rows": summary.rejects,
            "conflicting_versions": summary.conflicting_versions,
            "older_versions_served": summary.older_versions,
            "preview": dg.MetadataValue.md(markdown_table(preview)),
        },
        check_results=check_results,
    )
