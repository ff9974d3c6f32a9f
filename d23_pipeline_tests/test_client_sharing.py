"""Keeping the API busy: one spare walk beyond the requests in flight, and the end of a month
shared out (walks cut between pages, shares of a slice read, its proof)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pyarrow as pa
import pytest
from api import DAY, T0, client, error, row, rows_at, simulator
from hypothesis import given, settings
from hypothesis import strategies as st
from test_client_walk import Source, walk_of

from d23_pipeline.client import (
    ExportsApiError,
    ExportsClient,
    SliceDone,
    SlicePage,
    SliceRestart,
    Window,
    WindowTotal,
)
from d23_pipeline.client.sharing import (
    MIN_PAGES_TO_SPLIT,
    Part,
    ReadAgain,
    SliceRead,
    SliceSchedule,
)
from d23_pipeline.schema import RejectedRow
from d23_pipeline.schema_arrow import rows_to_batch
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import Faults, Simulator, SimulatorConfig

HOUR = timedelta(hours=1)
JANUARY = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


def _at(rest: Window, fraction: float) -> datetime:
    return rest.since + (rest.duration * fraction // timedelta(milliseconds=1)) * timedelta(
        milliseconds=1
    )


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0, 0, 1, 7, 3_600_000]), max_size=60),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=10),
    steps=st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from(["page", "cut", "timeout"]), st.floats(0, 1)),
        max_size=40,
    ),
)
def test_walks_cut_between_pages_hand_over_every_row_once(
    gaps: list[int], sizes: list[int], steps: list[tuple[int, str, float]]
) -> None:
    rows = rows_at(itertools.accumulate(gaps))
    source = Source(rows, itertools.cycle(sizes))
    walks = [walk_of(DAY)]
    handed: list[str] = []

    def serve(walk: Any) -> None:
        request = walk.next_request()
        served, cursor = source.page(request)
        batch, _ = walk.page_served(rows_to_batch(served), [], cursor)
        handed.extend(batch.column("public_id").to_pylist())

    # The drawn steps in any order over the walks alive, then pages until every walk ends.
    for pick, action, fraction in itertools.chain(steps, itertools.repeat((0, "page", 0.0))):
        alive = [w for w in walks if w.next_request() is not None]
        if not alive:
            break
        walk = alive[pick % len(alive)]
        if action == "cut":
            given_away = walk.cut(_at(walk.rest, fraction))
            if given_away is not None:
                walks.append(given_away)
        else:
            if action == "timeout":
                walk.gateway_timeout()  # followed by a page, so narrowing never runs out
            if walk.next_request() is not None:
                serve(walk)

    assert Counter(handed) == Counter(r["public_id"] for r in rows)


def test_a_cut_gives_away_the_rest_and_resumes_the_part_at_its_edge() -> None:
    walk = walk_of(DAY)
    walk.page_served(rows_to_batch(rows_at([0, 3_600_000])), [], "c1")
    one_am = T0 + HOUR

    assert walk.cut(one_am) is None  # not past the edge: a row at 01:00 was handed over
    given_away = walk.cut(T0 + 12 * HOUR)

    assert given_away is not None and given_away.rest == Window(T0 + 12 * HOUR, DAY.until)
    request = walk.next_request()
    assert request is not None and (request.part, request.cursor) == (
        Window(one_am, T0 + 12 * HOUR),
        None,
    )
    assert walk.rest == Window(one_am, T0 + 12 * HOUR)


def test_a_walk_is_not_cut_while_a_reject_it_handed_over_may_lie_past_its_edge() -> None:
    # Rejects may lie past the edge (which moves over valid rows only): which of two walks would
    # be served it again is unknown, so neither is made until the edge has moved past it.
    reject = RejectedRow("outcome_option is int, expected a string", "bad-1", {}, 1)
    walk = walk_of(DAY)
    walk.page_served(rows_to_batch(rows_at([0])), [reject], "c1")  # the reject after the row
    assert walk.cut(T0 + 12 * HOUR) is None

    # Rows at 00:30 and 01:00: the reject lies before the first, so before the new edge.
    walk.page_served(rows_to_batch([row(1, T0 + HOUR / 2), row(2, T0 + HOUR)]), [], "c2")

    assert walk.cut(T0 + 12 * HOUR) is not None


# No row these reads serve changed after their count.
_NOTHING_CHANGED = "9999-12-31T23:59:59.999Z"


def _read(schedule: SliceSchedule, piece: Window, total: int | None, limit: int = 10) -> Part:
    count = WindowTotal(total, total is not None, None if total is not None else "capped")
    return schedule.begin(
        SliceRead(piece, 1, limit, [(piece, count)], _NOTHING_CHANGED), walk_of(piece, limit=limit)
    )


def _taking(schedule: SliceSchedule) -> tuple[threading.Thread, list[Any]]:
    taken: list[Any] = []
    # A daemon: a test that fails while it waits must not hang the run.
    thread = threading.Thread(
        target=lambda: taken.append(schedule.take(threading.Event())), daemon=True
    )
    thread.start()
    return thread, taken


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_slices_are_taken_in_time_order_then_the_walk_with_most_pages_left_is_shared() -> None:
    first, second = DAY.halves()
    schedule = SliceSchedule(Window(first.since, second.until), [first, second], page_limit=10)
    cancel = threading.Event()
    assert [schedule.take(cancel), schedule.take(cancel)] == [first, second]
    small = _read(schedule, first, total=MIN_PAGES_TO_SPLIT * 10)
    big = _read(schedule, second, total=200)

    thread, taken = _taking(schedule)
    _wait_for(lambda: big.asked is not None)
    assert small.asked is None
    big.between_pages()  # the owner, between two pages
    thread.join(5)

    (share,) = taken
    middle = second.halves()[1].since
    assert isinstance(share, Part) and share.read is big.read
    assert share.walk.rest == Window(middle, second.until)
    request = big.walk.next_request()
    assert request is not None and request.part == Window(second.since, middle)


def test_a_worker_that_asks_ahead_takes_its_share_as_soon_as_it_is_free() -> None:
    schedule = SliceSchedule(DAY, [DAY], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel)
    owner = _read(schedule, DAY, total=200)
    taken: list[Any] = []

    def worker() -> None:
        schedule.ask_ahead()  # then its last requests: the counts after its own walk
        owner.between_pages()  # meanwhile the owner reaches a page boundary
        taken.append(schedule.take(cancel))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)

    (share,) = taken
    assert isinstance(share, Part) and share.walk.rest == Window(DAY.halves()[1].since, DAY.until)


def test_a_slice_to_read_again_goes_to_a_free_worker_while_its_judge_walks_its_share() -> None:
    first, second = DAY.halves()
    schedule = SliceSchedule(Window(first.since, second.until), [first, second], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel), schedule.take(cancel)
    owner = _read(schedule, second, total=200)
    judged = _read(schedule, first, total=10)
    again = ReadAgain(first, 2, 7)
    taken: list[Any] = []

    def judge() -> None:  # the worker that walked `first`
        assert judged.close(walked=True)
        schedule.ask_ahead()  # then its counts after the walk, while the owner hands over
        owner.between_pages()
        schedule.read_again(again)  # the counts did not prove the read
        taken.append(schedule.take(cancel))

    thread = threading.Thread(target=judge, daemon=True)
    thread.start()
    thread.join(5)

    # It walks the half of `second` it was handed, not leave it unwalked through a re-read;
    # the next free worker reads `first` again.
    (share,) = taken
    assert isinstance(share, Part) and share.read is owner.read
    assert schedule.take(cancel) == again


def test_the_window_is_counted_once_when_its_last_walk_ends() -> None:
    first, second = DAY.halves()
    schedule = SliceSchedule(DAY, [first, second], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel), schedule.take(cancel)
    walks = [_read(schedule, first, total=10), _read(schedule, second, total=10)]

    assert walks[0].close(walked=True)
    assert schedule.claim_window_count() is None  # `second` is still walked
    assert walks[1].close(walked=True)
    claim = schedule.claim_window_count()
    assert claim is not None
    assert schedule.claim_window_count() is None  # one count for the window
    schedule.window_counted(claim, WindowTotal(20, True, None))
    assert schedule.window_total == WindowTotal(20, True, None)


def test_a_slice_taken_and_still_counted_before_its_walk_keeps_the_window_uncounted() -> None:
    first, second = DAY.halves()
    schedule = SliceSchedule(DAY, [first, second], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel), schedule.take(cancel)  # `second`: its counts before are in flight
    assert _read(schedule, first, total=10).close(walked=True)

    assert schedule.claim_window_count() is None


def test_a_window_count_asked_before_a_slice_is_read_again_is_not_the_read_s_end() -> None:
    schedule = SliceSchedule(DAY, [DAY], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel)
    assert _read(schedule, DAY, total=10).close(walked=True)
    stale = schedule.claim_window_count()
    assert stale is not None
    schedule.read_again(ReadAgain(DAY, 2, 7))  # its counts after did not prove it
    schedule.window_counted(stale, WindowTotal(10, True, None))  # answered meanwhile

    assert schedule.window_total is None
    assert schedule.claim_window_count() is None  # the read again is still to walk
    assert schedule.take(cancel) == ReadAgain(DAY, 2, 7)
    assert _read(schedule, DAY, total=11, limit=7).close(walked=True)
    claim = schedule.claim_window_count()
    assert claim is not None
    schedule.window_counted(claim, WindowTotal(11, True, None))
    assert schedule.window_total == WindowTotal(11, True, None)


def test_a_read_with_a_part_that_stopped_early_is_proven_by_none_of_its_parts() -> None:
    # The part that fails closes first; its share's owner closes last, before the failure has
    # stopped the other workers: it must not judge (and so deliver) a read with a hole in it.
    schedule = SliceSchedule(DAY, [DAY], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel)
    owner = _read(schedule, DAY, total=200)
    thread, taken = _taking(schedule)
    _wait_for(lambda: owner.asked is not None)
    owner.between_pages()
    thread.join(5)
    (share,) = taken

    assert owner.close(walked=False) is False
    assert share.close(walked=True) is False


def test_a_slice_whose_shared_part_failed_is_not_delivered_as_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failing part's owner is held up between closing its part and raising (as a thread
    # descheduled there would be), so the other part finishes and closes last meanwhile.
    close = SliceSchedule.close

    def slow_to_fail(schedule: SliceSchedule, part: Part, walked: bool) -> bool:
        last = close(schedule, part, walked)
        if not walked:
            time.sleep(0.5)
        return last

    monkeypatch.setattr(SliceSchedule, "close", slow_to_fail)
    sim = simulator([row(n, T0 + timedelta(minutes=5 * n)) for n in range(200)])
    # The first part's walk (the one ending before the day ends) fails on its 2nd cursor page.
    cursor_pages = itertools.count(1)
    sim.script(
        error(418),
        times=100,
        when=lambda r: (
            r.kind == "data"
            and r.query.get("until") != DAY.until_text
            and "cursor" in r.query
            and next(cursor_pages) >= 2
        ),
    )
    reader = client(sim, page_limit=5, min_page_limit=5, max_concurrency=1, slice_reads=1)

    events: list[object] = []
    with pytest.raises(ExportsApiError):
        for event in reader.iter_slices(DAY):
            events.append(event)

    assert reader.stats.as_dict()["shared_parts"] >= 1
    assert not [e for e in events if isinstance(e, SliceDone)]


def test_no_walk_is_shared_without_enough_pages_left_or_an_exact_count() -> None:
    first, second = DAY.halves()
    schedule = SliceSchedule(Window(first.since, second.until), [first, second], page_limit=10)
    cancel = threading.Event()
    schedule.take(cancel), schedule.take(cancel)
    parts = [_read(schedule, first, total=10), _read(schedule, second, total=None)]

    thread, taken = _taking(schedule)
    time.sleep(0.2)
    assert thread.is_alive() and all(p.asked is None for p in parts)  # waits: reads are open
    for part in parts:
        assert part.close(walked=True)
        schedule.read_done()
    thread.join(5)

    assert taken == [None]


def _simulator(**faults: Any) -> Simulator:
    sim = Simulator(SimulatorConfig(months=("2026-01",), rows_per_month=2000))
    sim.faults = Faults(**faults)
    return sim


def _client(sim: Simulator, **options: Any) -> ExportsClient:
    config = sim.config
    return ExportsClient(
        "http://sim.test",
        LoginCredentials(config.lender_slug, config.email, config.password),
        transport=sim.transport(),
        sleep=lambda seconds: None,
        **options,
    )


def _landed(events: list[Any]) -> dict[Window, list[str]]:
    """Public ids per slice as a snapshot keeps them: a restart drops what its slice had."""
    landed: dict[Window, list[str]] = {}
    for event in events:
        if isinstance(event, SliceRestart):
            landed.pop(event.slice, None)
        elif isinstance(event, SlicePage):
            landed.setdefault(event.slice, []).extend(r["public_id"] for r in event.rows)
    return landed


def test_one_slice_read_by_four_workers_lands_every_row_once_and_is_proven_whole() -> None:
    sim = _simulator(latency_s=0.001)
    with _client(sim, page_limit=20, max_concurrency=4, slice_size=JANUARY.duration) as client:
        events = list(client.iter_slices(JANUARY))
        shared, empty_pages = client.stats.shared_parts, client.stats.empty_pages

    assert shared > 0
    done = events[-1]
    assert isinstance(done, SliceDone) and sum(isinstance(e, SliceDone) for e in events) == 1
    ids = _landed(events)[JANUARY]
    expected = [r["public_id"] for r in sim.valid_rows(JANUARY.since, JANUARY.until)]
    assert Counter(ids) == Counter(expected)
    pages = [e for e in events if isinstance(e, SlicePage)]
    # A page that served nothing is counted, and is no event.
    assert (done.rows, done.pages) == (len(ids), len(pages) + empty_pages)
    assert done.proof.verified and done.proof.total_before == done.proof.served == len(ids)


def test_a_shared_read_not_proven_complete_is_read_again_after_all_its_pages() -> None:
    # One page in ten ends its walk early, so every read of the slice is short, whichever parts
    # it had (with this seed, not on the first page of a read, so each read has pages to share).
    sim = _simulator(latency_s=0.001, truncate_rate=0.1, seed=2)
    with _client(sim, page_limit=20, max_concurrency=4, slice_size=JANUARY.duration) as client:
        events = list(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()

    assert stats["shared_parts"] > 0 and stats["slice_rereads"] >= 1
    assert any(isinstance(e, SliceRestart) for e in events)
    done = events[-1]
    assert isinstance(done, SliceDone) and done.proof.reads == stats["slice_rereads"] + 1
    # What lands is the last read alone: each row at most once, and what its proof counted.
    ids = _landed(events)[JANUARY]
    expected = {r["public_id"] for r in sim.valid_rows(JANUARY.since, JANUARY.until)}
    assert len(ids) == len(set(ids)) == done.rows and set(ids) <= expected
    assert done.proof.served == done.rows + done.rejects


def test_slices_read_again_while_others_are_shared_each_land_their_last_read_once() -> None:
    # Five slices, reads cut short at random: some are read again while workers share walks
    # (and ask for shares ahead of their counts), so a re-read is queued for a free worker.
    sim = _simulator(latency_s=0.001, truncate_rate=0.05, seed=3)
    with _client(sim, page_limit=20, max_concurrency=4, slice_size=timedelta(days=7)) as client:
        events = list(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()

    assert stats["shared_parts"] > 0 and stats["slice_rereads"] >= 1
    done = {e.slice: e for e in events if isinstance(e, SliceDone)}
    assert sorted(done) == JANUARY.split(timedelta(days=7))
    landed = _landed(events)
    for piece, finished in done.items():
        ids = landed.get(piece, [])
        expected = {r["public_id"] for r in sim.valid_rows(piece.since, piece.until)}
        assert len(ids) == len(set(ids)) == finished.rows and set(ids) <= expected
        assert finished.proof.served == finished.rows + finished.rejects


def test_closing_the_events_while_workers_wait_for_a_share_stops_every_worker() -> None:
    sim = _simulator(latency_s=0.002)
    with _client(sim, page_limit=20, max_concurrency=4, slice_size=JANUARY.duration) as client:
        events = client.iter_slices(JANUARY)
        next(events)
        events.close()
        _wait_for(
            lambda: not [t for t in threading.enumerate() if t.name.startswith("d23-client-")]
        )


class _InFlight(httpx.BaseTransport):
    """Counts the data requests in flight at once, and the threads that send them."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0
        self.senders: set[str] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "/exports/" not in request.url.path:
            return self._inner.handle_request(request)
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
            self.senders.add(threading.current_thread().name)
        try:
            return self._inner.handle_request(request)
        finally:
            with self._lock:
                self._now -= 1


def test_one_walk_more_than_requests_in_flight_and_never_more_in_flight() -> None:
    sim = _simulator(latency_s=0.003)
    transport = _InFlight(sim.transport())
    config = sim.config
    with ExportsClient(
        "http://sim.test",
        LoginCredentials(config.lender_slug, config.email, config.password),
        transport=transport,
        page_limit=50,
        max_concurrency=3,
    ) as client:
        events = list(client.iter_slices(JANUARY))

    assert sum(isinstance(e, SliceDone) for e in events) == 31
    assert transport.most == 3
    walkers = {name for name in transport.senders if name.startswith("d23-client-")}
    assert len(walkers) == 4  # and the one that counts the month once every walk has ended
    assert transport.senders - walkers == {"d23-window-count"}


def test_a_shared_slice_is_in_doubt_if_any_part_ran_out_of_read_ons() -> None:
    day = Window(datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC))
    schedule = SliceSchedule(day, [day], 100)
    read = SliceRead(day, 1, 100, before=[], changed_since=_NOTHING_CHANGED)
    first = schedule.begin(read, SimpleNamespace(rest=None, read_on_ran_out=True))
    second = schedule._add(read, SimpleNamespace(rest=None, read_on_ran_out=False))

    assert first.close(walked=True) is False
    assert second.close(walked=True) is True  # the last part closes the slice
    assert read.read_on_ran_out


def test_a_read_hands_each_bad_row_version_over_once_and_counts_each_id_once() -> None:
    read = SliceRead(DAY, 1, 100, before=[], changed_since=_NOTHING_CHANGED)
    bad = RejectedRow("wrong type", "a", {"is_active": "yes"})
    mended_badly = RejectedRow("wrong type", "a", {"is_active": "no"})
    anonymous = RejectedRow("no public_id", None, {"outcome_option": "PTP"})
    broken_since = RejectedRow("wrong type", "b", {"is_active": "yes"}, served_valid=True)
    pages = [
        (["b", "c"], [bad, anonymous]),
        (["a", "d"], [bad, mended_badly, anonymous, broken_since]),  # a: mended since
    ]

    handed = []
    for ids, rejects in pages:
        handed.append(read.hand_over(pa.array(ids, pa.string()), rejects))
        read.rows += len(ids)
    read.rejects = sum(map(len, handed))

    # The same version served again is handed over once; another version of it, and a row
    # handed over valid and served again broken, are handed over but are the same source rows;
    # two bad rows without an id are two rows.
    assert handed == [[bad, anonymous], [mended_badly, anonymous, broken_since]]
    assert read.served == len("abcd") + 2  # and the two bad rows without an id
