"""Cursor walks: exact row sets, request shape, row validation, totals, stats."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from api import (
    DAY,
    T0,
    client,
    count_answer,
    counts_of,
    ids_in,
    pid,
    queries,
    row,
    rows_at,
    simulator,
    walk_ids,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d23_pipeline.client import (
    CursorLoopError,
    ProtocolError,
    SliceDone,
    SlicePage,
    SliceRestart,
    Window,
    WindowTotal,
    walk,
)
from d23_pipeline.client.pages import read_total
from d23_pipeline.client.stats import (
    FURTHER_NAMES,
    WITHHELD_CREDENTIAL,
    WITHHELD_NAME,
    ClientStats,
)
from d23_pipeline.credentials import HeldCredentials
from d23_pipeline.schema import D23_FIELDS
from d23_pipeline.simulator import SimResponse


def cycle(*sizes: int) -> Any:
    sizes_iter = itertools.cycle(sizes)
    return lambda limit: next(sizes_iter)


def test_walk_returns_exact_rows_through_ties_short_and_empty_pages() -> None:
    sim = simulator(
        rows_at([0, 0, 0, 0, 1, 1, 7, 7, 7, 9, 50, 50]), page_size=cycle(3, 0, 1, 0, 0, 5)
    )
    with client(sim, page_limit=100, min_page_limit=10) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.empty_pages >= 3
        assert reader.stats.rows == 12


def test_empty_page_with_a_cursor_is_not_the_end() -> None:
    sim = simulator(rows_at([1, 2]), page_size=cycle(0, 0, 0, 1))
    with client(sim) as reader:
        pages = list(reader.iter_window(DAY))
    # Eight pages asked, six of them empty: a page that served nothing is no event.
    assert (reader.stats.pages, reader.stats.empty_pages) == (8, 6)
    assert [len(p.rows) for p in pages] == [1, 1]
    assert all(page.slice == DAY for page in pages)


def test_every_page_resends_window_limit_and_sort_with_the_new_cursor() -> None:
    sim = simulator(rows_at(range(10)), page_size=cycle(4))
    with client(sim, page_limit=4, min_page_limit=1) as reader:
        walk_ids(reader)
    params = queries(sim)
    assert len(params) == 3
    assert "cursor" not in params[0]
    for page in params:
        assert {k: page[k] for k in ("since", "until", "limit", "sort")} == {
            "since": "2026-05-01T00:00:00.000Z",
            "until": "2026-05-02T00:00:00.000Z",
            "limit": "4",
            "sort": "asc",
        }
    assert params[1]["cursor"] != params[2]["cursor"]


def test_window_bounds_are_always_sent_in_canonical_utc_form() -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    window = Window(T0.astimezone(plus_five), (T0 + timedelta(hours=1, microseconds=1)))
    sim = simulator([])
    with client(sim) as reader:
        list(reader.iter_window(window))
    assert queries(sim)[0]["since"] == "2026-05-01T00:00:00.000Z"
    assert queries(sim)[0]["until"] == "2026-05-01T01:00:00.001Z"


def test_repeated_next_cursor_fails_loudly_instead_of_looping() -> None:
    sim = simulator(rows_at(range(5)))
    page = {"rows": [row(99, T0)], "pagination": {"nextCursor": "same-cursor"}}
    sim.script(SimResponse.from_json({"body": page}), times=10)
    with client(sim) as reader, pytest.raises(CursorLoopError, match="already seen"):
        walk_ids(reader)


# The walk's own tests take the bound itself; over HTTP a lower one keeps these quick.
_IN_PLACE = 50


def test_ever_new_cursors_on_empty_pages_fail_loudly_instead_of_looping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(walk, "MAX_PAGES_IN_PLACE", _IN_PLACE)
    # No page reaches a row, until one far past the bound does (so a walk without it ends).
    pages = itertools.count(1)
    sim = simulator(
        rows_at(range(5)), page_size=lambda limit: 0 if next(pages) < 10 * _IN_PLACE else limit
    )
    with (
        client(sim) as reader,
        pytest.raises(CursorLoopError, match=f"{_IN_PLACE} pages in a row") as caught,
    ):
        walk_ids(reader)
    assert "empty pages" in str(caught.value)
    assert len(queries(sim)) == _IN_PLACE


def test_a_stretch_of_empty_pages_just_short_of_the_bound_is_read_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(walk, "MAX_PAGES_IN_PLACE", _IN_PLACE)
    scans = itertools.chain([0] * (_IN_PLACE - 1), itertools.repeat(2))
    sim = simulator(rows_at(range(5)), page_size=lambda limit: next(scans))
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)


def test_missing_next_cursor_is_a_protocol_error_not_the_end() -> None:
    sim = simulator(rows_at(range(5)))
    body = {"body": {"rows": [row(1, T0)], "pagination": {}}}
    sim.script(SimResponse.from_json(body), times=10)
    with client(sim) as reader, pytest.raises(ProtocolError, match="nextCursor"):
        walk_ids(reader)


def test_an_empty_next_cursor_is_a_broken_page_not_a_cursor() -> None:
    sim = simulator(rows_at(range(5)), page_size=lambda limit: 2)
    broken = {"rows": rows_at(range(2)), "pagination": {"nextCursor": ""}}
    sim.script(SimResponse.from_json({"body": broken}))
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)  # read again, not walked on with cursor=""
        assert reader.stats.retries["bad_body"] == 1


def test_each_bad_row_kind_is_rejected_with_its_reason_and_no_pii() -> None:
    bad = [
        row(1, T0, public_id=None),
        row(2, T0, communicated_at="yesterday"),
        row(3, T0, is_active="yes"),
        row(4, T0 - timedelta(days=1)),
        {k: v for k, v in row(5, T0).items() if k != "outcome_option"},
        "not an object",
    ]
    leaky = row(6, T0, notes="call me on +971500000000", phone="+971500000000")
    sim = simulator([])
    page = {"rows": [*bad, leaky, row(7, T0)], "pagination": {"nextCursor": None}}
    sim.script(SimResponse.from_json({"body": page}))
    with client(sim) as reader:
        (result,) = list(reader.iter_window(DAY))
        stats = reader.stats.as_dict()
    assert [r["public_id"] for r in result.rows] == [pid(6), pid(7)]
    assert all(tuple(r) == D23_FIELDS for r in result.rows)
    reasons = [reject.reason for reject in result.rejects]
    assert reasons[0] == "public_id is NoneType, expected a non-empty string"
    assert reasons[1].startswith("communicated_at is not an ISO-8601 timestamp")
    assert reasons[2] == "is_active is str, expected a boolean"
    assert "outside the requested window" in reasons[3]
    assert reasons[4] == "missing field outcome_option"
    assert reasons[5] == "row is str, expected an object"
    assert [r.public_id for r in result.rejects] == [None, pid(2), pid(3), pid(4), pid(5), None]
    assert "+971" not in repr(result) and "+971" not in repr(stats)
    assert stats["extra_fields"] == {"notes": 1, "phone": 1}
    assert (stats["rows"], stats["rejects"]) == (2, 6)


def test_a_field_the_api_adds_to_every_row_is_reported_and_not_kept() -> None:
    # An API that adds a field adds it to every row: the columnar fast path must not take it.
    rows = [row(n, T0 + timedelta(milliseconds=n), phone="+971500000000") for n in range(3)]
    sim = simulator([])
    sim.script(SimResponse.from_json({"body": {"rows": rows, "pagination": {"nextCursor": "x"}}}))
    with client(sim) as reader:
        first = next(reader.iter_window(DAY))
        stats = reader.stats.as_dict()
    assert first.batch.schema.names == list(D23_FIELDS)
    assert all(tuple(r) == D23_FIELDS for r in first.rows)
    assert stats["extra_fields"] == {"phone": 1}


def test_a_page_of_only_rejected_rows_is_not_counted_as_empty() -> None:
    bad = [row(n, T0 + timedelta(milliseconds=n), is_active="yes") for n in range(2)]
    sim = simulator([])
    sim.script(SimResponse.from_json({"body": {"rows": bad, "pagination": {"nextCursor": None}}}))
    with client(sim) as reader:
        list(reader.iter_window(DAY))
        stats = reader.stats.as_dict()
    assert (stats["pages"], stats["empty_pages"], stats["rejects"]) == (1, 0, 2)


def test_extra_field_names_are_reported_only_when_shaped_like_a_name_and_only_the_first_20() -> (
    None
):
    # A name is stored in the run's metadata and the snapshot's manifest: one that is data (a
    # number, a note) must not be, nor any number of per-row names.
    stats = ClientStats(page_limit=500)
    stats.page(2, 2, 0, {"notes", "call back on +971500000000", "x" * 100_000})
    stats.page(2, 2, 0, {f"field_{n:02d}" for n in range(25)})
    stats.page(2, 2, 0, {"notes", "field_30"})

    reported = stats.as_dict()["extra_fields"]
    assert reported[WITHHELD_NAME] == 1 and reported[FURTHER_NAMES] == 2
    listed = sorted(set(reported) - {WITHHELD_NAME, FURTHER_NAMES})
    assert listed == [*(f"field_{n:02d}" for n in range(19)), "notes"]
    assert reported["notes"] == 2
    assert "+971" not in repr(reported) and "xxxx" not in repr(reported)


def test_fetch_total_reads_total_exactness_and_note() -> None:
    sim = simulator(rows_at(range(7)))
    with client(sim) as reader:
        assert reader.fetch_total(DAY) == WindowTotal(7, True, None)
    assert queries(sim)[0]["includeTotal"] == "true"


def test_a_date_header_in_the_unknown_zone_form_is_read_as_utc() -> None:
    # RFC 5322's "-0000" parses to a naive datetime; compared with an aware one it raised.
    body = {"rows": [], "pagination": {"nextCursor": None, "total": 5, "totalExact": True}}
    response = httpx.Response(
        200,
        headers={"date": "Wed, 02 Dec 2026 10:00:00 -0000", "content-type": "application/json"},
        content=orjson.dumps({"body": body}),
        request=httpx.Request("GET", "https://api.test/"),
    )
    assert read_total(response).counted_at == datetime(2026, 12, 2, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    "pagination",
    [
        {"total": 100000, "totalExact": False, "totalNote": "capped"},
        {"total": None, "totalNote": "timeout"},
    ],
)
def test_a_count_that_is_not_exact_is_split_until_its_parts_are(
    pagination: dict[str, Any],
) -> None:
    sim = simulator(rows_at([0, 1, 2, 43_200_000, 43_200_001]))  # 3 in the morning, 2 after noon
    sim.script(SimResponse.from_json({"body": {"rows": [], "pagination": pagination}}))
    with client(sim) as reader:
        parts = reader.count_parts(DAY)

    assert [total for _, total in parts] == [WindowTotal(3, True, None), WindowTotal(2, True, None)]
    assert [window for window, _ in parts] == list(DAY.halves())
    assert reader.stats.count_splits == 1


def test_a_count_still_inexact_at_the_minimum_window_is_returned_as_answered() -> None:
    sim = simulator(rows_at(range(3)))
    capped = {"total": 100000, "totalExact": False, "totalNote": "capped"}
    sim.script(SimResponse.from_json({"body": {"rows": [], "pagination": capped}}), times=1000)
    with client(sim, min_window=timedelta(hours=6)) as reader:
        parts = reader.count_parts(DAY)
        total = reader.fetch_total(DAY)

    assert len(parts) == 4  # a day halved twice down to the 6-hour minimum
    assert all(total == WindowTotal(100000, False, "capped") for _, total in parts)
    assert (total.exact, total.note) == (False, "capped")


def test_stats_count_requests_pages_rows_and_limit() -> None:
    sim = simulator(rows_at(range(6)), page_size=cycle(2, 0))
    with client(sim, page_limit=2, min_page_limit=1) as reader:
        walk_ids(reader)
        stats = reader.stats.as_dict()
    assert stats["pages"] == 5 and stats["empty_pages"] == 2 and stats["rows"] == 6
    assert stats["requests"] == 5 + 1  # pages + login
    assert stats["final_page_limit"] == 2 and stats["retries"] == {}


@st.composite
def tied_rows_and_pages(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    gaps = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3600_000]), min_size=0, max_size=60))
    offsets = list(itertools.accumulate(gaps))
    sizes = draw(st.lists(st.integers(0, 7), min_size=1, max_size=12).filter(any))
    return offsets, sizes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tied_rows_and_pages(), st.integers(1, 8))
def test_any_page_size_and_tie_pattern_returns_each_row_once(
    case: tuple[list[int], list[int]], limit: int
) -> None:
    offsets, sizes = case
    sim = simulator(rows_at(offsets), page_size=cycle(*sizes))
    three_days = Window(T0, T0 + timedelta(days=3))
    with client(sim, page_limit=limit, min_page_limit=1) as reader:
        assert walk_ids(reader, three_days) == ids_in(sim, three_days)


def test_an_extra_field_named_by_a_credential_the_client_holds_is_not_reported() -> None:
    # An API keying a value by the password (or a token) would put it in the run's metadata.
    held = HeldCredentials()
    held.hold("ZqSECRETpw7781")
    stats = ClientStats(page_limit=500, credentials=held)
    stats.page(1, 1, 0, {"ZqSECRETpw7781", "x_ZqSECRET", "notes"})
    assert stats.as_dict()["extra_fields"] == {WITHHELD_CREDENTIAL: 1, "notes": 1}


def test_an_extra_field_name_of_64_characters_is_shown_and_one_of_65_is_withheld() -> None:
    stats = ClientStats(page_limit=500)
    stats.page(1, 1, 0, {"a" * 64, "b" * 65})
    assert stats.as_dict()["extra_fields"] == {"a" * 64: 1, WITHHELD_NAME: 1}


def test_a_first_read_whose_counts_moved_is_read_again_on_past_its_walks_ends() -> None:
    # Ten rows an hour apart, pages of 3. While the day is read a row is logged late at 04:30,
    # ahead of the walk, and the API ends the walk early after 08:00: 10 rows served between
    # counts of 10 and 11, yet the row at 09:00 was not handed over.
    late = row(10, T0 + timedelta(days=2))
    sim = simulator(
        [row(n, T0 + timedelta(hours=n)) for n in range(10)] + [late], page_size=cycle(3)
    )
    pages = itertools.count(1)
    serve = sim.handle

    def handle(method: str, path: str, query: Any, headers: Any, body: bytes) -> Any:
        page = next(pages) if "/exports/" in path and "includeTotal" not in query else None
        if page == 2:
            sim.move_row(late["public_id"], T0 + timedelta(hours=4.5))
        answer = serve(method, path, query, headers, body)
        if page == 4:  # r8's page: the API ends the walk there, r9 left
            payload = orjson.loads(answer.body)
            payload["body"]["pagination"]["nextCursor"] = None
            answer.body = orjson.dumps(payload)
        return answer

    sim.handle = handle  # type: ignore[method-assign]
    with client(sim, slice_size=timedelta(days=1)) as reader:
        events = list(reader.iter_slices(DAY))

    served = {r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows}
    (done,) = [e for e in events if isinstance(e, SliceDone)]
    assert served == set(ids_in(sim))
    assert sum(isinstance(e, SliceRestart) for e in events) == 1
    assert done.proof.verified and done.proof.reads == 2


def test_a_slice_read_again_is_walked_with_smaller_pages() -> None:
    sim = simulator(rows_at(range(0, 86_400_000, 3_600_000)))
    sim.script(count_answer(25), times=2, when=counts_of(DAY, 1, 2))  # 24 rows: read again
    with client(sim, slice_size=DAY.duration, page_limit=100, min_page_limit=50) as reader:
        events = list(reader.iter_slices(DAY))

    limits = [q["limit"] for q in queries(sim) if "includeTotal" not in q]
    # The second read is a different walk (and reads on past its ends): pages of 75, not 100.
    assert limits[0] == "100" and set(limits[1:]) == {"75"}
    assert sum(isinstance(e, SliceRestart) for e in events) == 1


def test_a_slice_read_again_asks_smaller_pages_than_a_page_limit_learned_from_504s() -> None:
    sim = simulator(rows_at(range(0, 86_400_000, 3_600_000)))
    sim.script(count_answer(25), times=2, when=counts_of(DAY, 1, 2))  # 24 rows: read again
    with client(sim, slice_size=DAY.duration, page_limit=500, learned_page_limit=100) as reader:
        list(reader.iter_slices(DAY))

    limits = [q["limit"] for q in queries(sim) if "includeTotal" not in q]
    assert limits[0] == "100" and set(limits[1:]) == {"75"}  # not 375, learned down to 100
