"""Runs whose process is gone: marked failed, so that their month, queue place and pool slots
are freed and, if launched through the code location, they are retried.

Dagster's default run launcher cannot see a run's process die unless the code server that
launched it is alive to report it. A run of ``dagster asset materialize`` killed alone (out of
memory, ``kill -9``), or every run of a ``make run`` stopped with its code server, stays
STARTED: it holds its month (one run per month at a time), a place in the run queue and any
pool slot its step held, so every other month's download or merge waits behind it, until run
monitoring ends it after 6 h. The sensor here marks such runs failed within a minute, the
launcher when ``make run`` starts; run monitoring then frees their pool slots (dagster.yaml).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import dagster as dg


def fail_runs_whose_process_is_gone(instance: dg.DagsterInstance, noticed_by: str) -> list[str]:
    """Mark failed every STARTED run whose process is gone; their run ids.

    A run counts as gone when the process that started executing it no longer exists (a run
    still going is left alone, a run that ended meanwhile too). Failed, those launched through
    the code location are retried as any failed run is, and resume from their finished
    slices. Only on an instance whose runs are stored on this machine (SQLite): on a shared
    PostgreSQL one, runs of other hosts have other pids (:func:`runs_maybe_left_in_progress`
    lists them instead). A SQLite instance's runs are taken to be this machine's processes in
    this process's pid namespace, as ``make run``'s are: a SQLite DAGSTER_HOME shared with
    containers or other machines (which the README does not set up) would have live runs
    failed here.
    """
    if not _runs_stored_here(instance):
        return []
    failed = []
    for run, pid in _started_runs_without_their_process(instance):
        # Read again now that its process is gone: a run that ended just before has its end
        # stored, and must not be marked failed over it.
        now = instance.get_run_by_id(run.run_id)
        if now is None or now.status != dg.DagsterRunStatus.STARTED:
            continue
        # Dagster re-executes only runs launched through a code location (the UI, a backfill,
        # a sensor), not those of `dagster asset materialize`.
        then = (
            "it is retried"
            if now.remote_job_origin is not None
            else "run it again (a run of `dagster asset materialize` is not retried); it resumes "
            "from its finished slices"
        )
        instance.report_run_failed(
            now,
            message=(
                f"the run's process (pid {pid}) is gone: it was killed (out of memory, kill -9, "
                f"a stopped `make run`, a reboot); marked failed by {noticed_by}, so that its "
                f"month and pool slots are freed; {then}"
            ),
        )
        failed.append(run.run_id)
    return failed


def runs_maybe_left_in_progress(instance: dg.DagsterInstance) -> list[str]:
    """On an instance whose runs are stored elsewhere (PostgreSQL), the STARTED runs whose
    process is not running on this host: a stopped ``make run``'s, or another host's."""
    if _runs_stored_here(instance):
        return []
    return [run.run_id for run, _ in _started_runs_without_their_process(instance)]


@dg.sensor(
    name="d23_lost_runs",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute: a run whose process was killed (out of memory, kill -9) is marked "
        "failed, so that its month and pool slots are freed (and, launched from the UI, a "
        "backfill or a sensor, it is retried)."
    ),
)
def lost_run_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Fail the runs whose process is gone; never requests a run."""
    failed = fail_runs_whose_process_is_gone(context.instance, "the d23_lost_runs sensor")
    if failed:
        return dg.SkipReason(f"marked failed, their process gone: {', '.join(failed)}")
    return dg.SkipReason("every run in progress has its process")


def _runs_stored_here(instance: dg.DagsterInstance) -> bool:
    # By the class's name: `storage: sqlite:` in dagster.yaml leaves the instance ref's
    # run_storage_data empty, and Dagster's storage classes are not public.
    return type(instance.run_storage).__name__ == "SqliteRunStorage"


def _started_runs_without_their_process(
    instance: dg.DagsterInstance,
) -> Iterator[tuple[dg.DagsterRun, int]]:
    for record in instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    ):
        run = record.dagster_run
        started = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1
        ).records
        event = started[0].event_log_entry.dagster_event if started else None
        pid = event.pid if event is not None else None
        if pid is not None and _process_is_gone(pid):
            yield run, pid


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False
