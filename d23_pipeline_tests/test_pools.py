"""Pool slots: the watchdog sensor, and the shipped instance's freeing of a dead run's slots,
both tried directly on a real instance's pool tables."""

import logging
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml
from dagster._daemon.monitoring import concurrency as slot_monitoring

from d23_pipeline.defs.pools import pool_watchdog

POOL = "d23_warehouse"


def _assigned(
    instance: dg.DagsterInstance, run_id: str, pool: str = POOL, step: str = "d23__logs"
) -> bool:
    claim = instance.event_log_storage.check_concurrency_claim(pool, run_id, step)
    return claim.is_assigned


# Each pool the assets use: a read left waiting on d23_api stalls as a merge would.
@pytest.mark.parametrize(("pool", "step"), [(POOL, "d23__logs"), ("d23_api", "d23__raw_logs")])
def test_a_step_left_waiting_while_the_slot_is_free_gets_it_and_only_one(
    pool: str, step: str
) -> None:
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(pool, 1)
        idle = pool_watchdog(dg.build_sensor_context(instance=instance))
        # What the race leaves: a step registered as waiting, unassigned, with the slot free.
        storage.add_pending_step(pool, "month-b", step, should_assign=False)
        storage.add_pending_step(pool, "month-c", step, should_assign=False)
        assert not _assigned(instance, "month-b", pool, step)

        first = pool_watchdog(dg.build_sensor_context(instance=instance))
        second = pool_watchdog(dg.build_sensor_context(instance=instance))

        # The one slot goes to the step waiting longest; the other still waits its turn.
        assert _assigned(instance, "month-b", pool, step)
        assert not _assigned(instance, "month-c", pool, step)
        # Its tick history says what it did (it said "a slot free in" every 15 s, idle or not).
        assert (
            first.skip_message
            == f"gave a free slot to the step waiting longest in: {pool} (2 were waiting)"
        )
        # month-c waits its turn, behind month-b (no run stored under that id in this test).
        assert second.skip_message == (
            f"no pool slot is free: {pool} (1 waiting) held by run month-b ({step}, deleted: "
            "its slot is freed within about 3 minutes of the run's end)"
        )
        assert idle.skip_message == "no step waits for a pool slot"


def _a_run_holding_the_slot_and_month_b_waiting(instance: dg.DagsterInstance) -> dg.DagsterRun:
    """A STARTED run holding d23_warehouse's one slot in its merge, month-b's merge waiting."""
    storage = instance.event_log_storage
    storage.set_concurrency_slots(POOL, 1)
    holder = instance.add_run(
        dg.DagsterRun(job_name="d23_month", status=dg.DagsterRunStatus.STARTED)
    )
    storage.claim_concurrency_slot(POOL, holder.run_id, "d23__logs")
    storage.add_pending_step(POOL, "month-b", "d23__logs")
    return holder


def test_a_month_left_waiting_is_told_which_run_holds_the_slot_and_whether_it_ended() -> None:
    # A run worker killed as its step got the one slot: the run has ended, the slot is held
    # until Dagster frees a finished run's slots; the merge waiting behind it names that run.
    with dg.instance_for_test() as instance:
        killed = _a_run_holding_the_slot_and_month_b_waiting(instance)
        while_running = pool_watchdog(dg.build_sensor_context(instance=instance))
        instance.report_run_failed(killed)

        ended = pool_watchdog(dg.build_sensor_context(instance=instance))

    assert while_running.skip_message == (
        f"no pool slot is free: {POOL} (1 waiting) held by run {killed.run_id} (d23__logs, STARTED)"
    )
    assert ended.skip_message == (
        f"no pool slot is free: {POOL} (1 waiting) held by run {killed.run_id} (d23__logs, "
        "FAILURE: its slot is freed within about 3 minutes of the run's end)"
    )


@pytest.mark.parametrize("instance_file", ["dagster.yaml", "dagster.postgres.yaml"])
def test_the_warehouse_slot_of_a_run_force_terminated_mid_merge_goes_to_the_next_month(
    monkeypatch, instance_file
) -> None:
    shipped = yaml.safe_load((resources.files("d23_pipeline.deploy") / instance_file).read_text())
    overrides = {"run_monitoring": shipped["run_monitoring"]}
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        dead = _a_run_holding_the_slot_and_month_b_waiting(instance)
        # Force termination marks the run ended; its process, killed, never frees the slot.
        instance.report_run_canceled(dead)
        assert not _assigned(instance, "month-b")

        def monitoring_daemon_tick(seconds_after_the_end: int) -> None:
            later = datetime.now(UTC) + timedelta(seconds=seconds_after_the_end)
            monkeypatch.setattr(slot_monitoring, "get_current_datetime", lambda: later)
            context = SimpleNamespace(instance=instance)
            list(slot_monitoring.execute_concurrency_slots_iteration(context, logging.getLogger()))

        # Not at once: a force-terminated run's process may still be finishing its write.
        monitoring_daemon_tick(30)
        assert not _assigned(instance, "month-b")
        monitoring_daemon_tick(61)
        assert _assigned(instance, "month-b")
        assert dead.run_id not in storage.get_concurrency_info(POOL).active_run_ids
