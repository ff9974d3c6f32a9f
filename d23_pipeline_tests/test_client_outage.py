"""A gateway that is down stops a read within the retry budget; one that refuses wide windows,
however slowly, is narrowed through."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from api import T0, client, ids_in, rows_at, simulator

from d23_pipeline.client import GatewayDownError, RetryPolicy, SlicePage, Window
from d23_pipeline.client.outage import OutageWatch
from d23_pipeline.simulator import Simulator

WEEK = Window(T0, T0 + timedelta(days=7))
NARROWEST = Window(T0, T0 + timedelta(minutes=15))
WIDE = Window(T0, T0 + timedelta(hours=12))
PATH = "/admin/v3/lenders/x/exports/S4/D23"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slow_gateway(max_window: timedelta) -> Simulator:
    """A week of rows behind a gateway that answers 504, after 50 ms, to any window wider than
    ``max_window``."""
    rows = rows_at(range(0, 7 * 86_400_000, 600_000))
    return simulator(rows, max_window_for_504=max_window, gateway_timeout_s=0.05)


def read_ids(sim: Simulator, patience_s: float) -> list[str]:
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=patience_s)
    with client(sim, retry=retry, max_concurrency=4) as reader:
        events = reader.iter_slices(WEEK)
        return [r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows]


def test_a_gateway_answering_only_504s_stops_the_read_once_the_retry_budget_is_spent() -> None:
    # Before, each slice's count was narrowed to 22.5-minute parts and each walk backed off at
    # the narrowest width: ~450 slow 504s for a month, an hour at a real gateway's 30 s.
    sim = slow_gateway(timedelta(0))  # every window: the API is down
    with pytest.raises(GatewayDownError) as caught:
        read_ids(sim, patience_s=1.0)
    message = str(caught.value)
    assert "the API or its gateway is down" in message and "HTTP 504" in message
    assert re.search(
        r"in a row \(\d+ counts\), windows as narrow as 0:(22:30|07:30) included", message
    )
    assert sim.stats.by_status[504] < 250  # about 80 in the second it waited, 4 at a time


def test_slow_504s_on_wide_windows_alone_are_narrowed_through_however_long() -> None:
    # Every count and page wider than 3 hours times out, and the run of 504s before the first
    # answer (24, 12, 6 hours, on 4 workers at once) outlasts the patience: the read goes on.
    sim = slow_gateway(timedelta(hours=3))
    ids = read_ids(sim, patience_s=0.1)
    assert sorted(ids) == sorted(ids_in(sim, WEEK))
    assert sim.stats.by_status[504] >= 8


def test_the_outage_is_called_only_after_the_patience_since_the_first_504() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
    clock.now = 299.0
    watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 300.0
    with pytest.raises(GatewayDownError) as caught:
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id="req-9")
    assert "for 300s, 3 in a row (2 counts, 1 page), windows as narrow as 0:15:00" in str(
        caught.value
    )
    assert "requestId req-9" in str(caught.value)


def test_any_answer_starts_the_count_of_504s_again() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 200.0
    watch.answered()
    clock.now = 250.0
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 549.0
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 550.0
    with pytest.raises(GatewayDownError, match="for 300s, 3 in a row"):
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)


def test_504s_on_wide_windows_alone_are_never_an_outage() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    for minute in range(0, 120):
        clock.now = minute * 60.0
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)


def test_the_first_504_at_the_narrowest_width_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    with caplog.at_level(logging.WARNING, logger="d23_pipeline.client"):
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
        assert caplog.records == []
        clock.now = 30.0
        watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    [warning] = caplog.records
    assert "among 2 requests in a row that timed out at the gateway over 30s" in warning.message
    assert "within 300s of the first, the read stops" in warning.message
