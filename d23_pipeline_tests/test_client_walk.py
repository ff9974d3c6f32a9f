"""The walk over one window as a state machine, driven by an in-memory source: no HTTP at all."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from api import DAY, T0, pid, row, rows_at
from hypothesis import example, given, settings
from hypothesis import strategies as st

from d23_pipeline.client import CursorLoopError, Window, WindowTooHeavyError
from d23_pipeline.client.walk import (
    MAX_PAGES_IN_PLACE,
    PageRequest,
    ReadOn,
    WidthHint,
    WindowWalk,
)
from d23_pipeline.schema import RejectedRow, format_timestamp
from d23_pipeline.schema_arrow import rows_to_batch

MINUTE = timedelta(minutes=1)
MS = timedelta(milliseconds=1)
HOUR = timedelta(hours=1)


class Source:
    """Rows served in ``(communicated_at, public_id)`` order, in pages of the given sizes (an
    empty page stands for one that scanned only other tenants' rows). The cursor carries the
    last key served and, like the real one, moves on with every page. A page that reaches the
    end of an instant in ``ends`` ends the walk there, rows left or not (a parent batch's end)."""

    def __init__(
        self, rows: list[dict], page_sizes: itertools.cycle, ends: Collection[str] = ()
    ) -> None:
        self.rows = sorted(rows, key=lambda r: (r["communicated_at"], r["public_id"]))
        self.page_sizes = page_sizes
        self.pages = itertools.count()
        self.ends = frozenset(ends)

    def _ended(self, stamps: list[str], size: int) -> int | None:
        """How many of the window's items (communicated at ``stamps``) a page of ``size`` serves
        when it ends the walk early at an instant in :attr:`ends`."""
        for n, (at, following) in enumerate(itertools.pairwise(stamps[: size + 1]), 1):
            if at in self.ends and following != at:
                return n
        return None

    def page(self, request: PageRequest) -> tuple[list[dict], str | None]:
        since, until = request.part.since_text, request.part.until_text
        window = [r for r in self.rows if since <= r["communicated_at"] < until]
        if request.cursor is not None:
            at, public_id, _ = request.cursor.split("|")
            window = [r for r in window if (r["communicated_at"], r["public_id"]) > (at, public_id)]
        size = min(next(self.page_sizes), request.limit)
        if (ended := self._ended([r["communicated_at"] for r in window], size)) is not None:
            return window[:ended], None
        served, rest = window[:size], window[size:]
        if not rest:
            return served, None
        last = served[-1] if served else None
        boundary = (last["communicated_at"], last["public_id"]) if last else (since, "")
        if request.cursor is not None and last is None:
            boundary = tuple(request.cursor.split("|")[:2])
        return served, "|".join([*boundary, str(next(self.pages))])


def drive(walk: WindowWalk, source: Source, timeouts: itertools.cycle) -> list[str]:
    """Run the walk to its end; ``timeouts`` says which requests the gateway times out."""
    handed = []
    for _ in range(10_000):
        request = walk.next_request()
        if request is None:
            return handed
        if next(timeouts):
            walk.gateway_timeout()
            continue
        rows, cursor = source.page(request)
        batch, _ = walk.page_served(rows_to_batch(rows), [], cursor)
        handed += batch.column("public_id").to_pylist()
    raise AssertionError("the walk did not end")


def walk_of(
    window: Window,
    *,
    limit: int = 8,
    min_window: timedelta = MINUTE,
    hint=None,
    read_on: ReadOn | None = None,
):
    hint = hint or WidthHint(min_window)
    return WindowWalk(
        window, limit=limit, min_limit=1, min_window=min_window, hint=hint, read_on=read_on
    )


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0, 0, 1, 7, 3_600_000]), max_size=60),
    sizes=st.lists(st.integers(0, 8), min_size=1, max_size=10),
    timeouts=st.lists(st.booleans(), min_size=1, max_size=12),
)
def test_every_row_is_handed_over_once_whatever_the_pages_and_timeouts(
    gaps: list[int], sizes: list[int], timeouts: list[bool]
) -> None:
    rows = rows_at(itertools.accumulate(gaps))
    if not any(sizes):
        sizes = [*sizes, 1]  # a source that never serves a row would never end a walk
    # Each timeout is followed by a served page, so the walk never runs out of narrowing.
    script = itertools.cycle([t for timeout in timeouts for t in (timeout, False)])
    handed = drive(walk_of(DAY), Source(rows, itertools.cycle(sizes)), script)

    assert Counter(handed) == Counter(r["public_id"] for r in rows)


def test_a_read_again_walks_on_past_an_end_the_api_puts_at_one_point_in_its_data() -> None:
    rows = rows_at([0, 10, 10, 20, 30])
    # Every walk that reaches the end of 00:00:00.010 ends there, whatever its page size.
    ends = {rows[2]["communicated_at"]}
    first = drive(walk_of(DAY), Source(rows, itertools.cycle([2]), ends), itertools.repeat(False))
    assert first == [pid(0), pid(1), pid(2)]

    again = walk_of(DAY, read_on=ReadOn(DAY.until, len(rows), DAY.until))
    handed = drive(again, Source(rows, itertools.cycle([2]), ends), itertools.repeat(False))

    assert handed == [r["public_id"] for r in rows]


def read_while_logged(
    walk: WindowWalk, source: Source, logged_at: Callable[[int], datetime]
) -> tuple[list[str], int]:
    """Run the walk while the tenant logs a row at ``logged_at(n)`` with its n-th page: the ids
    handed over, and the requests made (at most 1,000)."""
    handed: list[str] = []
    requests = 0
    while (request := walk.next_request()) is not None and requests < 1_000:
        requests += 1
        served, cursor = source.page(request)
        source.rows.append(row(100 + requests, logged_at(requests)))
        batch, _ = walk.page_served(rows_to_batch(served), [], cursor)
        handed += batch.column("public_id").to_pylist()
    return handed, requests


def test_rows_logged_while_a_window_is_read_again_do_not_keep_it_reading_on() -> None:
    rows = rows_at([0, 10, 20])
    # Every walk ends after 00:00:00.010; the read began at 00:00:00.500.
    source = Source(rows, itertools.cycle([2]), {rows[1]["communicated_at"]})
    walk = walk_of(DAY, read_on=ReadOn(T0 + 500 * MS, len(rows), T0 + 500 * MS))
    # The tenant logs a row "now", after every row served so far, with every page.
    handed, requests = read_while_logged(walk, source, lambda n: T0 + timedelta(seconds=n))

    # It reads on past the end at 00:00:00.010 (its instant, then the rest: two pages, ending
    # at a row logged since the read began), and stops there.
    assert requests == 4
    assert handed[:3] == [pid(0), pid(1), pid(2)]


def test_rows_logged_behind_the_edge_keep_a_read_again_reading_on_only_once_per_row_counted():
    # Every walk ends after each instant; each page, the tenant logs a row just past the last
    # one, as if logged late: 3 rows counted, so it reads on past 3 ends and no more.
    rows = rows_at([0, 10, 20])
    ends = {format_timestamp(T0 + n * MS) for n in range(0, 10_000, 10)}
    source = Source(rows, itertools.cycle([8]), ends)
    walk = walk_of(DAY, read_on=ReadOn(DAY.until, len(rows), DAY.until))
    _, requests = read_while_logged(walk, source, lambda n: T0 + (30 + 10 * n) * MS)

    assert requests == 1 + 3 * 2  # the walk, then three read-ons of two requests
    # It stopped with an end it would have read on past: the read proves nothing.
    assert walk.read_on_ran_out


def test_rows_logged_since_the_count_keep_a_read_again_reading_on_up_to_its_start_only():
    # As above, but counted at 00:00:00.030 and begun at 00:00:00.200: the rows logged from
    # 00:00:00.040 on were logged since the count, and only the instant it began stops them.
    rows = rows_at([0, 10, 20])
    ends = {format_timestamp(T0 + n * MS) for n in range(0, 10_000, 10)}
    source = Source(rows, itertools.cycle([8]), ends)
    walk = walk_of(DAY, read_on=ReadOn(T0 + 200 * MS, len(rows), T0 + 30 * MS))
    handed, requests = read_while_logged(walk, source, lambda n: T0 + (30 + 10 * n) * MS)

    assert not walk.read_on_ran_out  # those rows do not use up the 3 read-ons of the counted
    stamps = sorted(r["communicated_at"] for r in source.rows if r["public_id"] in handed)
    assert stamps[-1] == format_timestamp(T0 + 200 * MS)  # the first row it did not read on past
    assert requests < 100


def test_a_timeout_after_the_last_row_of_a_part_read_again_keeps_it_reading_on() -> None:
    rows = rows_at([0, 10, 20])
    at_zero = rows[0]["communicated_at"]
    walk = walk_of(DAY, read_on=ReadOn(DAY.until, len(rows), DAY.until))
    # The first page hands over the row at 00:00:00.000 and stops inside that instant (other
    # tenants' rows); the page after it times out, and the walk goes on from 00:00 in halves.
    walk.page_served(rows_to_batch(rows[:1]), [], f"{at_zero}|mid|0")
    walk.gateway_timeout()
    handed: list[str] = []
    while (request := walk.next_request()) is not None:
        if request.part.since_text <= at_zero and request.cursor is None:
            # Every walk that starts at or before that instant ends after it.
            served = [r for r in rows if r["communicated_at"] == at_zero]
        else:
            served = [r for r in rows if request.part.since_text <= r["communicated_at"]]
            served = [r for r in served if r["communicated_at"] < request.part.until_text]
        batch, _ = walk.page_served(rows_to_batch(served), [], None)
        handed += batch.column("public_id").to_pylist()

    assert handed == [pid(1), pid(2)]
    assert not walk.read_on_ran_out


def test_a_row_that_moves_past_an_end_while_read_again_does_not_stop_the_reading_on() -> None:
    # The rows before 12:00 and after it were counted apart (a capped count halved); row 1 moves
    # from the first half into the second while the window is read, before the end at 12:00:00.010.
    moves_to = format_timestamp(T0 + 12 * HOUR + 5 * MS)
    rows = rows_at([0, 1000]) + rows_at([0, 10, 20], start=T0 + 12 * HOUR)
    rows = [{**r, "public_id": pid(n)} for n, r in enumerate(rows)]
    source = Source(rows, itertools.cycle([1]), {format_timestamp(T0 + 12 * HOUR + 10 * MS)})
    walk = walk_of(DAY, read_on=ReadOn(DAY.until, len(rows), DAY.until))
    handed: list[str] = []
    while (request := walk.next_request()) is not None:
        served, cursor = source.page(request)
        if len(handed) == 1:
            moved = next(r for r in source.rows if r["public_id"] == pid(1))
            moved["communicated_at"] = moves_to
            source.rows.sort(key=lambda r: (r["communicated_at"], r["public_id"]))
        batch, _ = walk.page_served(rows_to_batch(served), [], cursor)
        handed += batch.column("public_id").to_pylist()

    # Row 1 twice, as it was and as it is now: the snapshot keeps the newer version.
    assert sorted(set(handed)) == [pid(n) for n in range(5)]


def test_a_timeout_on_a_wide_window_splits_what_is_left_without_a_pause() -> None:
    walk = walk_of(DAY)
    narrowing = walk.gateway_timeout()

    assert narrowing.split and narrowing.pause_strikes == 0
    request = walk.next_request()
    assert request is not None and request.part == DAY.halves()[0]


def test_a_row_moved_forward_while_its_window_is_read_again_lands_as_its_new_version() -> None:
    walk = walk_of(DAY, limit=2)
    walk.page_served(rows_to_batch([row(1, T0 + HOUR), row(2, T0 + 2 * HOUR)]), [], "c1")
    walk.gateway_timeout()  # the re-read starts at 02:00, skipping row 2 there
    # Meanwhile row 2 moved from 02:00 to 05:00: the re-read serves its new version.
    moved = row(2, T0 + 5 * HOUR, updated_at=format_timestamp(T0 + 4 * HOUR))
    request = walk.next_request()
    assert request is not None and request.part.since == T0 + 2 * HOUR

    again, _ = walk.page_served(rows_to_batch([row(3, T0 + 3 * HOUR), moved]), [], None)

    assert again.to_pylist() == [row(3, T0 + 3 * HOUR), moved]


def _null_row(rows_before: int) -> RejectedRow:
    """A null row, after ``rows_before`` valid rows of its page."""
    return RejectedRow("row is NoneType, expected an object", None, {}, rows_before)


def test_a_re_read_drops_no_new_reject_alike_one_handed_over_before_its_start() -> None:
    walk = walk_of(DAY, limit=2)
    walk.page_served(rows_to_batch([row(1, T0 + HOUR)]), [_null_row(0)], "c1")  # null at 00:30
    walk.page_served(rows_to_batch([row(2, T0 + 2 * HOUR), row(3, T0 + 3 * HOUR)]), [], "c2")
    walk.gateway_timeout()  # read again from 03:00: the null at 00:30 cannot come again

    rows = rows_to_batch([row(3, T0 + 3 * HOUR), row(4, T0 + 4 * HOUR)])
    _, fresh = walk.page_served(rows, [_null_row(1)], None)  # a new null at 03:30

    assert fresh == [_null_row(1)]


def test_a_reject_served_again_by_one_piece_of_a_re_read_is_not_dropped_again_by_the_next() -> None:
    walk = walk_of(DAY, limit=3)
    walk.page_served(
        rows_to_batch([row(1, T0 + HOUR), row(2, T0 + 2 * HOUR)]), [_null_row(2)], "c1"
    )
    walk.gateway_timeout()  # pieces [02:00, 13:00) and [13:00, 24:00)
    rows = rows_to_batch([row(2, T0 + 2 * HOUR), row(3, T0 + 3 * HOUR)])
    _, fresh = walk.page_served(rows, [_null_row(1)], None)  # the null at 02:30, again
    assert fresh == []
    request = walk.next_request()
    assert request is not None and request.part.since == T0 + 13 * HOUR

    _, fresh = walk.page_served(rows_to_batch([row(4, T0 + 14 * HOUR)]), [_null_row(0)], None)

    assert fresh == [_null_row(0)]


def test_a_re_read_of_one_part_drops_no_new_reject_alike_one_of_an_earlier_part() -> None:
    walk = walk_of(DAY, limit=2, hint=WidthHint(MINUTE, ceiling=12 * HOUR))
    walk.page_served(rows_to_batch([row(1, T0 + HOUR)]), [_null_row(1)], None)  # part 1 ends
    walk.gateway_timeout()  # the second part, [12:00, 24:00), is read again in halves

    _, fresh = walk.page_served(rows_to_batch([row(2, T0 + 13 * HOUR)]), [_null_row(0)], None)

    assert fresh == [_null_row(0)]


def test_a_cut_keeps_what_a_later_piece_of_a_re_read_may_be_served_again() -> None:
    hint = WidthHint(MS)
    walk = walk_of(DAY, limit=3, min_window=MS, hint=hint)
    at_two = [row(1, T0 + 2 * HOUR), row(2, T0 + 2 * HOUR)]
    walk.page_served(rows_to_batch(at_two), [_null_row(0)], "c1")  # a null at 01:00 first
    hint.failed(2 * HOUR, 500)  # another walk of the client learned a ceiling of 1 h
    hint.failed(2 * HOUR, 500)
    walk.gateway_timeout()  # [02:00, 24:00) read again from 02:00, in pieces of 1 h
    walk.page_served(rows_to_batch(at_two), [], None)  # both skipped
    assert walk.cut(T0 + 4.5 * HOUR) is not None  # trims the piece [04:00, 05:00)
    walk.page_served(rows_to_batch([]), [], None)  # nothing in [03:00, 04:00)
    request = walk.next_request()
    assert request is not None and request.part == Window(T0 + 4 * HOUR, T0 + 4.5 * HOUR)

    _, fresh = walk.page_served(rows_to_batch([]), [_null_row(0)], None)  # a new null at 04:10

    assert fresh == [_null_row(0)]


def _bad_row(kind: str, n: int, rows_before: int) -> RejectedRow:
    """A reject of ``kind``: a null row, one alike to every other of its kind, or one with an id."""
    if kind == "null":
        return _null_row(rows_before)
    values = {"outcome_option": 7}
    return RejectedRow(
        "outcome_option is int", pid(n) if kind == "with_id" else None, values, rows_before
    )


class SourceWithRejects(Source):
    """:class:`Source` whose items may be bad rows (a kind of :func:`_bad_row` instead of the
    row), served as rejects with their place on the page, as the client's page reader gives
    them."""

    def __init__(
        self, items: list[tuple[str, str, dict | str]], page_sizes, ends: Collection[str] = ()
    ) -> None:
        self.rows = sorted(items, key=lambda item: item[:2])
        self.page_sizes = page_sizes
        self.pages = itertools.count()
        self.ends = frozenset(ends)

    def serve(self, request: PageRequest) -> tuple[pa.RecordBatch, list[RejectedRow], str | None]:
        since, until = request.part.since_text, request.part.until_text
        window = [item for item in self.rows if since <= item[0] < until]
        if request.cursor is not None:
            at, key, _ = request.cursor.split("|")
            window = [item for item in window if item[:2] > (at, key)]
        size = min(next(self.page_sizes), request.limit)
        if (ended := self._ended([item[0] for item in window], size)) is not None:
            window, size = window[:ended], ended
        served, rest = window[:size], window[size:]
        rows: list[dict] = []
        rejects = []
        for _, key, data in served:
            if isinstance(data, str):
                rejects.append(_bad_row(data, int(key, 16), len(rows)))
            else:
                rows.append(data)
        if not rest:
            return rows_to_batch(rows), rejects, None
        boundary = served[-1][:2] if served else (since, "")
        if request.cursor is not None and not served:
            boundary = tuple(request.cursor.split("|")[:2])
        return rows_to_batch(rows), rejects, "|".join([*boundary, str(next(self.pages))])


def _reject_id(reject: RejectedRow) -> tuple:
    return reject.reason, reject.public_id, repr(sorted(reject.values.items()))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.tuples(
            st.sampled_from([0, 0, 1, 2, 7, 3_600_000]),
            st.sampled_from(["row", "row", "null", "alike", "with_id"]),
        ),
        max_size=40,
    ),
    span_ms=st.sampled_from([4, 40, 400]),
    limit=st.integers(1, 8),
    sizes=st.lists(st.integers(0, 8), min_size=1, max_size=10).filter(any),
    steps=st.lists(
        st.tuples(
            st.integers(0, 7),
            st.sampled_from(["page", "page", "cut", "timeout", "timeouts", "learn"]),
            st.floats(0, 1),
        ),
        max_size=50,
    ),
    ends=st.lists(st.integers(0, 39), max_size=4),
    read_again=st.booleans(),
)
# A re-read from an instant serves the rows handed over there again (skipped), then ends early
# after a reject: it handed over no new row, yet the rest of the window is still to come.
@example(
    items=[(0, "row"), (0, "row"), (0, "row"), (0, "null"), (1, "null")],
    span_ms=4,
    limit=3,
    sizes=[3],
    steps=[(0, "page", 0.0), (0, "timeout", 0.0)],
    ends=[0],
    read_again=False,
)
def test_every_row_and_every_reject_is_handed_over_once_whatever_the_timeouts_cuts_and_ends(
    items: list[tuple[int, str]],
    span_ms: int,
    limit: int,
    sizes: list[int],
    steps: list[tuple[int, str, float]],
    ends: list[int],
    read_again: bool,
) -> None:
    served, offset = [], 0
    for n, (gap, kind) in enumerate(items):
        offset += gap
        if offset < span_ms:
            at = T0 + timedelta(milliseconds=offset)
            served.append((format_timestamp(at), pid(n), row(n, at) if kind == "row" else kind))
    # A read again walks on past the API's early ends (after the instants of the items drawn),
    # from the last row handed over: so ends at instants holding a row (a reject has no instant
    # to go on from).
    with_rows = {at for at, _, data in served if isinstance(data, dict)}
    end_stamps = {served[n % len(served)][0] for n in ends if served} & with_rows
    source = SourceWithRejects(served, itertools.cycle(sizes), end_stamps)
    # Narrow windows reach the narrowest width, where a 504 lowers the page limit instead.
    hint = WidthHint(MS)
    window = Window(T0, T0 + span_ms * MS)
    # A read again that began after every row of the window was logged, and counted them all.
    read_on = ReadOn(window.until, len(served), window.until) if ends or read_again else None
    walks = [walk_of(window, limit=limit, min_window=MS, hint=hint, read_on=read_on)]
    ids, rejects = [], Counter()
    for pick, action, share in itertools.chain(steps, itertools.repeat((0, "page", 0.0))):
        alive = [walk for walk in walks if walk.next_request() is not None]
        if not alive:
            break
        walk = alive[pick % len(alive)]
        if action == "learn":  # another walk of the client learned a width
            hint.failed(share * span_ms * MS + MS, 500)
            hint.failed(share * span_ms * MS + MS, 500)
            continue
        if action == "cut":
            rest = walk.rest
            assert rest is not None
            given_away = walk.cut(rest.since + (rest.duration * share // MS) * MS)
            walks += [given_away] if given_away is not None else []
            continue
        for _ in range({"timeout": 1, "timeouts": 3}.get(action, 0)):
            with contextlib.suppress(WindowTooHeavyError):  # the client stops there; not the walk
                walk.gateway_timeout()
        if (request := walk.next_request()) is not None:
            batch, page_rejects, cursor = source.serve(request)
            handed, fresh = walk.page_served(batch, page_rejects, cursor)
            ids += handed.column("public_id").to_pylist()
            rejects.update(_reject_id(reject) for reject in fresh)

    assert sorted(ids) == sorted(
        data["public_id"] for _, _, data in served if isinstance(data, dict)
    )
    assert rejects == Counter(
        _reject_id(_bad_row(data, int(key, 16), 0))
        for _, key, data in served
        if isinstance(data, str)
    )
    # Nothing was logged while read: each read-on is paid for by an item counted, so a healthy
    # read is never judged short of its budget.
    assert not any(walk.read_on_ran_out for walk in walks)


def test_two_timeouts_at_a_width_teach_every_walk_the_narrower_width() -> None:
    hint = WidthHint(MINUTE)
    first, second = walk_of(DAY, hint=hint), walk_of(DAY, hint=hint)
    first.gateway_timeout()
    assert hint.ceiling is None  # one timeout could be a passing hiccup
    second.gateway_timeout()

    assert hint.ceiling == timedelta(hours=12)
    third = walk_of(DAY, hint=hint).next_request()
    assert third is not None and third.part.duration == timedelta(hours=12)


def test_at_the_narrowest_window_a_timeout_retries_then_lowers_the_limit_then_fails() -> None:
    walk = walk_of(Window(T0, T0 + MINUTE), limit=8, min_window=MINUTE)

    retry = walk.gateway_timeout()
    lower = walk.gateway_timeout()
    assert (retry.split, retry.limit, retry.pause_strikes) == (False, 8, 1)
    assert (lower.split, lower.limit, lower.pause_strikes) == (False, 4, 2)
    walk.gateway_timeout()
    walk.gateway_timeout()
    with pytest.raises(WindowTooHeavyError, match="minimum window"):
        walk.gateway_timeout()


def test_the_page_limit_comes_back_for_the_next_part() -> None:
    first, second = (Window(T0, T0 + MINUTE), Window(T0 + MINUTE, T0 + 2 * MINUTE))
    walk = walk_of(Window(T0, T0 + 2 * MINUTE), min_window=MINUTE)
    walk.gateway_timeout()  # splits into the two minutes
    walk.gateway_timeout()  # retried as is
    walk.gateway_timeout()  # the first minute at half the limit
    assert walk.next_request() == PageRequest(first, 4, None)

    walk.page_served(rows_to_batch([]), [], None)

    assert walk.next_request() == PageRequest(second, 8, None)


def test_a_repeated_cursor_stops_the_walk() -> None:
    walk = walk_of(DAY)
    walk.page_served(rows_to_batch(rows_at([0])), [], "same")

    with pytest.raises(CursorLoopError, match="already seen"):
        walk.page_served(rows_to_batch(rows_at([1])), [], "same")


@pytest.mark.parametrize("in_place", ["empty", "served again", "broken"])
def test_pages_on_new_cursors_that_move_the_walk_no_further_stop_it_at_the_bound(
    in_place: str,
) -> None:
    walk = walk_of(DAY)
    cursors = (f"cursor-{n}" for n in itertools.count())
    broken = [RejectedRow("outcome_option is int", "", {"outcome_option": 7}, 0)]
    batch = rows_to_batch(rows_at([0, 1]) if in_place == "served again" else [])
    rejects = broken if in_place == "broken" else []
    walk.page_served(rows_to_batch(rows_at([0, 1])), [], next(cursors))
    for _ in range(MAX_PAGES_IN_PLACE - 1):
        walk.page_served(batch, rejects, next(cursors))
    walk.page_served(rows_to_batch(rows_at([2])), [], next(cursors))  # on again: a new count
    for _ in range(MAX_PAGES_IN_PLACE - 1):
        walk.page_served(batch, rejects, next(cursors))

    with pytest.raises(CursorLoopError, match=f"{MAX_PAGES_IN_PLACE} pages in a row"):
        walk.page_served(batch, rejects, next(cursors))


@pytest.mark.parametrize("restart", ["refused cursor", "cut", "two 504s"])
def test_a_stretch_read_again_from_the_edge_counts_its_pages_once(restart: str) -> None:
    # Part of a stretch of empty pages, then a re-read from the edge: the stretch's pages are
    # counted again from the start, not on top of those read before the restart.
    narrow = restart == "two 504s"
    walk = walk_of(Window(T0, T0 + MINUTE) if narrow else DAY, min_window=MINUTE)
    cursors = (f"cursor-{n}" for n in itertools.count())
    walk.page_served(rows_to_batch(rows_at([0, 1])), [], next(cursors))
    for _ in range(MAX_PAGES_IN_PLACE // 2):
        walk.page_served(rows_to_batch([]), [], next(cursors))
    if restart == "refused cursor":
        assert walk.cursor_refused()
    elif restart == "cut":
        assert walk.cut(T0 + HOUR) is not None
    else:
        walk.gateway_timeout()
        walk.gateway_timeout()
    assert walk.next_request().cursor is None  # read again from the edge
    for _ in range(MAX_PAGES_IN_PLACE - 1):
        walk.page_served(rows_to_batch([]), [], next(cursors))

    walk.page_served(rows_to_batch(rows_at([5])), [], None)  # the stretch's end
    assert walk.next_request() is None


def _with_id(n: int, rows_before: int) -> RejectedRow:
    """Row ``n`` served broken (the same broken value as any other), with its public_id."""
    return RejectedRow("outcome_option is int", pid(n), {"outcome_option": 7}, rows_before)


def test_a_remembered_width_below_the_narrowest_window_asks_for_the_narrowest() -> None:
    # A read remembered 1 min; the narrowest window is now 1 h (D23 settings changed).
    hint = WidthHint(HOUR, ceiling=MINUTE)

    request = walk_of(DAY, min_window=HOUR, hint=hint).next_request()

    assert hint.ceiling == HOUR
    assert request is not None and request.part == Window(T0, T0 + HOUR)


def test_a_late_timeout_of_a_wider_window_does_not_widen_the_width_learned() -> None:
    hint = WidthHint(MS)
    for width in (DAY.duration, DAY.duration, 6 * HOUR, 6 * HOUR):
        hint.failed(width, 500)
    assert hint.ceiling == 3 * HOUR
    # A request for a whole day sent before the width was learned times out only now.
    hint.failed(DAY.duration, 500)

    assert hint.ceiling == 3 * HOUR


def test_a_re_read_drops_no_reject_with_another_public_id_alike_one_handed_over() -> None:
    walk = walk_of(DAY, limit=2)
    # Row 1 at 01:00, then row 7 broken; the page ends there.
    _, fresh = walk.page_served(rows_to_batch([row(1, T0 + HOUR)]), [_with_id(7, 1)], "c1")
    assert fresh == [_with_id(7, 1)]
    walk.gateway_timeout()  # read again from 01:00
    # Meanwhile row 7 was deleted, and row 8, broken alike, now lies where it did.
    rows = rows_to_batch([row(1, T0 + HOUR), row(2, T0 + 2 * HOUR)])

    _, fresh = walk.page_served(rows, [_with_id(8, 1)], None)

    assert fresh == [_with_id(8, 1)]


def test_a_reject_after_ties_spread_over_pages_is_not_handed_over_again_by_a_re_read() -> None:
    tie = T0 + HOUR
    walk = walk_of(DAY, limit=2)
    walk.page_served(rows_to_batch([row(1, tie), row(2, tie)]), [], "c1")
    # A third row at 01:00 on the next page, then a null row; the page ends there.
    _, fresh = walk.page_served(rows_to_batch([row(3, tie)]), [_null_row(1)], "c2")
    assert fresh == [_null_row(1)]
    walk.gateway_timeout()  # read again from 01:00, skipping rows 1-3 there

    rows = rows_to_batch([row(1, tie), row(2, tie), row(3, tie), row(4, T0 + 2 * HOUR)])
    batch, fresh = walk.page_served(rows, [_null_row(3)], None)

    assert batch.column("public_id").to_pylist() == [pid(4)]
    assert fresh == []  # the same null row, served again after the three rows


def test_a_re_read_narrowed_again_drops_no_new_reject_in_its_later_pieces() -> None:
    walk = walk_of(DAY, limit=2)
    walk.page_served(rows_to_batch([row(1, T0 + HOUR)]), [_null_row(1)], "c1")  # null at 01:30
    walk.gateway_timeout()  # read again from 01:00: [01:00, 12:30) and [12:30, 24:00)
    walk.gateway_timeout()  # and its first piece again, narrower
    rows = rows_to_batch([row(1, T0 + HOUR), row(2, T0 + 2 * HOUR)])
    _, fresh = walk.page_served(rows, [_null_row(1)], None)  # the null at 01:30, again
    assert fresh == []
    while (request := walk.next_request()) is not None and request.part.since < T0 + 12 * HOUR:
        walk.page_served(rows_to_batch([]), [], None)
    assert request is not None and request.part.since == T0 + 12.5 * HOUR

    # A new null row at 12:45, before row 3.
    _, fresh = walk.page_served(rows_to_batch([row(3, T0 + 13 * HOUR)]), [_null_row(0)], None)

    assert fresh == [_null_row(0)]


def test_a_part_read_again_that_handed_over_only_a_new_reject_before_its_end_reads_on() -> None:
    at = T0 + HOUR
    walk = walk_of(DAY, read_on=ReadOn(DAY.until, 3, DAY.until))
    walk.page_served(rows_to_batch([row(1, at), row(2, at)]), [], None)  # ended inside 01:00
    request = walk.next_request()
    assert request is not None and request.part == Window(at, at + MS)  # read on: 01:00 alone
    # The two rows again (skipped), then a null row new to the walk; it ends there again.
    _, fresh = walk.page_served(rows_to_batch([row(1, at), row(2, at)]), [_null_row(2)], None)
    assert fresh == [_null_row(2)]

    request = walk.next_request()

    assert request is not None and request.part == Window(at, at + MS)  # on again: rows may follow
    assert not walk.read_on_ran_out


def test_an_end_at_the_instant_of_the_count_is_read_on_past_without_the_count_budget() -> None:
    # Rows of the count's own millisecond may have been logged after it: no budget bounds them.
    counted_at = T0 + 10 * MS
    walk = walk_of(DAY, read_on=ReadOn(T0 + 200 * MS, 0, counted_at))

    walk.page_served(rows_to_batch([row(1, T0), row(2, counted_at)]), [], None)

    request = walk.next_request()
    assert request is not None and request.part == Window(counted_at, counted_at + MS)
    assert not walk.read_on_ran_out


def test_a_walk_given_away_by_a_cut_reads_on_only_as_often_as_the_budget_left() -> None:
    walk = walk_of(DAY, read_on=ReadOn(DAY.until, 1, DAY.until))
    walk.page_served(rows_to_batch([row(1, T0 + HOUR)]), [], None)  # an end: reads on (1 of 1)
    given = walk.cut(T0 + 12 * HOUR)
    assert given is not None

    given.page_served(rows_to_batch([row(2, T0 + 13 * HOUR)]), [], None)  # another end

    # No read-on is left for it: the read says so, rather than read on past one more end.
    assert given.next_request() is None
    assert given.read_on_ran_out


def test_a_reject_served_again_just_before_the_new_edge_is_not_handed_over_by_the_next_re_read():
    walk = walk_of(DAY, limit=2)
    # Row 1 at 01:00, then row 7 broken (its instant, 02:00, unknown to the walk); it ends there.
    walk.page_served(rows_to_batch([row(1, T0 + HOUR)]), [_with_id(7, 1)], "c1")
    walk.gateway_timeout()  # read again from 01:00
    rows = rows_to_batch([row(1, T0 + HOUR), row(2, T0 + 2 * HOUR)])
    _, fresh = walk.page_served(rows, [_with_id(7, 1)], "c2")  # row 7 again, then row 2
    assert fresh == []
    walk.gateway_timeout()  # read again from 02:00, where row 7 lies before row 2

    rows = rows_to_batch([row(2, T0 + 2 * HOUR), row(3, T0 + 3 * HOUR)])
    _, fresh = walk.page_served(rows, [_with_id(7, 0)], None)

    assert fresh == []


def test_a_second_re_read_hands_over_the_null_row_next_to_one_served_again() -> None:
    at = T0 + HOUR
    walk = walk_of(DAY, limit=2)
    walk.page_served(rows_to_batch([row(1, at)]), [_null_row(1)], "c1")  # row 1, a null; ends
    walk.gateway_timeout()  # read again from 01:00
    _, fresh = walk.page_served(rows_to_batch([row(1, at)]), [_null_row(1)], "c2")  # the same
    assert fresh == []
    walk.gateway_timeout()  # read again from 01:00 once more

    # The same null row, then another right after it (two alike), then row 2.
    rows = rows_to_batch([row(1, at), row(2, T0 + 2 * HOUR)])
    _, fresh = walk.page_served(rows, [_null_row(1), _null_row(1)], None)

    assert fresh == [_null_row(1)]


def test_timeouts_at_the_narrowest_width_teach_no_ceiling() -> None:
    hint = WidthHint(MINUTE)
    hint.failed(6 * HOUR, 500)
    for _ in range(3):
        hint.failed(MS, 500)  # an instant's count timing out: nothing to learn of wider windows
        hint.failed(MINUTE, 500)
    assert hint.ceiling is None

    hint.failed(6 * HOUR, 500)
    assert hint.ceiling == 3 * HOUR


def test_a_lower_page_that_came_through_twice_is_every_walk_s_and_its_504s_not_the_widths() -> None:
    hint = WidthHint(MINUTE)
    for _ in range(2):
        hint.failed(DAY.duration, 500)  # pages of 500 rows: the walks narrow the window
        hint.failed(6 * HOUR, 500)
    hint.failed(12 * HOUR, 1)  # a count (one row) timed out twice at 12 h or more: the window's
    hint.failed(12 * HOUR, 1)
    assert hint.ceiling == 3 * HOUR

    hint.limit_worked(125, 250)  # one walk's page of 125 rows came through: maybe a passing hiccup
    assert (hint.page_limit, hint.ceiling) == (None, 3 * HOUR)

    hint.limit_worked(125, 250)
    assert hint.page_limit == 125
    assert hint.ceiling == 6 * HOUR  # only the counts' 504s still speak of the width
    hint.limit_worked(250, 500)  # a larger page never raises it again
    assert hint.page_limit == 125


def test_walks_begun_after_a_page_limit_was_learned_ask_it() -> None:
    hint = WidthHint(MINUTE)
    hint.limit_worked(125, 250), hint.limit_worked(125, 250)
    walk = walk_of(DAY, limit=500, hint=hint)

    request = walk.next_request()
    assert request is not None and (request.limit, request.part) == (125, DAY)


@pytest.mark.parametrize("came_before", [True, False], ids=["before", "between"])
def test_504s_at_a_page_size_that_came_through_in_the_run_teach_no_page_limit(
    came_before: bool,
) -> None:
    hint = WidthHint(MINUTE)
    if came_before:
        hint.page_came(500)  # any walk's page of 500 rows: the gateway takes them
    hint.limit_worked(250, 500)  # a walk's two 504s at 500 rows, then 250 came through
    if not came_before:
        hint.page_came(500)
    hint.limit_worked(250, 500)  # a second such hiccup

    assert hint.page_limit is None


def test_pages_of_the_size_that_worked_say_nothing_against_the_504s() -> None:
    hint = WidthHint(MINUTE)
    hint.page_came(250)
    hint.limit_worked(250, 500)
    hint.page_came(250)
    hint.limit_worked(250, 500)

    assert hint.page_limit == 250


def test_a_learned_page_limit_keeps_larger_pages_504s_from_narrowing_the_windows() -> None:
    hint = WidthHint(MINUTE, page_limit=125)
    for _ in range(3):  # a walk split before the page was learned, still asking 500 rows
        hint.failed(6 * HOUR, 500)
    assert hint.ceiling is None
    hint.failed(6 * HOUR, 125), hint.failed(6 * HOUR, 125)  # the window's own 504s still count
    assert hint.ceiling == 3 * HOUR
