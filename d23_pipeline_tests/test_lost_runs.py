"""Runs whose process is gone: marked failed by ``make run`` as it starts and by the
``d23_lost_runs`` sensor, on a real instance with real run processes."""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from postgres import PostgresServer
from processes import make_dagster_home

from d23_pipeline.defs import lost_runs
from d23_pipeline.defs.lost_runs import (
    fail_runs_whose_process_is_gone,
    lost_run_watchdog,
    runs_maybe_left_in_progress,
)

A_RUN_THAT_READS = """import sys, time, dagster as dg

@dg.asset
def reading() -> None:
    open(sys.argv[2], "w").close()
    time.sleep(600)

with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    dg.materialize([reading], instance=instance)
"""


@contextmanager
def _a_run_in_its_step(
    tmp_path: Path, template: str = "dagster.yaml"
) -> Iterator[tuple[subprocess.Popen, dg.DagsterInstance, str]]:
    """A run of a fresh instance (``template``) in a process of its own, once it is inside its
    step: the process, the instance and the run's id."""
    home = make_dagster_home(tmp_path / "dagster_home", template=template)
    reading = tmp_path / "reading"
    run = subprocess.Popen([sys.executable, "-c", A_RUN_THAT_READS, str(home), str(reading)])
    try:
        deadline = time.monotonic() + 60
        while not reading.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reading.exists(), "the run never started its step"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (record,) = instance.get_run_records()
            yield run, instance, record.dagster_run.run_id
    finally:
        _kill(run)


def _kill(run: subprocess.Popen) -> None:
    run.kill()
    run.wait(10)


def test_a_run_whose_process_is_gone_is_failed_so_it_is_retried_and_a_live_one_left(
    tmp_path: Path,
) -> None:
    with _a_run_in_its_step(tmp_path) as (run, instance, run_id):
        # Still going: left alone.
        assert fail_runs_whose_process_is_gone(instance, "make run") == []

        _kill(run)  # as a stopped `make run` ends its code server's runs
        assert fail_runs_whose_process_is_gone(instance, "make run") == [run_id]
        after = instance.get_run_by_id(run_id)

    assert after is not None and after.status == dg.DagsterRunStatus.FAILURE
    assert after.tags.get("dagster/will_retry") == "true"


def test_on_a_postgres_instance_make_run_names_a_run_without_its_process_and_fails_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer
) -> None:
    # Runs of other hosts sharing the instance have pids of theirs: gone here proves nothing.
    database = postgres.new_database().rsplit("dbname=", 1)[1]
    for name, value in {**postgres.dagster_env(), "DAGSTER_PG_DB": database}.items():
        monkeypatch.setenv(name, value)
    with _a_run_in_its_step(tmp_path, "dagster.postgres.yaml") as (run, instance, run_id):
        _kill(run)

        assert fail_runs_whose_process_is_gone(instance, "make run") == []
        assert runs_maybe_left_in_progress(instance) == [run_id]
        after = instance.get_run_by_id(run_id)

    assert after is not None and after.status == dg.DagsterRunStatus.STARTED


def test_the_sweep_reads_an_instance_whose_sqlite_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `base_dir: {env: ...}` leaves the instance ref without run_storage_data: the sweep crashed.
    monkeypatch.setenv("D23_TEST_STORAGE", str(tmp_path / "storage"))
    home = make_dagster_home(
        tmp_path / "dagster_home",
        config="storage:\n  sqlite:\n    base_dir:\n      env: D23_TEST_STORAGE\n",
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert fail_runs_whose_process_is_gone(instance, "make run") == []


def test_the_sensor_fails_a_killed_cli_run_so_it_ends_saying_to_run_it_again(
    tmp_path: Path,
) -> None:
    # A `dagster asset materialize` run killed alone: no code server reports it, and its month
    # and any pool slot it held would wait 6 h for run monitoring. Ended, its slots are freed
    # by run monitoring (dagster.yaml; test_pools tries that part).
    with _a_run_in_its_step(tmp_path) as (run, instance, run_id):
        while_alive = lost_run_watchdog(dg.build_sensor_context(instance=instance))
        _kill(run)

        tick = lost_run_watchdog(dg.build_sensor_context(instance=instance))
        after = instance.get_run_by_id(run_id)
        (failure,) = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.RUN_FAILURE
        ).records

    assert while_alive.skip_message == "every run in progress has its process"
    assert tick.skip_message == f"marked failed, their process gone: {run_id}"
    assert after is not None and after.status == dg.DagsterRunStatus.FAILURE
    # Not launched through a code location: Dagster cannot re-execute it, and the run says so.
    assert "run it again (a run of `dagster asset materialize` is not retried)" in (
        failure.event_log_entry.message
    )


def test_a_run_that_ends_as_its_process_is_found_gone_keeps_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listed as STARTED, then its process exits having stored its end: not failed over it.
    with _a_run_in_its_step(tmp_path) as (run, instance, run_id):

        def ends_then_exits(pid: int) -> bool:
            run_before = instance.get_run_by_id(run_id)
            assert run_before is not None
            instance.report_run_canceled(run_before)  # an end the run stored itself
            _kill(run)
            return True

        monkeypatch.setattr(lost_runs, "_process_is_gone", ends_then_exits)
        failed = fail_runs_whose_process_is_gone(instance, "a test")
        after = instance.get_run_by_id(run_id)

    assert failed == []
    assert after is not None and after.status == dg.DagsterRunStatus.CANCELED
