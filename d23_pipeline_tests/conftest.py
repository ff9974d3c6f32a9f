"""Shared fixtures: the simulator on loopback and a pipeline wired to it in a temporary folder."""

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import MONTHS, Lake, Pipeline
from object_store import S3Server, s3_server
from postgres import PostgresServer, postgres_cluster

from d23_pipeline.simulator import Simulator, SimulatorConfig, serve


def pytest_configure(config: pytest.Config) -> None:
    # A background job of a non-interactive shell starts with SIGINT ignored, and Dagster, done
    # with a step in the main thread, gives SIGTERM whatever SIGINT has: every process a test
    # starts after that would ignore SIGTERM, and each compute-log tail would hold its step 30 s.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# `make test` hands whole files to its workers (pytest-xdist, --dist loadfile) in the order they
# are collected, and alphabetical order left some of the longest for last, each run by one worker
# while the others had finished. The files whose tests took 30 s or more in all (`--junitxml`,
# 1,243 tests) are collected first, longest first; the rest, and the tests within each file, keep
# their order. The history machine goes first of all: its random histories made its file take
# 143 to 237 s in five suites, the widest spread of any file; the shorter files after it can even
# out the workers.
LONGEST_FILES_FIRST = (
    "test_warehouse_equals_source.py",
    "test_reliability_late_changes.py",
    "test_warehouse_merge.py",
    "test_completeness.py",
    "test_pipeline_month.py",
    "test_e2e_dagster.py",
    "test_landing_home.py",
    "test_reliability_bad_input.py",
    "test_dashboard_refresh.py",
    "test_run_retries.py",
    "test_ducklake.py",
    "test_dashboard.py",
    "test_launch.py",
    "test_concurrent_writers.py",
    "test_backfill_cli.py",
    "test_ducklake_s3.py",
    "test_e2e_blocked_run.py",
    "test_reliability_crash.py",
    "test_reliability_chaos.py",
    "test_checks.py",
    "test_reliability_secrets.py",
    "test_reliability_settings.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture
def simulator() -> Simulator:
    return Simulator(SimulatorConfig(months=MONTHS, rows_per_month=1500))


@pytest.fixture
def pipeline(
    simulator: Simulator, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    """On the embedded DuckDB file, or on a fresh DuckLake when parametrized with "ducklake"
    (harness.BOTH_WAREHOUSES), or "ducklake-s3" for one whose data path is an S3 bucket."""
    data_dir = tmp_path / "data"
    lake = None
    warehouse = getattr(request, "param", "duckdb")
    if warehouse == "ducklake":
        lake = Lake.create(request.getfixturevalue("postgres"), data_dir / "lake")
    elif warehouse == "ducklake-s3":
        s3: S3Server = request.getfixturevalue("s3")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        data_path = f"s3://{s3.new_bucket()}/lake"
        lake = Lake.create(request.getfixturevalue("postgres"), data_path)
    with serve(simulator) as url:
        yield Pipeline(sim=simulator, api_url=url, data_dir=data_dir, lake=lake)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """One S3 server on 127.0.0.1 for the whole run; each lake gets a bucket of its own."""
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole run (see postgres.py)."""
    with postgres_cluster() as server:
        yield server
