"""Every fault ends in the exact rows or a clear error: retries, bad bodies, 403/404, 504s."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import itertools
import json
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import partial

import httpcore
import httpx
import orjson
import pytest
from api import (
    BASE_URL,
    DAY,
    GATEWAY_TIMEOUT,
    T0,
    TIMEOUT,
    client,
    error,
    ids_in,
    pid,
    queries,
    row,
    rows_at,
    simulator,
    walk_ids,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from d23_pipeline.client import (
    DatasetNotFoundError,
    ExportsApiError,
    ExportsClient,
    LenderMismatchError,
    ProtocolError,
    RetriesExhaustedError,
    RetryPolicy,
    SliceDone,
    SlicePage,
    Window,
    WindowTooHeavyError,
    retry,
)
from d23_pipeline.client.body import BoundedHttp, _arriving_within, _DeadlineStream
from d23_pipeline.client.pages import Page
from d23_pipeline.client.retry import Retrier, Transient
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.schema import parse_timestamp
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import DROP, SimRequest, SimResponse, Simulator, serve

GATEWAY_502 = SimResponse.gateway_page(502)


def paged(offsets: list[int] | range, size: int = 3) -> Simulator:
    return simulator(rows_at(offsets), page_size=lambda limit: size)


def has_cursor(request: SimRequest) -> bool:
    return "cursor" in request.query


def wider_than(width: timedelta, since: str, until: str) -> bool:
    return parse_timestamp(until) - parse_timestamp(since) > width


def spread(count: int) -> list[int]:
    """Offsets spread over the day, in groups of three ties."""
    return [(n // 3) * (86_400_000 // (count // 3 + 1)) for n in range(count)]


# A CDN in front of the API answers some 5xx with its own page, not the API's error body: a
# failure to retry like any other, not a sign that D23_API_URL is another host.
@pytest.mark.parametrize(
    ("status", "answer"),
    [
        *((status, error(status)) for status in (429, 500, 502, 503)),
        *(
            (status, SimResponse.gateway_page(status, "origin error"))
            for status in (507, 520, 522, 524)
        ),
    ],
)
def test_transient_statuses_mid_walk_are_retried_to_the_exact_rows(
    status: int, answer: SimResponse
) -> None:
    sim = paged(range(10))
    sim.script(answer, times=2, when=has_cursor)
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.as_dict()["retries"] == {str(status): 2}


def test_retry_after_seconds_is_honoured() -> None:
    slept: list[float] = []
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "7"}))
    sim.script(error(503, **{"Retry-After": "2"}))
    with client(sim, sleep=slept.append) as reader:
        assert walk_ids(reader) == ids_in(sim)
    # Up to a tenth more, so that requests held together do not all come back at one instant.
    assert len(slept) == 2 and 7.0 <= slept[0] <= 7.7 and 2.0 <= slept[1] <= 2.2


def test_retry_after_http_date_is_honoured() -> None:
    slept: list[float] = []
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    sim = paged(range(4))
    sim.script(error(503, **{"Retry-After": when}))
    with client(sim, sleep=slept.append) as reader:
        assert walk_ids(reader) == ids_in(sim)
    assert len(slept) == 1 and 25 < slept[0] <= 33


def test_backoff_without_retry_after_stays_within_policy() -> None:
    slept: list[float] = []
    sim = paged(range(4))
    sim.script(error(500), times=3)
    policy = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=3.0)
    with client(sim, sleep=slept.append, retry=policy) as reader:
        walk_ids(reader)
    assert len(slept) == 3 and all(0 <= s <= cap for s, cap in zip(slept, [1, 2, 3], strict=True))


@pytest.mark.parametrize("retry_after", ["0", "-1", "Fri, 01 May 2026 11:00:00 GMT"])
def test_a_retry_after_of_no_time_backs_off_as_the_policy_says(retry_after: str) -> None:
    # Waited out as given, six attempts of a short 503 outage went out within milliseconds.
    slept: list[float] = []
    sim = paged(range(4))
    sim.script(error(503, **{"Retry-After": retry_after}), times=3)
    policy = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=3.0)
    with client(sim, sleep=slept.append, retry=policy) as reader:
        assert walk_ids(reader) == ids_in(sim)
    assert len(slept) == 3 and all(0 <= s <= cap for s, cap in zip(slept, [1, 2, 3], strict=True))
    assert sum(slept) > 0


def test_timeouts_and_dropped_connections_are_retried_to_the_exact_rows() -> None:
    sim = paged(range(10))
    sim.script(TIMEOUT, when=has_cursor)
    sim.script(DROP, when=has_cursor)
    sim.script(DROP)
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.as_dict()["retries"] == {"timeout": 1, "connection": 2}


def test_a_refused_connection_is_retried_then_a_clear_error() -> None:
    sim = paged(range(4))
    with serve(sim) as gone:
        pass  # nothing listens on its port any more
    credentials = LoginCredentials(sim.config.lender_slug, sim.config.email, sim.config.password)
    with (
        ExportsClient(gone, credentials, sleep=lambda s: None, retry=RetryPolicy(3)) as reader,
        pytest.raises(RetriesExhaustedError, match="connection") as caught,
    ):
        walk_ids(reader)
    # The socket's own words and the host say what to fix (refused here; name not resolved, a
    # certificate).
    assert "ConnectError: [Errno 111] Connection refused [host 127.0.0.1]" in str(caught.value)
    assert reader.stats.as_dict()["retries"] == {"connection": 2}


@contextmanager
def unanswered_port() -> Iterator[str]:
    """A URL on 127.0.0.1 whose connects hang, as at a host that drops them: its listener never
    accepts, and its backlog is full."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        with contextlib.ExitStack() as fillers:
            for _ in range(3):
                filler = fillers.enter_context(socket.socket())
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(address)
            yield f"http://127.0.0.1:{address[1]}"


def test_a_host_that_never_answers_the_connect_fails_at_the_connect_timeout() -> None:
    credentials = LoginCredentials("demo", "analyst@demo.example", "any")
    started = time.monotonic()
    with (
        unanswered_port() as url,
        ExportsClient(
            url, credentials, sleep=lambda s: None, retry=RetryPolicy(2), connect_timeout=0.2
        ) as reader,
        pytest.raises(RetriesExhaustedError, match="timeout") as caught,
    ):
        walk_ids(reader)
    # Not the minute a page may take, twice: a wrong address is known in seconds.
    assert time.monotonic() - started < 30
    assert "ConnectTimeout" in str(caught.value) and "[host 127.0.0.1]" in str(caught.value)


@pytest.mark.parametrize("password", ["hunter2", "hunter@2"])
def test_a_connection_failure_quoting_a_url_shows_no_userinfo(password: str) -> None:
    error = httpx.ProxyError(f"cannot reach http://proxy-user:{password}@proxy.internal:3128/")

    assert retry._connection_failure(error) == (
        "ProxyError: cannot reach http://***@proxy.internal:3128/"
    )


def test_html_truncated_and_rowless_bodies_are_retried() -> None:
    sim = paged(range(10))
    sim.script(SimResponse(200, body=b"<html>oops</html>"), when=has_cursor)
    sim.script(SimResponse(200, body=b'{"body": {"rows": [{"pub'))
    sim.script(SimResponse.from_json({"body": {"pagination": {"nextCursor": None}}}))
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.as_dict()["retries"] == {"bad_body": 3}


def test_a_body_that_stays_invalid_is_a_protocol_error_with_the_request_id() -> None:
    sim = paged(range(10))
    sim.script(SimResponse(200, {"x-request-id": "req-html"}, b"<html/>"), times=99)
    with client(sim) as reader, pytest.raises(ProtocolError) as caught:
        walk_ids(reader)
    assert caught.value.request_id == "req-html" and "req-html" in str(caught.value)
    assert "not valid JSON" in str(caught.value)


@pytest.mark.parametrize(
    ("pagination", "named"),
    [
        ({"total": "7", "totalExact": True}, "pagination.total is a string, expected an integer"),
        ({"total": 7, "totalExact": "true"}, "pagination.totalExact is a string, expected true"),
        # Past the warehouse's BIGINT, it failed the month's merge with DuckDB's cast error.
        ({"total": 2**63, "totalExact": True}, "total is 9223372036854775808, not a count"),
        ({"total": -1, "totalExact": True}, "pagination.total is -1, not a count of rows"),
        # Missing parts of a count: the same search, every slice then unproven.
        ({"totalExact": True}, "no pagination.total in the answer to includeTotal"),
        ({"total": 7, "totalNote": None}, "totalExact is missing or null beside a count"),
        ({"total": 7, "totalExact": None}, "totalExact is missing or null beside a count"),
        (None, "no body.pagination object in the answer to includeTotal"),
    ],
)
def test_a_count_missing_of_the_wrong_type_or_past_a_bigint_is_a_clear_error_not_a_search_for_one(
    pagination: dict | None, named: str
) -> None:
    sim = paged(range(7))
    body: dict = {"rows": []}
    if pagination is not None:
        body["pagination"] = {"nextCursor": None, **pagination}
    answer = {"body": body}
    sim.script(SimResponse.from_json(answer), times=99, when=lambda r: r.kind == "count")
    with client(sim) as reader, pytest.raises(ProtocolError, match=named):
        reader.fetch_total(DAY)
    # Read as "no exact count", the day was halved down to the narrowest window: 127 requests.
    assert sim.stats.snapshot()["by_kind"]["count"] <= 6


def test_a_persistent_500_exhausts_retries_naming_request_id_and_window() -> None:
    sim = paged(range(10))
    sim.script(error(500, "req-500"), times=99)
    with client(sim) as reader, pytest.raises(RetriesExhaustedError) as caught:
        walk_ids(reader)
    message = str(caught.value)
    assert "req-500" in message and "HTTP 500" in message and str(DAY) in message
    assert caught.value.window == DAY
    assert len(queries(sim)) == 4  # max_attempts tries of the first page, which has no cursor


def test_a_cursor_the_api_stops_taking_is_dropped_and_the_walk_reads_on_from_its_last_row() -> None:
    # Pages of 3 through runs of 5 tied rows: the walk reads on from inside a tie.
    sim = paged([t for t in (0, 10, 20, 30) for _ in range(5)], size=3)
    refused: list[str] = []

    def expired(request: SimRequest) -> bool:
        # The cursor of the third page is refused from then on, as an expired one is.
        if has_cursor(request) and not refused and len(queries(sim)) == 2:
            refused.append(request.query["cursor"])
        return request.query.get("cursor") in refused

    sim.script(error(500), times=99, when=expired)
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.cursor_restarts == 1
    # Pages 0-1 handed over the 5 rows at 0.000 and 1 at 0.010; 2-5 were the refused cursor's
    # four tries; 6 reads on from 0.010 without it, skipping the row handed over there.
    asked = queries(sim)
    assert [q.get("cursor") for q in asked[2:6]] == refused * 4
    assert "cursor" not in asked[6] and asked[6]["since"] == "2026-05-01T00:00:00.010Z"


def test_a_500_on_every_cursor_drops_the_cursor_once_then_fails_naming_the_rest() -> None:
    sim = paged(range(10))
    sim.script(error(500, "req-500"), times=99, when=has_cursor)
    with client(sim) as reader, pytest.raises(RetriesExhaustedError) as caught:
        walk_ids(reader)
    # First page, four tries of the second; from its last row (at 0.002) without a cursor,
    # then four tries of that walk's first cursor: no cursor came through, so it gives up.
    assert len(queries(sim)) == 1 + 4 + 1 + 4
    assert reader.stats.cursor_restarts == 1
    rest = Window(T0 + timedelta(milliseconds=2), DAY.until)
    assert caught.value.window == rest and str(rest) in str(caught.value)


def test_an_expired_cursor_whose_last_try_met_a_passing_502_is_still_dropped() -> None:
    sim = paged(range(10))
    tries = itertools.count(1)
    sim.script(error(500), times=3, when=has_cursor)  # the second page's cursor has expired
    sim.script(GATEWAY_502, when=lambda request: has_cursor(request) and next(tries) == 1)

    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.cursor_restarts == 1
    assert [q.get("cursor") is None for q in queries(sim)[:6]] == [True] + [False] * 4 + [True]


def test_cursors_that_expire_before_a_walk_gets_past_its_tied_rows_fail_it_not_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 7 rows at one instant, pages of 3, a walk's cursor expiring after its 2nd page: a walk
    # from the instant without a cursor skips 6 rows handed over already, and its cursor
    # expires before row 7.
    sim = simulator(rows_at([0] * 7 + [5, 6, 7]), page_size=lambda limit: 3, cursor_pages=2)
    with client(sim) as reader, pytest.raises(RetriesExhaustedError) as caught:
        walk_ids(reader)

    assert caught.value.window == DAY and caught.value.status == 500
    assert reader.stats.cursor_restarts == 1
    # Pages 1-2, four tries of page 3; from the instant: 2 pages, four tries of the third.
    assert len(queries(sim)) == 2 + 4 + 2 + 4
    assert "faster than the walk gets on" in caplog.text


def test_a_larger_page_limit_outruns_cursors_that_expire_before_the_tied_rows() -> None:
    # The README's remedy for the failure above: a larger D23_PAGE_LIMIT gets each page further.
    rows = rows_at([0] * 7 + [5, 6, 7])
    small, large = simulator(rows, cursor_pages=2), simulator(rows, cursor_pages=2)
    with client(small, page_limit=3) as reader, pytest.raises(RetriesExhaustedError):
        walk_ids(reader)
    with client(large, page_limit=8) as reader:
        assert walk_ids(reader) == ids_in(large)


def test_cursors_that_expire_every_few_pages_still_give_every_row_once() -> None:
    # Each walk gets two pages before its cursor expires; 1,000 rows in pages of 3, with ties,
    # over 4 walks.
    offsets = [(n // 4) * 300_000 for n in range(1_000)]
    sim = simulator(rows_at(offsets), page_size=lambda limit: 3, cursor_pages=2)
    with client(sim, max_concurrency=4, slice_size=timedelta(hours=6)) as reader:
        events = list(reader.iter_slices(DAY))
        restarts = reader.stats.cursor_restarts
    ids = [r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows]
    assert sorted(ids) == sorted(ids_in(sim)) and len(set(ids)) == len(ids) == 1_000
    assert all(e.proof.verified and e.proof.reads == 1 for e in events if isinstance(e, SliceDone))
    # A walk loses its cursor every second page, less where a cut starts a fresh walk.
    assert restarts >= 1_000 // 3 // 3 - 4


def _fails_once_with(failure: Transient, sent: list[float]) -> Callable[[], str]:
    """An attempt that records when it is sent, failing with ``failure`` the first time."""
    failures = [failure]

    def attempt() -> str:
        sent.append(time.monotonic())
        if failures:
            raise failures.pop()
        return "ok"

    return attempt


RATE_LIMITED = Transient("429", status=429, retry_after=1.0)


@contextmanager
def _held_for_a_second(retrier: Retrier) -> Iterator[tuple[float, list[float]]]:
    """A page request of ``retrier``'s answered 429 with ``Retry-After: 1`` in another thread,
    and so the client held: yields when that began and when that request was sent."""
    limited: list[float] = []
    first = threading.Thread(
        target=retrier.call,
        args=(_fails_once_with(RATE_LIMITED, limited),),
        kwargs={"what": "a page", "path": "/d23"},
    )
    start = time.monotonic()
    first.start()
    while not limited:  # the 429 is answered; its Retry-After holds the client from now
        time.sleep(0.001)
    time.sleep(0.05)
    try:
        yield start, limited
    finally:
        first.join()


def test_a_retry_after_holds_the_clients_other_requests_but_not_its_logins() -> None:
    retrier = Retrier(RetryPolicy(max_attempts=2), ClientStats(100), time.sleep)
    login: list[float] = []
    page: list[float] = []
    with _held_for_a_second(retrier) as (start, limited):
        retrier.call(partial(login.append, 0.0), what="a login", path="/auth", held=False)
        login[0] = time.monotonic()
        retrier.call(lambda: page.append(time.monotonic()), what="another page", path="/d23")

    assert login[0] - start < 0.9  # a login runs under the token lock: never held
    # Held about a second (and a tenth of jitter); the upper bound allows a loaded CI machine.
    assert 1.0 <= page[0] - start <= 1.5 and 1.0 <= limited[1] - start <= 1.5


def test_time_held_by_another_requests_retry_after_counts_toward_the_wait_budget() -> None:
    retrier = Retrier(RetryPolicy(max_total_wait_s=1.5), ClientStats(100), time.sleep)
    sent: list[float] = []
    with (
        _held_for_a_second(retrier),
        pytest.raises(RetriesExhaustedError, match="retry budget"),
    ):
        # Held ~1 s by the other request, then told to wait 1 s more: past its 1.5 s.
        retrier.call(_fails_once_with(RATE_LIMITED, sent), what="another page", path="/d23")
    assert len(sent) == 1


def test_a_hold_given_while_a_request_waits_out_another_holds_it_to_the_later_end() -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:  # meanwhile another request is told Retry-After: 5
            retrier._hold_all(5.0)

    retrier = Retrier(RetryPolicy(), ClientStats(100), sleep)
    retrier.call(_fails_once_with(RATE_LIMITED, []), what="a page", path="/d23")

    # Its own second (and jitter); then, the hold checked again, what is left of the 5 s.
    first, rest = slept
    assert 1.0 <= first <= 1.1
    assert first + rest >= 4.99


def test_requests_held_by_one_retry_after_come_back_each_at_its_own_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry, "random", random.Random(4))
    slept: list[float] = []
    both_waiting = threading.Barrier(2)

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        both_waiting.wait(timeout=5)

    retrier = Retrier(RetryPolicy(), ClientStats(100), sleep)
    limited = threading.Thread(
        target=retrier.call,
        args=(_fails_once_with(RATE_LIMITED, []),),
        kwargs={"what": "a page", "path": "/d23"},
    )
    limited.start()
    while not slept:  # the 429's Retry-After: 1 holds the client, and that request waits
        time.sleep(0.001)
    retrier.call(lambda: "ok", what="another page", path="/d23")
    limited.join()

    # Each waits the hold and up to a tenth more, drawn on its own: not one instant for all.
    assert all(0.9 <= pause <= 1.1 for pause in slept)
    assert abs(slept[0] - slept[1]) >= 0.01


def test_a_retry_after_under_a_second_counts_as_a_failed_attempt() -> None:
    # Not pacing (HTTP's delay is whole seconds): a server answering "retry after 10 ms" for
    # ever must still end the run, after max_attempts.
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "0.01"}), times=99)
    with client(sim) as reader, pytest.raises(RetriesExhaustedError, match="after 4 attempts"):
        walk_ids(reader)


def test_a_retry_after_as_long_as_the_wait_budget_is_waited_out() -> None:
    slept: list[float] = []
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "300"}))
    with client(sim, sleep=slept.append, retry=RetryPolicy(max_total_wait_s=300)) as reader:
        assert walk_ids(reader) == ids_in(sim)
    assert slept == [300]  # the budget bounds the jitter too: it had waited up to 330 s


def test_a_retry_after_within_the_wait_budget_is_waited_out_with_jitter_up_to_the_budget() -> None:
    slept: list[float] = []
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "280"}))
    with client(sim, sleep=slept.append, retry=RetryPolicy(max_total_wait_s=300)) as reader:
        assert walk_ids(reader) == ids_in(sim)
    assert len(slept) == 1 and 280 <= slept[0] <= 300


def test_a_retry_after_beyond_the_wait_budget_fails_at_once() -> None:
    slept: list[float] = []
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "600"}))
    with (
        client(sim, sleep=slept.append, retry=RetryPolicy(max_total_wait_s=60)) as reader,
        pytest.raises(RetriesExhaustedError, match=r"\(the API's Retry-After\) would exceed"),
    ):
        walk_ids(reader)
    assert slept == []


def test_403_is_a_lender_mismatch_without_retry() -> None:
    sim = paged(range(4))
    sim.script(error(403, "req-403"), times=99)
    with client(sim) as reader, pytest.raises(LenderMismatchError) as caught:
        walk_ids(reader)
    assert sim.lender_public_id in str(caught.value) and "req-403" in str(caught.value)
    assert "check that D23_LENDER_PUBLIC_ID and the token" in str(caught.value)
    assert len(queries(sim)) == 1


def test_404_names_the_dataset_without_retry() -> None:
    sim = paged(range(4))
    with client(sim, dataset="D24") as reader, pytest.raises(DatasetNotFoundError) as caught:
        walk_ids(reader)
    assert "S4/D24" in str(caught.value) and "not enabled" in str(caught.value)
    assert len(queries(sim)) == 1


def test_an_unexpected_status_is_an_error_not_an_empty_result() -> None:
    sim = paged(range(4))
    sim.script(error(418))
    with client(sim) as reader, pytest.raises(ExportsApiError, match="HTTP 418"):
        walk_ids(reader)


def test_a_504_on_a_wide_window_reads_the_rest_in_halves_without_a_pause() -> None:
    sim = paged(range(10))
    sim.script(GATEWAY_TIMEOUT, when=has_cursor)
    pauses: list[float] = []
    with client(sim, sleep=pauses.append) as reader:
        assert walk_ids(reader) == ids_in(sim)
        stats = reader.stats.as_dict()
    assert (stats["retries"], stats["window_splits"], stats["limit_reductions"]) == (
        {"504": 1},
        1,
        0,
    )
    assert pauses == []
    resumed = queries(sim)[2]
    assert "cursor" not in resumed and resumed["until"] < queries(sim)[1]["until"]


# An empty page (53 bytes), a byte every 40 ms: ~2 s in all, each byte well inside the 0.5 s
# read timeout.
_TRICKLED_PAGE = dataclasses.replace(
    SimResponse.from_json({"body": {"rows": [], "pagination": {"nextCursor": None}}}),
    trickle_s=0.04,
)


def test_a_body_trickling_in_past_the_timeout_is_a_read_timeout_not_a_wait_without_end() -> None:
    sim = simulator([])
    sim.script(_TRICKLED_PAGE, times=2)  # in process: the headers at once, the body trickled
    with (
        client(sim, timeout=0.5, retry=RetryPolicy(max_attempts=2)) as reader,
        pytest.raises(RetriesExhaustedError) as caught,
    ):
        list(reader.iter_window(DAY))

    # Two attempts of ~0.5 s each, not the ~2 s a whole trickled body takes.
    assert "ReadTimeout: the answer's body took longer than 0.5 s to arrive" in str(caught.value)
    assert reader.stats.as_dict()["retries"] == {"timeout": 1}


@pytest.mark.parametrize("kind", ["data", "login"])
def test_headers_trickling_in_past_the_timeout_are_a_read_timeout_not_a_wait_without_end(
    kind: str,
) -> None:
    sim = simulator([])
    # Over a socket the status line and headers trickle too: ~6 s of them (about 150 bytes),
    # then the body.
    sim.script(
        _TRICKLED_PAGE, times=2, when=lambda request: request.kind == kind, auth=kind == "login"
    )
    credentials = LoginCredentials(sim.config.lender_slug, sim.config.email, sim.config.password)
    with (
        serve(sim) as url,
        ExportsClient(
            url, credentials, timeout=0.5, retry=RetryPolicy(max_attempts=2), sleep=lambda s: None
        ) as reader,
        pytest.raises(RetriesExhaustedError) as caught,
    ):
        list(reader.iter_window(DAY))

    assert "ReadTimeout: the answer's headers took longer than 0.5 s to arrive" in str(caught.value)
    assert reader.stats.as_dict()["retries"] == {"timeout": 1}


class _Answering(httpcore.NetworkStream):
    """A connection whose every read returns a byte at once."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b"x"

    def start_tls(self, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        return _Answering()


def test_an_https_proxys_tunnel_does_not_count_against_the_answers_headers() -> None:
    connection = _DeadlineStream(_Answering())
    with _arriving_within(0.05, "headers"):
        connection.read(1)  # the proxy's answer to CONNECT: the clock starts
        time.sleep(0.1)
        tunnel = connection.start_tls(ssl.create_default_context(), "api.test")
        # The tunnel is open; this answer's clock starts at its first wait, not at the CONNECT.
        assert tunnel.read(1) == b"x"
        time.sleep(0.1)
        with pytest.raises(httpcore.ReadTimeout, match="headers took longer than 0.05 s"):
            tunnel.read(1)


def test_one_threads_deadline_never_bounds_another_threads_read() -> None:
    # The reader threads share one client; each answer's deadline must stay on its own thread.
    # Events order the steps, so no step depends on how fast the machine is.
    slow, fast = _DeadlineStream(_Answering()), _DeadlineStream(_Answering())
    slow_expired, fast_done = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def read_slowly() -> None:
        with _arriving_within(0.05, "headers"):
            slow.read(1)  # the clock starts
            time.sleep(0.1)
            slow_expired.set()
            fast_done.wait(10)
            try:
                slow.read(1)
            except httpcore.ReadTimeout as timeout:
                outcome["slow"] = str(timeout)

    with _arriving_within(60, "body"):
        fast.read(1)
        reader = threading.Thread(target=read_slowly)
        reader.start()
        assert slow_expired.wait(10)
        # The other thread's answer is past its deadline; this one has 60 s.
        assert fast.read(1) == b"x"
    fast_done.set()  # this thread's answer is done, the other's deadline still stands
    reader.join(10)

    assert outcome == {"slow": "the answer's headers took longer than 0.05 s to arrive"}


@pytest.mark.parametrize(("after_walk_504s", "reads"), [(0, 1), (2, 1), (3, 2)])
def test_a_504_on_the_count_after_a_walk_is_asked_again_before_the_slice_is_read_again(
    after_walk_504s: int, reads: int
) -> None:
    sim = simulator(rows_at(range(0, 86_400_000, 86_400)))  # 1,000 rows in the day
    counts = itertools.count()
    # The slice's count before its walk answers; those after it time out at the gateway.
    sim.script(
        GATEWAY_TIMEOUT,
        times=after_walk_504s,
        when=lambda r: r.kind == "count" and next(counts) >= 1,
    )
    with client(sim, page_limit=200, slice_size=timedelta(days=1)) as reader:
        (done,) = [e for e in reader.iter_slices(DAY) if isinstance(e, SliceDone)]

    # Counted exactly before, the day is countable: up to three counts after the walk, then
    # the slice is read again, in full.
    assert (done.proof.reads, done.proof.verified) == (reads, True)
    assert done.rows == 1_000


def test_a_single_504_at_the_narrowest_window_is_retried_as_is() -> None:
    sim = paged(range(10))
    sim.script(GATEWAY_TIMEOUT, when=has_cursor)
    with client(sim, min_window=timedelta(days=1)) as reader:
        assert walk_ids(reader) == ids_in(sim)
        stats = reader.stats.as_dict()
    assert stats["retries"] == {"504": 1} and stats["limit_reductions"] == 0
    assert queries(sim)[1] == queries(sim)[2]


def test_repeated_504_at_the_narrowest_window_lowers_the_page_limit() -> None:
    sim = simulator(rows_at(spread(30)), max_limit_for_504=100)
    with client(sim, page_limit=400, min_page_limit=50, min_window=timedelta(days=1)) as reader:
        assert walk_ids(reader) == ids_in(sim)
        stats = reader.stats.as_dict()
    assert (stats["limit_reductions"], stats["final_page_limit"], stats["window_splits"]) == (
        2,
        100,
        0,
    )
    assert [p["limit"] for p in queries(sim)] == ["400", "400", "200", "100"]


def test_a_gateway_refusing_large_pages_is_learned_once_not_met_by_every_part() -> None:
    # 504 to any page of more than 200 rows, whatever its window: the walks narrow the window
    # first (the API's advice), find it is the page, and every walk asks 125 rows from then on,
    # at full width. Before, each part of each slice met 504s at 500 and 250 rows, with pauses.
    week = Window(T0, T0 + timedelta(days=7))
    offsets = range(0, 7 * 86_400_000, 300_000)  # a row every 5 minutes: 2,016 rows
    sim = simulator(rows_at(offsets), max_limit_for_504=200)
    pauses: list[float] = []
    with client(sim, page_limit=500, max_concurrency=2, sleep=pauses.append) as reader:
        pages = [e for e in reader.iter_slices(week) if isinstance(e, SlicePage)]
        stats = reader.stats.as_dict()
    ids = [r["public_id"] for page in pages for r in page.rows]
    assert sorted(ids) == sorted(ids_in(sim, week))
    # Learning costs a handful of 504s and a few seconds of backing off; a week of parts asked
    # at 500 rows first met a few hundred 504s and an hour of pauses.
    assert stats["retries"]["504"] <= 30, stats
    assert sum(pauses) < 60, sum(pauses)
    late = [q for q in queries(sim)[len(queries(sim)) // 2 :] if "includeTotal" not in q]
    assert {q["limit"] for q in late} == {"125"}
    assert reader.max_window is None  # the widths that failed at 500 rows are forgotten


def test_passing_504s_at_the_narrowest_width_teach_no_page_limit() -> None:
    # A gateway that takes pages of 500 rows, with two passing double 504s late in two days
    # (where the window is too narrow to split): each lowers that walk's page and comes through,
    # but pages of 500 came through in the run, so later days still ask 500 rows.
    week = Window(T0, T0 + timedelta(days=7))
    # A day: 500 rows until 23:36 (the first page), then 400 in its last quarter hour.
    day_ms, late_ms = 86_400_000, 23 * 3_600_000 + 2_700_000
    one_day = [*range(0, 500 * 169_920, 169_920), *range(late_ms, late_ms + 800_000, 2_000)]
    sim = simulator(rows_at(sorted(d * day_ms + at for d in range(7) for at in one_day)))
    for day in (0, 1):
        since = Window(T0 + timedelta(days=day), T0 + timedelta(days=day + 1)).since_text

        def late_page(request: SimRequest, since: str = since) -> bool:
            query = request.query
            return request.kind == "data" and "cursor" in query and query["since"] == since

        sim.script(GATEWAY_TIMEOUT, times=2, when=late_page)
    with client(sim, page_limit=500, max_concurrency=1) as reader:
        pages = [e for e in reader.iter_slices(week) if isinstance(e, SlicePage)]
        learned = reader.learned_page_limit

    assert sorted(r["public_id"] for p in pages for r in p.rows) == sorted(ids_in(sim, week))
    assert sim.stats.by_status[504] == 4 and learned is None
    later = Window(T0 + timedelta(days=3), week.until).since_text
    asked = {q["limit"] for q in queries(sim) if "includeTotal" not in q and q["since"] >= later}
    assert asked == {"500"}


def test_504s_on_wide_windows_narrow_them_and_later_parts_start_at_the_learned_width() -> None:
    six_hours = timedelta(hours=6)
    sim = simulator(rows_at(spread(60)), page_size=lambda limit: 4, max_window_for_504=six_hours)
    with client(sim, page_limit=100, min_page_limit=50) as reader:
        assert walk_ids(reader) == ids_in(sim)
        stats = reader.stats.as_dict()
    # 24 h fails, 12 h fails (twice at 12 h or more: 6 h is learned), the second 12 h half
    # starts at 6 h without failing; the page limit never drops.
    assert stats["window_splits"] == 2 and stats["final_page_limit"] == 100
    assert reader.max_window == six_hours
    windows = {(p["since"], p["until"]) for p in queries(sim)}
    read = sorted(w for w in windows if not wider_than(six_hours, *w))
    assert [w[0][11:13] for w in read] == ["00", "06", "12", "18"]  # four 6-hour quarters


def test_mid_walk_504_rereads_only_the_rest_without_duplicates_or_gaps() -> None:
    # Pages of 3 cut through runs of 5 tied rows, so the re-read starts inside a tie.
    offsets = [t for t in (0, 10, 20, 30) for _ in range(5)]
    sim = paged(offsets, size=3)
    sim.script(
        # Requests 0 and 1 are already in the log when request 2 is asked about.
        GATEWAY_TIMEOUT,
        times=2,
        when=lambda r: has_cursor(r) and len(queries(sim)) >= 2,
    )
    with client(sim, page_limit=8, min_page_limit=4) as reader:
        assert walk_ids(reader) == ids_in(sim)
    # Requests 0-1 delivered 6 rows (5 at 0.000, 1 at 0.010); 2 was a 504, so 3 reads what was
    # left in narrower parts, starting at the last instant read, without a cursor.
    resumed = queries(sim)[3]
    assert "cursor" not in resumed and resumed["limit"] == "8"
    assert resumed["since"] == "2026-05-01T00:00:00.010Z"


def test_a_re_read_after_a_504_inside_more_ties_than_a_page_asks_no_larger_page() -> None:
    # 250 rows at one instant, pages of 200, a gateway that times out on pages of over 300 rows
    # and once on the second page: the re-read from that instant keeps the page size, so the
    # 504 is not taken, again and again, for a window too wide.
    rows = [row(n, T0 + timedelta(hours=1)) for n in range(250)]
    sim = simulator(rows, max_limit_for_504=300)
    sim.script(GATEWAY_TIMEOUT, when=lambda r: r.kind == "data" and len(queries(sim)) == 1)
    with client(sim, page_limit=200) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.window_splits == 1 and reader.max_window is None
    assert max(int(q["limit"]) for q in queries(sim)) == 200


def test_mid_walk_504s_that_force_splits_still_give_each_row_once() -> None:
    sim = paged(spread(90), size=5)
    hour = timedelta(hours=1)
    sim.script(
        GATEWAY_TIMEOUT,
        times=10_000,
        when=lambda r: has_cursor(r) and wider_than(hour, r.query["since"], r.query["until"]),
    )
    with client(sim, page_limit=20, min_page_limit=5, min_window=timedelta(minutes=15)) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.window_splits > 0


def test_504_that_persists_at_the_floor_names_the_window() -> None:
    # The gateway answers no window as wide as the client's narrowest.
    sim = simulator(rows_at(range(10)), max_window_for_504=timedelta(hours=1))
    with (
        client(sim, page_limit=100, min_page_limit=50, min_window=timedelta(hours=6)) as reader,
        pytest.raises(WindowTooHeavyError) as caught,
    ):
        walk_ids(reader)
    window = caught.value.window
    assert window is not None and window.duration == timedelta(hours=6)
    assert str(window) in str(caught.value) and "504" in str(caught.value)
    # The one setting that can still help, with the value it must go below.
    assert "even at page limit 50, the fewest rows a page the client" in str(caught.value)
    assert "set D23_PAGE_LIMIT below 50 " in str(caught.value)
    # ... unless nothing answered: an outage gives the same 504s.
    assert "the API or its gateway was down" in str(caught.value)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from([0, 0, 1, 5]), max_size=40),
    st.lists(st.booleans(), max_size=25),
    st.integers(1, 6),
)
@example(gaps=[], outages=[True] * 4 + [False] * 2 + [True] * 5, size=1)  # gives up at the floor
def test_random_504s_never_duplicate_or_skip_rows(
    gaps: list[int], outages: list[bool], size: int
) -> None:
    sim = simulator(rows_at(itertools.accumulate(gaps)), page_size=lambda limit: size)
    script = iter(outages)
    sim.script(GATEWAY_TIMEOUT, times=10_000, when=lambda request: next(script, False))
    window = Window(T0, T0 + timedelta(seconds=1))
    floor = timedelta(milliseconds=1)
    with client(sim, page_limit=8, min_page_limit=1, min_window=floor) as reader:
        try:
            ids = walk_ids(reader, window)
        except WindowTooHeavyError as error:
            # Five 504s in a row on a part already at the narrowest window outlast the client
            # by design; it gives up loudly there, never earlier and never with a partial read.
            assert error.window is not None and error.window.duration <= floor
            assert reader.stats.final_page_limit == 1
            return
    assert ids == ids_in(sim, window)


def test_a_reject_without_public_id_is_handed_over_once_across_a_mid_walk_504() -> None:
    # The reject shares the instant of the last valid row of the first page, so the re-read
    # after the 504 starts at that instant and meets the reject again.
    sim = paged([0, 0, 0, 10, 10, 20], size=5)
    sim.corrupt_row(pid(3), "missing_public_id", public_id="")
    # Request 0 is already in the log when request 1 is asked about.
    sim.script(GATEWAY_TIMEOUT, times=2, when=lambda r: has_cursor(r) and len(queries(sim)) >= 1)
    with client(sim, page_limit=8, min_page_limit=4) as reader:
        pages = list(reader.iter_window(DAY))

    assert [r.public_id for p in pages for r in p.rejects] == [None]
    assert sorted(row["public_id"] for p in pages for row in p.rows) == [
        pid(0), pid(1), pid(2), pid(4), pid(5)
    ]  # fmt: skip
    assert reader.stats.as_dict()["rejects"] == 1


def _anonymous_page(rows: list, cursor: str | None) -> SimResponse:
    return SimResponse.from_json(
        {"code": 200, "body": {"rows": rows, "pagination": {"nextCursor": cursor}}}
    )


@pytest.mark.parametrize(
    "bad", [None, {"publicId": "renamed", "outcome_option": "PTP"}], ids=["null", "renamed-id"]
)
def test_two_alike_rejects_without_public_id_on_two_pages_are_two_rejects(bad: object) -> None:
    sim = simulator([])
    sim.script(_anonymous_page([bad], "c1"), when=lambda r: r.kind == "data")
    sim.script(_anonymous_page([bad], None), when=lambda r: r.kind == "data")
    with client(sim) as reader:
        rejects = [r for page in reader.iter_window(DAY) for r in page.rejects]

    assert len(rejects) == 2 and rejects[0] == rejects[1]


NOT_UNICODE = "is not valid Unicode text (it holds a lone surrogate, or bytes that are not UTF-8)"


def _page_with_raw_json(rows: list[dict]) -> SimResponse:
    # The stdlib writes a lone surrogate as the escape JavaScript's JSON.stringify emits for a
    # string cut inside an emoji; orjson refuses such a document, Python's json reads it.
    body = json.dumps({"code": 200, "body": {"rows": rows, "pagination": {"nextCursor": None}}})
    assert "\\ud83d" in body
    return SimResponse(200, {"Content-Type": "application/json"}, body.encode())


def test_a_lone_surrogate_outside_the_allowlist_costs_nothing_and_inside_it_one_reject() -> None:
    good, cut, bad_id = row(1, T0), row(2, T0), row(3, T0)
    cut["outcome_option"] = "PTP \ud83d"
    bad_id["public_id"] = "id-\ud83d"
    rows = [{**good, "notes": "call back \ud83d"}, cut, bad_id]
    sim = simulator([])
    sim.script(_page_with_raw_json(rows), when=lambda r: r.kind == "data")
    with client(sim) as reader:
        pages = list(reader.iter_window(DAY))

    assert [r["public_id"] for p in pages for r in p.rows] == [good["public_id"]]
    rejects = [(r.public_id, r.reason) for p in pages for r in p.rejects]
    assert rejects == [
        (cut["public_id"], f"outcome_option {NOT_UNICODE}"),
        (None, f"public_id {NOT_UNICODE}"),
    ]


def test_an_integer_too_long_for_python_costs_one_row_in_the_allowlist_none_outside() -> None:
    kept, bad = row(1, T0), row(2, T0)
    body = json.dumps(
        {
            "body": {
                "rows": [{**kept, "trace": "HUGE"}, {**bad, "outcome_option": "HUGE"}],
                "pagination": {"nextCursor": None},
            }
        }
    )
    huge = "7" * 4301  # Python converts integers of up to 4,300 digits
    content = body.replace('"HUGE"', huge).encode()
    sim = simulator([])
    sim.script(
        SimResponse(200, {"Content-Type": "application/json"}, content),
        when=lambda r: r.kind == "data",
    )
    with client(sim) as reader:
        pages = list(reader.iter_window(DAY))

    assert [r["public_id"] for p in pages for r in p.rows] == [kept["public_id"]]
    rejects = [(r.public_id, r.reason) for p in pages for r in p.rejects]
    assert rejects == [(bad["public_id"], "outcome_option is OversizedInt, expected a string")]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_body_with_a_byte_order_mark_or_in_utf16_is_read(encoding: str) -> None:
    good = row(1, T0)
    body = json.dumps({"body": {"rows": [good, {**good, "public_id": ""}],
                                "pagination": {"nextCursor": None}}})  # fmt: skip
    sim = simulator([])
    sim.script(
        SimResponse(200, {"Content-Type": "application/json"}, body.encode(encoding)),
        when=lambda r: r.kind == "data",
    )
    with client(sim) as reader:
        pages = list(reader.iter_window(DAY))

    assert [r["public_id"] for p in pages for r in p.rows] == [good["public_id"]]


def test_a_cursor_that_is_not_utf8_is_a_clear_error() -> None:
    sim = paged(range(10))
    cursor = {"nextCursor": "c\u00c9"}
    page = json.dumps({"body": {"rows": [row(1, T0)], "pagination": cursor}}, ensure_ascii=False)
    content = page.encode().replace("\u00c9".encode(), b"\xc9")  # É in Latin-1
    sim.script(SimResponse(200, {"Content-Type": "application/json"}, content), times=99)
    with client(sim) as reader, pytest.raises(ProtocolError, match="nextCursor is not valid UTF-8"):
        walk_ids(reader)


def test_a_page_naming_its_cursor_twice_is_a_clear_error_not_the_end_of_the_data() -> None:
    # json keeps the last value: null, which would end the walk with rows still to come.
    sim = paged(range(10))
    page = '{"body": {"rows": [], "pagination": {"nextCursor": "abc", "nextCursor": null}}}'
    sim.script(SimResponse(200, {"Content-Type": "application/json"}, page.encode()), times=99)
    named = "body.pagination names 'nextCursor' more than once"
    with client(sim) as reader, pytest.raises(ProtocolError, match=named):
        walk_ids(reader)


def test_a_page_naming_its_body_twice_is_a_clear_error_not_the_last_bodys_rows() -> None:
    # json keeps the last body: the first one's rows, a bad one among them, went unseen.
    sim = paged(range(10))
    first = json.dumps({"rows": [row(1, T0), {**row(2, T0), "is_active": "yes"}],
                        "pagination": {"nextCursor": "abc"}})  # fmt: skip
    last = json.dumps({"rows": [row(3, T0)], "pagination": {"nextCursor": None}})
    page = f'{{"code": 200, "body": {first}, "body": {last}}}'
    sim.script(SimResponse(200, {"Content-Type": "application/json"}, page.encode()), times=99)
    with client(sim) as reader, pytest.raises(ProtocolError) as caught:
        walk_ids(reader)
    assert "the answer names 'body' more than once" in str(caught.value)


@pytest.mark.parametrize(("key", "again"), [("total", "3"), ("totalExact", "false")])
def test_a_count_naming_its_total_twice_is_a_clear_error_not_its_last_value(
    key: str, again: str
) -> None:
    sim = paged(range(7))
    pagination = '"nextCursor": null, "total": 7, "totalExact": true, ' + f'"{key}": {again}'
    count = '{"body": {"rows": [], "pagination": {' + pagination + "}}}"
    sim.script(
        SimResponse(200, {"Content-Type": "application/json"}, count.encode()),
        times=99,
        when=lambda r: r.kind == "count",
    )
    named = f"body.pagination names '{key}' more than once"
    with client(sim) as reader, pytest.raises(ProtocolError, match=named):
        reader.fetch_total(DAY)


def test_a_count_naming_another_key_twice_is_read() -> None:
    sim = paged(range(7))
    count = (
        '{"code": 200, "message": "a", "message": "b", "body": {"rows": [], "rows": [], '
        '"pagination": {"nextCursor": "x", "nextCursor": null, "total": 7, "totalExact": true}}}'
    )
    sim.script(
        SimResponse(200, {"Content-Type": "application/json"}, count.encode()),
        times=99,
        when=lambda r: r.kind == "count",
    )
    with client(sim) as reader:
        assert reader.fetch_total(DAY).exact_total == 7


def _read_rows_as_served(rows: list[str]) -> list[Page]:
    """The pages a walk reads from one last page holding ``rows``, JSON text as given."""
    body = '{"body": {"rows": [' + ", ".join(rows) + '], "pagination": {"nextCursor": null}}}'
    sim = simulator([])
    sim.script(
        SimResponse(200, {"Content-Type": "application/json"}, body.encode()),
        when=lambda r: r.kind == "data",
    )
    with client(sim) as reader:
        return list(reader.iter_window(DAY))


def test_a_row_naming_a_key_twice_is_quarantined_not_read_as_its_last_value() -> None:
    good, twice, two_ids = row(1, T0), row(2, T0), row(3, T0)
    # JSON parsers keep a repeated key's last value; which one the API meant is unknown.
    pages = _read_rows_as_served(
        [
            json.dumps(good),
            json.dumps(twice)[:-1] + ', "is_ptp_broken": true}',
            json.dumps(two_ids)[:-1] + ', "public_id": "someone-else"}',
        ]
    )

    assert [r["public_id"] for p in pages for r in p.rows] == [good["public_id"]]
    assert [(r.public_id, r.reason) for p in pages for r in p.rejects] == [
        (twice["public_id"], "the row names is_ptp_broken more than once"),
        (None, "the row names public_id more than once"),
    ]


def test_a_key_named_twice_after_another_bad_row_is_still_quarantined() -> None:
    # Arrow's reader stops at the page's first problem, the wrong type, before it meets the
    # repeated key: the row-by-row decoder must look for repeated keys on every page.
    wrong_type, twice = row(1, T0) | {"outcome_option": 7}, row(2, T0)
    pages = _read_rows_as_served(
        [json.dumps(wrong_type), json.dumps(twice)[:-1] + ', "outcome_option": "REFUSED"}']
    )

    assert [r for p in pages for r in p.rows] == []
    assert [(r.public_id, r.reason) for p in pages for r in p.rejects][1] == (
        twice["public_id"],
        "the row names outcome_option more than once",
    )


def test_a_key_outside_the_contract_named_twice_is_dropped_and_its_row_kept() -> None:
    # Its value is never stored, so which one the API meant does not matter; a name that is no
    # text (a cut emoji) must not reach a reason either, which the rejects' Parquet cannot hold.
    kept = row(1, T0)
    pages = _read_rows_as_served(
        [json.dumps(kept)[:-1] + ', "notes": "a", "notes": "b", "n\\ud83d": 1, "n\\ud83d": 2}']
    )

    assert [r["public_id"] for p in pages for r in p.rows] == [kept["public_id"]]
    assert [r for p in pages for r in p.rejects] == []


def test_a_page_whose_compressed_body_is_corrupt_is_retried() -> None:
    sim = simulator([row(1, T0)])
    corrupt = SimResponse(
        200,
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        b"\x1f\x8b\x08\x00not-deflate",
    )
    sim.script(corrupt, when=lambda r: r.kind == "data")
    with client(sim) as reader:
        ids = [r["public_id"] for page in reader.iter_window(DAY) for r in page.rows]

        assert ids == [row(1, T0)["public_id"]]
        assert reader.stats.as_dict()["retries"]["bad_body"] == 1


def test_a_page_nested_deeper_than_any_parser_reads_is_retried() -> None:
    sim = simulator([row(1, T0)])
    nested = SimResponse(200, {"Content-Type": "application/json"}, b"[" * 5000 + b"]" * 5000)
    sim.script(nested, when=lambda r: r.kind == "data")
    with client(sim) as reader:
        ids = [r["public_id"] for page in reader.iter_window(DAY) for r in page.rows]

        assert ids == [row(1, T0)["public_id"]]
        assert reader.stats.as_dict()["retries"]["bad_body"] == 1


def _page_body(rows: list[dict]) -> bytes:
    return orjson.dumps({"body": {"rows": rows, "pagination": {"nextCursor": None}}})


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_page_at_the_body_limit_is_read_and_one_byte_past_it_is_a_clear_error(
    encoding: str,
) -> None:
    body = _page_body([row(1, T0), row(2, T0)])
    sent = gzip.compress(body) if encoding == "gzip" else body
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    for limit, fits in [(len(body), True), (len(body) - 1, False)]:
        sim = simulator([])
        sim.script(SimResponse(200, headers, sent), times=99, when=lambda r: r.kind == "data")
        with client(sim, max_body_bytes=limit) as reader:
            if fits:
                assert walk_ids(reader) == [pid(1), pid(2)]
            else:
                with pytest.raises(ProtocolError) as caught:
                    walk_ids(reader)
                assert f"a body longer than {limit:,} bytes (decoded)" in str(caught.value)


def test_a_gzip_bomb_is_not_read_past_the_limit() -> None:
    sim = simulator([])
    sent: list[int] = []

    def bomb() -> Iterator[bytes]:
        """One gzip stream of 1 GiB, sent 1 MiB (decoded) at a time from ~1 KiB each."""
        packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        for n in range(1024):
            sent.append(n)
            yield packer.compress(b"[" * 2**20) + packer.flush(zlib.Z_SYNC_FLUSH)
        yield packer.flush()

    def handle(request: httpx.Request) -> httpx.Response:
        if "/exports/" not in request.url.path:
            return sim.transport().handle_request(request)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=bomb())

    reader = client(sim, transport=httpx.MockTransport(handle), max_body_bytes=4 * 2**20)
    with reader, pytest.raises(ProtocolError, match="a body longer than 4,194,304 bytes"):
        walk_ids(reader)
    attempts = reader.stats.as_dict()["retries"]["bad_body"] + 1
    assert len(sent) <= attempts * 5  # each attempt stops after the 5th decoded MiB


def test_an_error_answer_with_a_body_past_the_limit_keeps_its_meaning() -> None:
    sim = paged(range(4))
    huge = SimResponse.error(403, "status 403", "req-403")
    sim.script(dataclasses.replace(huge, body=huge.body + b" " * 2**20), times=99)
    with client(sim, max_body_bytes=2**16) as reader, pytest.raises(LenderMismatchError):
        walk_ids(reader)
    assert len(queries(sim)) == 1


def test_a_number_past_a_double_or_nan_costs_its_row_and_is_stored_as_json() -> None:
    big, nan, kept = row(1, T0), row(2, T0), row(3, T0)
    body = json.dumps(
        {
            "body": {
                "rows": [{**big, "outcome_option": "BIG"}, {**nan, "is_active": "NAN"}, kept],
                "pagination": {"nextCursor": None},
            }
        }
    )
    content = body.replace('"BIG"', "1e400").replace('"NAN"', "NaN").encode()
    sim = simulator([])
    sim.script(
        SimResponse(200, {"Content-Type": "application/json"}, content),
        when=lambda r: r.kind == "data",
    )
    with client(sim) as reader:
        pages = list(reader.iter_window(DAY))

    assert [r["public_id"] for p in pages for r in p.rows] == [kept["public_id"]]
    rejects = {r.public_id: r for p in pages for r in p.rejects}
    assert rejects[big["public_id"]].reason == (
        "outcome_option is a number beyond a double (inf), expected a string"
    )
    assert rejects[nan["public_id"]].reason == "is_active is NaN, expected a boolean"
    # What d23.rejected_rows stores must stay JSON (NaN and Infinity are not).
    stored = {k: json.dumps(r.values, allow_nan=False) for k, r in rejects.items()}
    assert json.loads(stored[big["public_id"]])["outcome_option"] == (
        "<a number beyond a double (inf)>"
    )


def test_a_retry_after_of_one_second_is_pacing_not_a_failed_attempt() -> None:
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "1"}), times=5)  # more than max_attempts (4)
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)


def test_no_retries_means_none_even_for_a_paced_429() -> None:
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "2"}))
    with (
        client(sim, retry=RetryPolicy(max_attempts=1)) as reader,
        pytest.raises(RetriesExhaustedError),
    ):
        walk_ids(reader)


def test_a_login_answered_429_waits_its_retry_after_before_logging_in_again() -> None:
    sim = paged(range(4))
    sim.script(error(429, **{"Retry-After": "5"}), auth=True)
    slept: list[tuple[float, int]] = []  # each pause, with the logins answered before it

    def pause(seconds: float) -> None:
        slept.append((seconds, sim.stats.by_kind["login"]))

    with client(sim, sleep=pause) as reader:
        assert walk_ids(reader) == ids_in(sim)
    ((seconds, logins),) = slept
    assert 5 <= seconds <= 5.5 and logins == 1  # the second login came after the pause


class _Chunks(httpx.SyncByteStream):
    """A body of ``count`` chunks of ``size`` bytes that records how many it sent and whether
    it was closed (its connection handed back)."""

    def __init__(self, size: int, count: int) -> None:
        self.size, self.count = size, count
        self.sent = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.count):
            self.sent += 1
            yield b"x" * self.size

    def close(self) -> None:
        self.closed = True


def test_a_gateways_403_without_the_apis_body_is_a_lender_mismatch_without_retry() -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(SimResponse.gateway_page(403), times=99)
    with client(sim) as reader, pytest.raises(LenderMismatchError):
        walk_ids(reader)
    assert len(queries(sim)) == 1


def test_an_unexpected_answer_names_the_export_path() -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(error(418))
    with client(sim) as reader, pytest.raises(ExportsApiError) as caught:
        walk_ids(reader)
    path = f"/admin/v3/lenders/{sim.lender_public_id}/exports/S4/D23"
    assert f"(path {path}, window {DAY}, HTTP 418" in str(caught.value)


def test_an_error_answers_body_is_cut_at_exactly_the_limit() -> None:
    body = _Chunks(size=64, count=4)
    http = BoundedHttp(
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(403, stream=body))),
        max_bytes=100,
    )
    try:
        answer = http.get(BASE_URL)
    finally:
        http.close()
    assert (answer.status_code, answer.content) == (403, b"x" * 100)


@pytest.mark.parametrize("status", [200, 403])
def test_an_answer_past_the_limit_is_read_no_further_and_its_connection_handed_back(
    status: int,
) -> None:
    sim = simulator([])
    bodies: list[_Chunks] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if "/exports/" not in request.url.path:
            return sim.transport().handle_request(request)
        bodies.append(_Chunks(size=2**10, count=1024))
        return httpx.Response(status, stream=bodies[-1])

    reader = client(sim, transport=httpx.MockTransport(handle), max_body_bytes=4 * 2**10)
    expected = ProtocolError if status == 200 else LenderMismatchError
    with reader, pytest.raises(expected):
        walk_ids(reader)
    assert bodies and all(b.sent == 5 and b.closed for b in bodies)


def test_the_final_page_limit_is_the_smallest_any_walk_used() -> None:
    offsets = [(n // 3) * (86_400_000 // 11) for n in range(30)]
    sim = simulator(rows_at(offsets), max_limit_for_504=100)
    with client(sim, page_limit=400, min_page_limit=50, min_window=timedelta(days=1)) as reader:
        assert walk_ids(reader) == ids_in(sim)
        sim.faults = dataclasses.replace(sim.faults, max_limit_for_504=200)
        assert walk_ids(reader) == ids_in(sim)
        stats = reader.stats.as_dict()
    assert (stats["limit_reductions"], stats["final_page_limit"]) == (3, 100)
    assert [p["limit"] for p in queries(sim)][-2:] == ["400", "200"]
