"""The client against the project's API simulator: in-process and over a real loopback socket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from d23_pipeline.client import (
    DatasetNotFoundError,
    ExportsClient,
    RetriesExhaustedError,
    RetryPolicy,
    SliceDone,
    SlicePage,
    Window,
    WindowTotal,
)
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import (
    FAKE_PII_MARKERS,
    BadRows,
    Faults,
    Simulator,
    SimulatorConfig,
    serve,
)

JANUARY = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
BAD = BadRows(missing_public_id=2, bad_timestamp=4, wrong_type=3, extra_pii=3)


def simulator(**faults: Any) -> Simulator:
    sim = Simulator(SimulatorConfig(months=("2026-01",), rows_per_month=2000, bad_rows=BAD))
    sim.faults = Faults(**faults)
    return sim


def client_for(sim: Simulator, base_url: str = "http://sim.test", **options: Any) -> ExportsClient:
    config = sim.config
    options.setdefault("sleep", lambda seconds: None)
    options.setdefault("page_limit", 200)
    if base_url == "http://sim.test":
        options["transport"] = sim.transport()
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    return ExportsClient(base_url, credentials, **options)


def collect(events: Any) -> tuple[dict[str, dict[str, Any]], list[Any], int]:
    rows: dict[str, dict[str, Any]] = {}
    rejects: list[Any] = []
    done = 0
    for event in events:
        if isinstance(event, SliceDone):
            done += 1
            continue
        assert isinstance(event, SlicePage)
        for row in event.rows:
            assert row["public_id"] not in rows, f"duplicate {row['public_id']}"
            rows[row["public_id"]] = row
        rejects.extend(event.rejects)
    return rows, rejects, done


def truth(sim: Simulator, window: Window = JANUARY) -> dict[str, dict[str, Any]]:
    return {r["public_id"]: r for r in sim.valid_rows(window.since, window.until)}


def test_simulator_month_lands_exactly_with_bad_rows_rejected_and_no_pii() -> None:
    sim = simulator()
    with client_for(sim, max_concurrency=4) as client:
        rows, rejects, done = collect(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()
    assert rows == truth(sim)
    assert done == 31
    assert len(rejects) == BAD.missing_public_id + BAD.bad_timestamp + BAD.wrong_type
    assert set(stats["extra_fields"]) == {"notes", "phone", "email"}
    shown = repr(rows) + repr(rejects) + repr(stats)
    assert not any(marker in shown for marker in FAKE_PII_MARKERS)


def test_simulator_faults_end_in_the_exact_rows() -> None:
    sim = simulator(error_5xx_rate=0.15, rate_429=0.05, burst_429=3, drop_rate=0.15)
    sim.faults.retry_after_s = 0
    policy = RetryPolicy(max_attempts=12)
    with client_for(sim, page_limit=50, max_concurrency=4, retry=policy) as client:
        rows, _, _ = collect(client.iter_slices(JANUARY))
        retries = client.stats.as_dict()["retries"]
    assert rows == truth(sim)
    assert {"429", "connection"} <= set(retries) and sum(retries.values()) >= 10


def test_simulator_504s_narrow_the_window_to_the_exact_rows() -> None:
    sim = simulator(max_window_for_504=timedelta(hours=6))
    with client_for(sim, slice_size=timedelta(days=4), min_page_limit=50) as client:
        rows, _, done = collect(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()
    assert rows == truth(sim) and done == 8
    # The counts before each walk meet the gateway first and teach the walks the width.
    assert stats["count_splits"] > 0 and stats["retries"]["504"] > 0
    assert client.max_window == timedelta(hours=6)


def test_simulator_token_expiry_and_revocation_mid_walk() -> None:
    sim = simulator()
    with client_for(sim) as client:
        pages = client.iter_window(JANUARY)
        first = next(pages)
        sim.expire_tokens()
        rest = [next(pages)]
        sim.expire_tokens()
        sim.revoke_refresh_tokens()
        rows, _, _ = collect([first, *rest, *pages])
        assert (client.stats.token_refreshes, client.stats.logins) == (1, 2)
    assert rows == truth(sim)


def test_simulator_total_and_unknown_dataset() -> None:
    sim = simulator()
    week = JANUARY.split(timedelta(days=7))[0]
    with client_for(sim) as client:
        assert client.fetch_total(week) == WindowTotal(
            len(sim.rows(week.since, week.until)), True, None
        )
    with client_for(sim, dataset="D24") as client, pytest.raises(DatasetNotFoundError, match="D24"):
        list(client.iter_window(week))


def test_loopback_concurrent_walk_with_drops_and_errors_is_exact() -> None:
    sim = simulator(error_5xx_rate=0.1, drop_rate=0.15, rate_429=0.05)
    sim.faults.retry_after_s = 0
    policy = RetryPolicy(max_attempts=12)
    with (
        serve(sim) as base_url,
        client_for(sim, base_url, page_limit=50, max_concurrency=4, retry=policy) as client,
    ):
        rows, _, done = collect(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()
    assert rows == truth(sim) and done == 31
    assert stats["retries"].get("connection", 0) > 0


def test_loopback_slow_server_times_out_into_a_clear_error() -> None:
    sim = simulator(latency_s=0.5)
    policy = RetryPolicy(max_attempts=2)
    with (
        serve(sim) as base_url,
        client_for(sim, base_url, timeout=0.1, retry=policy) as client,
        pytest.raises(RetriesExhaustedError, match="timeout"),
    ):
        list(client.iter_window(JANUARY))


def test_a_month_too_heavy_to_count_at_once_is_counted_in_halves() -> None:
    sim = simulator(max_window_for_504=timedelta(days=2))

    with client_for(sim) as client:
        total = client.fetch_total(JANUARY)

    assert total == WindowTotal(len(sim.rows(JANUARY.since, JANUARY.until)), True, None)
    assert client.stats.count_splits > 0
