"""iter_slices: concurrent slices, each row once, skip, error propagation, early close."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from api import (
    DAY,
    T0,
    answered,
    checked_transport,
    client,
    count_answer,
    error,
    ids_in,
    queries,
    rows_at,
    simulator,
)
from harness import ExportHookSimulator

from d23_pipeline.client import LenderMismatchError, SliceDone, SlicePage, Window
from d23_pipeline.client.fanout import fan_out
from d23_pipeline.client.retry import Cancelled
from d23_pipeline.simulator import Faults, SimResponse, Simulator, SimulatorConfig

THREE_DAYS = Window(T0, T0 + timedelta(days=3))
SIX_HOURS = timedelta(hours=6)


# The threads alive as each test starts: another test's in this xdist worker, still ending under
# load (the suite failed twice on them), are not this test's reads'.
_EARLIER: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _threads_alive_before() -> None:
    _EARLIER.clear()
    _EARLIER.update(threading.enumerate())


def client_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name.startswith("d23-client-") and t not in _EARLIER
    ]


def wait_for_no_client_threads(budget_s: float = 3.0) -> None:
    deadline = time.monotonic() + budget_s
    while client_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client_threads() == []


def hourly_api(latency_s: float = 0.0) -> Simulator:
    # Two tied rows every 20 minutes over three days; pages of 2 rows.
    offsets = [ms for ms in range(0, 3 * 86_400_000, 1_200_000) for _ in range(2)]
    return simulator(rows_at(offsets), page_size=lambda limit: 2, latency_s=latency_s)


def test_every_row_arrives_once_and_each_slice_ends_with_one_done() -> None:
    sim = hourly_api()
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        events = list(reader.iter_slices(THREE_DAYS))
    ids = [r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows]
    assert sorted(ids) == sorted(ids_in(sim, THREE_DAYS)) and len(set(ids)) == len(ids)
    done = [e for e in events if isinstance(e, SliceDone)]
    assert sorted(d.slice for d in done) == THREE_DAYS.split(SIX_HOURS)
    for finished in done:
        pages = [e for e in events if isinstance(e, SlicePage) and e.slice == finished.slice]
        assert events.index(finished) > max(events.index(p) for p in pages)
        assert finished.pages == len(pages) and finished.rows == sum(len(p.rows) for p in pages)
    wait_for_no_client_threads()


def test_the_end_of_read_count_is_asked_after_every_page_and_serves_the_read_s_end() -> None:
    sim = hourly_api()
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        done = [e for e in reader.iter_slices(THREE_DAYS) if isinstance(e, SliceDone)]
        asked = len(queries(sim))
        assert reader.recount_after_read({d.slice: d.proof.served for d in done}) == ([], [])
        assert len(queries(sim)) == asked  # the count asked as the last walk ended
        # Given once: a second end of the read is counted anew.
        assert reader.recount_after_read({d.slice: d.proof.served for d in done}) == ([], [])
        assert len(queries(sim)) == asked + 1

    answered_in_order = queries(sim)[:asked]
    whole = [
        i
        for i, q in enumerate(answered_in_order)
        if (q["since"], q["until"]) == (THREE_DAYS.since_text, THREE_DAYS.until_text)
    ]
    pages = [i for i, q in enumerate(answered_in_order) if "includeTotal" not in q]
    assert len(whole) == 1 and whole[0] > max(pages)


def test_windows_the_api_cannot_count_after_the_read_are_uncounted_not_moved_nor_read() -> None:
    # After the read, every count times out: whether a row moved into a slice is not known.
    # Nor is it learned by reading the slices again, on an API already struggling.
    sim = hourly_api()
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        done = [e for e in reader.iter_slices(THREE_DAYS) if isinstance(e, SliceDone)]
        counted = {d.slice: d.proof.served for d in done}
        # The first takes the window's count asked as the last walk ended: all unchanged.
        assert reader.recount_after_read(counted) == ([], [])
        asked = len(queries(sim))
        sim.script(count_answer(None, "timeout"), times=1_000)
        recount = reader.recount_after_read(counted)

    assert recount.moved == []
    assert recount.uncounted == sorted(d.slice for d in done)
    assert all("includeTotal" in q for q in queries(sim)[asked:])  # counts only, no page
    assert reader.stats.as_dict()["slices_uncounted_after_read"] == len(done)


def test_a_slice_beside_the_recount_joins_its_span_at_what_it_held() -> None:
    # Left as read by an earlier count, a slice is not counted again on its own, but what it
    # held joins the span's sum: with nothing moved, one count of the span is the whole recount.
    sim = hourly_api()
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        done = [e for e in reader.iter_slices(THREE_DAYS) if isinstance(e, SliceDone)]
        held = {d.slice: d.proof.served for d in done}
        assert reader.recount_after_read(held) == ([], [])  # takes the walks' own count
        beside = done[4].slice
        asked = len(queries(sim))

        recount = reader.recount_after_read(
            {w: n for w, n in held.items() if w != beside}, beside={beside: held[beside]}
        )

    assert recount == ([], [])
    assert [(q["since"], q["until"]) for q in queries(sim)[asked:]] == [
        (THREE_DAYS.since_text, THREE_DAYS.until_text)
    ]


def test_a_row_moved_across_a_slice_left_out_of_the_recount_is_found() -> None:
    # The slice not proven complete joins the span with what it served. Left out of it, a row
    # moving into it would cancel out one moving from it into a slice read earlier.
    sim = hourly_api()
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        done = sorted(
            (e for e in reader.iter_slices(THREE_DAYS) if isinstance(e, SliceDone)),
            key=lambda d: d.slice.since,
        )
        served = {d.slice: d.proof.served for d in done}
        assert reader.recount_after_read(served) == ([], [])  # takes the walks' own count
        first, second, left_out = (d.slice for d in done[:3])
        # A row moved from the slice left out into the first, read before: held by neither read
        # (the slice left out served one row fewer, as if read after the move) ...
        sim.move_row(ids_in(sim, left_out)[0], first.since + timedelta(minutes=30))
        # ... and one moved from the second slice, which served it, into the one left out.
        sim.move_row(ids_in(sim, second)[0], left_out.since + timedelta(minutes=30))

        recount = reader.recount_after_read(
            {w: n for w, n in served.items() if w != left_out},
            beside={left_out: served[left_out] - 1},
        )

    assert recount == ([first, second], [])


def test_a_read_closed_while_its_end_of_read_count_waits_stops_at_once() -> None:
    # The window's count is asked beside the last counts after walks; an answer that takes long
    # (up to the 60 s timeout) must hold neither the closed read nor the interpreter's exit.
    half_day = Window(T0, T0 + 2 * SIX_HOURS)
    sim = simulator(rows_at([3_600_000, 25_200_000]))  # a row in each of its two slices
    asked, answer, slices_counted = threading.Event(), threading.Event(), threading.Event()
    answers = checked_transport(sim)
    slice_counts = itertools.count(1)

    def holding_the_window_count(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        whole = (params.get("since"), params.get("until")) == (
            half_day.since_text,
            half_day.until_text,
        )
        if "includeTotal" in params and whole:
            asked.set()
            answer.wait(10)
        response = answers.handle_request(request)
        # Each slice's counts before and after its walk: the last answered, its worker waits.
        if "includeTotal" in params and not whole and next(slice_counts) == 4:
            slices_counted.set()
        return response

    earlier = set(threading.enumerate())  # another test's, in this process, are not this read's
    transport = httpx.MockTransport(holding_the_window_count)
    try:
        with client(sim, max_concurrency=2, slice_size=SIX_HOURS, transport=transport) as reader:
            events = reader.iter_slices(half_day)
            next(events)  # then the read goes on, its four events within the queue's room
            assert asked.wait(10) and slices_counted.wait(10)  # a worker waits for the count
            started = time.monotonic()
            events.close()
            assert time.monotonic() - started < 2
            ours = [t for t in threading.enumerate() if t not in earlier]
            assert not [t for t in ours if t.name.startswith("d23-client-") and t.is_alive()]
            (counting,) = [t for t in ours if t.name == "d23-window-count"]
            assert counting.daemon
    finally:
        answer.set()


def test_a_window_still_open_is_not_counted_at_its_end() -> None:
    # The end of a read counts only slices surely ended: this count would serve nothing.
    now = datetime.now(UTC).replace(microsecond=0)
    open_window = Window(now - 2 * SIX_HOURS, now + timedelta(hours=1))
    sim = hourly_api()
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        list(reader.iter_slices(open_window))

    spans = {(q["since"], q["until"]) for q in queries(sim)}
    assert (open_window.since_text, open_window.until_text) not in spans


def test_skipped_slices_are_not_fetched() -> None:
    sim = hourly_api()
    slices = THREE_DAYS.split(SIX_HOURS)
    finished = set(slices[::2])
    with client(sim, max_concurrency=3, slice_size=SIX_HOURS) as reader:
        events = list(reader.iter_slices(THREE_DAYS, skip=finished))
    assert {e.slice for e in events} == set(slices[1::2])
    # Every request lies inside a slice read (a slice shared at the end is asked for in parts),
    # but one: the count of the whole window once every walk has ended, for the end of the read.
    read = slices[1::2]
    outside = [
        p
        for p in queries(sim)
        if not any(s.since_text <= p["since"] and p["until"] <= s.until_text for s in read)
    ]
    assert [(p["since"], p["until"], p.get("includeTotal")) for p in outside] == [
        (THREE_DAYS.since_text, THREE_DAYS.until_text, "true")
    ]
    assert {s.since_text for s in read} <= {p["since"] for p in queries(sim)}


def test_skipping_every_slice_makes_no_request() -> None:
    sim = hourly_api()
    with client(sim, slice_size=SIX_HOURS) as reader:
        assert list(reader.iter_slices(DAY, skip=DAY.split(SIX_HOURS))) == []
    assert sim.stats.log == []


def test_a_worker_error_stops_the_others_and_is_raised() -> None:
    sim = hourly_api(latency_s=0.005)
    second = THREE_DAYS.split(SIX_HOURS)[1]
    sim.script(error(403), when=lambda r: r.query["since"] == second.since_text)
    with (
        client(sim, max_concurrency=2, slice_size=SIX_HOURS) as reader,
        pytest.raises(LenderMismatchError),
    ):
        list(reader.iter_slices(THREE_DAYS))
    wait_for_no_client_threads()
    assert len(queries(sim)) < 40  # far from the ~110 pages of a full run


def test_closing_the_generator_early_stops_the_workers() -> None:
    sim = hourly_api(latency_s=0.002)
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        events = reader.iter_slices(THREE_DAYS)
        next(events)
        events.close()
        wait_for_no_client_threads()
        requests = len(queries(sim))
        time.sleep(0.05)
        assert len(queries(sim)) == requests < 40


def test_a_slow_consumer_holds_workers_back() -> None:
    sim = hourly_api()
    with client(sim, max_concurrency=2, slice_size=SIX_HOURS) as reader:
        events = reader.iter_slices(THREE_DAYS)
        next(events)
        time.sleep(0.2)
        # one consumed, a queue of 2 events per worker (max_concurrency + 1 workers), one page
        # in each worker's hands, and each worker's count of its slice before the walk
        assert len(queries(sim)) <= 1 + 6 + 3 + 3
        events.close()
    wait_for_no_client_threads()


def test_events_of_slices_interleave_and_each_slice_ends_once() -> None:
    sim = hourly_api(latency_s=0.001)
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS) as reader:
        events = list(reader.iter_slices(THREE_DAYS))
    order = [e.slice for e in events]
    first_done = next(i for i, e in enumerate(events) if isinstance(e, SliceDone))
    assert len(set(order[: first_done + 1])) > 1  # concurrency really happened
    assert Counter(isinstance(e, SliceDone) for e in events)[True] == 12


class SharedRateLimit(ExportHookSimulator):
    """At most ``per_window`` export requests per window, counted over the client's requests as
    a real limiter counts them: every one refused is told to come back at the next window."""

    def __init__(self, rows: list[dict], *, per_window: int, window_s: float) -> None:
        faults = Faults(page_size=lambda limit: 12)
        super().__init__(SimulatorConfig(faults=faults), rows=rows, log_requests=True)
        self.per_window, self.window_s = per_window, window_s
        self.refused = 0
        self._budget = threading.Lock()
        self._window, self._used = -1, 0

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        with self._budget:
            now = time.monotonic()
            window = math.floor(now / self.window_s)
            if window != self._window:
                self._window, self._used = window, 0
            if self._used < self.per_window:
                self._used += 1
                return path, None
            self.refused += 1
            wait = math.ceil((window + 1) * self.window_s - now)  # whole seconds, as HTTP says
        return path, error(429, "req-429", **{"Retry-After": str(wait)})


def test_a_rate_limit_shared_by_every_request_is_waited_out_not_failed() -> None:
    # Five walkers against two requests a second: every refused request is paced by its
    # Retry-After, which then holds the others too; none of it counts as a failed attempt.
    one_day = Window(T0, T0 + timedelta(days=1))
    sim = SharedRateLimit(rows_at(range(0, 86_400_000, 1_200_000)), per_window=2, window_s=1.0)
    with client(sim, max_concurrency=4, slice_size=SIX_HOURS, sleep=time.sleep) as reader:
        events = list(reader.iter_slices(one_day))

    ids = [r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows]
    assert sorted(ids) == sorted(ids_in(sim, one_day)) and len(ids) == 72
    assert sim.refused > 0


def test_a_worker_error_raised_while_the_consumer_is_behind_still_reaches_it() -> None:
    # The worker fails with the event queue full (a slow consumer: Parquet writing, say). Its
    # error must wait for room rather than be dropped: the consumer would wait for ever.
    failed = threading.Event()

    def work(item: int, cancel: threading.Event, deliver: Callable[[object], None]) -> None:
        for n in range(3):  # the first is taken; two fill the queue of one worker
            deliver(n)
        failed.set()
        raise RuntimeError("the API refused the lender")

    items = iter([1])
    stream = fan_out(lambda cancel: next(items, None), work, workers=1, name="test-fan-out")
    assert next(stream) == 0
    assert failed.wait(5)
    time.sleep(0.2)
    # Still there: its error is waiting for room in the queue (with a larger queue this test
    # would not reach the case it is for).
    assert any(t.name == "test-fan-out-0" and t.is_alive() for t in threading.enumerate())
    outcome: list[object] = []

    def consume() -> None:
        try:
            outcome.append(list(stream))
        except RuntimeError as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(10)

    assert outcome and isinstance(outcome[0], RuntimeError), outcome


class HoldsTheFirstRequest(ExportHookSimulator):
    """Holds the first export request in flight (``held`` set) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__(SimulatorConfig(), rows=[], log_requests=True)
        self.held, self.release = threading.Event(), threading.Event()

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if not self.held.is_set():
            self.held.set()
            self.release.wait(30)
        return path, None


class WatchedSlots(threading.BoundedSemaphore):
    """A client's request slots, telling (``waited``) when a request waited for one in vain."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.waited = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        taken = super().acquire(blocking, timeout)
        if not taken:
            self.waited.set()
        return taken


def test_a_request_cancelled_while_it_waits_for_a_slot_is_not_sent_when_the_slot_frees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = HoldsTheFirstRequest()
    cancel, outcome = threading.Event(), []

    def count_until_cancelled() -> None:
        try:
            outcome.append(reader.count(DAY, cancel))
        except Cancelled as exc:
            outcome.append(exc)

    with client(sim, max_concurrency=1) as reader:
        slots = WatchedSlots(1)
        monkeypatch.setattr(reader._session, "_slots", slots)
        holder = threading.Thread(target=reader.count, args=(DAY,), daemon=True)
        waiter = threading.Thread(target=count_until_cancelled, daemon=True)
        holder.start()
        try:
            assert sim.held.wait(10)  # the one slot is taken until the test releases it
            waiter.start()
            assert slots.waited.wait(10)  # the second count waits for the slot
            cancel.set()
            waiter.join(10)  # it stops waiting (sent, it would wait for the slot for ever)
            assert not waiter.is_alive()
        finally:
            sim.release.set()
            holder.join(10)
            if waiter.ident is not None:
                waiter.join(10)

    assert [type(o) for o in outcome] == [Cancelled]
    assert answered(sim, "count") == 1  # the holder's only


class CancelledAsTheSlotFrees(threading.BoundedSemaphore):
    """Request slots whose second taker is cancelled while it waits, and the slot freed within
    the same poll: it gets the slot with its cancel flag already set."""

    def __init__(self, value: int, cancel: threading.Event, sim: HoldsTheFirstRequest) -> None:
        super().__init__(value)
        self.cancel, self.sim, self.calls = cancel, sim, 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        self.calls += 1
        if self.calls == 2:
            self.cancel.set()
            self.sim.release.set()
            return super().acquire(True, 10)
        return super().acquire(blocking, timeout)


def test_a_request_cancelled_in_the_poll_its_slot_frees_in_is_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = HoldsTheFirstRequest()
    cancel, outcome = threading.Event(), []

    with client(sim, max_concurrency=1) as reader:
        monkeypatch.setattr(reader._session, "_slots", CancelledAsTheSlotFrees(1, cancel, sim))
        holder = threading.Thread(target=reader.count, args=(DAY,), daemon=True)
        holder.start()
        try:
            assert sim.held.wait(10)
            try:
                outcome.append(reader.count(DAY, cancel))
            except Cancelled as exc:
                outcome.append(exc)
        finally:
            sim.release.set()
            holder.join(10)

    assert [type(o) for o in outcome] == [Cancelled]
    assert answered(sim, "count") == 1  # the holder's only
