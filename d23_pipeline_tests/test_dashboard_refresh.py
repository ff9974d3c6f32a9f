"""The dashboard after a run that stopped before it: the sensor evaluated directly on the failed
run and as the daemon ticks it, the run it requests, and the months the page then lists as
lagging until they are built."""

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin
from filelock import FileLock
from harness import Pipeline

from d23_pipeline.analytics import dashboard, outcome_mix
from d23_pipeline.definitions import defs
from d23_pipeline.defs import checks, dashboard_refresh, keys
from d23_pipeline.defs.dashboard_refresh import (
    dashboard_after_blocked_run,
    dashboard_behind_the_warehouse,
)
from d23_pipeline.defs.jobs import d23_dashboard_job
from d23_pipeline.simulator import Simulator, SimulatorConfig, serve
from d23_pipeline.warehouse import store

MONTH = "2026-04"
CONFIRM = {"ops": {"d23__logs": {"config": {"confirm_deletions": True}}}}


def _on_failure(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult):
    context = dg.build_run_status_sensor_context(
        sensor_name="d23_dashboard_after_blocked_run",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()
    return dashboard_after_blocked_run(context)


def _behind(pipeline: Pipeline, instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    """A tick of d23_dashboard_behind_the_warehouse, with the pipeline's dashboard page."""
    page = pipeline.resources()["dashboard_file"]
    context = dg.build_sensor_context(instance=instance, resources={"dashboard_file": page})
    return dashboard_behind_the_warehouse(context)


def _listed(pipeline: Pipeline, heading: str) -> bool:
    page = pipeline.dashboard_path.read_text()
    start = page.index(f"<h3>{heading}</h3>")
    section = page[start : page.index("<h3>", start + 1) if "<h3>" in page[start + 1 :] else None]
    return f"<td>{MONTH}</td>" in section


HELD, MIX_BEHIND = "Deletions not applied", "Outcome mix older than d23.logs"
KPIS_BEHIND = "KPIs older than their outcome mix"


def test_a_blocked_months_held_deletions_and_unmixed_rows_reach_the_dashboard_until_confirmed(
    pipeline: Pipeline,
) -> None:
    with dg.instance_for_test() as instance:
        pipeline.materialize(MONTH, instance=instance)
        pipeline.sim.hard_delete(60, MONTH)  # 4 % of the month: its merge holds the deletions
        pipeline.sim.add_late_rows(5, MONTH)  # merged, but the month's outcome steps never run
        blocked = pipeline.materialize(MONTH, raise_on_error=False, instance=instance)
        assert not blocked.success  # deletions_within_limit: the dashboard step was skipped
        assert not _listed(pipeline, HELD) and not _listed(pipeline, MIX_BEHIND)

        request = _on_failure(instance, blocked)
        assert isinstance(request, dg.RunRequest)
        assert request.run_key == f"dashboard-after:{blocked.run_id}"
        # The job the sensor requests, with the run's resources.
        rebuilt = defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
            instance=instance, resources=pipeline.resources()
        )
        assert rebuilt.success
        assert _listed(pipeline, HELD) and _listed(pipeline, MIX_BEHIND)

    pipeline.materialize(MONTH, selection="d23/logs*", run_config=CONFIRM)

    assert not _listed(pipeline, HELD) and not _listed(pipeline, MIX_BEHIND)


def test_rows_moved_between_days_of_a_blocked_month_list_its_daily_mix_as_behind(
    tmp_path: Path,
) -> None:
    # The month's mix per code and channel does not change; its daily table does.
    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=1500, seed=5))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize(MONTH)
        sim.hard_delete(40, MONTH)  # 2.7 % of the month: its merge holds them and blocks
        second = datetime(2026, 4, 2, tzinfo=UTC)
        moved = [r for r in sim.rows(second, second + timedelta(days=1)) if r["is_active"]][:6]
        for row in moved:
            sim.move_row(row["public_id"], datetime(2026, 4, 20, 12, tzinfo=UTC))
        assert not pipeline.materialize(MONTH, raise_on_error=False).success

        rebuilt = defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
            resources=pipeline.resources()
        )

    assert rebuilt.success
    assert _listed(pipeline, MIX_BEHIND)


def _daemon_tick(instance: dg.DagsterInstance, cursor: str | None):
    """One tick as the daemon evaluates it: in the code location workspace.yaml names."""
    context = dg.SensorEvaluationContext(
        instance_ref=None,
        instance=instance,
        cursor=cursor,
        repository_name="__repository__",
        sensor_name=dashboard_after_blocked_run.name,
        code_location_origin=RegisteredCodeLocationOrigin("d23_pipeline.definitions"),
    )
    return dashboard_after_blocked_run.evaluate_tick(context)


def test_a_blocked_run_from_the_command_line_requests_the_dashboard(pipeline: Pipeline) -> None:
    # `dagster asset materialize` runs carry no code location: the sensor must still see them.
    with dg.instance_for_test() as instance:
        started = _daemon_tick(instance, cursor=None)
        pipeline.materialize(MONTH, instance=instance)
        pipeline.sim.hard_delete(60, MONTH)
        blocked = pipeline.materialize(MONTH, raise_on_error=False, instance=instance)
        assert not blocked.success and blocked.dagster_run.remote_job_origin is None

        tick = _daemon_tick(instance, started.cursor)

    assert [r.run_key for r in tick.run_requests] == [f"dashboard-after:{blocked.run_id}"]


def _merge_fails(*args: object, **kwargs: object) -> None:
    raise RuntimeError("the merge failed")


@pytest.mark.parametrize("failing", ["login", "merge after the read landed"])
def test_a_failed_run_that_merged_nothing_requests_no_dashboard(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    overrides = {"password": "not-the-password"} if failing == "login" else {}
    if failing != "login":
        monkeypatch.setattr(store, "merge_within_memory_limit", _merge_fails)
    with dg.instance_for_test() as instance:
        failed = pipeline.materialize(MONTH, raise_on_error=False, instance=instance, **overrides)
        assert not failed.success

        answer = _on_failure(instance, failed)

    assert isinstance(answer, dg.SkipReason) and "merged nothing" in answer.skip_message


def test_a_run_that_failed_after_its_merge_committed_gets_the_dashboard_rebuilt(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The merge committed, then the step failed before its materialization (here: the warehouse
    # held by another process for the counts after it): d23.logs changed all the same.
    def busy(*args: object, **kwargs: object) -> None:
        raise store.WarehouseBusyError("held by another process")

    with dg.instance_for_test() as instance:
        with monkeypatch.context() as patched:
            patched.setattr(checks, "public_id_unique", busy)
            failed = pipeline.materialize(MONTH, raise_on_error=False, instance=instance)
        assert not failed.success
        assert not instance.fetch_materializations(keys.LOGS, limit=1).records

        after_failure = _on_failure(instance, failed)
        monkeypatch.setattr(dashboard_refresh, "SETTLED_S", 0.0)
        behind = _behind(pipeline, instance)

    assert isinstance(after_failure, dg.RunRequest)
    assert isinstance(behind, dg.RunRequest)


def test_a_failed_run_that_rebuilt_the_dashboard_itself_requests_no_other(
    pipeline: Pipeline,
) -> None:
    # A run failed after its dashboard step (a later step of another asset, a terminate).
    with dg.instance_for_test() as instance:
        built = pipeline.materialize(MONTH, instance=instance)
        instance.report_run_failed(built.dagster_run)
        (failure,) = instance.all_logs(built.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="d23_dashboard_after_blocked_run",
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(built.run_id),
            dagster_event=failure.dagster_event,
        ).for_run_failure()

        answer = dashboard_after_blocked_run(context)

    assert isinstance(answer, dg.SkipReason)
    assert "rebuilt the dashboard itself" in answer.skip_message


@pytest.mark.parametrize(
    ("failing_step", "listed_as"),
    [("rebuild_outcome_mix_monthly", MIX_BEHIND), ("rebuild_outcome_kpis_monthly", KPIS_BEHIND)],
)
def test_a_months_first_run_that_stopped_before_its_numbers_is_listed_until_they_are_built(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, failing_step: str, listed_as: str
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the step failed")

    with monkeypatch.context() as patched:
        patched.setattr(outcome_mix, failing_step, fail)
        assert not pipeline.materialize(MONTH, raise_on_error=False).success
    rebuilt = defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
        resources=pipeline.resources()
    )
    assert rebuilt.success
    assert _listed(pipeline, listed_as)
    # No month has KPIs yet, but this one was merged: the page says so, and what it holds.
    page = pipeline.dashboard_path.read_text()
    assert "no months yet" not in page and "(no KPIs for Apr 2026)" in page
    assert re.search(rf"<tr><td>{MONTH}</td><td>[1-9][0-9,]*</td>", page)

    pipeline.materialize(MONTH)

    assert not _listed(pipeline, MIX_BEHIND) and not _listed(pipeline, KPIS_BEHIND)


def test_a_merge_no_run_built_the_dashboard_after_requests_it_once_nothing_else_will(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tick() -> dg.RunRequest | dg.SkipReason:
        return _behind(pipeline, instance)

    with dg.instance_for_test() as instance:
        assert "no month has been merged" in tick().skip_message
        # A backfill's month whose dashboard run Dagster skipped (another month failed).
        pipeline.materialize(MONTH, selection="*d23/logs", instance=instance)
        (merge,) = instance.fetch_materializations(keys.LOGS, limit=1).records
        assert "recent" in tick().skip_message  # its backfill may still build it
        monkeypatch.setattr(dashboard_refresh, "SETTLED_S", 0.0)  # as if SETTLED_S had passed
        # Another project's run on a shared instance does not hold the page back.
        other = dg.DagsterRun(job_name="another_job", status=dg.DagsterRunStatus.STARTED)
        instance.add_run(other)
        assert isinstance(tick(), dg.RunRequest)
        # A D23 month's run (a backfill's next month) may build it: wait for it.
        running = dg.DagsterRun(
            job_name="__ASSET_JOB",
            status=dg.DagsterRunStatus.STARTED,
            asset_selection=frozenset({keys.RAW_LOGS, keys.LOGS}),
        )
        instance.add_run(running)
        assert "in flight" in tick().skip_message
        instance.report_run_failed(running)

        request = tick()

        assert isinstance(request, dg.RunRequest)
        assert request.run_key == f"dashboard-behind:{merge.storage_id}"
        rebuilt = defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
            instance=instance, resources=pipeline.resources()
        )
        assert rebuilt.success and pipeline.dashboard_path.is_file()
        assert "built after the last merge" in tick().skip_message
        # A page written elsewhere (run config) leaves the product's page as it was.
        pipeline.materialize(MONTH, selection="*d23/logs", instance=instance)
        other_page = {"path": str(pipeline.data_dir / "other.html")}
        elsewhere = {"resources": {"dashboard_file": {"config": other_page}}}
        defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
            instance=instance, resources=pipeline.resources(), run_config=elsewhere
        )
        assert (pipeline.data_dir / "other.html").is_file()
        assert isinstance(tick(), dg.RunRequest)


def test_a_page_read_before_another_runs_merge_is_not_written_after_that_runs_page(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs the warehouse pool does not serialise (two `dagster asset materialize`, DuckLake
    # with several writers): a dashboard run after March's has read the warehouse and is writing
    # its page when April's first read merges and reaches its own dashboard step.
    march, april = "2026-03", "2026-04"
    pipeline.materialize(march)
    march_writing, march_may_write, april_at_page = (threading.Event() for _ in range(3))
    write_page, page_lock = dashboard.write_dashboard, dashboard.page_lock

    def write_march_page_slowly(path: Path, data: dashboard.DashboardData) -> None:
        if threading.current_thread().name == march:
            march_writing.set()
            assert march_may_write.wait(60)
        write_page(path, data)

    def note_april_at_page(path: Path) -> FileLock:
        if threading.current_thread().name == april:
            april_at_page.set()
        return page_lock(path)

    monkeypatch.setattr(dashboard, "write_dashboard", write_march_page_slowly)
    monkeypatch.setattr(dashboard, "page_lock", note_april_at_page)
    dashboard_alone = defs.resolve_job_def(d23_dashboard_job.name)
    runs = {
        march: threading.Thread(
            target=dashboard_alone.execute_in_process,
            kwargs={"resources": pipeline.resources()},
            name=march,
        ),
        april: threading.Thread(target=pipeline.materialize, args=(april,), name=april),
    }
    runs[march].start()
    assert march_writing.wait(60)
    runs[april].start()
    while not april_at_page.is_set() and runs[april].is_alive():
        time.sleep(0.05)
    march_may_write.set()
    for run in runs.values():
        run.join(120)

    april_row = re.search(r"<tr><td>2026-04</td>(.*?)</tr>", pipeline.dashboard_path.read_text())
    assert april_row is not None and "never" not in april_row.group(1)


def test_a_page_that_read_the_warehouse_before_a_merge_is_rebuilt_though_written_after_it(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    march, april = "2026-03", "2026-04"
    page_read, may_write = threading.Event(), threading.Event()
    write_page = dashboard.write_dashboard

    def write_after_the_merge(path: Path, data: dashboard.DashboardData) -> None:
        page_read.set()
        assert may_write.wait(60)
        write_page(path, data)

    with dg.instance_for_test() as instance:
        pipeline.materialize(march, instance=instance)
        monkeypatch.setattr(dashboard, "write_dashboard", write_after_the_merge)
        built: list[dg.ExecuteInProcessResult] = []
        dashboard_run = threading.Thread(
            target=lambda: built.append(
                defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
                    instance=instance, resources=pipeline.resources()
                )
            )
        )
        dashboard_run.start()
        assert page_read.wait(60)
        # A backfill's month: merged, its dashboard left to the run after the months.
        pipeline.materialize(april, selection="*d23/logs", instance=instance)
        may_write.set()
        dashboard_run.join(120)
        assert [result.success for result in built] == [True]
        monkeypatch.setattr(dashboard_refresh, "SETTLED_S", 0.0)

        request = _behind(pipeline, instance)

    assert isinstance(request, dg.RunRequest)
