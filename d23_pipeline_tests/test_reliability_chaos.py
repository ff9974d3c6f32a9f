"""Chaos: a three-month backfill through 5xx, dropped connections, 429 bursts and 504s on wide
windows ends with d23.logs exactly equal to the source."""

import dataclasses
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from harness import MONTHS, Pipeline

from d23_pipeline.simulator import Faults, Simulator, SimulatorConfig, serve

CHAOS = Faults(
    error_5xx_rate=0.10,
    drop_rate=0.05,
    rate_429=0.02,
    burst_429=4,
    retry_after_s=0.02,
    max_window_for_504=timedelta(days=2),
    seed=6,
)
# Keeps each pause short; ten attempts make 15% failing requests a non-event (0.15**10).
FAST_RETRIES = {"retry_base_delay_s": 0.001, "retry_max_attempts": 10}


def _backfill(
    data_dir: Path, slice_hours: int, faults: Faults | None
) -> tuple[Pipeline, dict, Counter]:
    """Materialize every month (each meets a fresh 429 burst); return the pipeline, the
    simulator's request stats and the client's retry and split counts summed over the months."""
    sim = Simulator(SimulatorConfig(months=MONTHS, rows_per_month=1500))
    client: Counter = Counter()
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=data_dir, slice_hours=slice_hours)
        for index, month in enumerate(MONTHS):
            if faults is not None:
                sim.faults = dataclasses.replace(faults, seed=faults.seed + index)
            result = pipeline.materialize(month, **FAST_RETRIES)
            (event,) = result.asset_materializations_for_node("d23__raw_logs")
            client.update(event.metadata["retries_by_cause"].value)
            client["window_splits"] += event.metadata["window_splits"].value
            client["count_splits"] += event.metadata["count_splits"].value
    return pipeline, sim.stats.snapshot(), client


@pytest.mark.parametrize("slice_hours", [24, 72], ids=["1-day-slices", "3-day-slices-split"])
def test_backfill_under_chaos_equals_the_source_exactly(
    tmp_path: Path, slice_hours: int, record_property: Callable[[str, object], None]
) -> None:
    _, clean, _ = _backfill(tmp_path / "clean", slice_hours, faults=None)

    pipeline, chaos, client = _backfill(tmp_path / "chaos", slice_hours, faults=CHAOS)

    assert pipeline.live_rows() == pipeline.expected_rows()
    (total, distinct, deleted) = pipeline.query(
        "SELECT count(*), count(DISTINCT public_id), count(_deleted_at) FROM d23.logs"
    )[0]
    assert total == distinct == len(pipeline.expected_rows())
    assert deleted == 0
    # Every fault kind was met and survived by the client, not just injected.
    assert client["connection"] > 0
    assert client["429"] >= len(MONTHS) * CHAOS.burst_429
    assert client["500"] + client["502"] + client["503"] > 0
    if slice_hours * 3600 > CHAOS.max_window_for_504.total_seconds():
        # Each slice's count meets the gateway first and narrows; the walks then start narrow.
        assert client["504"] > 0 and client["window_splits"] + client["count_splits"] > 0
    assert chaos["requests"] > clean["requests"]
    record_property("requests_clean", clean["requests"])
    record_property("requests_chaos", chaos["requests"])
    print(
        f"\nslice_hours={slice_hours}: clean run {clean['requests']} requests "
        f"({clean['data_pages']} pages); chaos run {chaos['requests']} requests "
        f"({chaos['data_pages']} pages, {chaos['dropped']} dropped, by status "
        f"{dict(sorted(chaos['by_status'].items()))}); client retries and splits {dict(client)}"
    )
