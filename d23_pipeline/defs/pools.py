"""``d23_pool_watchdog``: hands a free pool slot to a step left waiting for one.

Dagster assigns a step waiting for a pool slot only when it registers (if a slot is free then) or
when another step frees one (``claim_concurrency_slot`` in its SQL event log storage). A step that
registers while the last step holding the slot frees it sees the slot taken, and the free sees no
step waiting: the step then waits with the slot free until some other step of the pool frees one.
With d23_warehouse's one slot and nothing else running, a month read in full never merged (CI: a
backfill's last month waited 3 minutes, until the next test's runs came by).
"""

import dagster as dg

from d23_pipeline.settings import read_pool_limits

# The pools the assets run in, whose limits the launcher sets.
POOLS = tuple(read_pool_limits({}))


@dg.sensor(
    name="d23_pool_watchdog",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 15 s: a step waiting for a pool slot while one is free gets it.",
)
def pool_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Assign the longest-waiting step of each pool with a free slot; never requests a run."""
    storage = context.instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return dg.SkipReason("the instance's storage keeps no pool slots")
    free = [pool for pool in POOLS if storage.has_unassigned_slots(pool)]
    if not free:
        return dg.SkipReason("no pool slot is free")
    waiting = {pool: storage.get_concurrency_info(pool).pending_step_count for pool in free}
    handed = [pool for pool, steps in waiting.items() if steps]
    if not handed:
        return dg.SkipReason("no step waits while a pool slot is free")
    storage.assign_pending_steps(handed)
    return dg.SkipReason(
        "gave a free slot to the step waiting longest in: "
        + ", ".join(f"{pool} ({waiting[pool]} were waiting)" for pool in handed)
    )
