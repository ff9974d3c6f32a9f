"""Rebuilding the dashboard after work that changed the warehouse but stopped before it.

``d23_dashboard_after_blocked_run``: a blocking check of ``d23/logs`` (deletions above the
allowed share, slices not proven complete) fails the run after the month was merged, and Dagster
skips every step after it, the dashboard too. The page would then go on saying "every deletion
is applied" or "every slice read is verified" until some other run rebuilt it, just when the
analyst needs to see why a month's numbers did not move.

``d23_dashboard_behind_the_warehouse``: whatever else left the page older than the last merge.
A backfill's months run without the (unpartitioned) dashboard, which gets one run after them, and
Dagster skips that run when any month failed or the backfill was canceled: one month failing for
good left the page without every month the backfill did merge (on a fresh install, without any
page). A run canceled after its merge, or one that materialized ``d23/logs`` alone, does too.
"""

import time

import dagster as dg

from d23_pipeline.defs import keys
from d23_pipeline.defs.jobs import d23_dashboard_job, d23_pipeline_job
from d23_pipeline.defs.resources import DashboardResource
from d23_pipeline.defs.sensors import IN_FLIGHT_STATUSES, reads_a_month


def _recorded(
    instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType
) -> set[dg.AssetKey]:
    """The assets the run recorded an event of ``event_type`` of."""
    events = instance.all_logs(run_id, of_type=event_type)
    return {
        e.dagster_event.asset_key for e in events if e.dagster_event and e.dagster_event.asset_key
    }


@dg.run_failure_sensor(
    name="d23_dashboard_after_blocked_run",
    request_job=d23_dashboard_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    # Runs of `dagster asset materialize` carry no code location, so a sensor watching only its
    # own location never sees them. Runs of other projects sharing the instance are skipped below:
    # they materialize no d23/logs.
    monitor_all_code_locations=True,
    description=(
        "After a failed run that merged a month into d23.logs but did not rebuild the dashboard "
        "(a blocking check held its outcome steps): rebuild the dashboard alone, so its open "
        "problems show what held the month."
    ),
)
def dashboard_after_blocked_run(
    context: dg.RunFailureSensorContext,
) -> dg.RunRequest | dg.SkipReason:
    """One dashboard run per failed run that merged a month and left the dashboard behind."""
    run_id = context.dagster_run.run_id
    materialized = _recorded(context.instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    # d23/logs observes its merge as it commits: a step that failed after it merged all the same.
    observed = _recorded(context.instance, run_id, dg.DagsterEventType.ASSET_OBSERVATION)
    if keys.LOGS not in materialized | observed:
        return dg.SkipReason(f"run {run_id} merged nothing: the dashboard is as current as before")
    if keys.OUTCOME_DASHBOARD in materialized:
        return dg.SkipReason(f"run {run_id} rebuilt the dashboard itself")
    return dg.RunRequest(run_key=f"dashboard-after:{run_id}")


def _may_build_dashboard(run: dg.DagsterRun) -> bool:
    """A run of a D23 month (its backfill builds the dashboard after it) or of the dashboard; on
    an instance shared with other projects, their runs do not hold the page back."""
    selection = run.asset_selection
    return (
        reads_a_month(run, d23_pipeline_job.name)
        or run.job_name == d23_dashboard_job.name
        or (selection is not None and keys.OUTCOME_DASHBOARD in selection)
    )


# The dashboard's metadata entry: the storage id of the last merge event it could have read.
MERGES_READ = "merges_read_through"


def last_merge(instance: dg.DagsterInstance) -> dg.EventLogRecord | None:
    """The latest merge of any month: observed as it commits, materialized if its step then
    succeeds."""
    merges = [
        *instance.fetch_materializations(keys.LOGS, limit=1).records,
        *instance.fetch_observations(keys.LOGS, limit=1).records,
    ]
    return max(merges, key=lambda record: record.storage_id, default=None)


# How many of the dashboard's latest builds are looked through for one of the product's page.
BUILDS_LOOKED_AT = 20


def _last_built_at(instance: dg.DagsterInstance, page: str) -> dg.EventLogRecord | None:
    """The dashboard's latest build written to ``page``: a run given another path (run config)
    leaves the product's page as it was."""
    builds = instance.fetch_materializations(keys.OUTCOME_DASHBOARD, limit=BUILDS_LOOKED_AT)
    for record in builds.records:
        path = record.asset_materialization.metadata.get("path")
        if path is not None and path.value == page:
            return record
    return None


# Until a merge is this old, its own run or backfill may still rebuild the dashboard: the
# backfill daemon submits a backfill's dashboard run within an iteration (~30 s) of its last month.
SETTLED_S = 120.0


@dg.sensor(
    name="d23_dashboard_behind_the_warehouse",
    job=d23_dashboard_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "When d23.logs was merged after the dashboard was last built and no run is left that "
        "would build it (a backfill with a failed month, a canceled run): rebuild the dashboard "
        "alone, once per merge."
    ),
)
def dashboard_behind_the_warehouse(
    context: dg.SensorEvaluationContext, dashboard_file: DashboardResource
) -> dg.RunRequest | dg.SkipReason:
    """One dashboard run per latest merge the dashboard is older than, once nothing else will."""
    instance = context.instance
    merged = last_merge(instance)
    if merged is None:
        return dg.SkipReason("no month has been merged yet")
    built = _last_built_at(instance, str(dashboard_file.file()))
    # What the page read, not when it was written: a page that read the warehouse before a
    # merge and was written after it does not show that merge.
    read_through = built.asset_materialization.metadata.get(MERGES_READ) if built else None
    if read_through is not None and read_through.value >= merged.storage_id:
        return dg.SkipReason("the dashboard was built after the last merge")
    if time.time() - merged.timestamp < SETTLED_S:
        return dg.SkipReason("the last merge is recent: its run or backfill may still build it")
    in_flight = instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT_STATUSES))
    if any(_may_build_dashboard(run) for run in in_flight):
        return dg.SkipReason(
            "a D23 run is in flight: it, or the backfill it is part of, may build it"
        )
    return dg.RunRequest(run_key=f"dashboard-behind:{merged.storage_id}")
