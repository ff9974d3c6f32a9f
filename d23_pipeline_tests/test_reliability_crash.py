"""Crash: ``kill -9`` of a real run process during the download and during the merge; the re-run
is exact and reads only what the killed run had not finished."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from harness import ExportHookSimulator, Pipeline, warehouse_digest

from d23_pipeline.client import Window
from d23_pipeline.definitions import defs
from d23_pipeline.defs import keys
from d23_pipeline.months import month_window
from d23_pipeline.simulator import SimResponse, Simulator, SimulatorConfig, serve

MONTH = "2026-04"
PARTITION = f"{MONTH}-01"
WORKER = Path(__file__).with_name("crash_worker.py")
CONCURRENCY = 4
# Big enough that a month is well over a hundred pages and the merge has real work to undo.
BIG_MONTH = SimulatorConfig(months=(MONTH,), rows_per_month=20_000)

pytestmark = pytest.mark.e2e


class GatedSimulator(ExportHookSimulator):
    """Holds every export request after the first ``open_requests`` until :meth:`release`, and
    records the window of each page request (totals aside)."""

    def __init__(self, config: SimulatorConfig, open_requests: int) -> None:
        super().__init__(config)
        self.open_requests = open_requests
        self.held = 0
        self.page_windows: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._gate = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        with self._lock:
            self.open_requests -= 1
            blocked = self.open_requests < 0 and not self._gate.is_set()
            self.held += blocked
            if query.get("includeTotal") != "true":
                self.page_windows.append((query["since"], query["until"]))
        if blocked:
            self._gate.wait()
        return path, None


def _worker_log(pipeline: Pipeline) -> Path:
    return pipeline.data_dir.parent / "worker.log"


def _wait_for(
    condition: Callable[[], bool], worker: subprocess.Popen, what: str, log: Path
) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if worker.poll() is not None:
            output = log.read_text()[-3000:]
            pytest.fail(f"the worker exited ({worker.returncode}) before {what}:\n{output}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def _worker(pipeline: Pipeline, *args: str) -> Iterator[subprocess.Popen]:
    """The crash worker materializing MONTH, configured like a deployment; killed on exit."""
    config = pipeline.sim.config
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("D23_", "DAGSTER_"))},
        "D23_API_URL": pipeline.api_url,
        "D23_LENDER": config.lender_slug,
        "D23_EMAIL": config.email,
        "D23_PASSWORD": config.password,
        "D23_DATA_DIR": str(pipeline.data_dir),
        "D23_PAGE_LIMIT": str(pipeline.page_limit),
        "D23_MAX_CONCURRENCY": str(pipeline.max_concurrency),
        "D23_SLICE_HOURS": str(pipeline.slice_hours),
    }
    with _worker_log(pipeline).open("w") as output:
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), MONTH, *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=30)


def _kill_9(worker: subprocess.Popen) -> None:
    os.kill(worker.pid, signal.SIGKILL)
    assert worker.wait(timeout=30) == -signal.SIGKILL


def _window(since: str, until: str) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(since), datetime.fromisoformat(until)


def _slice_window(key: str) -> tuple[datetime, datetime]:
    window = Window.from_key(key)  # the manifest names each finished slice by its window
    return window.since, window.until


def _finished_slices(month_dir: Path) -> set[tuple[datetime, datetime]]:
    """The windows of the slices the month's one manifest records as finished (none yet if
    there is no manifest)."""
    manifests = [json.loads(p.read_text()) for p in month_dir.glob("*/manifest.json")]
    return {_slice_window(key) for manifest in manifests for key in manifest["slices"]}


def _raw_logs_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.asset_materializations_for_node("d23__raw_logs")
    return {k: v.value for k, v in event.metadata.items()}


def test_kill_during_download_then_rerun_reads_only_unfinished_slices(tmp_path: Path) -> None:
    sim = GatedSimulator(BIG_MONTH, open_requests=40)
    with serve(sim) as url:
        pipeline = Pipeline(sim, url, tmp_path / "data", max_concurrency=CONCURRENCY)
        month_dir = pipeline.data_dir / "raw" / "d23" / PARTITION
        before = warehouse_digest(pipeline.warehouse_path)
        try:
            with _worker(pipeline) as worker:
                # Every slice worker is stuck on a held page: the run is mid-download. The
                # slices finished before are in the manifest once the landing has written them,
                # which on a loaded machine may come after the workers are held.
                _wait_for(
                    lambda: sim.held >= CONCURRENCY and bool(_finished_slices(month_dir)),
                    worker,
                    "the download was held after a slice had finished",
                    _worker_log(pipeline),
                )
                _kill_9(worker)
        finally:
            sim.release()
        (killed,) = [json.loads(p.read_text()) for p in month_dir.glob("*/manifest.json")]
        finished = _finished_slices(month_dir)
        assert not killed["complete"] and not (month_dir / "CURRENT").exists()
        assert 0 < len(finished) < len(killed["slice_keys"])
        assert warehouse_digest(pipeline.warehouse_path) == before

        sim.page_windows.clear()
        result = pipeline.materialize(MONTH)

    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert _raw_logs_metadata(result)["slices_resumed"] == len(finished)
    current = json.loads((month_dir / "CURRENT").read_text())["snapshot"]
    slices = json.loads((month_dir / current / "manifest.json").read_text())["slices"]
    full_read_pages = sum(s["pages"] for s in slices.values())
    unfinished_pages = sum(
        s["pages"] for key, s in slices.items() if _slice_window(key) not in finished
    )
    for since, until in (_window(*w) for w in sim.page_windows):
        assert not any(f_since <= since and until <= f_until for f_since, f_until in finished)
    assert len(sim.page_windows) == unfinished_pages < full_read_pages
    print(
        f"\nkilled mid-download after {len(finished)}/{len(killed['slice_keys'])} slices; "
        f"re-run read {len(sim.page_windows)} pages instead of {full_read_pages}"
    )


@pytest.mark.parametrize(
    ("hang_before", "committed"),
    [("MARK_DELETED", False), ("LOGS_ROW_COUNT", True)],
    ids=["inside-the-merge-transaction", "right-after-commit"],
)
def test_kill_during_merge_leaves_the_table_old_or_new_and_rerun_is_exact(
    tmp_path: Path, hang_before: str, committed: bool
) -> None:
    sim = Simulator(BIG_MONTH)
    with serve(sim) as url:
        pipeline = Pipeline(sim, url, tmp_path / "data", max_concurrency=CONCURRENCY)
        pipeline.materialize(MONTH)
        old_rows = pipeline.live_rows([MONTH])
        old_digest = warehouse_digest(pipeline.warehouse_path)
        sim.break_promises(50, MONTH)
        sim.deactivate(50, MONTH)
        sim.hard_delete(50, MONTH)
        sim.add_late_rows(50, MONTH)
        marker = tmp_path / "hanging"
        with _worker(pipeline, "--hang-before", hang_before, "--marker", str(marker)) as worker:
            _wait_for(
                marker.exists, worker, f"the merge reached {hang_before}", _worker_log(pipeline)
            )
            _kill_9(worker)

        # Opening the file replays DuckDB's WAL: all of the merge or none of it.
        if committed:
            assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
        else:
            assert warehouse_digest(pipeline.warehouse_path) == old_digest
            assert pipeline.live_rows([MONTH]) == old_rows != pipeline.expected_rows([MONTH])

        # What Dagster's "re-execute from failure" runs: the steps after the finished download.
        sim.reset_stats()
        result = dg.materialize(
            list(defs.assets),
            selection=dg.AssetSelection.assets(keys.LOGS).downstream(),
            resources=pipeline.resources(),
            partition_key=PARTITION,
        )

    assert result.success
    assert sim.stats.requests == 0
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    deleted = pipeline.query("SELECT count(*) FROM d23.logs WHERE _deleted_at IS NOT NULL")
    assert deleted == [(50,)]
    (attempts,) = pipeline.query(
        "SELECT attempts FROM d23.outcome_kpis_monthly WHERE month = ?", (PARTITION,)
    )
    assert attempts == (sum(r["is_active"] for r in sim.valid_rows(*month_window(MONTH))),)
