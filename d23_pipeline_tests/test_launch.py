"""What ``make run`` prints besides the UI's address: a backfill command and the dashboard."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from d23_pipeline.launch import _guide


def test_the_backfill_hint_covers_exactly_the_partitions_and_the_dashboard_path_is_given(
    tmp_path: Path,
) -> None:
    current = f"{datetime.now(UTC):%Y-%m}"

    guide = _guide({"D23_START_MONTH": "2026-07", "D23_DATA_DIR": str(tmp_path)})

    assert f".venv/bin/python -m d23_pipeline.backfill 2026-07 {current}\n" in guide
    assert guide.endswith(str(tmp_path.resolve() / "reports" / "outcome_dashboard.html"))


def test_a_bad_setting_stops_make_run_naming_it() -> None:
    with pytest.raises(SystemExit, match="D23_REPORT_TIMEZONE"):
        _guide({"D23_REPORT_TIMEZONE": "Atlantis/Capital"})
