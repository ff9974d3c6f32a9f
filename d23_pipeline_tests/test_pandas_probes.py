"""pandas stays out of a run's process: DuckDB's and pyarrow's probes for pandas objects are
refused, and code that imports pandas itself still gets it (see d23_pipeline/pandas_probes.py).

Each check runs in a fresh interpreter: this one has imported pandas already.
"""

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from processes import (
    REPO,
    STEP_MODULES,
    clean_env,
    materialize_logging_imports,
    run_python,
)

from d23_pipeline.client import SliceDone, SlicePage, SliceProof, Window
from d23_pipeline.landing.snapshot import SnapshotStore
from d23_pipeline.schema import RejectedRow
from d23_pipeline.schema_arrow import rows_to_batch
from d23_pipeline.simulator import SimulatorConfig


def _run(script: str) -> list[str]:
    """The lines ``script`` prints, run from the repository root in a fresh interpreter."""
    result = run_python(["-c", textwrap.dedent(script)], clean_env(PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_statement_with_bound_parameters_does_not_import_pandas() -> None:
    printed = _run(
        """
        import sys
        from datetime import UTC, datetime
        import duckdb
        from d23_pipeline.warehouse.store import execute
        con = duckdb.connect()
        row = execute(
            con,
            "SELECT $n + 1, $s || '!', $t + INTERVAL 1 DAY, len($l)",
            {"n": 1, "s": "a", "t": datetime(2026, 1, 31, 12, tzinfo=UTC), "l": ["x", "y"]},
        ).fetchone()
        print(row[0], row[1], row[2].date(), row[3], "pandas" in sys.modules)
        """
    )
    assert printed == ["2", "a!", "2026-02-01", "2", "False"]


@pytest.mark.parametrize(("carried", "pandas_imported"), [(True, "False"), (False, "True")])
def test_the_refusal_holds_in_the_threads_the_client_starts_for_the_landing(
    carried: bool, pandas_imported: str
) -> None:
    # pyarrow's first conversion of Python values probes for pandas, on whichever thread it is;
    # the client's reader threads carry the landing's refusal (in_callers_context).
    printed = _run(
        f"""
        import sys, threading
        import pyarrow as pa
        from d23_pipeline.client.fanout import in_callers_context
        from d23_pipeline.pandas_probes import pandas_probes_refused
        tables = []
        def convert():
            tables.append(pa.Table.from_pylist([{{"id": "a"}}, {{"id": "b"}}]))
        with pandas_probes_refused():
            worker = threading.Thread(target=in_callers_context(convert) if {carried} else convert)
            worker.start()
            worker.join()
        print(tables[0].num_rows, "pandas" in sys.modules)
        """
    )
    assert printed == ["2", pandas_imported]


def test_reading_a_landed_months_rejects_does_not_import_pandas(tmp_path: Path) -> None:
    # d23/raw_logs reads them after its landing, which may have converted nothing (a read
    # resumed whole): pyarrow's probe is then still to be asked.
    april = Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC))
    store = SnapshotStore(tmp_path)
    with store.begin("2026-04-01", [april], "run-1") as writer:
        writer.write_page(SlicePage(april, rows_to_batch([]), [RejectedRow("bad", "r1")]))
        proof = SliceProof(served=1, total_before=1, total_after=1, verified=True)
        writer.finish_slice(SliceDone(april, rows=0, rejects=1, pages=1, proof=proof))
        writer.complete({})

    printed = _run(
        f"""
        import sys
        from pathlib import Path
        from d23_pipeline.landing.snapshot import SnapshotStore
        snapshot = SnapshotStore(Path({str(tmp_path)!r})).current("2026-04-01")
        print(snapshot.rejects_by_reason()[0]["rows"], "pandas" in sys.modules)
        """
    )
    assert printed == ["1", "False"]


def test_a_notebook_importing_the_pipelines_modules_keeps_arrows_pandas_conversions() -> None:
    printed = _run(
        """
        import d23_pipeline.client, d23_pipeline.landing.month, d23_pipeline.warehouse.store
        import pandas as pd
        import pyarrow as pa
        print(pa.array(pd.Series([1, None], dtype="Int64")).null_count)
        """
    )
    assert printed == ["1"]


def test_code_that_imports_pandas_itself_gets_it_and_duckdb_and_arrow_then_use_it() -> None:
    printed = _run(
        """
        import duckdb
        import pyarrow as pa
        from d23_pipeline.pandas_probes import pandas_probes_refused
        from d23_pipeline.warehouse.store import execute
        with pandas_probes_refused():
            pa.array([])  # pyarrow's probe, answered as a landing answers it
        con = duckdb.connect()
        execute(con, "SELECT $n", {"n": 1})
        import pandas as pd
        frame = execute(con, "SELECT $t AS t", {"t": pd.Timestamp("2026-03-01")}).df()
        nat = execute(con, "SELECT $t IS NULL", {"t": pd.NaT}).fetchone()[0]
        print(type(frame).__name__, frame["t"].iloc[0].month, nat, pa.table(frame).num_rows)
        """
    )
    assert printed == ["DataFrame", "3", "True", "1"]


def test_a_thread_refusing_pandas_leaves_it_to_the_other_threads() -> None:
    printed = _run(
        """
        import threading
        from d23_pipeline.pandas_probes import pandas_probes_refused
        inside, done = threading.Event(), threading.Event()
        def refuse():
            with pandas_probes_refused():
                inside.set()
                done.wait(30)
                try:
                    import pandas  # this thread refuses it, until imported elsewhere
                    print("refused-thread-imported")
                except ImportError:
                    print("refused-thread-refused")
        worker = threading.Thread(target=refuse)
        worker.start()
        inside.wait(30)
        import pandas
        print("other-thread-imported", pandas.__name__)
        done.set()
        worker.join()
        """
    )
    # Imported by the main thread, pandas is in sys.modules: the refusing thread finds it too.
    assert printed == ["other-thread-imported", "pandas", "refused-thread-imported"]


def test_a_refusing_thread_cannot_import_pandas_while_no_one_has() -> None:
    printed = _run(
        """
        import sys
        from d23_pipeline.pandas_probes import pandas_probes_refused
        with pandas_probes_refused():
            try:
                import pandas
            except ModuleNotFoundError as exc:
                print(exc.name)
        import pandas
        print(pandas.__name__, "pandas" in sys.modules)
        """
    )
    assert printed == ["pandas", "pandas", "True"]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_month_materialized_through_the_cli_never_imports_pandas(tmp_path: Path) -> None:
    sim = SimulatorConfig(months=("2026-05",), rows_per_month=300)

    imported, stderr = materialize_logging_imports(sim, "2026-05-01", tmp_path)

    assert imported >= STEP_MODULES and "RUN_SUCCESS" in stderr  # every step ran
    # A refused import is logged too, as `pandas` alone; a real one brings hundreds of modules.
    assert not {m for m in imported if m.startswith("pandas.")}
