"""The D23 Exports API client: counted, windowed cursor walks over concurrent slices.

The pieces it composes each have one job: ``session`` sends one authenticated GET, ``pages``
reads the answer, ``walk`` decides what to ask next within a window, ``completeness`` judges a
slice against the API's counts, and ``fanout`` runs slices side by side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import Any

import httpx
import pyarrow as pa

from d23_pipeline.client.auth import TokenManager
from d23_pipeline.client.completeness import SliceProof, WindowTotal, judge, sum_totals
from d23_pipeline.client.fanout import Deliver, fan_out
from d23_pipeline.client.pages import read_page, read_total
from d23_pipeline.client.retry import Retrier, RetryPolicy
from d23_pipeline.client.session import ExportsSession, GatewayTimeout
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.client.walk import WidthHint, WindowWalk
from d23_pipeline.client.windows import Window
from d23_pipeline.schema import RejectedRow
from d23_pipeline.settings import Credentials

log = logging.getLogger("d23_pipeline.client")

_MAX_API_LIMIT = 1000
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class SlicePage:
    """One API page of ``slice``: its valid rows (the nine fields, as Arrow) and its rejects."""

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


class ExportsClient:
    """Reads one lender's rows of one dataset (default S4/D23) window by window."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        page_limit: int = 500,
        max_concurrency: int = 4,
        slice_size: timedelta = timedelta(days=1),
        min_window: timedelta = timedelta(minutes=15),
        max_window: timedelta | None = None,
        min_page_limit: int = 50,
        slice_reads: int = 3,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        section: str = "S4",
        dataset: str = "D23",
    ) -> None:
        # A page limit configured below the floor is its own floor (D23_PAGE_LIMIT may be 1).
        min_page_limit = min(min_page_limit, page_limit)
        if not 1 <= min_page_limit <= page_limit <= _MAX_API_LIMIT:
            raise ValueError(
                f"need 1 <= min_page_limit ({min_page_limit}) <= page_limit ({page_limit}) "
                f"<= {_MAX_API_LIMIT}"
            )
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1 (got {max_concurrency})")
        if min_window < _MS or slice_size < min_window:
            raise ValueError("need 1 ms <= min_window <= slice_size")
        if slice_reads < 1:
            raise ValueError(f"slice_reads must be at least 1 (got {slice_reads})")
        self._page_limit = page_limit
        self._min_page_limit = min_page_limit
        self._max_concurrency = max_concurrency
        self._slice_size = slice_size
        self._min_window = min_window
        self._slice_reads = slice_reads
        self._widths = WidthHint(min_window, max_window)
        self.stats = ClientStats(page_limit)
        connections = max_concurrency + 1
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self._retrier = Retrier(retry, self.stats, sleep)
        base_url = base_url.rstrip("/")
        self._auth = TokenManager(credentials, self._http, base_url, self._retrier, self.stats)
        self._session = ExportsSession(
            self._http,
            base_url,
            self._auth,
            self._retrier,
            self.stats,
            section=section,
            dataset=dataset,
        )

    @property
    def lender_public_id(self) -> str:
        """The lender's UUID; logs in first when using login credentials."""
        return self._auth.lender_public_id

    @property
    def max_window(self) -> timedelta | None:
        """The widest window the gateway answers, as learned from 504s (``None``: no limit
        seen). Give it to the next client reading the same data as ``max_window``."""
        return self._widths.ceiling

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
        if total.exact_total is not None or window.duration < 2 * self._min_window:
            return [(window, total)]
        self.stats.add("count_splits")
        return [part for half in window.halves() for part in self.count_parts(half, cancel)]

    def count(self, window: Window, cancel: threading.Event | None = None) -> WindowTotal:
        """One ``includeTotal`` request; a gateway timeout is an inexact answer, not an error."""
        params = {
            "since": window.since_text,
            "until": window.until_text,
            "limit": "1",
            "sort": "asc",
            "includeTotal": "true",
        }
        try:
            return self._session.get(
                params, read_total, what="total", window=window, cancel=cancel
            )
        except GatewayTimeout:
            self.stats.retry("504")
            self._widths.failed(window.duration)
            return WindowTotal(None, False, "timeout")

    def confirm_absent(self, candidates: Sequence[tuple[str, datetime]]) -> set[str]:
        """Of ``(public_id, communicated_at)`` pairs, those a proven-complete read of their
        instant no longer returns: the evidence a deletion needs.

        Each distinct instant is read as its own one-millisecond window and counted after the
        walk; an instant whose walk served fewer rows than the exact count proves nothing, so
        its candidates are kept.
        """
        by_instant: dict[datetime, set[str]] = defaultdict(set)
        for public_id, communicated_at in candidates:
            by_instant[communicated_at].add(public_id)
        if not by_instant:
            return set()

        def absent_at(instant: datetime, ids: set[str]) -> set[str]:
            window = Window(instant, instant + _MS)
            served_ids: set[str] = set()
            served = 0
            for page in self._walk(window, None, self._page_limit):
                served_ids.update(page.batch.column("public_id").to_pylist())
                served_ids.update(r.public_id for r in page.rejects if r.public_id)
                served += page.batch.num_rows + len(page.rejects)
            if self.count(window).exact_total != served:
                return set()
            return ids - served_ids

        workers = min(self._max_concurrency, len(by_instant))
        with ThreadPoolExecutor(workers, thread_name_prefix="d23-confirm") as pool:
            found = pool.map(lambda item: absent_at(*item), by_instant.items())
            return set().union(*found)

    def iter_window(self, window: Window) -> Iterator[SlicePage]:
        """Every row of ``window`` exactly once, page by page, narrowing on 504."""
        return self._walk(window, None, self._page_limit)

    def iter_slices(self, window: Window, *, skip: Collection[Window] = ()) -> Iterator[SliceEvent]:
        """Walk the ``slice_size`` slices of ``window`` concurrently, except those in ``skip``.

        Each slice is counted before and after its walk (:meth:`count_parts`) and read again,
        up to ``slice_reads`` reads in all, while what it served is not proven complete; a
        re-read is announced by a :class:`SliceRestart`. Pages of one slice arrive in order,
        followed by exactly one :class:`SliceDone` carrying the last read's proof. The first
        worker error stops the other workers and is raised here; closing the generator early
        stops the workers too.
        """
        done = set(skip)
        todo = [piece for piece in window.split(self._slice_size) if piece not in done]
        return fan_out(todo, self._read_slice, workers=self._max_concurrency, name="d23-client")

    def _read_slice(self, piece: Window, cancel: threading.Event, deliver: Deliver) -> None:
        limit = self._page_limit
        for read in range(1, self._slice_reads + 1):
            if read > 1:
                deliver(SliceRestart(piece))
            parts = self.count_parts(piece, cancel)
            rows = rejects = pages = 0
            for page in self._walk(piece, cancel, limit):
                pages += 1
                rows += page.batch.num_rows
                rejects += len(page.rejects)
                deliver(page)
            after = [self.count(part, cancel) for part, _ in parts]
            proof = judge(
                rows + rejects, sum_totals([t for _, t in parts]), sum_totals(after), read
            )
            if proof.verified or read == self._slice_reads:
                break
            self.stats.add("slice_rereads")
            log.warning("slice %s not proven complete (%s); reading it again", piece, proof.reason)
            # Smaller pages fall on other boundaries, so the re-read is a different walk.
            limit = max(self._min_page_limit, limit * 3 // 4)
        deliver(SliceDone(piece, rows, rejects, pages, proof))

    def _walk(
        self, window: Window, cancel: threading.Event | None, limit: int
    ) -> Iterator[SlicePage]:
        session = self._session
        walk = WindowWalk(
            window,
            limit=limit,
            min_limit=self._min_page_limit,
            min_window=self._min_window,
            hint=self._widths,
            path=session.path,
        )
        what = f"page of {session.section}/{session.dataset}"
        while (request := walk.next_request()) is not None:
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
                narrowing = walk.gateway_timeout(exc.request_id)
                self.stats.retry("504")
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
            batch, rejects = walk.page_served(page.batch, page.rejects, page.next_cursor)
            self.stats.page(page.served_rows, batch.num_rows, len(rejects), page.extra_fields)
            yield SlicePage(window, batch, rejects)
