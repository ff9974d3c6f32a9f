"""A gateway that is down stops a read within the retry budget; one that refuses wide windows or
large pages, however slowly, is narrowed through."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from api import DAY, GATEWAY_TIMEOUT, T0, client, error, ids_in, rows_at, simulator

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


def slow_gateway(**refusing: object) -> Simulator:
    """A week of rows behind a gateway that answers 504, after 50 ms, to the windows or pages
    ``refusing`` names (``max_window_for_504``, ``max_limit_for_504``)."""
    rows = rows_at(range(0, 7 * 86_400_000, 600_000))
    return simulator(rows, gateway_timeout_s=0.05, **refusing)


def read_ids(sim: Simulator, patience_s: float) -> list[str]:
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=patience_s)
    with client(sim, retry=retry, max_concurrency=4) as reader:
        events = reader.iter_slices(WEEK)
        return [r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows]


def test_a_gateway_answering_only_504s_stops_the_read_once_the_retry_budget_is_spent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before, each slice's count was narrowed to 22.5-minute parts and each walk backed off at
    # the narrowest width: ~450 slow 504s for a month, an hour at a real gateway's 30 s, its
    # log silent.
    sim = slow_gateway(max_window_for_504=timedelta(0))  # every window: the API is down
    with (
        caplog.at_level(logging.INFO, logger="d23_pipeline.client"),
        pytest.raises(GatewayDownError) as caught,
    ):
        read_ids(sim, patience_s=1.0)
    assert "504 on the count of [2026-05-01T00:00:00.000Z, 2026-05-02T00:00:00.000Z)" in caplog.text
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("nothing but 504s (gateway timeouts) for 0s (")
    message = str(caught.value)
    assert "the API or its gateway is down" in message and "HTTP 504" in message
    assert re.search(
        r"for 1s \(\d+ counts; no page was asked meanwhile\), windows as narrow as "
        r"0:(22:30|07:30) asked at the smallest page included",
        message,
    )
    assert sim.stats.by_status[504] < 250  # about 80 in the second it waited, 4 at a time


@pytest.mark.parametrize(
    "refusing",
    [
        # 504s to every count and page wider than 3 hours: 24, 12, 6 hours first, on 4 workers
        {"max_window_for_504": timedelta(hours=3)},
        # 504s to pages of more than 250 rows, whatever the window: each walk narrows to 22.5
        # minutes first, then halves its page (the counts, of one row, come through)
        {"max_limit_for_504": 250},
    ],
)
def test_slow_504s_until_the_read_asks_narrower_are_narrowed_through_however_long(
    refusing: dict[str, object],
) -> None:
    # The run of 504s before an answer outlasts the patience: the read goes on.
    sim = slow_gateway(**refusing)
    ids = read_ids(sim, patience_s=0.1)
    assert sorted(ids) == sorted(ids_in(sim, WEEK))
    assert sim.stats.by_status[504] >= 8


def test_an_answer_of_the_api_s_own_between_504s_shows_its_gateway_is_up() -> None:
    # Each count of a 15-minute window meets a 504, and the API's own 429 holding the client
    # 6 s before the retry: more than the 10 s patience since the first 504, never without an
    # answer for that long.
    sim = simulator(rows_at(range(10)))
    for _ in range(3):
        sim.script(error(429, **{"Retry-After": "6"}))
        sim.script(GATEWAY_TIMEOUT)
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=10.0)
    with client(sim, retry=retry) as reader:
        reader.count(NARROWEST)  # the first 429, then a 504
        totals = [reader.count(NARROWEST) for _ in range(2)]
    assert [t.note for t in totals] == ["timeout", "timeout"]
    assert sim.stats.by_status[504] == 3


def test_the_window_named_is_what_was_left_of_the_part_not_the_part() -> None:
    # Pages of 10 rows; the day's part read up to its last 15 minutes when the 504s begin.
    sim = simulator(rows_at([*range(0, 600_000, 60_000), *range(85_500_000, 86_400_000, 60_000)]))
    pages = iter(range(10**6))
    sim.script(GATEWAY_TIMEOUT, times=10**6, when=lambda r: r.kind == "data" and next(pages) >= 2)
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=0.0)
    with (
        client(sim, page_limit=10, min_page_limit=10, retry=retry) as reader,
        pytest.raises(GatewayDownError) as caught,
    ):
        list(reader.iter_window(DAY))
    window = caught.value.window
    assert window is not None and window.until == DAY.until
    assert window.duration < timedelta(minutes=30)


def test_the_outage_is_called_only_after_the_patience_since_the_first_504() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
    clock.now = 299.0
    watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 300.0
    with pytest.raises(GatewayDownError) as caught:
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id="req-9")
    assert "for 300s (2 counts, 1 page), windows as narrow as 0:15:00" in str(caught.value)
    assert "requestId req-9" in str(caught.value)


def test_any_answer_starts_the_watch_again() -> None:
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
    with pytest.raises(GatewayDownError, match=r"for 300s \(3 pages\)"):
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)


def test_504s_on_wide_windows_alone_are_never_an_outage() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    for minute in range(0, 120):
        clock.now = minute * 60.0
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)


def test_a_minute_of_504s_at_the_narrowest_width_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    with caplog.at_level(logging.WARNING, logger="d23_pipeline.client"):
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
        clock.now = 30.0
        watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
        assert caplog.records == []  # a hiccup at the narrowest width is no outage yet
        clock.now = 60.0
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
        clock.now = 90.0
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    [warning] = caplog.records
    assert "nothing but 504s (gateway timeouts) for 60s (3 counts; no page" in warning.message
    assert "within 300s of the first, the read stops" in warning.message
