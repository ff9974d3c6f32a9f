"""The daily refresh sensor: when it fires, what it requests, and what it never repeats."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import dagster as dg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from d23_pipeline.definitions import defs
from d23_pipeline.defs import keys
from d23_pipeline.defs.jobs import d23_pipeline_job
from d23_pipeline.defs.sensors import (
    IN_FLIGHT_STATUSES,
    REFRESH_DATE_TAG,
    TRIGGER_TAG,
    build_daily_refresh_sensor,
    plan_daily_refresh,
    run_key,
)

HOUR = 3
PARTITIONS = dg.MonthlyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)
MAY_14 = datetime(2026, 5, 14, HOUR, 0, tzinfo=UTC)


class Clock:
    """A settable clock standing in for the daemon's wall clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def plan(now: datetime, cursor: str | None = None, **overrides):
    arguments = dict(
        now=now,
        cursor=cursor,
        refresh_hour_utc=HOUR,
        lookback_months=2,
        existing_partitions=set(PARTITIONS.get_partition_keys(current_time=now)),
        in_flight_partitions=set(),
    )
    return plan_daily_refresh(**(arguments | overrides))


def make_sensor(clock: Clock, partitions_def: dg.PartitionsDefinition = PARTITIONS):
    return build_daily_refresh_sensor(d23_pipeline_job.name, partitions_def, HOUR, 2, clock=clock)


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None = None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    return sensor(context)


def add_run(instance: dg.DagsterInstance, partition: str, status: dg.DagsterRunStatus) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name=d23_pipeline_job.name, status=status, tags={"dagster/partition": partition}
        )
    )


# --- the pure plan ---------------------------------------------------------------------------


def test_plan_waits_for_the_refresh_hour():
    result = plan(MAY_14 - timedelta(minutes=1))
    assert result.partition_keys == []
    assert "03:00 UTC" in result.skip_reason
    assert result.cursor is None


def test_plan_requests_the_current_month_and_the_lookback_oldest_first():
    result = plan(MAY_14)
    assert result.partition_keys == ["2026-03-01", "2026-04-01", "2026-05-01"]
    assert result.skip_reason is None
    assert json.loads(result.cursor) == {
        "date": "2026-05-14",
        "requested": ["2026-03-01", "2026-04-01", "2026-05-01"],
        "skipped_in_flight": [],
        "previous_refresh": None,
        "carried_over": [],
    }


def test_plan_requests_once_a_day():
    first = plan(MAY_14)
    later_same_day = plan(MAY_14 + timedelta(hours=20), first.cursor)
    assert later_same_day.partition_keys == []
    assert later_same_day.cursor == first.cursor
    next_day = plan(MAY_14 + timedelta(days=1), first.cursor)
    assert next_day.partition_keys == ["2026-03-01", "2026-04-01", "2026-05-01"]
    assert json.loads(next_day.cursor)["date"] == "2026-05-15"


def test_plan_lookback_crosses_the_year_boundary():
    result = plan(datetime(2027, 1, 2, 12, tzinfo=UTC))
    assert result.partition_keys == ["2026-11-01", "2026-12-01", "2027-01-01"]


def test_plan_skips_partitions_with_a_run_in_flight():
    result = plan(MAY_14, in_flight_partitions={"2026-04-01"})
    assert result.partition_keys == ["2026-03-01", "2026-05-01"]
    assert result.skipped_in_flight == ["2026-04-01"]
    assert json.loads(result.cursor)["skipped_in_flight"] == ["2026-04-01"]


def test_plan_all_in_flight_records_the_day_and_says_why():
    everything = {"2026-03-01", "2026-04-01", "2026-05-01"}
    result = plan(MAY_14, in_flight_partitions=everything)
    assert result.partition_keys == []
    assert "already queued or running" in result.skip_reason
    assert json.loads(result.cursor)["date"] == "2026-05-14"


def test_plan_requests_a_month_skipped_while_in_flight_once_its_run_has_ended():
    first = plan(MAY_14, in_flight_partitions={"2026-04-01"})
    running = plan(MAY_14 + timedelta(minutes=5), first.cursor, in_flight_partitions={"2026-04-01"})
    ended = plan(MAY_14 + timedelta(minutes=10), running.cursor)

    assert running.partition_keys == [] and "2026-04-01" in running.skip_reason
    assert ended.partition_keys == ["2026-04-01"]
    assert json.loads(ended.cursor)["requested"] == ["2026-03-01", "2026-04-01", "2026-05-01"]
    assert plan(MAY_14 + timedelta(minutes=15), ended.cursor).partition_keys == []


def test_plan_leaves_out_months_before_the_start_month():
    starts_in_april = dg.MonthlyPartitionsDefinition(
        start_date="2026-04-01", timezone="UTC", end_offset=1
    )
    existing = set(starts_in_april.get_partition_keys(current_time=MAY_14))
    assert plan(MAY_14, existing_partitions=existing).partition_keys == ["2026-04-01", "2026-05-01"]


def test_plan_uses_the_utc_day_and_month_whatever_the_clock_zone():
    # 23:30 on 31 May in UTC-5 is already 04:30 on 1 June in UTC.
    local = datetime(2026, 5, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    result = plan(local)
    assert result.partition_keys == ["2026-04-01", "2026-05-01", "2026-06-01"]
    assert json.loads(result.cursor)["date"] == "2026-06-01"


def test_plan_catches_up_a_month_that_ended_while_no_refresh_ran():
    # Refreshed last on 28 June (June not over), the daemon down until 2 August: June is older
    # than the lookback now, and no refresh has read it since it ended.
    june_28 = plan(datetime(2026, 6, 28, HOUR, tzinfo=UTC), lookback_months=1)
    august_2 = plan(datetime(2026, 8, 2, HOUR, tzinfo=UTC), june_28.cursor, lookback_months=1)

    assert august_2.partition_keys == ["2026-06-01", "2026-07-01", "2026-08-01"]
    assert august_2.caught_up == ["2026-06-01"]
    # Held by a run in flight at the first tick, it is still requested later that day.
    held = plan(datetime(2026, 8, 2, HOUR, tzinfo=UTC), june_28.cursor, lookback_months=1,
                in_flight_partitions={"2026-06-01"})  # fmt: skip
    later = plan(datetime(2026, 8, 2, HOUR + 1, tzinfo=UTC), held.cursor, lookback_months=1)
    assert (held.partition_keys, later.partition_keys) == (["2026-07-01", "2026-08-01"],
                                                           ["2026-06-01"])  # fmt: skip
    again = plan(datetime(2026, 8, 2, HOUR + 2, tzinfo=UTC), later.cursor, lookback_months=1)
    assert again.partition_keys == []


def test_plan_requests_next_day_a_month_held_in_flight_past_the_day_it_left_the_lookback():
    # On 31 May March is the oldest month of the lookback; a run of it goes on past midnight.
    may_31 = datetime(2026, 5, 31, HOUR, tzinfo=UTC)
    held = plan(may_31, in_flight_partitions={"2026-03-01"})
    held_at_midnight = {"2026-03-01"}
    still_held = plan(
        may_31 + timedelta(hours=20), held.cursor, in_flight_partitions=held_at_midnight
    )
    june_1 = plan(may_31 + timedelta(days=1), still_held.cursor)

    assert "requested once that run ends" in still_held.skip_reason
    assert june_1.partition_keys == ["2026-03-01", "2026-04-01", "2026-05-01", "2026-06-01"]
    assert june_1.carried_over == ["2026-03-01"]
    later = plan(may_31 + timedelta(days=1, hours=1), june_1.cursor)
    assert later.partition_keys == []
    assert plan(may_31 + timedelta(days=2), later.cursor).carried_over == []


def test_plan_carries_a_held_month_over_until_its_run_has_ended():
    may_31 = datetime(2026, 5, 31, HOUR, tzinfo=UTC)
    held = plan(may_31, in_flight_partitions={"2026-03-01"})
    june_1 = plan(may_31 + timedelta(days=1), held.cursor, in_flight_partitions={"2026-03-01"})
    june_1_later = plan(may_31 + timedelta(days=1, hours=2), june_1.cursor)
    june_2 = plan(may_31 + timedelta(days=2), june_1.cursor)

    assert june_1.partition_keys == ["2026-04-01", "2026-05-01", "2026-06-01"]
    assert june_1.skipped_in_flight == ["2026-03-01"]
    assert june_1_later.partition_keys == ["2026-03-01"]
    assert june_2.partition_keys == ["2026-03-01", "2026-04-01", "2026-05-01", "2026-06-01"]


def test_plan_requests_next_day_a_caught_up_month_held_in_flight_all_day():
    # Refreshed last on 15 March, the daemon down until 5 June: March is caught up, but a run of
    # it is in flight all of 5 June.
    march_15 = plan(datetime(2026, 3, 15, HOUR, tzinfo=UTC))
    june_5 = datetime(2026, 6, 5, HOUR, tzinfo=UTC)
    held = plan(june_5, march_15.cursor, in_flight_partitions={"2026-03-01"})
    end_of_day = plan(june_5 + timedelta(hours=20), held.cursor,
                      in_flight_partitions={"2026-03-01"})  # fmt: skip
    june_6 = plan(june_5 + timedelta(days=1), end_of_day.cursor)

    assert held.partition_keys == ["2026-04-01", "2026-05-01", "2026-06-01"]
    assert june_6.partition_keys == ["2026-03-01", "2026-04-01", "2026-05-01", "2026-06-01"]


def test_plan_catches_up_nothing_after_a_refresh_that_ran_after_the_months_end():
    # Refreshed on 1 July (June read after its end), then down until 2 August.
    july_1 = plan(datetime(2026, 7, 1, HOUR, tzinfo=UTC), lookback_months=1)
    august_2 = plan(datetime(2026, 8, 2, HOUR, tzinfo=UTC), july_1.cursor, lookback_months=1)
    assert august_2.partition_keys == ["2026-07-01", "2026-08-01"]
    assert august_2.caught_up == []
    # The daily case, and the first tick of a new install: nothing to catch up.
    next_day = plan(MAY_14 + timedelta(days=1), plan(MAY_14).cursor)
    assert (next_day.caught_up, plan(MAY_14).caught_up) == ([], [])


def test_plan_treats_an_unreadable_cursor_as_none():
    assert plan(MAY_14, cursor="not json").partition_keys != []
    assert plan(MAY_14, cursor='["2026-05-14"]').partition_keys != []


# --- the sensor, evaluated against an instance ----------------------------------------------


def test_sensor_is_on_by_default_and_targets_the_pipeline_job():
    sensor = defs.resolve_sensor_def("d23_daily_refresh_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "d23_pipeline_job"


def test_sensor_skips_before_the_hour(instance):
    clock = Clock(MAY_14 - timedelta(seconds=1))
    result = tick(make_sensor(clock), instance)
    assert result.run_requests == []
    assert "03:00 UTC" in result.skip_reason.skip_message
    assert result.cursor is None


def test_sensor_requests_one_keyed_run_per_partition(instance):
    clock = Clock(MAY_14 + timedelta(minutes=2))
    result = tick(make_sensor(clock), instance)
    assert [r.partition_key for r in result.run_requests] == [
        "2026-03-01",
        "2026-04-01",
        "2026-05-01",
    ]
    assert [r.run_key for r in result.run_requests] == [
        f"d23-daily-refresh:2026-05-14:{key}" for key in ("2026-03-01", "2026-04-01", "2026-05-01")
    ]
    for request in result.run_requests:
        assert request.tags == {TRIGGER_TAG: "daily_refresh", REFRESH_DATE_TAG: "2026-05-14"}
    assert json.loads(result.cursor)["requested"] == ["2026-03-01", "2026-04-01", "2026-05-01"]


def test_sensor_second_tick_same_day_requests_nothing_and_next_day_again(instance):
    clock = Clock(MAY_14)
    sensor = make_sensor(clock)
    first = tick(sensor, instance)
    clock.now += timedelta(minutes=5)
    second = tick(sensor, instance, first.cursor)
    assert second.run_requests == []
    assert second.cursor == first.cursor
    clock.now = MAY_14 + timedelta(days=1)
    third = tick(sensor, instance, second.cursor)
    assert [r.run_key for r in third.run_requests] == [
        run_key("2026-05-15", key) for key in ("2026-03-01", "2026-04-01", "2026-05-01")
    ]


def tick_at(sensor, instance, capsys, clock: Clock, now: datetime, cursor: str | None):
    """The partitions a tick at ``now`` requests, and what it logged."""
    clock.now = now
    capsys.readouterr()
    result = tick(sensor, instance, cursor)
    return [r.partition_key for r in result.run_requests], capsys.readouterr().err


def test_sensor_after_days_down_also_refreshes_the_month_that_ended_meanwhile(instance, capsys):
    clock = Clock(datetime(2026, 5, 28, HOUR, tzinfo=UTC))
    sensor = make_sensor(clock)
    may_28 = tick(sensor, instance)

    august_2 = datetime(2026, 8, 2, HOUR, tzinfo=UTC)
    requested, logged = tick_at(sensor, instance, capsys, clock, august_2, may_28.cursor)

    # Lookback 2 reads June and July; May ended on 1 June, after its last refresh.
    assert requested == ["2026-05-01", "2026-06-01", "2026-07-01", "2026-08-01"]
    # The tick's log says why an older month is read, and that the daemon may have been down.
    assert (
        "WARNING - Also refreshing 2026-05-01: it ended after the last daily refresh, and no "
        "refresh has read it since (was the daemon down?)"
    ) in logged


def test_sensor_next_day_refreshes_a_month_whose_run_held_it_past_midnight(instance, capsys):
    clock = Clock(datetime(2026, 5, 31, HOUR, tzinfo=UTC))
    sensor = make_sensor(clock)
    add_run(instance, "2026-03-01", dg.DagsterRunStatus.STARTED)
    may_31 = tick(sensor, instance)
    for run in instance.get_runs():
        instance.report_run_failed(run)

    june_1 = datetime(2026, 6, 1, HOUR, tzinfo=UTC)
    requested, logged = tick_at(sensor, instance, capsys, clock, june_1, may_31.cursor)

    assert requested == ["2026-03-01", "2026-04-01", "2026-05-01", "2026-06-01"]
    assert (
        "WARNING - Also refreshing 2026-03-01: an earlier day's refresh skipped it while a run "
        "of it was in flight, and that run went on past the day's end"
    ) in logged


def test_in_flight_statuses_are_every_status_of_an_unfinished_run():
    # MANAGED runs are driven outside Dagster, which may never see them finish.
    not_in_flight = {"SUCCESS", "FAILURE", "CANCELED", "MANAGED"}
    expected = {status for status in dg.DagsterRunStatus if status.value not in not_in_flight}
    assert set(IN_FLIGHT_STATUSES) == expected


# A queued run cannot be built without Dagster's private code-origin classes; that QUEUED is in
# flight is covered by the test above, and these show the sensor filters on that list.
@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING],
    ids=["started", "canceling"],
)
def test_sensor_skips_a_partition_whose_run_is_in_flight(instance, status):
    add_run(instance, "2026-04-01", status)
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert [r.partition_key for r in result.run_requests] == ["2026-03-01", "2026-05-01"]
    assert json.loads(result.cursor)["skipped_in_flight"] == ["2026-04-01"]


def test_sensor_skips_a_partition_the_ui_or_a_backfill_is_reading(instance):
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "2026-04-01"},
            asset_selection=frozenset({keys.RAW_LOGS, keys.LOGS}),
        )
    )
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert [r.partition_key for r in result.run_requests] == ["2026-03-01", "2026-05-01"]


def test_sensor_refreshes_a_month_another_projects_run_of_the_same_partition_holds(instance):
    # An instance shared with another project that has monthly partitions of its own.
    for job_name, selection in [
        ("other_project_job", None),
        ("__ASSET_JOB", frozenset({dg.AssetKey(["other", "raw_orders"])})),
        ("__ASSET_JOB", frozenset({keys.OUTCOME_MIX_MONTHLY})),  # ours, but reads no month
    ]:
        instance.add_run(
            dg.DagsterRun(
                job_name=job_name,
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/partition": "2026-04-01"},
                asset_selection=selection,
            )
        )
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert [r.partition_key for r in result.run_requests] == [
        "2026-03-01",
        "2026-04-01",
        "2026-05-01",
    ]


def _code_location_origin() -> RemoteJobOrigin:
    """Where a run launched from the UI or the daemon comes from (Dagster's own classes: the
    run retry daemon re-executes only runs that have one)."""
    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="d23_pipeline.definitions"), location_name="d23_pipeline"
    )
    return RemoteJobOrigin(
        RemoteRepositoryOrigin(location, "__repository__"), d23_pipeline_job.name
    )


def add_failed_run_to_retry(
    instance: dg.DagsterInstance, partition: str, origin: RemoteJobOrigin | None
) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name=d23_pipeline_job.name,
            status=dg.DagsterRunStatus.FAILURE,
            tags={"dagster/partition": partition, "dagster/will_retry": "true"},
            remote_job_origin=origin,
        )
    )


def test_a_run_failed_for_good_does_not_hold_its_month(instance):
    instance.add_run(
        dg.DagsterRun(
            job_name=d23_pipeline_job.name,
            status=dg.DagsterRunStatus.FAILURE,
            tags={"dagster/partition": "2026-04-01", "dagster/will_retry": "false"},
            remote_job_origin=_code_location_origin(),
        )
    )
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert [r.partition_key for r in result.run_requests] == [
        "2026-03-01", "2026-04-01", "2026-05-01"
    ]  # fmt: skip


def test_a_retry_that_never_came_holds_its_month_for_an_hour_only(instance):
    # The run's record is stamped by the real clock; the tick comes two hours after it.
    later = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    later = later if later.hour >= HOUR else later.replace(hour=HOUR)
    month = f"{later:%Y-%m}-01"
    add_failed_run_to_retry(instance, month, _code_location_origin())
    result = tick(make_sensor(Clock(later)), instance)
    assert month in [r.partition_key for r in result.run_requests]


def test_sensor_skips_a_partition_whose_failed_run_waits_for_its_retry(instance):
    add_failed_run_to_retry(instance, "2026-04-01", _code_location_origin())
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert [r.partition_key for r in result.run_requests] == ["2026-03-01", "2026-05-01"]


def test_sensor_refreshes_a_month_whose_failed_command_line_run_no_daemon_can_retry(instance):
    # `dagster asset materialize` runs carry the will_retry tag but no code-location origin.
    add_failed_run_to_retry(instance, "2026-04-01", None)
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert [r.partition_key for r in result.run_requests] == [
        "2026-03-01",
        "2026-04-01",
        "2026-05-01",
    ]
    assert json.loads(result.cursor)["skipped_in_flight"] == []


def test_sensor_requests_a_partition_whose_last_run_finished(instance):
    add_run(instance, "2026-04-01", dg.DagsterRunStatus.SUCCESS)
    add_run(instance, "2026-05-01", dg.DagsterRunStatus.FAILURE)
    add_run(instance, "2026-03-01", dg.DagsterRunStatus.CANCELED)
    result = tick(make_sensor(Clock(MAY_14)), instance)
    assert len(result.run_requests) == 3


def test_sensor_in_the_start_month_requests_only_existing_partitions(instance):
    starts_in_may = dg.MonthlyPartitionsDefinition(
        start_date="2026-05-01", timezone="UTC", end_offset=1
    )
    result = tick(make_sensor(Clock(MAY_14), starts_in_may), instance)
    assert [r.partition_key for r in result.run_requests] == ["2026-05-01"]


def test_sensor_before_the_start_month_requests_nothing(instance):
    starts_in_july = dg.MonthlyPartitionsDefinition(
        start_date="2026-07-01", timezone="UTC", end_offset=1
    )
    result = tick(make_sensor(Clock(MAY_14), starts_in_july), instance)
    assert result.run_requests == []
    assert "no partitions" in result.skip_reason.skip_message
