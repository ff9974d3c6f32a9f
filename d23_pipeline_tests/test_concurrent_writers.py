"""Two real Dagster processes write different months into one warehouse at the same time.

``dg.materialize`` runs in one process and can never hit DuckDB's single-writer lock; here two
``dagster asset materialize`` commands do. On the DuckDB file a third writer holds it open; their
Dagster home sets no pool limits, so nothing but the warehouse's own file lock keeps them apart.
On DuckLake nothing keeps them apart: no lock file, and a commit that conflicts runs again. The
raw snapshots are landed first (``d23/raw_logs`` reads the warehouse too, to know which rows a
read must prove gone), so that both runs meet in their write step.
"""

import contextlib
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import dagster as dg
import pytest
from harness import Lake, Pipeline, files_containing
from processes import (
    BIN,
    make_dagster_home,
    pipeline_env,
    simulator_process,
    spawn,
    tail,
    wait_for,
)

from d23_pipeline.simulator import Simulator, SimulatorConfig
from d23_pipeline.warehouse.store import Warehouse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SIM = SimulatorConfig(months=("2026-03", "2026-04"), rows_per_month=4000)
WRITE_STEP = "d23__logs"
MATERIALIZE = [str(BIN / "dagster"), "asset", "materialize", "-m", "d23_pipeline.definitions"]


def step_events(instance: dg.DagsterInstance, partition: str) -> dict[str, float]:
    """When the write step of the partition's run started and succeeded, by event type."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    times = {}
    for run in runs:
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is not None and record.step_key == WRITE_STEP:
                times.setdefault(event.event_type_value, record.timestamp)
    return times


@pytest.fixture
def simulator_url(tmp_path: Path) -> Iterator[str]:
    with simulator_process(SIM, tmp_path / "simulator.log") as url:
        yield url


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_two_processes_write_different_months_at_once(
    tmp_path: Path, simulator_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    home = make_dagster_home(tmp_path / "dagster_home", config="telemetry:\n  enabled: false\n")
    data_dir = tmp_path / "data"
    env = pipeline_env(api_url=simulator_url, sim=SIM, data_dir=data_dir, dagster_home=home)
    lake = None
    if backend == "ducklake":
        lake = Lake.create(request.getfixturevalue("postgres"), tmp_path / "lake")
        env |= lake.env()
    partitions = [f"{month}-01" for month in SIM.months]
    pipeline = Pipeline(sim=Simulator(SIM), api_url=simulator_url, data_dir=data_dir, lake=lake)

    for partition in partitions:
        landing = tmp_path / f"land-{partition}.log"
        with spawn(
            [*MATERIALIZE, "--select", "d23/raw_logs", "--partition", partition], env, landing
        ) as process:
            assert process.wait(timeout=180) == 0, tail(landing, 60)

    logs = [tmp_path / f"materialize-{partition}.log" for partition in partitions]
    with dg.DagsterInstance.from_config(str(home)) as instance, contextlib.ExitStack() as stack:
        # A third writer holds the DuckDB file until both runs are inside their write step.
        with Warehouse(pipeline.warehouse_path).connect() if lake is None else nullcontext():
            processes = [
                stack.enter_context(
                    spawn(
                        [*MATERIALIZE, "--select", "d23/logs*", "--partition", partition], env, log
                    )
                )
                for partition, log in zip(partitions, logs, strict=True)
            ]
            wait_for(
                "both runs waiting in their write step",
                lambda: all(
                    "STEP_START" in step_events(instance, partition) or process.poll() is not None
                    for partition, process in zip(partitions, processes, strict=True)
                ),
                timeout_s=120,
            )
        for process, log in zip(processes, logs, strict=True):
            process.wait(timeout=180)
            assert process.returncode == 0, tail(log, 60)
            assert "Could not set lock" not in log.read_text()
        first, second = (step_events(instance, partition) for partition in partitions)

    # Each write step started before the other one finished: they really ran at the same time.
    assert first["STEP_START"] < second["STEP_SUCCESS"]
    assert second["STEP_START"] < first["STEP_SUCCESS"]
    assert pipeline.live_rows(SIM.months) == pipeline.expected_rows(SIM.months)
    (duplicates,) = pipeline.query("SELECT count(*) - count(DISTINCT public_id) FROM d23.logs")
    assert duplicates == (0,)
    if lake is not None:  # no DuckDB file and no lock file: nothing serialised the writers
        assert sorted(p.name for p in data_dir.iterdir()) == ["raw", "reports"]
        # The catalog's password (in D23_WAREHOUSE_DSN) is in no log, run record or data file.
        password = request.getfixturevalue("postgres").password
        assert files_containing(tmp_path, [password]) == {}
