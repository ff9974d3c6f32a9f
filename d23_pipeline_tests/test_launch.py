"""``make run``'s choices that do not need real processes."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from d23_pipeline.launch import simulator_start_month


def test_simulator_start_month_counts_in_utc_whatever_the_local_zone() -> None:
    # 20:30 on 31 May in New York is already 1 June in UTC, where the simulator's six months
    # run from January to June.
    new_york_evening = datetime(2026, 5, 31, 20, 30, tzinfo=ZoneInfo("America/New_York"))
    assert simulator_start_month(new_york_evening) == "2026-01"
    assert simulator_start_month(datetime(2026, 5, 31, 23, 59, tzinfo=UTC)) == "2025-12"
