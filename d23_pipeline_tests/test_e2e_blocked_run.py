"""A month a blocking check stops, in the product as it runs (simulator, webserver, daemon): the
daemon's d23_dashboard_after_blocked_run rebuilds the dashboard, which lists what held it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Pipeline
from processes import (
    REPO,
    daemon_process,
    free_port,
    make_dagster_home,
    pipeline_env,
    spawn,
    tail,
    wait_for,
    webserver_process,
)

from d23_pipeline.launch import set_pool_limits
from d23_pipeline.simulator import Simulator, SimulatorConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MONTH = "2026-06"
RUNS = "{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }"


def _simulator(port: int, rows: int, log: Path) -> subprocess.Popen:
    # The same seed and month with fewer rows: most of the month's ids are gone at the source.
    args = ["--port", str(port), "--months", MONTH, "--rows-per-month", str(rows)]
    return spawn([sys.executable, "-m", "d23_pipeline.simulator", *args], {}, log)


def _backfill(url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "d23_pipeline.backfill", MONTH, MONTH, "--url", url],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_a_month_held_by_a_large_deletion_shows_on_the_dashboard_without_another_run(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = SimulatorConfig(months=(MONTH,), rows_per_month=200)
    env = pipeline_env(
        api_url=f"http://127.0.0.1:{port}",
        sim=config,
        data_dir=tmp_path / "data",
        dagster_home=make_dagster_home(tmp_path / "home"),
    )
    set_pool_limits(env)
    # The month landed as it stood, in this process (what a run of it did before).
    pipeline = Pipeline(Simulator(config), env["D23_API_URL"], tmp_path / "data")
    with _simulator(port, 200, tmp_path / "sim-200.log"):
        wait_for("the simulator", lambda: "http" in (tmp_path / "sim-200.log").read_text(), 60)
        pipeline.materialize(MONTH)
    assert "every deletion is applied" in pipeline.dashboard_path.read_text()
    assert "may not count the source" not in pipeline.dashboard_path.read_text()

    # Not waiting for the backfill: its month fails at the check, and is retried twice.
    with (
        webserver_process(env, tmp_path / "web.log") as web,
        daemon_process(env, tmp_path / "daemon.log"),
        _simulator(port, 190, tmp_path / "sim-190.log") as simulator,
    ):
        launched = _backfill(web.url, env)
        assert launched.returncode == 0, launched.stdout + launched.stderr

        def dashboard_rebuilt() -> list[dict] | None:
            assert simulator.poll() is None, tail(tmp_path / "sim-190.log")
            runs = web.graphql(RUNS)["runsOrError"]["results"]
            failed = {r["runId"] for r in runs if r["status"] == "FAILURE"}
            rebuilt = [
                r
                for r in runs
                if r["jobName"] == "d23_dashboard_job"
                and r["status"] == "SUCCESS"
                and {t["value"].removeprefix("dashboard-after:") for t in r["tags"]} & failed
            ]
            return rebuilt or None

        try:
            wait_for("a dashboard run after the blocked month", dashboard_rebuilt, 240)
        except TimeoutError:
            raise AssertionError(tail(tmp_path / "daemon.log")) from None

    page = pipeline.dashboard_path.read_text()
    held = page[page.index("<h3>Deletions not applied</h3>") :]
    assert f"<td>{MONTH}</td>" in held[: held.index("</section>")]
    # The tiles, the figures an analyst quotes, say so too, not only the problems at the foot.
    tiles = page[page.index("<section id='kpis'>") : page.index("<section id='trends'>")]
    assert "<h2>KPIs, Jun 2026</h2>" in tiles
    doubts = r"may not count the source .*Jun 2026: \d+ attempts? counted that its last read"
    assert re.search(doubts, tiles)
