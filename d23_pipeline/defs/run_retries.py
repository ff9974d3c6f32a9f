"""A month whose read fails in a way no retry mends is not retried by the daemon.

The shipped instance retries every failed run up to twice (``run_retries`` in
``deploy/dagster.yaml``): a flaky API's month gets read again. A refused login, a token of
another lender, a dataset not enabled, a host that is not the API, a data folder of another
source or a bad setting (a ``D23_*`` variable, or a run's resource config out of range) fail
every retry the same way, a minute later each. With run retries on, Dagster decides from the
run's tags, read when the run fails, so such a failure sets the run's ``dagster/max_retries`` to
0 first, keeping the value it replaced in :data:`RETRIES_STOPPED_TAG`. So does a retry whose
read proved more rows gone than allowed again (:func:`not_retried`): a person's confirmation
lands it.

A re-execution of that run (after the setting is fixed) inherits both tags; its
``d23/raw_logs`` puts the value back, so that its own flaky failures are retried again, counted
as Dagster counts any re-execution's: against the runs of its group before it. A re-execution of
later steps only keeps 0 (no retries): launching the month again starts a new group.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

MAX_RETRIES_TAG = "dagster/max_retries"
# Set on a run whose merge held deletions above the allowed share; its automatic retry inherits
# it (Dagster copies the run's tags), and is not retried again if it holds them too.
DELETIONS_HELD_TAG = "d23/deletions_held"
RETRIES_STOPPED_TAG = "d23/retries_stopped"


def unmendable_by_retry() -> tuple[type[Exception], ...]:
    """The errors a new run would meet again until someone changes a setting or an account."""
    # Imported when a step runs: the client brings httpx and Arrow (see test_code_health).
    from d23_pipeline.client.errors import (
        ApiHostError,
        AuthenticationError,
        DatasetNotFoundError,
        LenderMismatchError,
        NotTheApiError,
    )
    from d23_pipeline.landing.snapshot import SourceMismatchError
    from d23_pipeline.settings import SettingsError
    from d23_pipeline.warehouse.ducklake import WarehouseSettingsError
    from d23_pipeline.warehouse.store import WarehouseSchemaError

    return (
        ApiHostError,
        AuthenticationError,
        LenderMismatchError,
        DatasetNotFoundError,
        NotTheApiError,
        SourceMismatchError,
        SettingsError,
        WarehouseSettingsError,
        WarehouseSchemaError,
    )


def _allowed(instance: dg.DagsterInstance, run: dg.DagsterRun, inherited: str | None) -> str:
    """The retry count a re-execution of this run gets back once the setting is fixed."""
    return inherited or run.tags.get(MAX_RETRIES_TAG) or str(instance.run_retries_max_retries)


def _inherited(run: dg.DagsterRun) -> str | None:
    """The count a stopped run kept, if this run re-executes it (and its launcher set none)."""
    return run.tags.get(RETRIES_STOPPED_TAG) if run.tags.get(MAX_RETRIES_TAG) == "0" else None


def _stop(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    log: dg.DagsterLogManager,
    allowed: str,
    why: str,
) -> None:
    instance.add_run_tags(run.run_id, {MAX_RETRIES_TAG: "0", RETRIES_STOPPED_TAG: allowed})
    log.error(f"Not retried: {why}")


@contextmanager
def _stopped_on_unmendable(
    instance: dg.DagsterInstance, run: dg.DagsterRun, log: dg.DagsterLogManager, allowed: str
) -> Iterator[None]:
    try:
        yield
    except unmendable_by_retry() as exc:
        again = (
            "the month again (a backfill or the job: a new run gets all its retries)"
            if run.tags.get("dagster/partition")
            else "the run again (a new run gets all its retries)"
        )
        _stop(
            instance,
            run,
            log,
            allowed,
            f"{type(exc).__name__} fails every new run the same way until it is fixed (see the "
            f"error below). Fix it, then launch {again}.",
        )
        raise


def not_retried(context: dg.AssetExecutionContext, why: str) -> None:
    """Keep the run from being retried when it fails: ``why`` needs a person, not another read
    (a retry would read the whole month from the API again to fail the same way)."""
    instance, run = context.instance, context.run
    if instance.run_retries_enabled:
        _stop(instance, run, context.log, _allowed(instance, run, _inherited(run)), why)


@contextmanager
def retried_only_when_it_can_help(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Run the block; if it fails in a way no retry mends, the run is not retried."""
    instance, run = context.instance, context.run
    if not instance.run_retries_enabled:  # nothing would retry it anyway
        yield
        return
    inherited = _inherited(run)
    if inherited:
        instance.add_run_tags(run.run_id, {MAX_RETRIES_TAG: inherited, RETRIES_STOPPED_TAG: ""})
    with _stopped_on_unmendable(instance, run, context.log, _allowed(instance, run, inherited)):
        yield


@contextmanager
def not_retried_when_its_config_is_refused(context: dg.InitResourceContext) -> Iterator[None]:
    """The same, for a resource's setup: a run config out of range fails before any step."""
    instance, run, log = context.instance, context.dagster_run, context.log
    if instance is None or run is None or log is None or not instance.run_retries_enabled:
        yield  # built outside a run, or nothing would retry it
        return
    # A stopped run's count is put back by d23/raw_logs, once the settings pass.
    with _stopped_on_unmendable(instance, run, log, _allowed(instance, run, _inherited(run))):
        yield
