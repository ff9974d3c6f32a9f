"""``d23_dashboard_after_blocked_run``: rebuilds the dashboard after a run that changed the
warehouse but stopped before the dashboard.

A blocking check of ``d23/logs`` (deletions above the allowed share, slices not proven complete)
fails the run after the month was merged, and Dagster skips every step after it, the dashboard
too. The page would then go on saying "every deletion is applied" or "every slice read is
verified" until some other run rebuilt it, just when the analyst needs to see why a month's
numbers did not move.
"""

import dagster as dg

from d23_pipeline.defs import keys
from d23_pipeline.defs.jobs import d23_dashboard_job


def _materialized(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
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
    materialized = _materialized(context.instance, run_id)
    if keys.LOGS not in materialized:
        return dg.SkipReason(f"run {run_id} merged nothing: the dashboard is as current as before")
    if keys.OUTCOME_DASHBOARD in materialized:
        return dg.SkipReason(f"run {run_id} rebuilt the dashboard itself")
    return dg.RunRequest(run_key=f"dashboard-after:{run_id}")
