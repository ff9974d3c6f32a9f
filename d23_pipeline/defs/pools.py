"""``d23_pool_watchdog``: hands a free pool slot to a step left waiting for one.

Dagster assigns a step waiting for a pool slot only when it registers (if a slot is free then) or
when another step frees one (``claim_concurrency_slot`` in its SQL event log storage). A step that
registers while the last step holding the slot frees it sees the slot taken, and the free sees no
step waiting: the step then waits with the slot free until some other step of the pool frees one.
With d23_warehouse's one slot and nothing else running, a month read in full never merged (CI: a
backfill's last month waited 3 minutes, until the next test's runs came by).
"""

from __future__ import annotations

from typing import Any

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
    pools = {pool: storage.get_concurrency_info(pool) for pool in POOLS}
    waiting = {pool: info for pool, info in pools.items() if info.pending_step_count}
    if not waiting:
        return dg.SkipReason("no step waits for a pool slot")
    handed = [pool for pool in waiting if storage.has_unassigned_slots(pool)]
    if not handed:
        # Said, not just "none free": a run killed as its step got the slot holds it until
        # Dagster frees a finished run's slots, and the tick history is where one looks.
        return dg.SkipReason(
            "no pool slot is free: "
            + "; ".join(_held(context.instance, info) for info in waiting.values())
        )
    storage.assign_pending_steps(handed)
    return dg.SkipReason(
        "gave a free slot to the step waiting longest in: "
        + ", ".join(f"{pool} ({waiting[pool].pending_step_count} were waiting)" for pool in handed)
    )


def _held(instance: dg.DagsterInstance, info: Any) -> str:
    """Who holds the slots of ``info``'s pool (the storage's ``get_concurrency_info``, a type
    Dagster does not export): each run's id, step and status."""
    holders = {(slot.run_id, slot.step_key) for slot in info.claimed_slots}
    # A step assigned a slot holds it before its run worker claims it.
    holders |= {(s.run_id, s.step_key) for s in info.pending_steps if s.assigned_timestamp}
    said = []
    for run_id, step in sorted(holders):
        run = instance.get_run_by_id(run_id)
        status = run.status.value if run is not None else "deleted"
        ended = run is None or run.is_finished
        said.append(
            f"run {run_id} ({step}, {status}"
            + (": its slot is freed within about 3 minutes of the run's end)" if ended else ")")
        )
    return f"{info.concurrency_key} ({info.pending_step_count} waiting) held by " + (
        ", ".join(said) or "no run"
    )
