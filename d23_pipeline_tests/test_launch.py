"""``make run``'s choices that need no real processes: its first month, what it prints."""

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from d23_pipeline.launch import _guide, simulator_start_month


def test_simulator_start_month_counts_in_utc_whatever_the_local_zone() -> None:
    # 20:30 on 31 May in New York is already 1 June in UTC, where the simulator's six months
    # run from January to June.
    new_york_evening = datetime(2026, 5, 31, 20, 30, tzinfo=ZoneInfo("America/New_York"))
    assert simulator_start_month(new_york_evening) == "2026-01"
    assert simulator_start_month(datetime(2026, 5, 31, 23, 59, tzinfo=UTC)) == "2025-12"


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
