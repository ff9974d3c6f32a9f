"""Window arithmetic and the retry policy's pure parts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from d23_pipeline.client import RetryPolicy, Window
from d23_pipeline.client.retry import parse_retry_after, transient_for

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def test_window_key_is_stable_and_file_name_safe() -> None:
    window = Window(T0, T0 + timedelta(days=1))
    assert window.key == "20260501T000000000Z-20260502T000000000Z"
    assert str(window) == "[2026-05-01T00:00:00.000Z, 2026-05-02T00:00:00.000Z)"


def test_window_round_trips_through_its_key() -> None:
    window = Window(T0 + timedelta(milliseconds=7), T0 + timedelta(hours=1, milliseconds=250))
    assert Window.from_key(window.key) == window
    with pytest.raises(ValueError, match="not a window key"):
        Window.from_key("20260501-garbage")


def test_window_normalises_to_utc_and_rounds_bounds_up_to_the_millisecond() -> None:
    plus_two = timezone(timedelta(hours=2))
    window = Window(datetime(2026, 5, 1, 2, tzinfo=plus_two), T0 + timedelta(microseconds=1500))
    assert window.since == T0
    # Rounding up keeps the same millisecond rows: t < 1.5 ms  <=>  t < 2 ms.
    assert window.until == T0 + timedelta(milliseconds=2)
    assert window.until_text == "2026-05-01T00:00:00.002Z"


@pytest.mark.parametrize(
    ("since", "until"),
    [(T0, T0), (T0 + timedelta(1), T0), (datetime(2026, 5, 1), datetime(2026, 5, 2))],
)
def test_window_refuses_empty_reversed_or_naive_bounds(since: datetime, until: datetime) -> None:
    with pytest.raises(ValueError):
        Window(since, until)


def test_split_covers_the_window_with_a_shorter_last_slice() -> None:
    window = Window(T0, T0 + timedelta(days=2, hours=12))
    slices = window.split(timedelta(days=1))
    assert [s.duration for s in slices] == [timedelta(days=1)] * 2 + [timedelta(hours=12)]
    assert slices[0].since == window.since and slices[-1].until == window.until
    assert all(a.until == b.since for a, b in zip(slices, slices[1:], strict=False))


def test_halves_meet_at_a_millisecond_aligned_midpoint() -> None:
    first, second = Window(T0, T0 + timedelta(milliseconds=5)).halves()
    assert (first.since, first.until, second.until) == (
        T0,
        T0 + timedelta(milliseconds=2),
        T0 + timedelta(milliseconds=5),
    )
    with pytest.raises(ValueError):
        Window(T0, T0 + timedelta(milliseconds=1)).halves()


def test_windows_sort_by_since() -> None:
    later, earlier = Window(T0 + timedelta(1), T0 + timedelta(2)), Window(T0, T0 + timedelta(1))
    assert sorted([later, earlier]) == [earlier, later]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Fri, 01 May 2026 12:00:30 GMT", now) == 30.0
    # No delay to wait: the policy's backoff applies.
    assert parse_retry_after("Fri, 01 May 2026 11:00:00 GMT", now) is None
    assert parse_retry_after("0") is None and parse_retry_after("-1") is None
    assert parse_retry_after("nan") is None and parse_retry_after("-inf") is None
    assert parse_retry_after("inf") is None  # no finite delay: it printed "waiting infs"
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_retry_after_date_counts_from_the_answers_own_date_not_our_clock() -> None:
    def retry_after(server_clock: datetime, retry_at: datetime) -> float | None:
        headers = {
            "Date": format_datetime(server_clock, usegmt=True),
            "Retry-After": format_datetime(retry_at, usegmt=True),
        }
        failure = transient_for(httpx.Response(429, headers=headers))
        assert failure is not None
        return failure.retry_after

    ours = datetime.now(UTC).replace(microsecond=0)
    # The server's clock is ten minutes ahead of ours, or behind: it asks for five seconds.
    for server in (ours + timedelta(minutes=10), ours - timedelta(minutes=10)):
        assert retry_after(server, server + timedelta(seconds=5)) == 5.0
    # A clock never set (1970) is no clock: the date is counted from ours, as without a Date.
    wait = retry_after(datetime(1970, 1, 1, tzinfo=UTC), ours + timedelta(seconds=30))
    assert wait is not None and 25 <= wait <= 30


def test_backoff_is_full_jitter_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=4.0)
    for attempt in range(1, 10):
        ceiling = min(4.0, 2 ** (attempt - 1))
        assert all(0 <= policy.backoff(attempt) <= ceiling for _ in range(50))


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *((status, 1) for status in (429, 500, 502, 503, 504, 507, 520, 522, 524, 530, 599)),
        *((status, 0) for status in (400, 401, 403, 404, 501, 505, 506, 510, 511)),
    ],
)
def test_429_and_the_5xx_a_retry_can_mend_are_retryable(status: int, retryable: int) -> None:
    response = httpx.Response(status, json={"requestId": "abc"}, headers={"Retry-After": "2"})
    failure = transient_for(response)
    assert (failure is not None) == bool(retryable)
    if failure is not None:
        assert (failure.cause, failure.request_id, failure.retry_after) == (str(status), "abc", 2.0)
