"""The cursor walk over one window, as a state machine: no HTTP, no clock, no threads.

The caller asks :meth:`WindowWalk.next_request` what to fetch, and reports back either the page
(:meth:`WindowWalk.page_served`) or a gateway timeout (:meth:`WindowWalk.gateway_timeout`). The
walk hands every row of the window over exactly once, whatever the timeouts: the API orders by
``(communicated_at, _id)``, so everything before the last instant handed over is done, and at that
instant exactly the ids already handed over are; a re-read starts there and skips those ids.
Rejects hold no usable instant, so they are placed by their rows: a re-read serves again only
those after (or just before) a row at the edge's instant, after as many of its rows as before,
and so every reject is handed over once too. A row or reject written into that stretch while it
is read again can make the walk drop a new reject alike, or hand one over twice; the slice's
counts then disagree with what it served and it is read again.

A 504 is an answer about the window (the documented advice is to narrow it), so a wide part is
halved at once, without a pause, and two 504s at a width teach every walk of the client
(:class:`WidthHint`) to start narrower. Only at the narrowest window does a 504 earn a retry with
backoff and then smaller pages; the page limit comes back for the next part.

Between pages, the rest of the window from some instant on can be given away to another walk
(:meth:`WindowWalk.cut`); the part in progress then resumes from its edge in the narrower window,
the same re-read as after a 504.

An API may end every walk that reaches some point in its data (where a parent batch ends, say),
whatever the page size; a read again from the slice's start would stop there again. So a walk
that reads a slice again does not take a part's end at its word (:class:`ReadOn`): it reads on
from the edge, the same re-read again, as long as each part ends having handed over a row or
reject not handed over before, and its edge is before the instant the read began: rows logged
"now" while the current day is read are not the read's to find. (The counts taken before the
read cannot say where rows are left: a row that moved, or was logged, while the window was read
fills the count of another stretch.) From edges before the counts were taken, a walk reads on
at most as many times as rows were counted; one that would read on further says so
(:attr:`WindowWalk.read_on_ran_out`), since rows logged late behind its edge may have taken the
place of rows it did not reach. Past that instant, rows it reads on to may have been logged
since the count, which does not bound them; the instant the read began does. A part of a read
again that ends having handed over nothing new is not read on past; its caller counts what it
ended in (:class:`EndCheck`): rows there that it did not serve lie past an end no request of
this read gets over (inside an instant, or before a page that served nothing). An instant it
reads on at is counted before that read-on too (:meth:`WindowWalk.count_due`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from d23_pipeline.client.errors import CursorLoopError, WindowTooHeavyError
from d23_pipeline.client.windows import ONE_MS, Window
from d23_pipeline.schema import (
    RejectedRow,
    canonical_timestamp,
    format_timestamp,
    parse_timestamp,
)

if TYPE_CHECKING:  # loaded by the first page with a row or reject (d23_pipeline/schema_arrow.py)
    import pyarrow as pa

# The largest page the API serves (documented: 1-1000, clamped).
MAX_PAGE_LIMIT = 1000

# Pages in a row, each on a new cursor, that may move a walk no further (empty, or serving only
# broken rows or rows it handed over) before it takes the API to be looping. An empty page is no
# fault (a page of a "via" dataset may scan only other tenants' entries), but this many at the
# default limit of 500 is half a million entries between two of the lender's rows in one slice:
# longer than a real read meets, far shorter than the hours ever-new cursors would hold a run.
MAX_PAGES_IN_PLACE = 1000


class WidthHint:
    """The widest window, and the largest page, worth asking for, learned from 504s and shared
    by a client's walks.

    A gateway may time out on wide windows, on large pages, or both (the API's advice: narrow
    the window, lower the limit). A walk narrows the window first, then lowers the limit at the
    narrowest. Once lowering it has let pages through twice, in a run where no page as large
    as the ones that failed ever came through (else they were passing hiccups, on a gateway
    that takes such pages), the 504s at larger pages were the page's, not the window's: every
    walk asks that page, and the widths that failed at larger pages are forgotten (else a
    gateway refusing large pages would narrow a month to its narrowest windows, each asked
    first at the page that fails).
    """

    def __init__(
        self, min_window: timedelta, ceiling: timedelta | None = None, page_limit: int | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._min_window = min_window
        self._configured = None if ceiling is None else max(ceiling, min_window)
        self._ceiling = self._configured
        self._failed: list[tuple[timedelta, int]] = []  # width, page limit
        self._page_limit = page_limit
        self._limits_worked: list[tuple[int, int]] = []  # the page that worked, the one that failed
        self._largest_came = 0  # the largest page asked that came through

    @property
    def ceiling(self) -> timedelta | None:
        """``None`` until a width has failed twice."""
        return self._ceiling

    @property
    def page_limit(self) -> int | None:
        """The largest page worth asking for; ``None`` until a lowered limit let pages through
        twice (or a read before learned one)."""
        return self._page_limit

    def split(self, window: Window) -> list[Window]:
        """``window`` in parts no wider than the ceiling."""
        ceiling = self._ceiling
        return [window] if ceiling is None else window.split(ceiling)

    def failed(self, width: timedelta, limit: int) -> None:
        """A window of ``width`` timed out asking pages of ``limit`` rows (1 for a count); a
        second timeout at that width or wider lowers the ceiling to half of it, so one passing
        hiccup does not narrow a whole month. One at the narrowest width or below (an instant's
        count, say) says nothing of wider windows: the ceiling would fall to the narrowest at
        once."""
        learned = self._page_limit
        if width <= self._min_window or (learned is not None and limit > learned):
            return  # the page's fault, known: a walk that asked it before it was learned
        with self._lock:
            self._ceiling = self._narrowed(self._ceiling, self._failed, width)
            self._failed.append((width, limit))

    def limit_worked(self, limit: int, failed_at: int) -> None:
        """A page of ``limit`` rows came through where the same window had timed out at pages
        of ``failed_at``, at the narrowest width; the second time, at this limit or below, it
        becomes the page every walk asks (see the class)."""
        with self._lock:
            self._largest_came = max(self._largest_came, limit)
            if failed_at <= self._largest_came:
                return  # such pages came through: a hiccup
            if any(worked <= limit for worked, _ in self._limits_worked) and (
                self._page_limit is None or limit < self._page_limit
            ):
                self._page_limit = limit
                self._failed = [(w, at) for w, at in self._failed if at <= limit]
                self._ceiling = self._narrowest(self._failed)
            self._limits_worked.append((limit, failed_at))

    def page_came(self, limit: int) -> None:
        """A page asked at ``limit`` rows came through: 504s at pages that large or smaller are
        no gateway's limit on pages (hiccups), and do not count towards learning one."""
        if limit > self._largest_came:
            with self._lock:
                self._largest_came = max(self._largest_came, limit)
                self._limits_worked = [(w, f) for w, f in self._limits_worked if f > limit]

    def _narrowest(self, failed: list[tuple[timedelta, int]]) -> timedelta | None:
        ceiling = self._configured
        for n, (width, _) in enumerate(failed):
            ceiling = self._narrowed(ceiling, failed[:n], width)
        return ceiling

    def _narrowed(
        self, ceiling: timedelta | None, before: list[tuple[timedelta, int]], width: timedelta
    ) -> timedelta | None:
        if not any(seen >= width for seen, _ in before):
            return ceiling
        narrower = max(self._min_window, (width // 2 // ONE_MS) * ONE_MS)
        return narrower if ceiling is None or narrower < ceiling else ceiling


@dataclass(frozen=True)
class ReadOn:
    """How a read again reads on past its walk's ends: only from edges before the instant it
    ``began`` at (on the API's clock), and from edges before the instant its counts were taken
    (``counted_at``, where every row walked past was counted or logged late) at most ``ends``
    times a walk, the rows counted. Past ``counted_at`` the rows it reads on to may have been
    logged since the count, and only ``began`` bounds them."""

    began: datetime
    ends: int
    counted_at: datetime


@dataclass(frozen=True)
class PageRequest:
    """One page to fetch: ``part`` of the window, at ``limit``, after ``cursor``."""

    part: Window
    limit: int
    cursor: str | None

    def params(self) -> dict[str, str]:
        """The query; since, until, limit and sort go on every page (the cursor has no filter)."""
        params = {
            "since": self.part.since_text,
            "until": self.part.until_text,
            "limit": str(self.limit),
            "sort": "asc",
        }
        if self.cursor is not None:
            params["cursor"] = self.cursor
        return params


@dataclass(frozen=True)
class Narrowing:
    """What a 504 on the ``rest`` of a part (from its edge) changed: ``split`` it, or ``retry``
    it (at ``limit``) after a pause for the ``pause_strikes``-th time."""

    rest: Window
    split: bool
    limit: int
    pause_strikes: int


@dataclass(frozen=True)
class EndCheck:
    """A part of a read again that ended having handed over nothing new, so is not read on
    past: ``served`` rows and rejects in ``window``, skipped ones served again included. More
    rows counted there were left unread by an end it cannot read past: inside an instant (any
    request for it starts before that point), or on a page that served nothing new. ``window``
    is the edge's instant alone, or ends at the instant the read began: rows logged since are
    not the read's. Not where the slice was counted: that ``Date`` is to the second, maybe a
    gateway's a little behind, and a row logged between it and the read's start would be left
    out of the count and the served alike, for a row served and gone since to stand in for.
    An instant's read-on was counted before its walk too (``counted_before``): a row there
    throughout is in both counts, so one served and gone by the count after does not hide it."""

    window: Window
    served: int
    counted_before: int | None = None

    def left_rows_unread(self, counted_after: int | None) -> bool:
        """Whether the window's exact count after the walk (``None``: not exact), or the one
        before it, holds more rows than the part served."""
        return counted_after is None or max(counted_after, self.counted_before or 0) > self.served


@dataclass
class _Part:
    window: Window
    skip: frozenset[str]
    # For a part that reads again where rejects were handed over already (after a 504 or a
    # cut; the edge moves over valid rows only, so a reject past it can come again): those
    # rejects, shared by the pieces of one re-read, so that one served again counts once, and
    # how many rows at the edge's instant had been handed over (see ``_PastEdge``).
    again: Counter[_PastEdge] | None = None
    edge_rows: int = 0
    # A read-on of the edge's instant alone (see EndCheck).
    instant: bool = False


# A reject handed over, and how many rows at the edge's instant come before it in the API's
# order: a re-read from that instant serves those rows (skipped) in the same order, so a reject
# served again comes after as many of them, and one alike elsewhere is a new reject.
_PastEdge = tuple[object, int]


def _position(reject: RejectedRow) -> int:
    # A reject whose place on its page is not known is taken to lie before every row.
    return reject.rows_before if reject.rows_before is not None else 0


def _logged_before(reject: RejectedRow, instant: str) -> bool:
    """Whether a reject lies before ``instant`` (canonical text), as the rows counted there do.
    One whose ``communicated_at`` is no time cannot be placed, and is taken to lie there."""
    stamp = canonical_timestamp(reject.values.get("communicated_at"))
    return stamp is None or stamp < instant


def _count(column: pa.Array, value: str) -> int:
    import pyarrow.compute as pc

    return pc.sum(pc.equal(column, value)).as_py() or 0


def _reject_key(reject: RejectedRow) -> object:
    # One without a public_id is recognised by what it holds; two alike are two rejects, unless
    # a re-read serves one again.
    return reject.public_id or (reject.reason, repr(sorted(reject.values.items())))


class WindowWalk:
    """Every row of one window exactly once, part by part, narrowing on gateway timeouts."""

    def __init__(
        self,
        window: Window,
        *,
        limit: int,
        min_limit: int,
        min_window: timedelta,
        hint: WidthHint,
        path: str | None = None,
        read_on: ReadOn | None = None,
    ) -> None:
        self._default_limit = limit
        self._min_limit = min_limit
        self._hint = hint
        self._limit = self._part_limit()
        # The limit it was lowered from after 504s at the narrowest width, until a page came.
        self._lowered_from: int | None = None
        self._read_on = read_on
        self._read_on_before = None if read_on is None else format_timestamp(read_on.began)
        self._counted_before = None if read_on is None else format_timestamp(read_on.counted_at)
        self._ends_left = 0 if read_on is None else read_on.ends
        # It met an end it could not read on past: one more than its budget, or one that left
        # rows unread (EndCheck, set by its caller).
        self.read_on_ran_out = False
        self._end_check: EndCheck | None = None
        self._min_window = min_window
        self._path = path
        self._pending = [_Part(part, frozenset()) for part in reversed(hint.split(window))]
        self._until = window.until
        # Rejects handed over that a re-read from the edge could be served again (a multiset,
        # by position; one between the last row before the edge's instant and the first at it
        # counts too). Those the current re-read may still serve again are its part's ``again``.
        self._past_edge: Counter[_PastEdge] = Counter()
        # Rows at the edge's instant met so far, in order, skipped ones included.
        self._at_edge = 0
        self._part: _Part | None = None
        # Where the walk last read on without a refused cursor (the edge and its rows), and
        # whether a page came on a cursor since.
        self._dropped_at: tuple[str, int] | None = None
        self._cursor_served = False
        self._start_next_part()

    def _part_limit(self) -> int:
        """The page a part starts at: the walk's, or the one the gateway was found to take."""
        learned = self._hint.page_limit
        return (
            self._default_limit
            if learned is None
            else max(self._min_limit, min(self._default_limit, learned))
        )

    def _start_next_part(self) -> None:
        self._part = self._pending.pop() if self._pending else None
        if self._part is not None:
            # A part queued before the width (or the page) was learned starts at it.
            if self._hint.page_limit is not None:
                self._limit = min(self._limit, self._part_limit())
            first, *rest = self._hint.split(self._part.window)
            again, edge_rows = self._part.again, self._part.edge_rows
            self._pending.extend(
                _Part(piece, frozenset(), again, edge_rows) for piece in reversed(rest)
            )
            self._part = _Part(first, self._part.skip, again, edge_rows, self._part.instant)
            # A read-on of the edge's instant is served the rows it skips first. With a page of
            # them and no more, an API that ends the walk on that page (as it did, maybe, on the
            # same request before) would leave what follows them at that instant unread. Not
            # after a 504 or a cut: a larger page than the one that timed out would time out.
            if self._part.instant and len(self._part.skip) >= self._limit:
                self._limit = min(MAX_PAGE_LIMIT, len(self._part.skip) + self._part_limit())
            # Of what was handed over, only what this part may be served again lies past its
            # start: all of it when it starts at the edge, else what came after the edge's rows.
            self._past_edge = Counter()
            if again is not None and self._part.skip:
                self._past_edge = Counter(again)
            elif again is not None:
                for (kind, rows), n in again.items():
                    if rows == edge_rows:
                        self._past_edge[(kind, 0)] += n
            self._at_edge = 0
            # The API orders by (communicated_at, _id): everything before `edge` is done and at
            # `edge` exactly `edge_ids` are; that is what a re-read must start from.
            self._edge = self._part.window.since_text
            self._edge_ids = set(self._part.skip)
            self._cursor: str | None = None
            self._seen_cursors: set[str] = set()
            self._pages_in_place = 0
            self._strikes = 0
            self._handed_in_part = False  # a row or reject: what a read-on must make
            self._served_in_part = 0  # in the window an EndCheck counts
            # An instant's read-on is counted before its first page (count_due).
            self._count_due = self._part.instant
            self._instant_count: int | None = None

    def next_request(self) -> PageRequest | None:
        """The page to fetch next, or ``None`` once the window is done."""
        if self._part is None:
            return None
        return PageRequest(self._part.window, self._limit, self._cursor)

    @property
    def rest(self) -> Window | None:
        """What is left to walk, from the instant of the last row handed over (``None`` once
        done)."""
        if self._part is None:
            return None
        return Window(parse_timestamp(self._edge), self._until)

    def cut(self, at: datetime) -> WindowWalk | None:
        """Stop this walk at ``at`` and return a walk of ``[at, end)`` for another worker, or
        ``None`` when ``at`` is not inside :attr:`rest`, or while a reject handed over may lie
        past the edge (which of the two walks would be served it again is unknown).

        Only between pages: a request already sent would still cover the given-away window.
        No valid row at or after ``at`` has been handed over (``at`` is past the edge). The
        part in progress resumes from its edge in ``[edge, at)`` with a fresh cursor, since a
        cursor belongs to the filter it was issued under.
        """
        rest = self.rest
        part = self._part
        if rest is None or part is None or not rest.since < at < rest.until or +self._past_edge:
            return None
        kept = [p for p in self._pending if p.window.since < at]
        self._pending = [
            p
            if p.window.until <= at
            else _Part(Window(p.window.since, at), p.skip, p.again, p.edge_rows)
            for p in kept
        ]
        if part.window.until > at:
            self._restart_part(Window(rest.since, at))
        self._until = at
        return WindowWalk(
            Window(at, rest.until),
            limit=self._default_limit,
            min_limit=self._min_limit,
            min_window=self._min_window,
            hint=self._hint,
            path=self._path,
            # What is left of the budget, each: the two walks' ends are apart.
            read_on=None if self._read_on is None else replace(self._read_on, ends=self._ends_left),
        )

    def page_served(
        self, batch: pa.RecordBatch | None, rejects: Sequence[RejectedRow], next_cursor: str | None
    ) -> tuple[pa.RecordBatch | None, list[RejectedRow]]:
        """Take in the page answering :meth:`next_request` (``batch`` None: no valid row);
        returns its rows and rejects not handed over before (a re-read after a 504 starts inside
        the last instant read), and None for the rows of a page that served nothing."""
        part = self._require_part()
        self._cursor_served = self._cursor_served or self._cursor is not None
        was_at = self._position
        fresh: list[RejectedRow] = []
        if batch is not None or rejects:  # an empty page hands nothing over: no Arrow for it
            if batch is None:
                from d23_pipeline.schema_arrow import rows_to_batch

                batch = rows_to_batch([])
            batch, fresh = self._hand_over(part, batch, rejects)
        self._strikes = 0
        if self._lowered_from is not None:
            self._hint.limit_worked(self._limit, self._lowered_from)
            self._lowered_from = None
        else:
            self._hint.page_came(self._limit)
        self._pages_in_place = 0 if self._position != was_at else self._pages_in_place + 1
        self._handed_in_part = (
            self._handed_in_part or (batch is not None and batch.num_rows > 0) or bool(fresh)
        )
        if next_cursor is None:
            self._limit = self._part_limit()
            if self._reads_on_past_end():
                self._read_on_past_end(part)
            else:
                if self._read_on is not None and not self._handed_in_part:
                    self._end_check = self._end_check_of(part)
                self._start_next_part()
        elif next_cursor in self._seen_cursors:
            raise CursorLoopError(
                f"the API returned a nextCursor already seen in this walk, after "
                f"{len(self._seen_cursors) + 1} pages; stopping rather than loop or skip",
                window=part.window,
                path=self._path,
            )
        elif self._pages_in_place >= MAX_PAGES_IN_PLACE:
            raise CursorLoopError(
                f"the API served {self._pages_in_place} pages in a row, each on a new nextCursor, "
                "without a valid row past those handed over (empty pages, broken rows, or rows "
                "served again); stopping rather than loop for ever",
                window=part.window,
                path=self._path,
            )
        else:
            self._seen_cursors.add(next_cursor)
            self._cursor = next_cursor
        return batch, fresh

    def _hand_over(
        self, part: _Part, batch: pa.RecordBatch, rejects: Sequence[RejectedRow]
    ) -> tuple[pa.RecordBatch, list[RejectedRow]]:
        """The page's rows and rejects not handed over before; moves the edge over its rows."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = batch.column("communicated_at")  # in the API's order, skipped rows included
        if self._read_on is not None:
            if part.instant or self._read_on_before is None:
                before_count = len(column) + len(rejects)
            else:
                before_count = (pc.sum(pc.less(column, self._read_on_before)).as_py() or 0) + sum(
                    _logged_before(reject, self._read_on_before) for reject in rejects
                )
            self._served_in_part += before_count
        # As Python strings only where rejects need placing: a clean page makes no object per row.
        stamps: list[str] = column.to_pylist() if rejects else []
        first_new = 0  # the page's first row not handed over before
        if part.skip:
            # Only at the instant the re-read starts from: the same id later in the part is the
            # row's newer version, moved forward while the window was read.
            already = pa.array(list(part.skip), pa.string())
            handed = pc.and_(
                pc.equal(batch.column("communicated_at"), part.window.since_text),
                pc.is_in(batch.column("public_id"), already),
            )
            first_new = next(
                (i for i, seen in enumerate(handed.to_pylist()) if not seen), len(column)
            )
            batch = batch.filter(pc.invert(handed))
        served_again = part.again if part.again is not None else Counter()
        fresh = []
        for reject in rejects:
            position = _position(reject)
            # What was handed over before all comes before the first row that was not; in a
            # re-read from the edge, after as many of the edge's rows as it did the first time.
            rows = (
                self._at_edge + stamps[:position].count(self._edge) if part.skip else part.edge_rows
            )
            key = (_reject_key(reject), rows)
            if position <= first_new and served_again[key] > 0:
                served_again[key] -= 1
            elif reject.public_id in part.skip:
                # Handed over valid at the edge's instant, broken since (and maybe moved): the
                # same row, which the quarantine hears of but the read's total does not count.
                fresh.append(replace(reject, served_valid=True))
            else:
                fresh.append(reject)
        if first_new < len(column):
            served_again.clear()  # shared by the pieces of the re-read
        edge = self._edge
        if self._advance_edge(batch):
            # Rejects of earlier pages come before this page's first row: past the new edge
            # (or just before its first row there) only if that row is at its instant.
            kept: Counter[_PastEdge] = Counter()
            if column[0].as_py() >= self._edge:
                for (kind, _), n in self._past_edge.items():
                    kept[(kind, 0)] += n
            self._past_edge = kept + self._keys_past_edge(rejects, stamps, 0)
            self._at_edge = _count(column, self._edge)
        else:
            self._past_edge.update(self._keys_past_edge(fresh, stamps, self._at_edge))
            self._at_edge += _count(column, edge)
        return batch, fresh

    def gateway_timeout(self, request_id: str | None = None) -> Narrowing:
        """The request from :meth:`next_request` timed out at the gateway (504)."""
        part = self._require_part()
        remaining = Window(parse_timestamp(self._edge), part.window.until)
        self._strikes += 1
        if remaining.duration >= 2 * self._min_window:
            self._hint.failed(part.window.duration, self._limit)
            pieces = self._hint.split(remaining)
            if len(pieces) < 2:
                pieces = list(remaining.halves())
            # The first piece goes on with the part from its edge: what the part handed over
            # still asks for reading on past its end, wherever the part was cut.
            handed = self._handed_in_part
            self._read_again_in(pieces)
            self._handed_in_part = handed
            return Narrowing(remaining, split=True, limit=self._limit, pause_strikes=0)
        if self._strikes == 1:
            return Narrowing(remaining, split=False, limit=self._limit, pause_strikes=1)
        if self._limit > self._min_limit:
            self._lowered_from = self._limit
            self._limit = max(self._min_limit, self._limit // 2)
            self._restart_part(remaining)
            return Narrowing(remaining, split=False, limit=self._limit, pause_strikes=self._strikes)
        raise WindowTooHeavyError(
            f"the API kept timing out (504) even at page limit {self._limit}, the fewest rows a "
            f"page the client falls back to, and the minimum window of {self._min_window}; set "
            f"D23_PAGE_LIMIT below {self._limit} or ask the API team. If every request timed "
            "out, counts of the narrowest windows too, the API or its gateway was down: launch "
            "the run again once it answers",
            status=504,
            request_id=request_id,
            path=self._path,
            window=remaining,
        )

    def cursor_refused(self) -> bool:
        """The API kept failing the request from :meth:`next_request` with a 500, the answer to
        a corrupt cursor (documented), and to one that expired. Read the part on from its edge
        without the cursor, the same re-read as after a 504; whether it does: not for a request
        without a cursor, nor again before a page came through on a cursor and the walk handed
        over a row past the point where it last did so. Otherwise an API refusing every cursor
        would have the walk crawl a page per retry budget, and cursors that expire before a walk
        gets past a stretch of ties or empty pages would have it read that stretch for ever."""
        part = self._require_part()
        position = self._position
        if self._cursor is None or (
            self._dropped_at is not None
            and (not self._cursor_served or position <= self._dropped_at)
        ):
            return False
        self._restart_part(Window(parse_timestamp(self._edge), part.window.until))
        self._dropped_at, self._cursor_served = position, False
        return True

    def _read_again_in(self, pieces: list[Window], *, instant: bool = False) -> None:
        """Read what is left of the part again, from its edge, as ``pieces`` that tile it
        (``instant``: the first is the edge's instant alone, read on to)."""
        again, edge_rows = self._budget_to_read_again()
        self._pending.extend(
            _Part(piece, frozenset(), again, edge_rows) for piece in reversed(pieces[1:])
        )
        self._pending.append(_Part(pieces[0], frozenset(self._edge_ids), again, edge_rows, instant))
        self._start_next_part()

    def count_due(self) -> Window | None:
        """The window to count before the next page, once: an instant's, before its read-on
        walks it. Its caller passes the exact count to :meth:`counted`."""
        if self._part is None or not self._count_due:
            return None
        self._count_due = False
        return self._part.window

    def counted(self, total: int | None) -> None:
        """The exact count of the window :meth:`count_due` gave, or ``None``: without one, the
        read-on proves nothing (any row served and gone by the count after could stand in for
        one it left unread)."""
        self._instant_count = total
        if total is None:
            self.read_on_ran_out = True

    def take_end_check(self) -> EndCheck | None:
        """The part that just ended with nothing new, once: its caller counts its window and
        sets :attr:`read_on_ran_out` if more rows are there."""
        check, self._end_check = self._end_check, None
        return check

    def _end_check_of(self, part: _Part) -> EndCheck | None:
        # Only the rows served again count: one handed over at the instant before and not
        # served again may have gone since, and would stand in for a row the end left unread.
        if part.instant:
            return EndCheck(part.window, self._served_in_part, self._instant_count)
        if self._read_on_before is None:
            return EndCheck(part.window, self._served_in_part)
        began = parse_timestamp(self._read_on_before)
        if began <= part.window.since:
            return None
        return EndCheck(
            Window(part.window.since, min(part.window.until, began)), self._served_in_part
        )

    def _reads_on_past_end(self) -> bool:
        """Whether to read on past the end of the part's walk: it handed over a row or reject
        not handed over before, its edge is before the instant the read began, and, where its
        edge is before the counts, the walk has read-ons left (taking one)."""
        if not (
            self._read_on_before is not None
            and self._handed_in_part
            and self._edge < self._read_on_before
        ):
            return False
        if self._counted_before is not None and self._edge >= self._counted_before:
            return True  # past the count's instant: the count does not bound what is there
        if self._ends_left <= 0:
            self.read_on_ran_out = True
            return False
        self._ends_left -= 1
        return True

    def _read_on_past_end(self, part: _Part) -> None:
        # The edge's instant on its own first (an end inside it leaves rows there), then the
        # rest from the next millisecond: a walk that starts past the point where the API ended
        # it does not meet that point again.
        edge = parse_timestamp(self._edge)
        following = edge + ONE_MS
        if following < part.window.until:
            pieces = [Window(edge, following), Window(following, part.window.until)]
        else:
            pieces = [Window(edge, part.window.until)]
        self._read_again_in(pieces, instant=True)

    def _restart_part(self, remaining: Window) -> None:
        # The part starts again from the resume point (at a smaller page after 504s, or in a
        # narrower window after a cut), keeping the strikes.
        strikes, edge_ids = self._strikes, frozenset(self._edge_ids)
        again, edge_rows = self._budget_to_read_again()
        self._part = _Part(remaining, edge_ids, again, edge_rows, self._require_part().instant)
        self._at_edge = 0
        self._served_in_part = 0  # the part is served again from its edge
        self._edge = remaining.since_text
        self._edge_ids = set(edge_ids)
        self._cursor = None
        self._seen_cursors = set()
        self._pages_in_place = 0  # the pages read again from the edge would count twice
        self._strikes = strikes

    def _budget_to_read_again(self) -> tuple[Counter[_PastEdge], int]:
        """What a re-read from the edge may be served again, and the edge's rows before it.
        The later pieces of a re-read still in progress share it from now on: what they may be
        served again is what this re-read may, and one served again here is not there."""
        again, edge_rows = Counter(self._past_edge), len(self._edge_ids)
        current = self._part.again if self._part is not None else None
        if current is not None:
            for pending in self._pending:
                if pending.again is current:
                    pending.again, pending.edge_rows = again, edge_rows
        return again, edge_rows

    @property
    def _position(self) -> tuple[str, int]:
        """How far the walk has handed over: the edge's instant, and its rows handed over."""
        return self._edge, len(self._edge_ids)

    def _require_part(self) -> _Part:
        if self._part is None:
            raise RuntimeError("the walk is done: no request is outstanding")
        return self._part

    def _keys_past_edge(
        self, rejects: Sequence[RejectedRow], stamps: list[str], at_edge_before: int
    ) -> Counter[_PastEdge]:
        """Of ``rejects`` (of a page whose rows, in order, were communicated at ``stamps``),
        those a re-read from the edge could serve again: after a row at the edge's instant, or
        just before one (their own instant unknown), or on a page without rows; each with the
        number of the edge's rows before it (``at_edge_before`` of them on earlier pages)."""
        past: Counter[_PastEdge] = Counter()
        for reject in rejects:
            position = _position(reject)
            before = stamps[position - 1] if 0 < position <= len(stamps) else None
            after = stamps[position] if position < len(stamps) else None
            if (
                (before is not None and before >= self._edge)
                or after is None
                or after >= self._edge
            ):
                rows = at_edge_before + stamps[:position].count(self._edge)
                past[(_reject_key(reject), rows)] += 1
        return past

    def _advance_edge(self, batch: pa.RecordBatch) -> bool:
        """Move the edge over the page's valid rows; whether it moved to a later instant."""
        import pyarrow.compute as pc

        stamps = batch.column("communicated_at")
        latest = pc.max(stamps).as_py()
        if latest is None or latest < self._edge:
            return False
        at_latest = batch.column("public_id").filter(pc.equal(stamps, latest)).to_pylist()
        later: bool = latest > self._edge
        self._edge_ids = (set() if later else self._edge_ids) | set(at_latest)
        self._edge = latest
        return later
