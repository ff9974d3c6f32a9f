"""One folder of raw snapshots per warehouse: a run landing in another (another host on a shared
DuckLake) could not weigh what was landed there and not merged, so it is refused before it
reads the API, until an operator moves the landing on purpose."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from harness import BOTH_WAREHOUSES, Pipeline, failure_messages

from d23_pipeline.landing.home import (
    ID_FILE,
    TAKE_OVER_VARIABLE,
    claim_landing_home,
    data_dir_id,
)
from d23_pipeline.warehouse import store

MONTH = "2026-04"


def _raw(pipeline: Pipeline) -> Path:
    """The folder the pipeline's runs land D23's snapshots in."""
    return pipeline.resources()["landing_zone"].store().root


def _elsewhere(pipeline: Pipeline, tmp_path: Path) -> Pipeline:
    """The same warehouse, landing in another D23_DATA_DIR (for the file, the same file)."""
    other = Pipeline(pipeline.sim, pipeline.api_url, tmp_path / "elsewhere", lake=pipeline.lake)
    if pipeline.lake is None:
        other.data_dir.mkdir()
        (other.data_dir / "warehouse.duckdb").symlink_to(pipeline.warehouse_path)
    return other


def _taken_over_before_the_merge(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Pipeline:
    """Another folder, which takes the landing over once ``d23/logs`` has claimed it and
    before its merge begins (an operator on another host, while the step runs)."""
    elsewhere = _elsewhere(pipeline, tmp_path)
    merge = store.merge_within_memory_limit

    def taken_over_first(*args: Any, **kwargs: Any) -> store.MergeSummary:
        with elsewhere.warehouse().connect() as con:
            take_over = data_dir_id(_raw(pipeline))
            claim_landing_home(elsewhere.warehouse(), con, _raw(elsewhere), take_over)
        return merge(*args, **kwargs)

    monkeypatch.setattr(store, "merge_within_memory_limit", taken_over_first)
    return elsewhere


@BOTH_WAREHOUSES
def test_a_run_landing_in_another_folder_is_refused_before_it_reads_the_api(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.materialize(MONTH)
    stored = pipeline.live_rows([MONTH])
    requests = pipeline.sim.stats.requests
    elsewhere = _elsewhere(pipeline, tmp_path)

    result = elsewhere.materialize("2026-03", raise_on_error=False)

    failure = failure_messages(result)["d23__raw_logs"]
    assert f"land their raw snapshots in {_raw(pipeline)} on host" in failure
    assert f"this run's folder is {_raw(elsewhere)} on host" in failure
    assert f"{TAKE_OVER_VARIABLE}={data_dir_id(_raw(pipeline))}" in failure
    assert pipeline.sim.stats.requests == requests
    assert pipeline.live_rows([MONTH, "2026-03"]) == stored
    # The home's own runs go on.
    pipeline.materialize("2026-03")


@BOTH_WAREHOUSES
def test_the_landing_moves_only_to_a_run_that_names_the_homes_id(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.materialize(MONTH)
    elsewhere = _elsewhere(pipeline, tmp_path)
    monkeypatch.setenv(TAKE_OVER_VARIABLE, "not-the-home")
    refused = elsewhere.materialize(MONTH, raise_on_error=False)
    assert not refused.success
    (message,) = failure_messages(refused).values()
    assert f"({TAKE_OVER_VARIABLE} is set, to 'not-the-home', which is not that id" in message

    monkeypatch.setenv(TAKE_OVER_VARIABLE, data_dir_id(_raw(pipeline)))
    elsewhere.materialize(MONTH)

    assert elsewhere.live_rows([MONTH]) == elsewhere.expected_rows([MONTH])
    # The old home is now the other folder; the variable left set moves nothing back.
    assert not pipeline.materialize(MONTH, raise_on_error=False).success
    elsewhere.materialize(MONTH)


@BOTH_WAREHOUSES
def test_of_two_folders_that_landed_before_any_merge_the_first_to_merge_is_the_home(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.materialize(MONTH, selection="d23/raw_logs")
    elsewhere = _elsewhere(pipeline, tmp_path)
    elsewhere.materialize(MONTH)

    # The merge of the first folder's landed read, run on its own as after a failed merge.
    result = pipeline.materialize(MONTH, selection="d23/logs", raise_on_error=False)

    failure = failure_messages(result)["d23__logs"]
    assert f"land their raw snapshots in {_raw(elsewhere)} on host" in failure
    (home,) = pipeline.query("SELECT raw_dir FROM d23.landing_home")
    assert home == (str(_raw(elsewhere)),)


@BOTH_WAREHOUSES
def test_a_take_over_between_the_merges_claim_and_its_merge_stops_the_merge(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator on another host takes the landing over while this step runs: its claim
    # session has ended and its merge's has not begun.
    pipeline.materialize(MONTH)
    pipeline.materialize("2026-03", selection="d23/raw_logs")
    stored = pipeline.live_rows([MONTH, "2026-03"])
    elsewhere = _taken_over_before_the_merge(pipeline, tmp_path, monkeypatch)

    result = pipeline.materialize("2026-03", selection="d23/logs", raise_on_error=False)

    failure = failure_messages(result)["d23__logs"]
    assert f"land their raw snapshots in {_raw(elsewhere)} on host" in failure
    assert pipeline.live_rows([MONTH, "2026-03"]) == stored
    (home,) = pipeline.query("SELECT raw_dir FROM d23.landing_home")
    assert home == (str(_raw(elsewhere)),)


def test_a_merge_refused_after_a_take_over_is_not_retried(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A retry would be refused the same way: the landing is the other folder's now.
    pipeline.materialize(MONTH)
    pipeline.materialize("2026-03", selection="d23/raw_logs")
    _taken_over_before_the_merge(pipeline, tmp_path, monkeypatch)
    retrying = {"run_retries": {"enabled": True, "max_retries": 3}}

    with dg.instance_for_test(overrides=retrying) as instance:
        result = pipeline.materialize(
            "2026-03", selection="d23/logs", raise_on_error=False, instance=instance
        )
        run = instance.get_run_by_id(result.run_id)

    assert "LandingHomeError" in failure_messages(result)["d23__logs"]
    assert run is not None and run.tags["dagster/will_retry"] == "false"


@BOTH_WAREHOUSES
def test_a_copy_of_the_landing_folder_elsewhere_is_not_the_home(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.materialize(MONTH)
    copy = _elsewhere(pipeline, tmp_path)
    shutil.copytree(_raw(pipeline), _raw(copy))  # a restored backup, a cloned volume

    result = copy.materialize(MONTH, raise_on_error=False)

    assert data_dir_id(_raw(copy)) == data_dir_id(_raw(pipeline))
    assert "land their raw snapshots in" in failure_messages(result)["d23__raw_logs"]


def test_a_folder_keeps_its_id_and_two_folders_differ(tmp_path: Path) -> None:
    first = data_dir_id(tmp_path / "a" / "raw")

    assert data_dir_id(tmp_path / "a" / "raw") == first
    assert data_dir_id(tmp_path / "b" / "raw") != first
    assert sorted(p.name for p in (tmp_path / "a" / "raw").iterdir()) == [ID_FILE]


@BOTH_WAREHOUSES
def test_a_warehouse_made_before_the_landing_home_was_recorded_takes_its_first_run(
    pipeline: Pipeline,
) -> None:
    pipeline.materialize(MONTH)
    with pipeline.warehouse_resource().get_connection() as con:
        con.execute("DROP TABLE d23.landing_home")

    pipeline.materialize(MONTH)

    (home,) = pipeline.query("SELECT raw_dir FROM d23.landing_home")
    assert home == (str(_raw(pipeline)),)


def test_a_data_folder_moved_with_its_embedded_warehouse_lands_on_and_is_the_home(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.materialize(MONTH)
    moved = Pipeline(pipeline.sim, pipeline.api_url, tmp_path / "bigger-disk" / "data")
    shutil.move(pipeline.data_dir, moved.data_dir)

    moved.materialize(MONTH)

    (home,) = moved.query("SELECT raw_dir FROM d23.landing_home")
    assert home == (str(_raw(moved)),)


def test_runs_starting_at_once_in_a_new_folder_agree_on_its_id(tmp_path: Path) -> None:
    # A backfill's first runs all make the id at once: the first to link its file wins.
    raw = tmp_path / "data" / "raw" / "d23"
    start = threading.Barrier(8)

    def made() -> str:
        start.wait()
        return data_dir_id(raw)

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: made(), range(8)))

    assert len(ids) == 1
    assert sorted(p.name for p in raw.iterdir()) == [ID_FILE]
