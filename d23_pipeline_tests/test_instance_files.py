"""The two instance files of d23_pipeline/deploy differ in their storage only."""

import logging
import threading
from importlib import resources

import dagster as dg
import yaml

DEPLOY = resources.files("d23_pipeline.deploy")


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_postgres_instance_keeps_the_embedded_queue_pools_retries_and_monitoring() -> None:
    embedded, production = load("dagster.yaml"), load("dagster.postgres.yaml")
    assert "storage" not in embedded
    assert {k: v for k, v in production.items() if k != "storage"} == embedded


def _comments_by_setting(name: str) -> dict[str, str]:
    """The comment block right above each top-level setting of an instance file."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in (DEPLOY / name).read_text().splitlines():
        if line.startswith("#"):
            above.append(line)
        elif not line:  # a blank line ends a block that belongs to no setting (the file's head)
            above = []
        elif not line[0].isspace():
            comments[line.split(":")[0]] = "\n".join(above)
            above = []
    return comments


def test_the_settings_both_files_share_are_explained_alike() -> None:
    # An operator reads one of them: the Postgres file's retry comment had gone stale.
    embedded, production = (
        _comments_by_setting("dagster.yaml"),
        _comments_by_setting("dagster.postgres.yaml"),
    )
    shared = (embedded.keys() & production.keys()) - {"storage"}
    assert shared >= {"concurrency", "run_retries", "run_monitoring", "python_logs"}
    assert {k: embedded[k] for k in shared} == {k: production[k] for k in shared}


def test_postgres_credentials_come_from_the_environment() -> None:
    database = load("dagster.postgres.yaml")["storage"]["postgres"]["postgres_db"]
    for field in ("hostname", "port", "db_name", "username", "password"):
        assert set(database[field]) == {"env"}, field


def test_the_pipelines_own_log_lines_reach_the_run_log_from_any_thread(tmp_path) -> None:
    def log_from_a_worker(context: dg.AssetExecutionContext) -> None:
        # As the client's reader threads and the warehouse log: plain Python loggers.
        worker = threading.Thread(
            target=lambda: logging.getLogger("d23_pipeline.client").info("retrying page 7")
        )
        worker.start()
        worker.join()
        logging.getLogger("d23_pipeline.warehouse").warning("waiting for the warehouse lock")

    logs = dg.asset(name="logs_like_the_pipeline")(log_from_a_worker)
    overrides = {"python_logs": load("dagster.yaml")["python_logs"]}
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([logs], instance=instance)
        messages = {
            (e.level, e.user_message)
            for e in instance.all_logs(result.run_id)
            if e.user_message in ("retrying page 7", "waiting for the warehouse lock")
        }
    assert messages == {
        (logging.INFO, "retrying page 7"),
        (logging.WARNING, "waiting for the warehouse lock"),
    }


def test_the_shipped_instance_queues_retries_and_ends_runs_as_the_readme_says() -> None:
    # README: at most 4 runs at once, one run per month at a time, a failed month retried twice,
    # a run still going after 6 h ended. Read as Dagster reads them, so a misspelt key fails too.
    with dg.instance_for_test(overrides=load("dagster.yaml")) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert queue.tag_concurrency_limits == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert (instance.run_retries_enabled, instance.run_retries_max_retries) == (True, 2)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds == 6 * 3600
