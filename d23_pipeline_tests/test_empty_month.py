"""A month that serves no row lands, merges and reports without pyarrow, which with numpy is
~50 MB of a run's memory (d23_pipeline/schema_arrow.py); its snapshot is the same as ever."""

import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from processes import REPO, STEP_MODULES, clean_env, materialize_logging_imports, run_python

from d23_pipeline.landing.snapshot import EMPTY_FILES
from d23_pipeline.schema_arrow import ABSENT_SCHEMA, ARROW_SCHEMA, REJECT_SCHEMA, UNPROVEN_SCHEMA
from d23_pipeline.simulator import SimulatorConfig


def test_the_empty_files_copied_for_a_slice_without_rows_hold_the_schemas_pyarrow_writes() -> None:
    # Written again, should a schema change: pq.write_table(SCHEMA.empty_table(), path).
    for kind, schema in [
        ("rows", ARROW_SCHEMA),
        ("rejects", REJECT_SCHEMA),
        ("absent", ABSENT_SCHEMA),
        ("unproven", UNPROVEN_SCHEMA),
    ]:
        path = EMPTY_FILES / f"{kind}.parquet"
        assert pq.read_schema(path).remove_metadata() == schema, kind
        assert pq.read_metadata(path).num_rows == 0, kind


def test_a_page_without_rows_is_read_without_loading_pyarrow() -> None:
    script = """
        import sys
        import httpx
        from d23_pipeline.client.pages import read_page
        body = b'{"code": 200, "body": {"rows": [ ], "pagination": {"nextCursor": null}}}'
        page = read_page(httpx.Response(200, content=body), "2026-05-01T00:00:00.000Z",
                         "2026-05-02T00:00:00.000Z")
        print(page.batch, page.rejects, page.next_cursor, "pyarrow" in sys.modules)
    """
    result = run_python(["-c", textwrap.dedent(script)], clean_env(PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "[]", "None", "False"]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_an_empty_month_materialized_through_the_cli_never_imports_pyarrow(tmp_path: Path) -> None:
    # The simulator holds May; June is read, and serves no row.
    sim = SimulatorConfig(months=("2026-05",), rows_per_month=300)

    imported, stderr = materialize_logging_imports(sim, "2026-06-01", tmp_path)

    assert imported >= STEP_MODULES and "RUN_SUCCESS" in stderr  # every step ran
    assert not {m for m in imported if m.split(".")[0] in ("pyarrow", "numpy")}
    # A refused import is logged too, as `pandas` alone; a real one brings hundreds of modules.
    assert not {m for m in imported if m.startswith("pandas.")}
    # The snapshot is as a read with pyarrow writes it: each slice's two files, and the ids'.
    (month,) = (tmp_path / "data" / "raw" / "d23").glob("2026-06-01/*/manifest.json")
    files = sorted(p.name for p in month.parent.glob("*.parquet"))
    assert len(files) == 2 * 30 + 2 and {"absent.parquet", "unproven.parquet"} <= set(files)
    assert all(pq.read_metadata(month.parent / name).num_rows == 0 for name in files)
