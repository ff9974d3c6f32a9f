"""The pool watchdog sensor, evaluated directly on a real instance's pool tables."""

import dagster as dg

from d23_pipeline.defs.pools import pool_watchdog

POOL = "d23_warehouse"


def _assigned(instance: dg.DagsterInstance, run_id: str) -> bool:
    claim = instance.event_log_storage.check_concurrency_claim(POOL, run_id, "d23__logs")
    return claim.is_assigned


def test_a_step_left_waiting_while_the_slot_is_free_gets_it_and_only_one() -> None:
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        # What the race leaves: a step registered as waiting, unassigned, with the slot free.
        storage.add_pending_step(POOL, "month-b", "d23__logs", should_assign=False)
        storage.add_pending_step(POOL, "month-c", "d23__logs", should_assign=False)
        assert not _assigned(instance, "month-b")

        pool_watchdog(dg.build_sensor_context(instance=instance))
        pool_watchdog(dg.build_sensor_context(instance=instance))

        # The one slot goes to the step waiting longest; the other still waits its turn.
        assert _assigned(instance, "month-b")
        assert not _assigned(instance, "month-c")
