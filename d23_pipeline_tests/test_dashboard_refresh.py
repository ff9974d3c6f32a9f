"""The dashboard rebuilt after a run a blocking check stopped: the sensor evaluated directly on
the failed run, then the run it requests."""

import dagster as dg
from harness import Pipeline

from d23_pipeline.definitions import defs
from d23_pipeline.defs.dashboard_refresh import dashboard_after_blocked_run
from d23_pipeline.defs.jobs import d23_dashboard_job

MONTH = "2026-04"
HELD = "<h3>Deletions not applied</h3>"


def _on_failure(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult):
    context = dg.build_run_status_sensor_context(
        sensor_name="d23_dashboard_after_blocked_run",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()
    return dashboard_after_blocked_run(context)


def _held_section(pipeline: Pipeline) -> str:
    page = pipeline.dashboard_path.read_text()
    return page[page.index(HELD) : page.index("</section>", page.index(HELD))]


def test_deletions_held_by_a_blocked_run_reach_the_dashboard_through_the_run_it_requests(
    pipeline: Pipeline,
) -> None:
    with dg.instance_for_test() as instance:
        pipeline.materialize(MONTH, instance=instance)
        pipeline.sim.hard_delete(60, MONTH)  # 4 % of the month: its merge holds the deletions
        blocked = pipeline.materialize(MONTH, raise_on_error=False, instance=instance)
        assert not blocked.success  # deletions_within_limit: the dashboard step was skipped
        assert "every deletion is applied" in _held_section(pipeline)

        request = _on_failure(instance, blocked)
        assert isinstance(request, dg.RunRequest)
        assert request.run_key == f"dashboard-after:{blocked.run_id}"
        # The job the sensor requests, with the run's resources.
        rebuilt = defs.resolve_job_def(d23_dashboard_job.name).execute_in_process(
            instance=instance, resources=pipeline.resources()
        )

    assert rebuilt.success
    assert "<td>2026-04</td><td>60</td>" in _held_section(pipeline)


def test_a_failed_run_that_merged_nothing_requests_no_dashboard(pipeline: Pipeline) -> None:
    with dg.instance_for_test() as instance:
        failed = pipeline.materialize(
            MONTH, raise_on_error=False, instance=instance, password="not-the-password"
        )
        assert not failed.success

        assert isinstance(_on_failure(instance, failed), dg.SkipReason)
