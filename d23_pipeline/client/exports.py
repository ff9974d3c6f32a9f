"""The D23 Exports API client: counted, windowed cursor walks over concurrent slices.

The pieces it composes each have one job: ``session`` sends one authenticated GET, ``pages``
reads the answer, ``walk`` decides what to ask next within a window, ``completeness`` judges a
slice against the API's counts, and ``fanout`` runs slices side by side.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from array import array
from collections import defaultdict
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from d23_pipeline.client.auth import TokenManager
from d23_pipeline.client.body import MAX_BODY_BYTES, BoundedHttp
from d23_pipeline.client.completeness import SliceProof, WindowTotal, judge, sum_totals
from d23_pipeline.client.errors import (
    ExportsApiError,
    GatewayDownError,
    RetriesExhaustedError,
    WindowTooHeavyError,
)
from d23_pipeline.client.fanout import Deliver, fan_out, in_callers_context
from d23_pipeline.client.outage import OutageWatch
from d23_pipeline.client.pages import read_page, read_total
from d23_pipeline.client.retry import Cancelled, Retrier, RetryPolicy
from d23_pipeline.client.session import ExportsSession, GatewayTimeout
from d23_pipeline.client.sharing import Part, ReadAgain, SliceRead, SliceSchedule
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.client.walk import (
    MAX_PAGE_LIMIT,
    EndCheck,
    ReadOn,
    WidthHint,
    WindowWalk,
)
from d23_pipeline.client.windows import ONE_MS, Window
from d23_pipeline.credentials import HeldCredentials
from d23_pipeline.schema import (
    RejectedRow,
    canonical_timestamp,
    format_timestamp,
)
from d23_pipeline.settings import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PAGE_LIMIT,
    DEFAULT_SLICE_HOURS,
    Credentials,
)

log = logging.getLogger("d23_pipeline.client")

# Slices are walked by one more worker than there are requests in flight: while a worker parses
# its page and hands it over (~3-10 ms a page, more on a busy machine), the spare one takes the
# slot it freed, so the API sees ``max_concurrency`` requests at all times. A second spare
# measured no better and holds one more slice open (benchmarks/README.md, 0b).
_SPARE_WALKS = 1
# Rows are stamped on the API's clock, and a read again must not stop short of rows it had
# when the read began. Its answers' Date says what time it is there, give or take this slack (a
# server's Date may be a second old, a gateway's clock a few seconds behind the one stamping
# rows), and our own clock is a floor (a Date further behind); rows logged meanwhile may keep
# the read reading on until then. A Date further than _DATE_BELIEVED_WITHIN from ours is more
# likely a broken gateway's than the API's clock; such an API, or one that sends no Date, is
# taken to be up to _API_CLOCK_AHEAD ahead of ours.
CLOCK_SLACK = timedelta(seconds=10)
_DATE_BELIEVED_WITHIN = timedelta(minutes=5)
_API_CLOCK_AHEAD = timedelta(minutes=1)
# Counts of a walked part, at most, when a 504 answers one the API counted exactly before.
AFTER_WALK_COUNTS = 3
# How often a worker waiting for another thread looks at the cancel flag.
_CANCEL_POLL_S = 0.05


if TYPE_CHECKING:  # loaded by the first page with a row or reject (d23_pipeline/schema_arrow.py)
    import pyarrow as pa


@dataclass(frozen=True)
class SlicePage:
    """One API page of ``slice``: its valid rows (the nine fields, as Arrow) and its rejects. A
    page that served neither is no event (an empty month loads no Arrow)."""

    slice: Window
    batch: pa.RecordBatch
    rejects: list[RejectedRow]

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The valid rows as dicts, for callers that want Python objects."""
        rows: list[dict[str, Any]] = self.batch.to_pylist()
        return rows


@dataclass(frozen=True)
class SliceRestart:
    """The read of ``slice`` so far was not proven complete and starts over: drop its pages."""

    slice: Window


@dataclass(frozen=True)
class SliceDone:
    """Every page of ``slice`` has been handed over; totals for the slice and its proof."""

    slice: Window
    rows: int
    rejects: int
    pages: int
    proof: SliceProof


SliceEvent = SlicePage | SliceRestart | SliceDone


def _any_repeated(hashes: Iterable[array[int]]) -> bool:
    """Whether any hash occurs twice across ``hashes`` (8 bytes an id, copied once to sort)."""
    import numpy as np  # only a read that proves a row gone needs it

    parts = [np.frombuffer(h, dtype=np.int64) for h in hashes if h]
    if not parts:
        return False
    merged = np.concatenate(parts)
    merged.sort()
    return bool((merged[1:] == merged[:-1]).any())


def _changed_since(counts: Sequence[WindowTotal], asked_at: datetime) -> str:
    """The instant (canonical text, on the API's clock) after which a served row's
    ``updated_at`` says it changed after the slice was counted: the first count's Date less the
    slack, or, without Dates we believe, our clock less the most we believe the API's behind."""
    stamps = [total.counted_at for total in counts]
    if not stamps or any(s is None or abs(s - asked_at) > _DATE_BELIEVED_WITHIN for s in stamps):
        return format_timestamp(asked_at - _DATE_BELIEVED_WITHIN)
    return format_timestamp(min(s for s in stamps if s is not None) - CLOCK_SLACK)


def served_a_change(
    batch: pa.RecordBatch | None, rejects: Sequence[RejectedRow], since: str
) -> bool:
    """Whether a page served a row changed at ``since`` (canonical text) or later: not later than
    the API's clock can be now. A row stamped in the future would send its slice to a second
    read on every run. So would a reject whose ``updated_at`` is no time (the same bad row
    served on every read): its ``created_at`` tells whether it was logged since."""
    until = format_timestamp(datetime.now(UTC) + _API_CLOCK_AHEAD)
    if batch is not None and batch.num_rows:
        import pyarrow.compute as pc

        updated_at = batch.column("updated_at")
        recent = pc.and_(pc.greater_equal(updated_at, since), pc.less_equal(updated_at, until))
        if pc.any(recent).as_py():
            return True
    for reject in rejects:
        stamped = canonical_timestamp(reject.values.get("updated_at")) or canonical_timestamp(
            reject.values.get("created_at")
        )
        if stamped and since <= stamped <= until:
            return True
    return False


def _read_on(before: WindowTotal, asked_at: datetime, answered_at: datetime) -> ReadOn | None:
    """How a read again whose counts, asked for at ``asked_at`` on our clock, came back as
    ``before`` at ``answered_at`` reads on past its walks' ends (see the slack above). Not at
    all without an exact count: such a read proves nothing, and reading on would have no
    bound."""
    counted = before.exact_total
    if counted is None:
        return None
    counted_at = before.counted_at
    if counted_at is None or abs(counted_at - answered_at) > _DATE_BELIEVED_WITHIN:
        return ReadOn(answered_at + _API_CLOCK_AHEAD, counted, asked_at)
    return ReadOn(max(counted_at, answered_at) + CLOCK_SLACK, counted, counted_at)


class InstantLookups(NamedTuple):
    """What reading deletion candidates' own instants again showed (ids in each)."""

    gone: set[str]  # a walk of the instant proven complete no longer serves them
    not_proven: set[str]  # the instant's walk served fewer rows than its exact count
    beside_anonymous: set[str]  # the instant served a bad row without a usable public_id


class Recount(NamedTuple):
    """What counting a read's finished windows again showed (see
    :meth:`ExportsClient.recount_after_read`)."""

    moved: list[Window]  # its exact count now differs from what its read served
    uncounted: list[Window]  # the API gave no exact count of it now (timeouts, or an estimate)


class ExportsClient:
    """Reads one lender's rows of one dataset (default S4/D23) window by window, with at most
    ``max_concurrency`` export requests (pages and counts) in flight; a token's login or refresh,
    one at a time, comes on top."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        page_limit: int = DEFAULT_PAGE_LIMIT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        slice_size: timedelta = timedelta(hours=DEFAULT_SLICE_HOURS),
        min_window: timedelta = timedelta(minutes=15),
        max_window: timedelta | None = None,
        learned_page_limit: int | None = None,
        min_page_limit: int = 50,
        slice_reads: int = 3,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        section: str = "S4",
        dataset: str = "D23",
    ) -> None:
        # A page limit configured below the floor is its own floor (D23_PAGE_LIMIT may be 1).
        min_page_limit = min(min_page_limit, page_limit)
        if not 1 <= min_page_limit <= page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(
                f"need 1 <= min_page_limit ({min_page_limit}) <= page_limit ({page_limit}) "
                f"<= {MAX_PAGE_LIMIT}"
            )
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1 (got {max_concurrency})")
        if min_window < ONE_MS or slice_size < min_window:
            raise ValueError("need 1 ms <= min_window <= slice_size")
        if slice_reads < 1:
            raise ValueError(f"slice_reads must be at least 1 (got {slice_reads})")
        self._page_limit = page_limit
        self._min_page_limit = min_page_limit
        self._max_concurrency = max_concurrency
        self._slice_size = slice_size
        self._min_window = min_window
        self._slice_reads = slice_reads
        self._widths = WidthHint(min_window, max_window, learned_page_limit)
        # The parts each slice's last read was counted in, for counting it again at the end of
        # the month's read without finding them anew (recount_after_read).
        self._counted_in: dict[Window, list[Window]] = {}
        self._schedule: SliceSchedule | None = None  # of the last iter_slices
        credentials_held = HeldCredentials()
        self.stats = ClientStats(page_limit, credentials_held)
        connections = max_concurrency + 1
        self._http = BoundedHttp(
            httpx.Client(
                transport=transport,
                # A host that drops our SYNs (a wrong address, a firewall) is known in seconds; a
                # page may take a minute.
                # httpx's default, pinned: a redirect to another host would take the token
                # (or, at login, the password) with it.
                follow_redirects=False,
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
            ),
            max_body_bytes,
            deadline_s=timeout,
            credentials=credentials_held,
        )
        self._retrier = Retrier(retry, self.stats, sleep)
        self._outage = OutageWatch(retry.max_total_wait_s, self._retrier.now)
        base_url = base_url.rstrip("/")
        self._base_url = base_url
        self._auth = TokenManager(credentials, self._http, base_url, self._retrier, self.stats)
        self._session = ExportsSession(
            self._http,
            base_url,
            self._auth,
            self._retrier,
            self.stats,
            self._outage,
            section=section,
            dataset=dataset,
            max_in_flight=max_concurrency,
        )

    @property
    def lender_public_id(self) -> str:
        """The lender's UUID; logs in first when using login credentials."""
        return self._auth.lender_public_id

    @property
    def api_host(self) -> str:
        """The API's host name (no scheme, no port)."""
        return urlsplit(self._base_url).hostname or ""

    @property
    def max_window(self) -> timedelta | None:
        """The widest window the gateway answers, as learned from 504s (``None``: no limit
        seen). Give it to the next client reading the same data as ``max_window``."""
        return self._widths.ceiling

    @property
    def learned_page_limit(self) -> int | None:
        """The largest page the gateway answers, as learned from 504s that smaller pages cured
        (``None``: none seen). Give it to the next client reading the same data."""
        return self._widths.page_limit

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> ExportsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch_total(self, window: Window) -> WindowTotal:
        """The API's row count for ``window``, added up from :meth:`count_parts`."""
        return sum_totals([total for _, total in self.count_parts(window)])

    def count_parts(
        self, window: Window, cancel: threading.Event | None = None
    ) -> list[tuple[Window, WindowTotal]]:
        """Exact counts for parts tiling ``window`` (``includeTotal=true``).

        The API counts small windows exactly where it caps, times out on or declines a large
        one, so a window without an exact count is halved until every part has one, down to
        ``min_window``; a part still inexact there is returned as the API answered.
        """
        parts = self._widths.split(window)
        if len(parts) > 1:
            return [counted for part in parts for counted in self.count_parts(part, cancel)]
        total = self.count(window, cancel)
        if total.exact_total is not None or self._counted_whole(window):
            return [(window, total)]
        self.stats.add("count_splits")
        return [part for half in window.halves() for part in self.count_parts(half, cancel)]

    def count(
        self, window: Window, cancel: threading.Event | None = None, *, learn: bool = True
    ) -> WindowTotal:
        """One ``includeTotal`` request; a gateway timeout is an inexact answer, not an error,
        and (``learn``) a strike against windows of that width."""
        params = {
            "since": window.since_text,
            "until": window.until_text,
            "limit": "1",
            "sort": "asc",
            "includeTotal": "true",
        }
        try:
            what = f"total of {self._session.section}/{self._session.dataset}"
            return self._session.get(params, read_total, what=what, window=window, cancel=cancel)
        except GatewayTimeout as exc:
            self.stats.retry("504")
            log.info("504 on the count of %s", window)
            if learn:
                self._widths.failed(window.duration, 1)
            self._outage.timed_out(
                "count",
                window,
                narrowest=self._counted_whole(window),
                path=self._session.path,
                request_id=exc.request_id,
            )
            return WindowTotal(None, False, "timeout")

    def _counted_whole(self, window: Window) -> bool:
        """Whether :meth:`count_parts` counts ``window`` in no narrower parts."""
        return window.duration < 2 * self._min_window

    def _count_after_walk(
        self, part: Window, before: WindowTotal, cancel: threading.Event | None
    ) -> WindowTotal:
        """The count of a walked part. One the API counted exactly before its walk is countable
        at its width: a 504 (or the API's count timeout) there is a hiccup, and it is counted
        again, up to ``AFTER_WALK_COUNTS`` times in all, rather than read again in full."""
        tries = AFTER_WALK_COUNTS if before.exact_total is not None else 1
        return self._count_through_timeouts(part, cancel, tries)

    def _count_through_timeouts(
        self, window: Window, cancel: threading.Event | None, tries: int = AFTER_WALK_COUNTS
    ) -> WindowTotal:
        """``window``'s count, asked again after a 504 or the API's count timeout (a hiccup),
        up to ``tries`` times in all."""
        for _ in range(tries):
            total = self.count(window, cancel)
            if total.note != "timeout":
                break
        return total

    def _countable_at_once(self, window: Window) -> bool:
        ceiling = self._widths.ceiling  # a window wider than what the gateway answers would 504
        return ceiling is None or window.duration <= ceiling

    def _count_window(self, window: Window, cancel: threading.Event) -> WindowTotal | None:
        # A window-wide 504 says nothing of the widths the walks use: not learned from. An error
        # leaves the count to whoever needs it, asked then (and raised there if it persists).
        try:
            return self.count(window, cancel, learn=False)
        except (ExportsApiError, Cancelled) as exc:
            log.info("counting %s once its walks ended failed (%r); counted later", window, exc)
            return None

    def _counted_after_walks(self, window: Window) -> WindowTotal | None:
        """``window``'s count asked once every walk of the last :meth:`iter_slices` of it had
        ended, unless a slice was read again since; given once."""
        schedule, self._schedule = self._schedule, None
        return schedule.window_total if schedule is not None and schedule.window == window else None

    def recount_after_read(
        self, counted: Mapping[Window, int], beside: Mapping[Window, int] | None = None
    ) -> Recount:
        """Of windows with the rows each held at its read (what the read served, as the landing
        gives it), those whose exact count now differs (a row that moved into one of them after
        its read is missing from that read, though it never left the month), and those the API
        no longer counts exactly: whether such a row is missing from them is not known.

        ``beside``: windows of the read already not proven complete, though each served its
        counts, with what each held. They are neither counted alone nor reported, but join the
        span: left out, they would split it, and each window would be counted alone. Any other
        gap in the span has each window counted alone.

        The span of all of them is counted first, in one request (or taken from
        :meth:`iter_slices`, which counts its window as its last walk ends, if it was of the
        span and no slice was read again since), and each of ``counted`` (in parts, as after
        its walk) only if that count differs or is not exact, ``max_concurrency`` at a time.
        Changes that cancel out in the span are not found this way: a row moving into a window
        read earlier while another row of the span is deleted, or moves on from a window read
        to one not read yet; a row moving from one window read into another. The month's next
        read finds them.
        """
        windows = sorted(counted, key=lambda w: w.since)
        if not windows:
            return Recount([], [])
        held = {**(beside or {}), **counted}
        spanned = sorted(held, key=lambda w: w.since)
        span = Window(spanned[0].since, spanned[-1].until)
        if all(a.until == b.since for a, b in pairwise(spanned)) and self._countable_at_once(span):
            total = self._counted_after_walks(span) or self.count(span, learn=False)
            if total.exact_total == sum(held.values()):
                return Recount([], [])

        def count_now(window: Window) -> int | None:
            parts = self._counted_in.get(window)  # a slice read by this client: its parts
            if parts is None:
                return self.fetch_total(window).exact_total
            # A 504 or the API's count timeout there is a hiccup, as after a walk.
            return sum_totals([self._count_through_timeouts(p, None) for p in parts]).exact_total

        workers = min(self._max_concurrency, len(windows))
        with ThreadPoolExecutor(workers, thread_name_prefix="d23-recount") as pool:
            now = list(pool.map(in_callers_context(count_now), windows))
        recount = Recount(
            [w for w, total in zip(windows, now, strict=True) if total not in (None, counted[w])],
            [w for w, total in zip(windows, now, strict=True) if total is None],
        )
        self.stats.add("slices_changed_after_read", len(recount.moved))
        self.stats.add("slices_uncounted_after_read", len(recount.uncounted))
        return recount

    def confirm_absent(self, candidates: Sequence[tuple[str, datetime]]) -> InstantLookups:
        """Of ``(public_id, communicated_at)`` pairs, those a proven-complete read of their
        instant no longer returns (the evidence a deletion needs), and those that look gone but
        whose instant's read proves nothing.

        Each distinct instant is read as its own one-millisecond window and counted before and
        after the walk; an instant whose walk did not serve its exact count, the same both
        times, proves nothing, so its candidates are kept, as unproven. One that served a bad
        row without a usable ``public_id`` proves nothing either: that row may be any
        candidate's new version.
        """
        by_instant: dict[datetime, set[str]] = defaultdict(set)
        for public_id, communicated_at in candidates:
            by_instant[communicated_at].add(public_id)
        if not by_instant:
            return InstantLookups(set(), set(), set())

        def read_again(instant: datetime, ids: set[str]) -> InstantLookups:
            served = self.served_ids(Window(instant, instant + ONE_MS))
            if served is None:
                return InstantLookups(set(), ids, set())
            found, anonymous = served
            if anonymous:
                return InstantLookups(set(), set(), ids - found)
            return InstantLookups(ids - found, set(), set())

        workers = min(self._max_concurrency, len(by_instant))
        with ThreadPoolExecutor(workers, thread_name_prefix="d23-confirm") as pool:
            read = in_callers_context(read_again)
            answers = list(pool.map(read, by_instant.keys(), by_instant.values()))
        return InstantLookups(*(set().union(*column) for column in zip(*answers, strict=True)))

    def served_ids(self, window: Window) -> tuple[set[str], bool] | None:
        """The ids a walk of ``window`` serves (valid rows and rejects) and whether it also
        served a bad row without a usable ``public_id`` (which may be any row's new version), or
        ``None`` unless the walk is proven complete: it served the window's exact count, the
        same before the walk and after it."""
        # Counted after the walk alone, a row served and deleted before that count would stand
        # in for one the walk never reached, and that one would be proven gone.
        before = self.fetch_total(window).exact_total
        if before is None:
            return None
        # Each id counts once against the count: a row served again after a re-read from the
        # instant (placed anew, or broken since it was served valid) is one row.
        ids: set[str] = set()
        anonymous = 0
        for page in self._walk(window, None, self._page_limit):
            ids.update(page.batch.column("public_id").to_pylist())
            ids.update(r.public_id for r in page.rejects if r.public_id)
            anonymous += sum(not r.public_id for r in page.rejects)
        if not before == self.fetch_total(window).exact_total == len(ids) + anonymous:
            return None
        return ids, anonymous > 0

    def find_served(self, window: Window, wanted: Collection[str]) -> set[str] | None:
        """Of ``wanted``, the ids a read of ``window`` serves (valid rows and rejects), read as
        :meth:`iter_slices` reads; ``None`` unless it finds them all, or every slice served
        exactly its count after its walk, the whole window's count at the end is what they
        served in all, and no id was served twice. That is stricter than verified slices: a
        slice that grew while it was walked may have taken one of them in behind the cursor; one
        may have moved from a slice not yet walked into one walked already, while another,
        served twice, moved the other way and kept every count. A bad row without a usable
        ``public_id`` also gives ``None``: it may be any of them. Memory holds ``wanted`` and
        8 bytes per id served (its hash: a collision only makes the read unproven)."""
        wanted = set(wanted)
        found: set[str] = set()
        if not wanted:
            return found
        import pyarrow as pa
        import pyarrow.compute as pc

        values = pa.array(sorted(wanted), pa.string())
        served = 0
        hashes: dict[Window, array[int]] = defaultdict(lambda: array("q"))
        with contextlib.closing(self.iter_slices(window)) as events:  # the answer may come early
            for event in events:
                if isinstance(event, SliceRestart):
                    hashes.pop(event.slice, None)  # its walk starts over, serving them again
                if isinstance(event, SliceDone):
                    if event.proof.total_after != event.proof.served:
                        return None
                    served += event.proof.served
                if not isinstance(event, SlicePage):
                    continue
                if any(not r.public_id for r in event.rejects):
                    return None
                ids = event.batch.column("public_id")
                hashes[event.slice].extend(map(hash, ids.to_pylist()))
                hashes[event.slice].extend(hash(r.public_id) for r in event.rejects)
                found.update(pc.filter(ids, pc.is_in(ids, value_set=values)).to_pylist())
                found.update(r.public_id for r in event.rejects if r.public_id in wanted)
                if found == wanted:
                    return found
        total = self._counted_after_walks(window)
        if total is None or total.exact_total is None:
            total = self.fetch_total(window)
        if total.exact_total != served or _any_repeated(hashes.values()):
            return None
        return found

    def iter_window(self, window: Window) -> Iterator[SlicePage]:
        """Every row of ``window`` exactly once, page by page, narrowing on 504."""
        return self._walk(window, None, self._page_limit)

    def iter_slices(
        self, window: Window, *, skip: Collection[Window] = ()
    ) -> Generator[SliceEvent, None, None]:
        """Walk the ``slice_size`` slices of ``window`` concurrently, except those in ``skip``,
        on ``max_concurrency`` + 1 workers (one more than requests in flight).

        Each slice is counted before and after its walk (:meth:`count_parts`) and read again,
        up to ``slice_reads`` reads in all, while what it served is not proven complete; a
        re-read is announced by a :class:`SliceRestart`, after every page of the read before.
        At the end of the window a slice's walk may be shared out in parts among workers that
        have no slice left (:mod:`~d23_pipeline.client.sharing`): pages of one part arrive in
        order, parts of one slice interleave. Every page of a slice's read is followed by
        exactly one :class:`SliceDone` carrying the last read's proof. Once no walk is left, the
        whole ended ``window`` is counted, beside the last counts after walks, for the end of
        the read (:meth:`recount_after_read`, :meth:`find_served`). The first worker error
        stops the other workers and is raised here; closing the generator early stops the
        workers too (a consumer that fails must close it: otherwise they wait until it is
        collected).
        """
        done = set(skip)
        todo = [piece for piece in window.split(self._slice_size) if piece not in done]
        self._schedule = None
        if not todo:
            return _no_events()
        schedule = self._schedule = SliceSchedule(window, todo, self._page_limit)
        return fan_out(
            schedule.take,
            partial(self._read, schedule),
            workers=self._max_concurrency + _SPARE_WALKS,
            name="d23-client",
        )

    def _read(
        self,
        schedule: SliceSchedule,
        work: Window | ReadAgain | Part,
        cancel: threading.Event,
        deliver: Deliver,
    ) -> None:
        """Walk a slice taken from ``schedule`` (or its next read), or a share of another
        worker's walk; the worker finishing a read's last part proves it."""
        if isinstance(work, Part):
            self.stats.add("shared_parts")
            part = work
        elif isinstance(work, ReadAgain):
            part = self._begin_read(schedule, work.slice, work.number, work.limit, cancel)
        else:
            part = self._begin_read(schedule, work, 1, self._page_limit, cancel)
        walked = False
        try:
            for page in self._pages(part.walk, part.read.slice, cancel, part):
                deliver(page)
            walked = True
        finally:
            # A part that stops (its error is on the way to the consumer) must not leave the
            # read to be proven by another part that happens to close after it.
            last = part.close(walked)
        if last:
            self._prove(schedule, part.read, cancel, deliver)

    def _begin_read(
        self,
        schedule: SliceSchedule,
        piece: Window,
        number: int,
        limit: int,
        cancel: threading.Event,
    ) -> Part:
        asked_at = datetime.now(UTC)
        before = self.count_parts(piece, cancel)
        self._counted_in[piece] = [part for part, _ in before]
        changed_since = _changed_since([total for _, total in before], asked_at)
        read = SliceRead(piece, number, limit, before, changed_since)
        # A read short of the counts may have met an end the API puts at one point in its data,
        # whatever the page size: the next reads walk on past its walks' ends (two requests a
        # part).
        answered_at = datetime.now(UTC)
        read_on = _read_on(read.total_before, asked_at, answered_at) if number > 1 else None
        return schedule.begin(read, self._window_walk(piece, limit, read_on=read_on))

    def _prove(
        self,
        schedule: SliceSchedule,
        read: SliceRead,
        cancel: threading.Event,
        deliver: Deliver,
    ) -> None:
        """Judge a read whose parts are all walked; schedule the slice's next read if it is not
        proven complete and reads are left."""
        schedule.ask_ahead()
        # Whatever its counts after, a read short of its count before, or that served a row
        # changed since, is read again if reads are left: no end of the read in sight yet.
        kindest = WindowTotal(read.served, True, None)
        ends = read.number == self._slice_reads or self._judge(read, kindest).verified
        window = schedule.window
        # An end of a read counts only slices surely ended: a window still open (the month a
        # daily refresh reads) would be counted for nothing; a window of one slice is counted by
        # its counts after.
        ended = window.until + CLOCK_SLACK <= datetime.now(UTC)
        claim = None
        if ends and ended and read.slice != window and self._countable_at_once(window):
            claim = schedule.claim_window_count()
        if claim is None:
            after = [self._count_after_walk(part, b, cancel) for part, b in read.before]
        else:
            # The end-of-read count (recount_after_read) is asked now, every walk ended,
            # beside these counts: at the end of a read nothing else overlaps its latency. A
            # daemon, as the workers are: a read closed meanwhile does not wait for its answer,
            # nor does the interpreter's exit.
            counted: list[WindowTotal | None] = []

            def count() -> None:
                counted.append(self._count_window(window, cancel))

            counting = threading.Thread(
                target=in_callers_context(count),
                name="d23-window-count",
                daemon=True,
            )
            counting.start()
            after = [self._count_after_walk(part, b, cancel) for part, b in read.before]
            while counting.is_alive():
                counting.join(_CANCEL_POLL_S)
                if cancel.is_set():
                    raise Cancelled
            if counted and counted[0] is not None:
                schedule.window_counted(claim, counted[0])
        proof = self._judge(read, sum_totals(after))
        if proof.verified or read.number == self._slice_reads:
            if not proof.verified:
                log.warning(
                    "slice %s not proven complete after %d reads (%s)",
                    read.slice,
                    read.number,
                    proof.reason,
                )
            deliver(SliceDone(read.slice, read.rows, read.rejects, read.pages, proof))
            schedule.read_done()
            return
        self.stats.add("slice_rereads")
        log.warning(
            "slice %s not proven complete (%s); reading it again, on past its walks' ends",
            read.slice,
            proof.reason,
        )
        deliver(SliceRestart(read.slice))
        # Smaller pages fall on other boundaries, so the re-read is a different walk: smaller
        # than the pages it asked, which a page learned from 504s may have made smaller.
        asked = min(read.limit, self._widths.page_limit or read.limit)
        limit = max(self._min_page_limit, asked * 3 // 4)
        schedule.read_again(ReadAgain(read.slice, read.number + 1, limit))

    def _judge(self, read: SliceRead, after: WindowTotal) -> SliceProof:
        return judge(
            read.served,
            read.total_before,
            after,
            read.number,
            read_on_ran_out=read.read_on_ran_out,
            changed_meanwhile=read.changed,
        )

    def _count_after_end(
        self, walk: WindowWalk, ended: EndCheck, cancel: threading.Event | None
    ) -> None:
        """Count what a part of a read again ended in having handed over nothing new, so not
        read on past: rows there beyond what it served were left unread by an end it cannot
        read past, so the walk is not proven complete. A 504 or a count timeout there is a
        hiccup: counted again, up to ``AFTER_WALK_COUNTS`` times in all."""
        counted = self._count_through_timeouts(ended.window, cancel).exact_total
        if not ended.left_rows_unread(counted):
            return
        walk.read_on_ran_out = True
        log.warning(
            "a walk of %s ended having served %d rows there, and the API counts %s%s: it ends "
            "walks before rows this read cannot reach; the slice is not proven complete",
            ended.window,
            ended.served,
            "no exact number" if counted is None else counted,
            "" if ended.counted_before is None else f" ({ended.counted_before} before the walk)",
        )

    def _count_before_read_on(
        self, walk: WindowWalk, instant: Window, cancel: threading.Event | None
    ) -> None:
        """Count the instant a read again reads on at, before it does, for its end check; a
        504 or a count timeout is a hiccup, as after a walk. Without an exact count the read-on
        proves nothing."""
        before = self._count_through_timeouts(instant, cancel).exact_total
        if before is None:
            log.warning(
                "the API gave no exact count of %s before reading on at that instant: the "
                "slice is not proven complete",
                instant,
            )
        walk.counted(before)

    def _walk(
        self, window: Window, cancel: threading.Event | None, limit: int
    ) -> Iterator[SlicePage]:
        return self._pages(self._window_walk(window, limit), window, cancel)

    def _window_walk(
        self, window: Window, limit: int, *, read_on: ReadOn | None = None
    ) -> WindowWalk:
        return WindowWalk(
            window,
            limit=limit,
            min_limit=self._min_page_limit,
            min_window=self._min_window,
            hint=self._widths,
            path=self._session.path,
            read_on=read_on,
        )

    def _pages(
        self,
        walk: WindowWalk,
        slice_: Window,
        cancel: threading.Event | None,
        part: Part | None = None,
    ) -> Iterator[SlicePage]:
        """The pages of ``walk``, as pages of ``slice_``; as ``part`` of a slice read, the rest
        of the walk can be handed to another worker between pages."""
        session = self._session
        what = f"page of {session.section}/{session.dataset}"
        while True:
            if part is not None:
                part.between_pages()
            if (due := walk.count_due()) is not None:
                self._count_before_read_on(walk, due, cancel)
            request = walk.next_request()
            if request is None:
                return
            since, until = request.part.since_text, request.part.until_text
            try:
                page = session.get(
                    request.params(),
                    partial(read_page, since=since, until=until),
                    what=f"{what} {request.part}",
                    window=request.part,
                    cancel=cancel,
                )
            except GatewayTimeout as exc:
                self.stats.retry("504")
                try:
                    narrowing = walk.gateway_timeout(exc.request_id)
                except WindowTooHeavyError as too_heavy:
                    rest = too_heavy.window or request.part
                    self._page_timed_out(rest, True, exc.request_id)
                    if (down := self._outage_behind(too_heavy, rest, cancel)) is None:
                        raise
                    raise down from too_heavy
                narrowest = not narrowing.split and request.limit <= self._min_page_limit
                self._page_timed_out(narrowing.rest, narrowest, exc.request_id)
                if narrowing.split:
                    self.stats.add("window_splits")
                    log.info("504 on %s; reading it in narrower parts", request.part)
                elif narrowing.limit < request.limit:
                    self.stats.limit_reduced(narrowing.limit)
                    log.info("504 again on %s; page limit -> %d", request.part, narrowing.limit)
                if narrowing.pause_strikes:
                    pause = self._retrier.policy.backoff(narrowing.pause_strikes)
                    self._retrier.pause(pause, cancel)
                continue
            except RetriesExhaustedError as exc:
                # Any attempt's 500: the last may have met a passing 502 or a dropped connection.
                if 500 not in exc.statuses or request.cursor is None:
                    raise
                if not walk.cursor_refused():
                    log.error(
                        "a page of %s asked with a cursor ran out of retries, answered 500, "
                        "before the walk got past the rows where it last read on without a "
                        "refused cursor: the API refuses its cursors (expired or corrupt) "
                        "faster than the walk gets on",
                        request.part,
                    )
                    raise
                self.stats.add("cursor_restarts")
                log.warning(
                    "a page of %s asked with a cursor ran out of retries, answered 500 (the "
                    "API's answer to an expired or corrupt cursor); reading on from the last row "
                    "handed over, without the cursor",
                    request.part,
                )
                continue
            batch, rejects = walk.page_served(page.batch, page.rejects, page.next_cursor)
            if (ended := walk.take_end_check()) is not None:
                self._count_after_end(walk, ended, cancel)
            if part is not None:
                changed = served_a_change(batch, rejects, part.read.changed_since)
                rejects = part.served(batch, rejects, changed)
            rows = 0 if batch is None else batch.num_rows
            self.stats.page(page.served_rows, rows, len(rejects), page.extra_fields)
            if batch is not None:
                yield SlicePage(slice_, batch, rejects)

    def _outage_behind(
        self, gave_up: WindowTooHeavyError, rest: Window, cancel: threading.Event | None
    ) -> GatewayDownError | None:
        """The outage behind a walk that ``gave_up`` at its narrowest on ``rest``, if nothing
        but 504s came back for the patience and the count of one instant there, which any
        gateway that is up answers (the window may be too heavy to count), times out too."""
        if self._outage.outage_behind(gave_up) is None:
            return None
        try:
            self.count(Window(rest.since, rest.since + ONE_MS), cancel, learn=False)
        except GatewayDownError as down:
            return down
        except (ExportsApiError, Cancelled):  # no answer either way: as the walk found it
            return None
        return self._outage.outage_behind(gave_up)  # None once the count's answer reset it

    def _page_timed_out(self, rest: Window, narrowest: bool, request_id: str | None) -> None:
        self._outage.timed_out(
            "page", rest, narrowest=narrowest, path=self._session.path, request_id=request_id
        )


def _no_events() -> Generator[SliceEvent, None, None]:
    yield from ()
