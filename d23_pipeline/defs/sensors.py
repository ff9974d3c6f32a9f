"""``d23_daily_refresh_sensor``: once a day, re-read the current month and the lookback months.

The API filters on ``communicated_at``, so a promise that breaks or an entry deactivated weeks
later is only seen when its month is read again; the lookback covers those late changes.
"""

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class RefreshPlan:
    partition_keys: list[str]
    skipped_in_flight: list[str]
    cursor: str | None
    skip_reason: str | None


def refresh_partitions(now: datetime, lookback_months: int, existing: Collection[str]) -> list[str]:
    """The current month's partition key and the ``lookback_months`` before it, oldest first."""
    keys = []
    year, month = now.year, now.month
    for _ in range(lookback_months + 1):
        keys.append(f"{year:04d}-{month:02d}-01")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return [k for k in reversed(keys) if k in existing]


def plan_daily_refresh(
    *,
    now: datetime,
    cursor: str | None,
    refresh_hour_utc: int,
    lookback_months: int,
    existing_partitions: Collection[str],
    in_flight_partitions: Collection[str],
) -> RefreshPlan:
    """Decide what one sensor tick requests; pure, so it is tested without a daemon."""
    today = now.astimezone(UTC).date().isoformat()
    if now.astimezone(UTC).hour < refresh_hour_utc:
        return RefreshPlan([], [], cursor, f"Waiting for {refresh_hour_utc:02d}:00 UTC")
    if cursor and json.loads(cursor).get("date") == today:
        return RefreshPlan([], [], cursor, f"Refresh for {today} already requested")
    wanted = refresh_partitions(now, lookback_months, existing_partitions)
    keys = [k for k in wanted if k not in in_flight_partitions]
    skipped = [k for k in wanted if k in in_flight_partitions]
    new_cursor = json.dumps({"date": today, "requested": keys, "skipped_in_flight": skipped})
    return RefreshPlan(keys, skipped, new_cursor, None)


def build_daily_refresh_sensor(
    job: "UnresolvedAssetJobDefinition",
    partitions_def: dg.PartitionsDefinition,
    refresh_hour_utc: int,
    lookback_months: int,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """The daily refresh sensor for ``job``; on by default."""

    @dg.sensor(
        name="d23_daily_refresh_sensor",
        job=job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Daily at {refresh_hour_utc:02d}:00 UTC: refresh the current month and the "
            f"{lookback_months} before it (late promise breaks, deactivations, deletions)."
        ),
    )
    def d23_daily_refresh_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        in_flight = {
            run.tags.get("dagster/partition")
            for run in context.instance.get_runs(filters=dg.RunsFilter(statuses=_IN_FLIGHT))
        }
        now = clock()
        plan = plan_daily_refresh(
            now=now,
            cursor=context.cursor,
            refresh_hour_utc=refresh_hour_utc,
            lookback_months=lookback_months,
            existing_partitions=set(partitions_def.get_partition_keys(current_time=now)),
            in_flight_partitions=in_flight,
        )
        if plan.skip_reason:
            return dg.SensorResult(skip_reason=plan.skip_reason)
        day = now.astimezone(UTC).date().isoformat()
        for key in plan.skipped_in_flight:
            context.log.info(f"Skipping {key}: a run for it is already queued or in progress")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    partition_key=key,
                    run_key=f"d23-daily-refresh:{day}:{key}",
                    tags={"d23/trigger": "daily_refresh"},
                )
                for key in plan.partition_keys
            ],
            cursor=plan.cursor,
        )

    return d23_daily_refresh_sensor
