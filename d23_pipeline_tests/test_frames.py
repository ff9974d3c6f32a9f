"""The notebook loader: the KPI and mix tables as DataFrames, and a clear word when it must wait."""

import errno
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

from d23_pipeline.analytics.frames import WarehouseBusyError, load_outcome_tables
from d23_pipeline.analytics.outcome_classes import load_outcome_classes
from d23_pipeline.analytics.outcome_mix import (
    rebuild_outcome_kpis_monthly,
    rebuild_outcome_mix_daily,
    rebuild_outcome_mix_monthly,
)
from d23_pipeline.warehouse.store import Warehouse

APRIL = (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
# (public_id, outcome, day): 2 promises, 1 RPC, 2 no answers over two days.
ROWS = [("a", "PTP", 1), ("b", "PTP", 1), ("c", "RPC", 2), ("d", "NO_ANSWER", 2),
        ("e", "NO_ANSWER", 2)]  # fmt: skip


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    classes = load_outcome_classes()
    with warehouse.connect() as con:
        for public_id, outcome, day in ROWS:
            at = datetime(2026, 4, day, 10, tzinfo=UTC)
            con.execute(
                "INSERT INTO d23.logs VALUES (?, 'CALL', 'AGENT', ?, true, false, ?, ?, ?, "
                "'2026-04-01', ?, ?, NULL)",
                [public_id, outcome, at, at, at, at, at],
            )
        rebuild_outcome_mix_monthly(con, date(2026, 4, 1), *APRIL, classes)
        rebuild_outcome_kpis_monthly(con, date(2026, 4, 1))
        rebuild_outcome_mix_daily(con, *APRIL, classes)
    return tmp_path


def test_one_call_returns_the_kpi_mix_and_daily_tables(data_dir: Path) -> None:
    tables = load_outcome_tables(data_dir)

    (april,) = tables.kpis_monthly.to_dict("records")
    assert april["month"] == pd.Timestamp("2026-04-01")
    assert april["attempts"] == 5
    assert april["rpc_rate"] == pytest.approx(3 / 5)
    assert tables.mix_monthly.groupby("outcome_option")["attempts"].sum().to_dict() == {
        "PTP": 2, "RPC": 1, "NO_ANSWER": 2
    }  # fmt: skip
    assert tables.mix_daily["attempts"].tolist() == [2, 3]


def test_a_notebook_reads_whatever_settings_only_the_pipeline_uses_say(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("D23_PAGE_LIMIT", "D23_START_MONTH", "D23_REPORT_TIMEZONE", "D23_OUTCOME_MAPPING"):
        monkeypatch.setenv(name, "not valid here")
    monkeypatch.setenv("D23_DATA_DIR", str(data_dir))

    assert load_outcome_tables().kpis_monthly["attempts"].tolist() == [5]


def test_a_run_holding_the_warehouse_gives_a_clear_error_not_a_hang(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A pipeline step in another process, holding the lock while it writes. Waiting for it is
    # said at INFO: in a backfill, months' runs take turns as a matter of course.
    caplog.set_level("INFO", logger="d23_pipeline.warehouse")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from d23_pipeline.warehouse.store import Warehouse\n"
         f"with Warehouse({str(data_dir / 'warehouse.duckdb')!r}).connect():\n"
         "    print('holding', flush=True); time.sleep(30)\n"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(WarehouseBusyError, match="being written by a pipeline run"):
            load_outcome_tables(data_dir, wait_s=0.5)
        # A run's writing step behind it waits, says so, and fails with the same error.
        busy = "being written by a pipeline run .* for more than 0.5 s"
        step = Warehouse(data_dir / "warehouse.duckdb", lock_timeout_s=0.5)
        with pytest.raises(WarehouseBusyError, match=busy), step.connect():
            pass
        waits = [r for r in caplog.records if "another process of the pipeline" in r.message]
        assert waits and {r.levelname for r in waits} == {"INFO"}
    finally:
        holder.kill()
        holder.wait()

    assert len(load_outcome_tables(data_dir).kpis_monthly) == 1  # free again


def _notebook(path: Path, read_only: bool, hold_s: float) -> subprocess.Popen:
    """A notebook that connected with plain DuckDB, not through the pipeline's lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, time\n"
         f"con = duckdb.connect({str(path)!r}, read_only={read_only})\n"
         f"print('open', flush=True); time.sleep({hold_s}); con.close()\n"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_a_run_step_waits_for_a_notebooks_read_only_connection_to_close(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = data_dir / "warehouse.duckdb"
    notebook = _notebook(path, read_only=True, hold_s=1.5)
    try:
        with Warehouse(path, lock_timeout_s=60).connect() as con:  # what a writing step does
            con.execute("DELETE FROM d23.logs WHERE public_id = 'a'")
    finally:
        notebook.kill()
        notebook.wait()

    assert "held by another process" in caplog.text
    assert len(load_outcome_tables(data_dir).mix_daily) == 2


@pytest.mark.parametrize("read_only", [True, False])
def test_a_notebook_holding_the_warehouse_too_long_gives_a_clear_error(
    data_dir: Path, read_only: bool
) -> None:
    path = data_dir / "warehouse.duckdb"
    notebook = _notebook(path, read_only=read_only, hold_s=30)
    try:
        held = "held by another process for more than 0.5 s"
        with pytest.raises(WarehouseBusyError, match=held), Warehouse(path, 0.5).connect():
            pass
        if not read_only:  # readers are refused only by a writer
            with pytest.raises(WarehouseBusyError, match="close its connection"):
                load_outcome_tables(data_dir, wait_s=0.5)
    finally:
        notebook.kill()
        notebook.wait()


def test_a_missing_warehouse_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no warehouse at {tmp_path}"):
        load_outcome_tables(tmp_path)
    assert not (tmp_path / "warehouse.duckdb").exists()  # reading never creates one


@pytest.mark.parametrize(
    "refusal",
    [
        PermissionError(errno.EACCES, "Permission denied"),  # a folder without write access
        OSError(errno.EROFS, "Read-only file system"),  # a read-only mount
    ],
    ids=["no-write-access", "read-only-mount"],
)
def test_an_analyst_without_write_access_to_the_folder_still_reads(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, refusal: OSError
) -> None:
    # What filelock raises when warehouse.duckdb.lock cannot be opened for writing; root, which
    # runs these tests, can always open it, so it is raised here.
    def refused(self: FileLock, *args: object, **kwargs: object) -> None:
        raise refusal

    monkeypatch.setattr(FileLock, "acquire", refused)

    assert len(load_outcome_tables(data_dir).kpis_monthly) == 1
    with pytest.raises(OSError), Warehouse(data_dir / "warehouse.duckdb").connect():
        pass  # a writer still needs the lock
