"""A gateway that is down stops a read within the retry budget; one that refuses wide windows or
large pages, however slowly, is narrowed through."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from api import DAY, GATEWAY_TIMEOUT, T0, client, error, ids_in, rows_at, simulator

from d23_pipeline.client import (
    GatewayDownError,
    RetryPolicy,
    SlicePage,
    Window,
    WindowTooHeavyError,
)
from d23_pipeline.client.outage import OutageWatch
from d23_pipeline.schema import parse_timestamp
from d23_pipeline.simulator import SimRequest, Simulator

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
    assert warning.startswith("nothing but 504s (gateway timeouts) for ")
    assert "if the API answers nothing for 1s since, the next such request to time out" in warning
    message = str(caught.value)
    assert "the API or its gateway is down" in message and "HTTP 504" in message
    assert re.search(
        r"\(\d+ counts; no page was asked meanwhile\), [01]s of it since one on a request the "
        r"client asks no narrower \(windows down to 0:(22:30|07:30), at the smallest page\)",
        message,
    )
    assert sim.stats.by_status[504] < 250  # about 80 in the second it waited, 4 at a time


def test_a_gateway_going_down_mid_walk_is_named_when_the_walk_gives_up() -> None:
    # Two requests answered (the day's count, its first page), then nothing but 504s after
    # 50 ms: the walk narrows its window to 22.5 minutes, then halves its page from 500 to 50,
    # pausing (the injected sleep moves the client's clock), and gives up.
    sim = simulator(rows_at(range(0, 86_400_000, 20_000)), gateway_timeout_s=0.05)
    asked = iter(range(10**6))
    sim.script(GATEWAY_TIMEOUT, times=10**6, when=lambda r: next(asked) >= 2)
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=1.0)
    with client(sim, retry=retry) as reader, pytest.raises(GatewayDownError) as caught:
        list(reader.iter_window(DAY))
    assert "a walk giving up at its narrowest window and smallest page" in str(caught.value)
    assert isinstance(caught.value.__cause__, WindowTooHeavyError)


def test_a_walk_giving_up_before_the_patience_is_a_window_too_heavy() -> None:
    sim = simulator(rows_at(range(0, 86_400_000, 20_000)))
    asked = iter(range(10**6))
    sim.script(GATEWAY_TIMEOUT, times=10**6, when=lambda r: next(asked) >= 2)
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=300.0)
    with client(sim, retry=retry) as reader, pytest.raises(WindowTooHeavyError):
        list(reader.iter_window(DAY))


@pytest.mark.parametrize("counts_too", [False, True])
def test_a_window_too_heavy_for_pages_on_a_gateway_that_is_up_stays_one(counts_too: bool) -> None:
    # Every page of [12:00, 12:20) times out, at any size (and every count of more than an
    # instant there), and nothing else is asked while the walk narrows and backs off (the
    # injected pauses, past the 1 s patience): only the count of an instant there, asked once
    # it gives up, shows the gateway up.
    heavy = Window(T0 + timedelta(hours=12), T0 + timedelta(hours=12, minutes=20))
    kinds = ("data", "count") if counts_too else ("data",)

    def in_heavy(request: SimRequest) -> bool:
        query = request.query
        asked = Window(parse_timestamp(query["since"]), parse_timestamp(query["until"]))
        overlaps = asked.since < heavy.until and heavy.since < asked.until
        return request.kind in kinds and overlaps and asked.duration > timedelta(milliseconds=1)

    sim = simulator(rows_at(range(0, 86_400_000, 20_000)))
    sim.script(GATEWAY_TIMEOUT, times=10**6, when=in_heavy)
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=1.0)
    with client(sim, retry=retry) as reader, pytest.raises(WindowTooHeavyError) as caught:
        list(reader.iter_window(DAY))
    assert caught.value.window is not None and caught.value.window.since >= heavy.since


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


@pytest.mark.parametrize(("status", "called_down"), [(429, False), (503, True)])
def test_a_refusal_of_the_api_s_own_between_504s_shows_its_gateway_is_up_a_5xx_does_not(
    status: int, called_down: bool
) -> None:
    # Each count of a 15-minute window meets the API's own answer holding the client 6 s
    # (Retry-After), then a 504: 12 s since the first 504, never 10 s without an answer.
    sim = simulator(rows_at(range(10)))
    sim.script(GATEWAY_TIMEOUT)
    for _ in range(2):
        sim.script(error(status, **{"Retry-After": "6"}))
        sim.script(GATEWAY_TIMEOUT)
    retry = RetryPolicy(max_attempts=4, max_total_wait_s=10.0)
    with client(sim, retry=retry) as reader:
        reader.count(NARROWEST)
        reader.count(NARROWEST)
        if called_down:
            with pytest.raises(GatewayDownError):
                reader.count(NARROWEST)
        else:
            assert reader.count(NARROWEST).note == "timeout"
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


def test_the_outage_is_called_the_patience_after_the_first_narrowest_504() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
    clock.now = 100.0
    watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 399.0
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 400.0
    with pytest.raises(GatewayDownError) as caught:
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id="req-9")
    assert "for 400s (2 counts, 2 pages), 300s of it since one" in str(caught.value)
    assert "(windows down to 0:15:00, at the smallest page)" in str(caught.value)
    assert "requestId req-9" in str(caught.value)


def wide_504s_for(minutes: int) -> OutageWatch:
    """A watch that met a 504 on a wide window every minute for ``minutes``: a slow gateway
    the read narrows through."""
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    for minute in range(minutes):
        clock.now = minute * 60.0
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
    return watch


def test_504s_on_wide_windows_alone_are_never_an_outage() -> None:
    wide_504s_for(120)


def test_one_narrowest_504_after_a_long_run_of_wide_ones_is_no_outage() -> None:
    wide_504s_for(8).timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)


def test_past_the_patience_only_a_504_asked_as_narrow_as_it_goes_stops_the_read() -> None:
    # A hiccup on a narrowest count, then minutes of a walk's 504s at larger pages before it
    # finds the size the gateway takes.
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
    for minute in range(1, 7):
        clock.now = minute * 60.0
        watch.timed_out("page", NARROWEST, narrowest=False, path=PATH, request_id=None)
    with pytest.raises(GatewayDownError):
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)


def test_any_answer_starts_the_watch_again() -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    clock.now = 200.0
    watch.answered()
    clock.now = 250.0
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    gave_up = WindowTooHeavyError("too heavy", status=504, path=PATH, window=NARROWEST)
    clock.now = 549.0
    watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    assert watch.outage_behind(gave_up) is None
    clock.now = 550.0
    assert watch.outage_behind(gave_up) is not None
    with pytest.raises(GatewayDownError, match=r"for 300s \(3 pages\), 300s of it since one"):
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)


def test_a_minute_of_504s_since_one_at_the_narrowest_width_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = OutageWatch(300.0, clock)
    with caplog.at_level(logging.WARNING, logger="d23_pipeline.client"):
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
        clock.now = 30.0
        watch.timed_out("count", NARROWEST, narrowest=True, path=PATH, request_id=None)
        clock.now = 89.0
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
        assert caplog.records == []  # a hiccup at the narrowest width is no outage yet
        clock.now = 90.0
        watch.timed_out("count", WIDE, narrowest=False, path=PATH, request_id=None)
        clock.now = 120.0
        watch.timed_out("page", NARROWEST, narrowest=True, path=PATH, request_id=None)
    [warning] = caplog.records
    assert warning.message.startswith(
        "nothing but 504s (gateway timeouts) for 90s (4 counts; no page was asked meanwhile), "
        "60s of it since one on a request the client asks no narrower"
    )
    assert "nothing for 300s since, the next such request to time out stops the read" in (
        warning.message
    )
