"""The KPIs of d23_pipeline/kpis.py are the only ones: README, assets and tables agree."""

from pathlib import Path

from d23_pipeline.defs.assets.outcome_mix import (
    outcome_kpis_monthly,
    outcome_mix_daily,
    outcome_mix_monthly,
)
from d23_pipeline.kpis import KPI_NAMES, kpi_table
from d23_pipeline.warehouse.store import Warehouse, table_columns

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_kpi_table() -> str:
    """The markdown table under the README's "The KPIs" heading."""
    section = README.read_text().split("\n## The KPIs\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| KPI |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_readme_kpi_table_is_the_one_the_code_defines() -> None:
    assert _readme_kpi_table() == kpi_table(), (
        "README.md's KPI table differs from d23_pipeline/kpis.py; replace it with:\n" + kpi_table()
    )


def test_the_kpi_assets_describe_the_kpis_from_the_code() -> None:
    for asset in (outcome_kpis_monthly, outcome_mix_daily):
        assert kpi_table() in (asset.descriptions_by_key[asset.key] or "")
    # The monthly mix holds counts per group, no rates: its description has no KPI table.
    mix = outcome_mix_monthly.descriptions_by_key[outcome_mix_monthly.key] or ""
    assert "Attempts are active" in mix and "Broken promises" in mix and "| KPI |" not in mix


def test_kpi_tables_hold_one_rate_column_per_kpi_in_order(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb").connect() as con:
        for table in ("outcome_kpis_monthly", "outcome_mix_daily"):
            columns = table_columns(con, table)
            rates = tuple(name for name, kind in columns if kind == "DOUBLE")
            assert rates == KPI_NAMES, table
