"""The product as it runs: simulator, dagster-webserver and dagster-daemon as real processes.

A three-month backfill is launched with the README's command, which sends the webserver the same
GraphQL request as the asset graph's "Materialize" dialog; then the daily refresh sensor is
switched on and its runs are checked. Both run twice: on the embedded instance `make run` uses
(d23_pipeline/deploy/dagster.yaml) and on the production one, d23_pipeline/deploy/
dagster.postgres.yaml copied as it ships, against a throwaway PostgreSQL.
"""

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from browser import chromium_page
from harness import Pipeline
from postgres import PostgresServer
from processes import (
    REPO,
    Webserver,
    daemon_process,
    make_dagster_home,
    pipeline_env,
    simulator_process,
    tail,
    wait_for,
    webserver_process,
)

from d23_pipeline.backfill import backfill_status, deciding_runs, run_events
from d23_pipeline.defs import keys
from d23_pipeline.defs.sensors import REFRESH_DATE_TAG, TRIGGER_TAG, run_key
from d23_pipeline.launch import set_pool_limits
from d23_pipeline.simulator import Simulator, SimulatorConfig
from d23_pipeline.simulator.__main__ import recent_months

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The three months before the current one: the simulator cuts the month in progress at the
# moment it starts, so only finished months have a ground truth a second Simulator reproduces.
SIM = SimulatorConfig(months=recent_months(4)[:3], rows_per_month=400)
PARTITIONS = [f"{month}-01" for month in SIM.months]
# What the sensor refreshes: the current month (served empty) and the two before it.
REFRESHED_MONTHS = 3
SENSOR = "d23_daily_refresh_sensor"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

SENSOR_STATE = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      id
      jobOriginId
      sensorState {
        id
        status
        typeSpecificData { ... on SensorData { lastCursor } }
        ticks(limit: 10) { status runKeys skipReason }
      }
    }
  }
}"""
STOP_SENSOR = """
mutation StopSensor($id: String, $jobOriginId: String) {
  stopSensor(id: $id, jobOriginId: $jobOriginId) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
  }
}"""
START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
  }
}"""
RUNS = """
query Runs($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}"""
# What went wrong in the runs that failed, for a test's failure message.
FAILED_RUNS = """
query FailedRuns {
  runsOrError(filter: {statuses: [FAILURE]}) {
    ... on Runs {
      results {
        runId
        tags { key value }
        eventConnection {
          events {
            __typename
            ... on MessageEvent { message stepKey }
            ... on ErrorEvent { error { message stack } }
          }
        }
      }
    }
  }
}"""


@dataclass
class Deployment:
    """The running product: its webserver, its data, and the logs of its processes."""

    web: Webserver
    pipeline: Pipeline
    logs: Path
    location: str
    home: Path
    postgres: PostgresServer | None

    def sensor_selector(self) -> dict[str, str]:
        return {
            "repositoryLocationName": self.location,
            "repositoryName": "__repository__",
            "sensorName": SENSOR,
        }

    def sensor(self) -> dict:
        data = self.web.graphql(SENSOR_STATE, {"selector": self.sensor_selector()})
        assert data["sensorOrError"]["__typename"] == "Sensor", data
        return data["sensorOrError"]

    def runs(self, tags: dict[str, str]) -> list[dict]:
        variables = {"filter": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}
        return self.web.graphql(RUNS, variables)["runsOrError"]["results"]

    def diagnostics(self) -> str:
        return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(self.logs.glob("*.log")))

    def failed_runs(self) -> str:
        """Every failed run's tags, messages and errors: a retried run leaves only this."""
        report = []
        for run in self.web.graphql(FAILED_RUNS)["runsOrError"]["results"]:
            report.append(f"--- failed run {run['runId']} {tags_of(run)}")
            for event in run["eventConnection"]["events"]:
                error = event.get("error") or {}
                report.append(
                    f"{event['__typename']} {event.get('stepKey')}: {event.get('message')}"
                )
                if error:
                    report.append(f"{error['message']}{''.join(error['stack'])}")
        return "\n".join(report)


def tags_of(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


# Which instance file of d23_pipeline/deploy/ each variant runs.
INSTANCE_FILES = {"embedded": "dagster.yaml", "postgres": "dagster.postgres.yaml"}


@pytest.fixture(scope="module", params=list(INSTANCE_FILES))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    # Started only for the variant that uses it, and shared with anything else that needs one.
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    logs = root / "logs"
    logs.mkdir()
    home = make_dagster_home(root / "dagster_home", template=INSTANCE_FILES[request.param])
    with simulator_process(SIM, logs / "simulator.log") as api_url:
        env = pipeline_env(api_url=api_url, sim=SIM, data_dir=root / "data", dagster_home=home)
        if postgres is not None:
            env.update(postgres.dagster_env())
        env["D23_REFRESH_HOUR_UTC"] = "0"  # due as soon as it is switched on
        set_pool_limits(env)  # as `make run` does, and the README's production steps
        with webserver_process(env, logs / "webserver.log") as web:
            deployment = Deployment(
                web=web,
                pipeline=Pipeline(sim=Simulator(SIM), api_url=api_url, data_dir=root / "data"),
                logs=logs,
                location="d23_pipeline.definitions",
                home=home,
                postgres=postgres,
            )
            # The sensor is on by default; hold it until the backfill is done, as an operator
            # would with the UI's toggle, before the daemon first looks at it.
            sensor = deployment.sensor()
            ids = {"id": sensor["sensorState"]["id"], "jobOriginId": sensor["jobOriginId"]}
            stopped = web.graphql(STOP_SENSOR, ids)
            assert stopped["stopSensor"]["instigationState"]["status"] == "STOPPED", stopped
            with daemon_process(env, logs / "daemon.log"):
                yield deployment


def test_backfill_from_the_command_line_lands_every_month_exactly(deployment: Deployment) -> None:
    # The README's command: the same launchPartitionBackfill request as the asset graph's dialog.
    first, last = SIM.months[0], SIM.months[-1]
    command = [sys.executable, "-m", "d23_pipeline.backfill", first, last, "--url"]
    with subprocess.Popen(
        [*command, deployment.web.url, "--wait"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        assert waiting.stdout is not None
        launched = waiting.stdout.readline()
        backfill_id = launched.split()[1].rstrip(":")
        # The same command again while it runs (a terminal closed, a second operator) follows
        # that backfill: a second one would run each month twice at once.
        again = subprocess.run(
            [*command, deployment.web.url], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        out, err = waiting.communicate(timeout=200)
    finished = subprocess.CompletedProcess(waiting.args, waiting.returncode, launched + out, err)
    assert finished.returncode == 0, f"{finished.stdout}{finished.stderr}{deployment.diagnostics()}"
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        f"Backfill {backfill_id} of the same {len(PARTITIONS)} months is already running"
    ), again.stdout

    backfill = backfill_status(deployment.web.url, backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS"
    runs = backfill["runs"]
    # One run per month, and one more for the unpartitioned dashboard once the months are in.
    months = [
        tags_of(run)["dagster/partition"] for run in runs if "dagster/partition" in tags_of(run)
    ]
    assert sorted(months) == PARTITIONS, deployment.failed_runs()
    assert len(runs) == len(PARTITIONS) + 1
    # --wait told the operator how each month ended, as it ended.
    for month in SIM.months:
        assert f"  {month}: SUCCESS (" in finished.stdout, finished.stdout
    assert f"({len(PARTITIONS)}/{len(PARTITIONS)} months done)" in finished.stdout
    assert {run["status"] for run in runs} == {"SUCCESS"}
    # ... and which checks failed: none here, from evaluations the webserver does report.
    assert " failed (" not in finished.stdout
    for run in deciding_runs(runs).values():
        evaluations = {
            e["evaluation"]["checkName"]: e["evaluation"]["success"]
            for e in run_events(deployment.web.url, run["runId"])
            if "evaluation" in e
        }
        assert evaluations["slices_verified"] is True
        assert evaluations["rows_match_api_total"] is True
    # A failed month is retried from its read (see RETRY_WHOLE_RUN_TAGS).
    assert {tags_of(run).get("dagster/retry_strategy") for run in runs} == {"ALL_STEPS"}
    assert deployment.pipeline.dashboard_path.is_file()
    assert deployment.pipeline.live_rows(SIM.months) == deployment.pipeline.expected_rows(
        SIM.months
    )


def test_the_outcome_charts_show_on_their_assets_pages(deployment: Deployment) -> None:
    # SVG data URIs in markdown metadata: Dagster's sanitizer must let them through and the
    # browser draw them, on the page an analyst opens after the backfill (before the refresh
    # below makes the current month, which has no rows and so no chart, the latest).
    drawn = {}
    for asset, entry, title in [
        ("outcome_mix_monthly", "outcome_mix", "Outcome mix"),
        ("outcome_mix_daily", "trend", "Daily outcome rates"),
    ]:
        with chromium_page() as page:
            page.goto(f"{deployment.web.url}/assets/d23/{asset}")
            row = page.locator("tr", has=page.get_by_text(entry, exact=True))
            # The event itself, not a pointer's click: Dagster's first-visit invitation to its
            # community may cover the page at any moment.
            row.get_by_text("[Show Markdown]").dispatch_event("click")
            drawn[asset] = page.locator(f"img[alt^='{title}, ']").evaluate(
                "i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])"
            )
    # At the size each chart sets: an SVG without one is drawn 300 x 150.
    assert drawn["outcome_mix_monthly"][0] == 760 and drawn["outcome_mix_daily"] == [800, 380]


# Three runs, one after another at the warehouse, each starting Dagster, on CI's 2 cores shared
# with the other test worker; a merge left waiting by Dagster's pool race (defs/pools.py) waits
# up to one more watchdog tick.
@pytest.mark.timeout(480)
def test_daily_refresh_sensor_requests_one_keyed_run_per_month(deployment: Deployment) -> None:
    started_on = datetime.now(UTC).date().isoformat()
    started = deployment.web.graphql(START_SENSOR, {"selector": deployment.sensor_selector()})
    assert started["startSensor"]["sensorState"]["status"] == "RUNNING", started

    def sensor_runs_finished() -> list[dict] | None:
        runs = deployment.runs({"dagster/sensor_name": SENSOR})
        done = len(runs) >= REFRESHED_MONTHS and all(run["status"] in FINISHED for run in runs)
        return runs if done else None

    try:
        runs = wait_for("the sensor's runs finishing", sensor_runs_finished, timeout_s=360)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{deployment.diagnostics()}") from None

    # The tick may come after a UTC midnight that started_on was read before: expect the day the
    # sensor recorded, which must be one of the two.
    state = deployment.sensor()["sensorState"]
    cursor = json.loads(state["typeSpecificData"]["lastCursor"])
    today = cursor["date"]
    assert today in {started_on, datetime.now(UTC).date().isoformat()}
    refreshed = [
        f"{month}-01" for month in recent_months(REFRESHED_MONTHS, datetime.fromisoformat(today))
    ]

    by_partition = {tags_of(run)["dagster/partition"]: run for run in runs}
    assert sorted(by_partition) == refreshed
    assert len(runs) == len(refreshed)
    for partition, run in by_partition.items():
        tags = tags_of(run)
        assert run["status"] == "SUCCESS", deployment.diagnostics()
        assert tags["dagster/run_key"] == run_key(today, partition)
        assert tags[TRIGGER_TAG] == "daily_refresh"
        assert tags[REFRESH_DATE_TAG] == today
        assert tags["dagster/retry_strategy"] == "ALL_STEPS"  # the job's tag, on its runs

    assert cursor == {
        "date": today,
        "requested": refreshed,
        "skipped_in_flight": [],
        "previous_refresh": None,  # the first refresh: no day before it to catch up from
        "carried_over": [],
    }
    requested = [key for tick in state["ticks"] for key in tick["runKeys"]]
    assert sorted(requested) == sorted(run_key(today, p) for p in refreshed)
    months = recent_months(4, datetime.fromisoformat(today))
    assert deployment.pipeline.live_rows(months) == deployment.pipeline.expected_rows(months)


@pytest.mark.parametrize("deployment", ["postgres"], indirect=True)
def test_postgres_instance_holds_runs_events_and_sensor_state(deployment: Deployment) -> None:
    # Runs after the backfill and the sensor's runs: everything the webserver and the daemon
    # recorded must be in PostgreSQL, nothing in SQLite files under DAGSTER_HOME.
    postgres = deployment.postgres
    assert postgres is not None
    runs = deployment.runs({})
    # The months the sensor test saw refreshed, as the sensor recorded them in its cursor.
    cursor = json.loads(deployment.sensor()["sensorState"]["typeSpecificData"]["lastCursor"])
    refreshed = cursor["requested"]
    # One run per month (the backfill's, then the sensor's), plus the backfill's run of the
    # unpartitioned dashboard.
    partitioned = [run for run in runs if "dagster/partition" in tags_of(run)]
    assert len(partitioned) == len(PARTITIONS) + len(refreshed), deployment.failed_runs()
    stored = dict(postgres.query("SELECT run_id, status FROM runs"))
    assert stored == {run["runId"]: run["status"] for run in runs}
    materialized = postgres.query(
        "SELECT DISTINCT partition FROM event_logs "
        "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
        [keys.LOGS.to_string()],
    )
    assert sorted(row[0] for row in materialized) == sorted({*PARTITIONS, *refreshed})
    sensor = "SELECT selector_id FROM instigators WHERE strpos(instigator_body, %s) > 0"
    sensor_state = postgres.query(
        f"SELECT status FROM instigators WHERE selector_id IN ({sensor})", [SENSOR]
    )
    assert sensor_state == [("RUNNING",)]
    ticks = postgres.query(
        f"SELECT count(*) FROM job_ticks WHERE status = 'SUCCESS' AND selector_id IN ({sensor})",
        [SENSOR],
    )
    assert ticks[0][0] >= 1
    assert not list(deployment.home.rglob("*.db")), "a SQLite storage was created"

    # The password reaches Dagster only through DAGSTER_PG_PASSWORD: it is in no process log,
    # compute log, run record or event, and in no command line (code servers get the instance's
    # config on theirs, where `ps` shows it).
    secret = postgres.password.encode()
    leaks = [
        path
        for folder in (deployment.logs, deployment.home)
        for path in folder.rglob("*")
        if path.is_file() and secret in path.read_bytes()
    ]
    assert leaks == []
    command_lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # processes come and go
            command_lines.append(cmdline.read_bytes())
    # Code servers carry the instance's storage config on their command line: the variable's
    # name is there, so the scan did look at them.
    assert any(b"DAGSTER_PG_PASSWORD" in line for line in command_lines)
    assert not [line for line in command_lines if secret in line]
    for table, column in (("event_logs", "event"), ("runs", "run_body")):
        found = postgres.query(
            f"SELECT count(*) FROM {table} WHERE strpos({column}, %s) > 0", [postgres.password]
        )
        assert found == [(0,)], table
