"""Which slice, or which share of another worker's walk, a free worker reads next.

Workers take slices in time order. Once none is left, a free worker does not stop while others
walk on alone (at the end of a month that left workers idle for a tenth of the run): it asks the
walk with the most pages left for the later half of what it has left, and walks that as another
part of the same slice read. The owner hands it over between two pages
(:meth:`~d23_pipeline.client.walk.WindowWalk.cut`), so the parts share no row. The counts still
cover the whole slice: its counts before the walk are taken once, and the last part to finish
takes the counts after it and judges what all parts served.

Pages left are estimated from what the counts told: the slice's exact count before its walk,
less what its parts have served, spread over its parts by the time each has left, at the rows
per page the slice has had so far (short pages of a "via" dataset included). A share costs about
one more request (both parts end in a part page), so a walk is split only if that still leaves
each part less to do: two pages left or more. A worker whose work ends with counts asks for its
next share before sending them, so the owner hands it over while they are in flight.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING

from d23_pipeline.client.completeness import WindowTotal, sum_totals
from d23_pipeline.client.walk import WindowWalk
from d23_pipeline.client.windows import ONE_MS, Window
from d23_pipeline.schema import RejectedRow

if TYPE_CHECKING:
    import pyarrow as pa

# A walk is split only if it has at least this many pages left: the two halves each end in a
# part page, so with fewer the split would not shorten the end of the walk. (At 4, workers at
# C=4 still sat idle for ~0.35 s of the last second; at 2, ~0.15 s: benchmarks/README.md, 0b.)
MIN_PAGES_TO_SPLIT = 2
# How often a waiting worker looks at the cancel flag.
_POLL_S = 0.05


@dataclass(frozen=True)
class ReadAgain:
    """A slice whose read was not proven complete, to be read again: as which read, and with
    which page limit."""

    slice: Window
    number: int
    limit: int


@dataclass(eq=False)
class SliceRead:
    """One read of one slice: its counts before the walk, and what its parts have served."""

    slice: Window
    number: int
    limit: int
    before: list[tuple[Window, WindowTotal]]
    # A row whose updated_at (canonical text, which sorts as time does) is this or later changed
    # after the slice was counted.
    changed_since: str
    rows: int = 0
    rejects: int = 0  # handed over
    # Rows and rejects whose public_id the read had handed over already, the one way or the
    # other. A 504's re-read can place a bad row anew, or serve again broken a row it handed
    # over valid, or valid a bad row it handed over, mended since (walk.py): the same source
    # row, counted once in what the read served; a bad row's version alike is not handed over
    # again.
    repeated: int = 0
    pages: int = 0
    parts: int = 0  # parts handed out and not finished
    # A part stopped before the end of its walk (an error, a cancel): nothing proves the read.
    broken: bool = False
    # A part's walk met an end it could not read on past (walk.py): nor do the counts prove it.
    read_on_ran_out: bool = False
    # Whether it served a row changed after the slice was counted.
    changed: bool = False
    _reject_ids: set[str] = field(default_factory=set)
    _reject_versions: set[tuple[str, str, str]] = field(default_factory=set)

    @cached_property
    def total_before(self) -> WindowTotal:
        """The slice's count before its walk, from the counts of its parts."""
        return sum_totals([total for _, total in self.before])

    @property
    def served(self) -> int:
        """The rows and rejects it served, a row served twice by it (see ``repeated``) once."""
        return self.rows + self.rejects - self.repeated

    def hand_over(self, ids: pa.Array | None, rejects: Sequence[RejectedRow]) -> list[RejectedRow]:
        """Note a page's valid rows (their ``ids``; None: none) and rejects; returns the rejects
        to hand over: not a version already handed over. One without a usable public_id is known
        by nothing else, and the walk already told it from one served again."""
        # Each page against the set: linear in the rows, however many.
        if self._reject_ids and ids is not None:
            self.repeated += sum(i in self._reject_ids for i in ids.to_pylist())
        handed = []
        for reject in rejects:
            if reject.public_id:
                version = (reject.public_id, reject.reason, repr(sorted(reject.values.items())))
                if version in self._reject_versions:
                    continue
                self._reject_versions.add(version)
                if reject.public_id in self._reject_ids or reject.served_valid:
                    self.repeated += 1
                self._reject_ids.add(reject.public_id)
            handed.append(reject)
        return handed


class _Ask:
    """A free worker's request for the rest of a walk, answered by the walk's owner."""

    def __init__(self) -> None:
        self._answered = threading.Event()
        self._share: Part | None = None

    def answer(self, share: Part | None) -> None:
        self._share = share
        self._answered.set()

    def wait(self, cancel: threading.Event) -> Part | None:
        while not self._answered.wait(_POLL_S):
            if cancel.is_set():
                return None
        return self._share


class Part:
    """One window of a slice read, walked by one worker (its owner)."""

    def __init__(self, read: SliceRead, walk: WindowWalk, schedule: SliceSchedule) -> None:
        self.read = read
        self.walk = walk
        self._schedule = schedule
        self.rest = walk.rest  # what the owner has left, as of its last page
        self.asked: _Ask | None = None

    def between_pages(self) -> None:
        """Called by the owner with no request outstanding: hand over the later half of what is
        left if a free worker asked for it and it is still worth splitting."""
        self._schedule.hand_over(self)

    def served(
        self, batch: pa.RecordBatch | None, rejects: Sequence[RejectedRow], changed: bool
    ) -> list[RejectedRow]:
        """Count a page of the part (``batch`` None: no valid row; ``changed``: it served a row
        changed since the count); returns its rejects to hand to the caller."""
        return self._schedule.served(self, batch, rejects, changed)

    def close(self, walked: bool) -> bool:
        """The owner is done with the part, ``walked`` to its end or stopped: decline a pending
        ask. True when this was the read's last part and no part stopped early: its owner then
        proves the read."""
        return self._schedule.close(self, walked)


class SliceSchedule:
    """The slices left to read and the parts being walked, shared by the workers of one
    :meth:`~d23_pipeline.client.ExportsClient.iter_slices`."""

    def __init__(self, window: Window, slices: Sequence[Window], page_limit: int) -> None:
        self.window = window
        self._todo: deque[Window | ReadAgain] = deque(slices)
        self._page_limit = page_limit
        self._changed = threading.Condition()
        self._parts: set[Part] = set()
        self._open_reads = 0  # slices taken and not done
        self._walking = 0  # slices taken whose parts have not all closed
        # The window's count once every walk has ended, by the read again it was asked after.
        self._reads_again = 0
        self._window_claimed: int | None = None
        self._window_total: tuple[int, WindowTotal] | None = None
        self._rows = 0  # served, of every slice, for slices without pages yet
        self._pages = 0
        self._asked_ahead = threading.local()

    def take(self, cancel: threading.Event) -> Window | ReadAgain | Part | None:
        """The share this worker asked for ahead, a slice to read (again), or a share of another
        worker's walk; ``None`` once no work can appear any more (every slice read is done) or
        on cancel."""
        ask: _Ask | None = getattr(self._asked_ahead, "ask", None)
        self._asked_ahead.ask = None
        while not cancel.is_set():
            if ask is None:
                with self._changed:
                    if self._todo:
                        self._open_reads += 1
                        self._walking += 1
                        return self._todo.popleft()
                    ask = self._ask()
                    if ask is None:
                        if not self._open_reads:
                            return None
                        # A read still counting, or restarting, may yet have pages to share.
                        self._changed.wait(_POLL_S)
                        continue
            share = ask.wait(cancel)
            if share is not None:
                return share
            ask = None
        return None

    def ask_ahead(self) -> None:
        """The caller's work ends with requests that need no page boundary of anyone (a read's
        counts after its walk): ask for its next share now, so the owner hands it over while
        those requests are in flight, and :meth:`take` has it at once."""
        with self._changed:
            if not self._todo:
                self._asked_ahead.ask = self._ask()

    def begin(self, read: SliceRead, walk: WindowWalk) -> Part:
        """The first part of a read: the whole slice, walked by the worker that counted it."""
        with self._changed:
            part = self._add(read, walk)
            self._changed.notify_all()
            return part

    def read_done(self) -> None:
        """The read of a slice taken from :meth:`take` is proven, or given up, and delivered."""
        with self._changed:
            self._open_reads -= 1
            self._changed.notify_all()

    def read_again(self, again: ReadAgain) -> None:
        """The read of a slice taken from :meth:`take` is not proven complete: its next read
        goes first to whichever worker is free. Not walked by the worker that judged it, which
        may have asked for a share ahead (:meth:`ask_ahead`) and is handed one: it walks that
        first, rather than leave it unwalked, and its slice unproven, for a whole re-read."""
        with self._changed:
            self._todo.appendleft(again)
            self._open_reads -= 1
            self._reads_again += 1
            self._changed.notify_all()

    def claim_window_count(self) -> int | None:
        """Once every slice is walked (only counts after walks left), a claim for the one
        worker to count the whole window, while those counts are in flight: an end-of-read
        count that waits for none of them. ``None`` while walks are left or to come, or once
        claimed since the last read again."""
        with self._changed:
            if self._todo or self._walking or self._window_claimed == self._reads_again:
                return None
            self._window_claimed = self._reads_again
            return self._window_claimed

    def window_counted(self, claim: int, total: WindowTotal) -> None:
        with self._changed:
            self._window_total = (claim, total)

    @property
    def window_total(self) -> WindowTotal | None:
        """The window's count asked after every walk had ended, unless a slice was read again
        since (its walk came after the count)."""
        with self._changed:
            if self._window_total is None or self._window_total[0] != self._reads_again:
                return None
            return self._window_total[1]

    def hand_over(self, part: Part) -> None:
        with self._changed:
            ask, part.asked = part.asked, None
            if ask is None:
                return
            share = None
            rest = part.rest = part.walk.rest  # what _pages_left judges is what is cut
            if (
                rest is not None
                and self._pages_left(part) >= MIN_PAGES_TO_SPLIT
                and (given := part.walk.cut(rest.halves()[1].since)) is not None
            ):
                share = self._add(part.read, given)
                part.rest = part.walk.rest
        ask.answer(share)

    def served(
        self,
        part: Part,
        batch: pa.RecordBatch | None,
        rejects: Sequence[RejectedRow],
        changed: bool,
    ) -> list[RejectedRow]:
        rows, ids = (0, None) if batch is None else (batch.num_rows, batch.column("public_id"))
        with self._changed:
            read = part.read
            handed = read.hand_over(ids, rejects)
            read.rows += rows
            read.rejects += len(handed)
            read.changed = read.changed or changed
            read.pages += 1
            self._rows += rows + len(handed)
            self._pages += 1
            part.rest = part.walk.rest
            self._changed.notify_all()
            return handed

    def close(self, part: Part, walked: bool) -> bool:
        with self._changed:
            ask, part.asked = part.asked, None
            self._parts.discard(part)
            part.rest = None
            part.read.parts -= 1
            if not part.read.parts:
                self._walking -= 1
            part.read.broken = part.read.broken or not walked
            part.read.read_on_ran_out = part.read.read_on_ran_out or part.walk.read_on_ran_out
            last = part.read.parts == 0 and not part.read.broken
            self._changed.notify_all()
        if ask is not None:
            ask.answer(None)
        return last

    def _add(self, read: SliceRead, walk: WindowWalk) -> Part:
        part = Part(read, walk, self)
        read.parts += 1
        self._parts.add(part)
        return part

    def _ask(self) -> _Ask | None:
        """Ask the walk with the most pages left for a share, if one is worth splitting."""
        best, most = None, float(MIN_PAGES_TO_SPLIT)
        for part in self._parts:
            if part.asked is None and (left := self._pages_left(part)) >= most:
                best, most = part, left
        if best is None:
            return None
        best.asked = _Ask()
        return best.asked

    def _pages_left(self, part: Part) -> float:
        # The slice's exact count less what it served, spread over its parts by time left. A
        # slice without an exact count is not split: there is nothing to estimate from.
        # Nor is a walk with less than 2 ms left, which cannot be halved: asked again and again,
        # it would keep the asker from the walk with the most pages left after it.
        read = part.read
        expected = read.total_before.exact_total
        if part.rest is None or part.rest.duration < 2 * ONE_MS or expected is None:
            return 0.0
        rests = sum(
            (p.rest.duration for p in self._parts if p.read is read and p.rest is not None),
            timedelta(),
        )
        rows_left = max(0, expected - read.rows - read.rejects) * (part.rest.duration / rests)
        served, pages = read.rows + read.rejects, read.pages
        if not pages:  # nothing of this slice yet: what other slices had
            served, pages = self._rows, self._pages
        rows_per_page = served / pages if pages else self._page_limit
        return rows_left / max(rows_per_page, 1.0)
