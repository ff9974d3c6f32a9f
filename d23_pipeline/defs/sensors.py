"""``d23_daily_refresh_sensor``: once a day, re-read the current month and the lookback months.

The API filters on ``communicated_at``, so a promise that breaks or an entry deactivated weeks
later is only seen when its month is read again; the lookback covers those late changes. Older
months only pick such changes up through a backfill.
"""

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from d23_pipeline.defs import keys
from d23_pipeline.months import month_end, months_between, months_up_to

# Statuses of a run that has not finished yet: a partition with such a run is not requested again.
# A canceling run may still be writing, and a suspended one will resume. MANAGED is left out:
# Dagster does not drive such runs, so one could block its month for good.
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
]
# How far back the sensor looks for a failed run still waiting for its automatic retry (the
# daemon launches a retry within seconds).
RETRY_WINDOW = timedelta(hours=1)
TRIGGER_TAG = "d23/trigger"
REFRESH_DATE_TAG = "d23/refresh_date"


@dataclass(frozen=True)
class RefreshPlan:
    """What one tick does: the partitions to request, those skipped, the next cursor."""

    partition_keys: list[str]
    skipped_in_flight: list[str]
    cursor: str | None
    skip_reason: str | None
    # Months older than the lookback that ended after the last refresh before today: no
    # refresh has read them since their end (the daemon was down), so their last days are
    # missing. Requested with the day's months.
    caught_up: list[str] = field(default_factory=list)
    # Months an earlier day's refresh still owed at its end (a run of them in flight until
    # midnight) that are not among today's months: requested today instead.
    carried_over: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Cursor:
    """What the cursor says: the partitions requested today (``None``: it is of another day),
    the last day before today with a refresh, and the months that day's refresh still owed."""

    requested: list[str] | None = None
    previous_day: str | None = None
    owed: list[str] = field(default_factory=list)


def refresh_partitions(now: datetime, lookback_months: int, existing: Collection[str]) -> list[str]:
    """The current UTC month's partition key and the ``lookback_months`` before it that exist,
    oldest first."""
    keys = [f"{month}-01" for month in months_up_to(now.astimezone(UTC), lookback_months + 1)]
    return [k for k in keys if k in existing]


def run_key(day: str, partition_key: str) -> str:
    """The run key of one partition's refresh on one UTC day; the daemon runs a key only once."""
    return f"d23-daily-refresh:{day}:{partition_key}"


def _read_cursor(cursor: str | None, day: str) -> _Cursor:
    """The cursor as of ``day``. A cursor edited by hand in the UI must not stop the refresh for
    good: unreadable means none."""
    try:
        value = json.loads(cursor) if cursor else None
    except ValueError:
        return _Cursor()
    if not isinstance(value, dict):
        return _Cursor()
    last = value.get("date")
    if last != day:
        if not (isinstance(last, str) and _is_day(last) and last < day):
            return _Cursor()
        # Skipped at the day's last tick: wanted that day and never requested.
        return _Cursor(previous_day=last, owed=_keys(value.get("skipped_in_flight")))
    previous = value.get("previous_refresh")
    return _Cursor(
        requested=_keys(value.get("requested")),
        previous_day=(
            previous if isinstance(previous, str) and _is_day(previous) and previous < day else None
        ),
        owed=_keys(value.get("carried_over")),
    )


def _keys(value: object) -> list[str]:
    return [k for k in value if isinstance(k, str)] if isinstance(value, list) else []


def _is_day(value: str) -> bool:
    try:
        return date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def missed_months(
    previous_day: str | None, wanted: list[str], existing: Collection[str]
) -> list[str]:
    """The partitions before ``wanted`` (the day's months, oldest first) that ended after the
    refresh of ``previous_day``: none read after its end since, when no refresh ran between."""
    if previous_day is None or not wanted:
        return []
    ended_after = [
        f"{month}-01"
        for month in months_between(previous_day[:7], wanted[0])
        if month_end(month).date().isoformat() > previous_day
    ]
    return [k for k in ended_after if k in existing and k not in wanted]


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
    now = now.astimezone(UTC)
    today = now.date().isoformat()
    if now.hour < refresh_hour_utc:
        return RefreshPlan([], [], cursor, f"Waiting for {refresh_hour_utc:02d}:00 UTC")
    read = _read_cursor(cursor, today)
    requested = read.requested
    wanted = refresh_partitions(now, lookback_months, existing_partitions)
    caught_up = missed_months(read.previous_day, wanted, existing_partitions)
    carried_over = sorted(
        {k for k in read.owed if k in existing_partitions and k not in caught_up + wanted}
    )
    wanted = sorted(carried_over + caught_up) + wanted
    # A month skipped because a run of it was in flight is requested at a later tick of the
    # same day, once that run has ended: the day's read must still happen after the hour.
    left = [k for k in wanted if k not in (requested or [])]
    if requested is not None and not left:
        return RefreshPlan([], [], cursor, f"Refresh for {today} already requested")
    keys = [k for k in left if k not in in_flight_partitions]
    skipped = [k for k in left if k in in_flight_partitions]
    done = [k for k in wanted if k in (requested or []) or k in keys]
    new_cursor = json.dumps(
        {
            "date": today,
            "requested": done,
            "skipped_in_flight": skipped,
            "previous_refresh": read.previous_day,
            "carried_over": carried_over,
        }
    )
    skip_reason = None
    if not keys:
        skip_reason = f"Nothing to refresh for {today} yet: " + (
            f"already queued or running: {', '.join(skipped)}; requested once that run ends "
            "(today, or at the next day's refresh)"
            if skipped
            else "no partitions"
        )
    return RefreshPlan(keys, skipped, new_cursor, skip_reason, caught_up, carried_over)


# Why a month older than the lookback is read, said of "it" or "them".
CAUGHT_UP = (
    "{they} ended after the last daily refresh, and no refresh has read {them} since (was the "
    "daemon down?)"
)
CARRIED_OVER = (
    "an earlier day's refresh skipped {them} while a run of {each} was in flight, and that run "
    "went on past the day's end"
)


def _also_refreshing(months: list[str], why: str) -> str:
    pronouns = {word: word if len(months) > 1 else "it" for word in ("they", "them", "each")}
    return f"Also refreshing {', '.join(months)}: " + why.format(**pronouns)


def reads_a_month(run: dg.DagsterRun, job_name: str) -> bool:
    """Whether ``run`` reads a month of D23: a run of the job named ``job_name``, or one whose
    assets include the raw asset (the UI's, a backfill's). On an instance shared with other
    projects, their runs of their own monthly partitions hold no month of ours back."""
    selection = run.asset_selection
    return run.job_name == job_name or (selection is not None and keys.RAW_LOGS in selection)


def build_daily_refresh_sensor(
    job_name: str,
    partitions_def: dg.PartitionsDefinition,
    refresh_hour_utc: int,
    lookback_months: int,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    minimum_interval_seconds: int = 300,
) -> dg.SensorDefinition:
    """The daily refresh sensor for the job named ``job_name``; on by default."""

    @dg.sensor(
        name="d23_daily_refresh_sensor",
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Daily at {refresh_hour_utc:02d}:00 UTC: one run each for the current month and the "
            f"{lookback_months} before it (late promise breaks, deactivations, deletions), "
            "and any older month that ended after the last refresh (the daemon was down). "
            "Older months need a backfill."
        ),
    )
    def d23_daily_refresh_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        now = clock()
        in_flight = context.instance.get_run_records(
            filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES)
        )
        # A failed run about to be retried by the daemon is in flight too: its retry reads the
        # month again. The daemon retries only runs launched from a code location: one run from
        # the command line (`dagster asset materialize`) keeps its will_retry tag, never retried.
        failed = context.instance.get_run_records(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.FAILURE], updated_after=now - RETRY_WINDOW
            )
        )
        in_flight = [
            *in_flight,
            *(
                r
                for r in failed
                if r.dagster_run.is_complete_and_waiting_to_retry
                and r.dagster_run.remote_job_origin is not None
            ),
        ]
        plan = plan_daily_refresh(
            now=now,
            cursor=context.cursor,
            refresh_hour_utc=refresh_hour_utc,
            lookback_months=lookback_months,
            existing_partitions=set(partitions_def.get_partition_keys(current_time=now)),
            in_flight_partitions={
                record.dagster_run.tags.get("dagster/partition")
                for record in in_flight
                if reads_a_month(record.dagster_run, job_name)
            },
        )
        for months, why in ((plan.caught_up, CAUGHT_UP), (plan.carried_over, CARRIED_OVER)):
            requested = [key for key in months if key in plan.partition_keys]
            if requested:
                context.log.warning(_also_refreshing(requested, why))
        for key in plan.skipped_in_flight:
            context.log.info(
                f"Skipping {key}: a run for it is queued, in progress or about to be retried"
            )
        if plan.skip_reason:
            return dg.SensorResult(skip_reason=plan.skip_reason, cursor=plan.cursor)
        day = now.astimezone(UTC).date().isoformat()
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    partition_key=key,
                    run_key=run_key(day, key),
                    tags={TRIGGER_TAG: "daily_refresh", REFRESH_DATE_TAG: day},
                )
                for key in plan.partition_keys
            ],
            cursor=plan.cursor,
        )

    return d23_daily_refresh_sensor
