"""Every fault ends in the exact rows or a clear error: retries, bad bodies, 403/404, 504s."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_client_fakeapi import (
    DAY,
    LENDER_ID,
    T0,
    FakeApi,
    error,
    html,
    ids_in,
    raises,
    rows_at,
    walk_ids,
)

from d23_pipeline.client import (
    DatasetNotFoundError,
    ExportsApiError,
    LenderMismatchError,
    ProtocolError,
    RetriesExhaustedError,
    RetryPolicy,
    Window,
    WindowTooHeavyError,
)
from d23_pipeline.schema import parse_timestamp


def paged(offsets: list[int] | range, size: int = 3) -> FakeApi:
    return FakeApi(rows_at(offsets), page_size=lambda limit: size)


def has_cursor(request: httpx.Request) -> bool:
    return "cursor" in request.url.params


def spread(count: int) -> list[int]:
    """Offsets spread over the day, in groups of three ties."""
    return [(n // 3) * (86_400_000 // (count // 3 + 1)) for n in range(count)]


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_statuses_mid_walk_are_retried_to_the_exact_rows(status: int) -> None:
    api = paged(range(10))
    api.inject(error(status), times=2, when=has_cursor)
    with api.client() as client:
        assert walk_ids(client) == ids_in(api)
        assert client.stats.as_dict()["retries"] == {str(status): 2}


def test_retry_after_seconds_is_honoured() -> None:
    slept: list[float] = []
    api = paged(range(4))
    api.inject(error(429, **{"Retry-After": "7"}))
    api.inject(error(503, **{"Retry-After": "2"}))
    with api.client(sleep=slept.append) as client:
        assert walk_ids(client) == ids_in(api)
    assert slept == [7.0, 2.0]


def test_retry_after_http_date_is_honoured() -> None:
    slept: list[float] = []
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    api = paged(range(4))
    api.inject(error(503, **{"Retry-After": when}))
    with api.client(sleep=slept.append) as client:
        assert walk_ids(client) == ids_in(api)
    assert len(slept) == 1 and 25 < slept[0] <= 30


def test_backoff_without_retry_after_stays_within_policy() -> None:
    slept: list[float] = []
    api = paged(range(4))
    api.inject(error(500), times=3)
    policy = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=3.0)
    with api.client(sleep=slept.append, retry=policy) as client:
        walk_ids(client)
    assert len(slept) == 3 and all(0 <= s <= cap for s, cap in zip(slept, [1, 2, 3], strict=True))


def test_timeouts_and_dropped_connections_are_retried_to_the_exact_rows() -> None:
    api = paged(range(10))
    api.inject(raises(httpx.ReadTimeout), when=has_cursor)
    api.inject(raises(httpx.RemoteProtocolError), when=has_cursor)
    api.inject(raises(httpx.ConnectError))
    with api.client() as client:
        assert walk_ids(client) == ids_in(api)
        assert client.stats.as_dict()["retries"] == {"timeout": 1, "connection": 2}


def test_html_truncated_and_rowless_bodies_are_retried() -> None:
    api = paged(range(10))
    api.inject(lambda r: httpx.Response(200, content=b"<html>oops</html>"), when=has_cursor)
    api.inject(lambda r: httpx.Response(200, content=b'{"body": {"rows": [{"pub'))
    api.inject(lambda r: httpx.Response(200, json={"body": {"pagination": {"nextCursor": None}}}))
    with api.client() as client:
        assert walk_ids(client) == ids_in(api)
        assert client.stats.as_dict()["retries"] == {"bad_body": 3}


def test_a_body_that_stays_invalid_is_a_protocol_error_with_the_request_id() -> None:
    api = paged(range(10))
    api.inject(
        lambda r: httpx.Response(200, content=b"<html/>", headers={"x-request-id": "req-html"}),
        times=99,
    )
    with api.client() as client, pytest.raises(ProtocolError) as caught:
        walk_ids(client)
    assert caught.value.request_id == "req-html" and "req-html" in str(caught.value)
    assert "not valid JSON" in str(caught.value)


def test_a_persistent_500_exhausts_retries_naming_request_id_and_window() -> None:
    api = paged(range(10))
    api.inject(error(500, "req-500"), times=99, when=has_cursor)
    with api.client() as client, pytest.raises(RetriesExhaustedError) as caught:
        walk_ids(client)
    message = str(caught.value)
    assert "req-500" in message and "HTTP 500" in message and str(DAY) in message
    assert caught.value.window == DAY
    assert len(api.data_params) == 1 + 4  # first page, then max_attempts tries of the second


def test_a_retry_after_beyond_the_wait_budget_fails_at_once() -> None:
    slept: list[float] = []
    api = paged(range(4))
    api.inject(error(429, **{"Retry-After": "600"}))
    with (
        api.client(sleep=slept.append, retry=RetryPolicy(max_total_wait_s=60)) as client,
        pytest.raises(RetriesExhaustedError, match="retry budget"),
    ):
        walk_ids(client)
    assert slept == []


def test_403_is_a_lender_mismatch_without_retry() -> None:
    api = paged(range(4))
    api.inject(error(403, "req-403"), times=99)
    with api.client() as client, pytest.raises(LenderMismatchError) as caught:
        walk_ids(client)
    assert LENDER_ID in str(caught.value) and "req-403" in str(caught.value)
    assert len(api.data_params) == 1


def test_404_names_the_dataset_without_retry() -> None:
    api = paged(range(4))
    with api.client(dataset="D24") as client, pytest.raises(DatasetNotFoundError) as caught:
        walk_ids(client)
    assert "S4/D24" in str(caught.value) and "not enabled" in str(caught.value)
    assert len(api.data_params) == 1


def test_an_unexpected_status_is_an_error_not_an_empty_result() -> None:
    api = paged(range(4))
    api.inject(error(418))
    with api.client() as client, pytest.raises(ExportsApiError, match="HTTP 418"):
        walk_ids(client)


def test_a_504_on_a_wide_window_reads_the_rest_in_halves_without_a_pause() -> None:
    api = paged(range(10))
    api.inject(html(504), when=has_cursor)
    pauses: list[float] = []
    with api.client(sleep=pauses.append) as client:
        assert walk_ids(client) == ids_in(api)
        stats = client.stats.as_dict()
    assert (stats["retries"], stats["window_splits"], stats["limit_reductions"]) == (
        {"504": 1},
        1,
        0,
    )
    assert pauses == []
    resumed = api.data_params[2]
    assert "cursor" not in resumed and resumed["until"] < api.data_params[1]["until"]


def test_a_single_504_at_the_narrowest_window_is_retried_as_is() -> None:
    api = paged(range(10))
    api.inject(html(504), when=has_cursor)
    with api.client(min_window=timedelta(days=1)) as client:
        assert walk_ids(client) == ids_in(api)
        stats = client.stats.as_dict()
    assert stats["retries"] == {"504": 1} and stats["limit_reductions"] == 0
    assert api.data_params[1] == api.data_params[2]


def test_repeated_504_at_the_narrowest_window_lowers_the_page_limit() -> None:
    api = FakeApi(rows_at(spread(30)))
    api.heavy = lambda since, until, limit: limit > 100
    with api.client(page_limit=400, min_page_limit=50, min_window=timedelta(days=1)) as client:
        assert walk_ids(client) == ids_in(api)
        stats = client.stats.as_dict()
    assert (stats["limit_reductions"], stats["final_page_limit"], stats["window_splits"]) == (
        2,
        100,
        0,
    )
    assert [p["limit"] for p in api.data_params] == ["400", "400", "200", "100"]


def test_504s_on_wide_windows_narrow_them_and_later_parts_start_at_the_learned_width() -> None:
    api = FakeApi(rows_at(spread(60)), page_size=lambda limit: 4)
    six_hours = timedelta(hours=6)
    api.heavy = lambda since, until, limit: (
        parse_timestamp(until) - parse_timestamp(since) > six_hours
    )
    with api.client(page_limit=100, min_page_limit=50) as client:
        assert walk_ids(client) == ids_in(api)
        stats = client.stats.as_dict()
    # 24 h fails, 12 h fails (twice at 12 h or more: 6 h is learned), the second 12 h half
    # starts at 6 h without failing; the page limit never drops.
    assert stats["window_splits"] == 2 and stats["final_page_limit"] == 100
    assert client.max_window == six_hours
    windows = {(p["since"], p["until"]) for p in api.data_params}
    read = sorted(w for w in windows if not api.heavy(*w, 50))
    assert [w[0][11:13] for w in read] == ["00", "06", "12", "18"]  # four 6-hour quarters


def test_mid_walk_504_rereads_only_the_rest_without_duplicates_or_gaps() -> None:
    # Pages of 3 cut through runs of 5 tied rows, so the re-read starts inside a tie.
    offsets = [t for t in (0, 10, 20, 30) for _ in range(5)]
    api = paged(offsets, size=3)
    api.inject(
        html(504), times=2, when=lambda r: r.url.params.get("cursor") and len(api.data_params) > 2
    )
    with api.client(page_limit=8, min_page_limit=4) as client:
        assert walk_ids(client) == ids_in(api)
    # Requests 0-1 delivered 6 rows (5 at 0.000, 1 at 0.010); 2 was a 504, so 3 reads what was
    # left in narrower parts, starting at the last instant read, without a cursor.
    resumed = api.data_params[3]
    assert "cursor" not in resumed and resumed["limit"] == "8"
    assert resumed["since"] == "2026-05-01T00:00:00.010Z"


def test_mid_walk_504s_that_force_splits_still_give_each_row_once() -> None:
    api = FakeApi(rows_at(spread(90)), page_size=lambda limit: 5)
    hour = timedelta(hours=1)
    api.inject(
        html(504),
        times=10_000,
        when=lambda r: (
            has_cursor(r)
            and parse_timestamp(r.url.params["until"]) - parse_timestamp(r.url.params["since"])
            > hour
        ),
    )
    with api.client(page_limit=20, min_page_limit=5, min_window=timedelta(minutes=15)) as client:
        assert walk_ids(client) == ids_in(api)
        assert client.stats.window_splits > 0


def test_504_that_persists_at_the_floor_names_the_window() -> None:
    api = paged(range(10))
    api.heavy = lambda since, until, limit: True
    with (
        api.client(page_limit=100, min_page_limit=50, min_window=timedelta(hours=6)) as client,
        pytest.raises(WindowTooHeavyError) as caught,
    ):
        walk_ids(client)
    window = caught.value.window
    assert window is not None and window.duration == timedelta(hours=6)
    assert str(window) in str(caught.value) and "504" in str(caught.value)


def windowed(items: list[bool], size: int) -> list[list[bool]]:
    return [items[i : i + size] for i in range(len(items) - size + 1)]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from([0, 0, 1, 5]), max_size=40),
    # Five 504s in a row at the narrowest window end the walk by design (see
    # test_at_the_narrowest_window_a_timeout_retries_then_lowers_the_limit_then_fails).
    st.lists(st.booleans(), max_size=25).filter(lambda o: [True] * 5 not in windowed(o, 5)),
    st.integers(1, 6),
)
def test_random_504s_never_duplicate_or_skip_rows(
    gaps: list[int], outages: list[bool], size: int
) -> None:
    api = FakeApi(rows_at(itertools.accumulate(gaps)), page_size=lambda limit: size)
    script = iter(outages)
    api.inject(html(504), times=10_000, when=lambda request: next(script, False))
    window = Window(T0, T0 + timedelta(seconds=1))
    with api.client(page_limit=8, min_page_limit=1, min_window=timedelta(milliseconds=1)) as client:
        assert walk_ids(client, window) == ids_in(api, window)


def test_a_reject_without_public_id_is_handed_over_once_across_a_mid_walk_504() -> None:
    # The reject shares the instant of the last valid row of the first page, so the re-read
    # after the 504 starts at that instant and meets the reject again.
    rows = rows_at([0, 0, 0, 10, 10, 20])
    rows[3]["public_id"] = ""
    api = FakeApi(rows, page_size=lambda limit: 5)
    api.inject(
        html(504), times=2, when=lambda r: r.url.params.get("cursor") and len(api.data_params) > 1
    )
    with api.client(page_limit=8, min_page_limit=4) as client:
        pages = list(client.iter_window(DAY))

    assert [r.public_id for p in pages for r in p.rejects] == [None]
    assert sorted(row["public_id"] for p in pages for row in p.rows) == [
        "r000000", "r000001", "r000002", "r000004", "r000005"
    ]  # fmt: skip
    assert client.stats.as_dict()["rejects"] == 1
