"""``python -m d23_pipeline.backfill``: month ranges and clear errors (the launch itself is e2e)."""

import pytest
from processes import free_port

from d23_pipeline.backfill import main, month_partitions
from d23_pipeline.settings import SettingsError


def test_month_range_includes_both_ends_across_a_year():
    assert month_partitions("2025-11", "2026-02") == [
        "2025-11-01",
        "2025-12-01",
        "2026-01-01",
        "2026-02-01",
    ]
    assert month_partitions("2026-05", "2026-05") == ["2026-05-01"]


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-5", "2026-06", "FIRST"),
        ("2026-05", "2026-13", "LAST"),
        ("2026-06", "2026-05", "before"),
    ],
)
def test_bad_ranges_are_refused_naming_the_argument(first, last, message):
    with pytest.raises(SettingsError, match=message):
        month_partitions(first, last)


def test_cli_reports_a_bad_range_without_a_traceback(capsys):
    assert main(["2026-06", "2026-05", "--url", "http://127.0.0.1:9"]) == 2
    assert "LAST (2026-05) is before FIRST (2026-06)" in capsys.readouterr().err


def test_cli_reports_a_webserver_that_is_not_running(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["2026-05", "2026-06", "--url", url]) == 2
    assert f"Dagster webserver at {url} did not answer" in capsys.readouterr().err
