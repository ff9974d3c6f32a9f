"""The D23 Exports API client: windowed cursor walks, 504 narrowing, concurrent slices."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from d23_pipeline.client.auth import TokenManager
from d23_pipeline.client.completeness import SliceProof, WindowTotal, judge, sum_totals
from d23_pipeline.client.errors import (
    AuthenticationError,
    CursorLoopError,
    DatasetNotFoundError,
    ExportsApiError,
    LenderMismatchError,
    WindowTooHeavyError,
)
from d23_pipeline.client.retry import (
    Cancelled,
    Retrier,
    RetryPolicy,
    Transient,
    decode_json,
    request_id_of,
    transient_for,
)
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.client.windows import Window
from d23_pipeline.schema import (
    RejectedRow,
    parse_timestamp,
    read_canonical_page,
    rows_to_batch,
    validate_rows,
)
from d23_pipeline.settings import Credentials

log = logging.getLogger("d23_pipeline.client")

T = TypeVar("T")

_MAX_API_LIMIT = 1000
_MS = timedelta(milliseconds=1)
# Seconds a closing consumer waits for workers; a worker still inside a request exits by itself
# (daemon thread) as soon as that request returns, because it sees the cancel flag.
_JOIN_BUDGET_S = 5.0


@dataclass(frozen=True)
class SlicePage:
    """One API page of ``slice``: its valid rows (the nine fields, as Arrow) and its rejects."""

    slice: Window
    batch: pa.RecordBatch
    rejects: list[RejectedRow]

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The valid rows as dicts, for callers that want Python objects."""
        return self.batch.to_pylist()


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


class _GatewayTimeout(Exception):
    def __init__(self, request_id: str | None) -> None:
        super().__init__("504")
        self.request_id = request_id


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_WORKER_EXIT = object()


def _envelope_body(response: httpx.Response) -> dict[str, Any]:
    envelope = decode_json(response)
    body = envelope.get("body") if isinstance(envelope, dict) else None
    if not isinstance(body, dict):
        raise _bad_body(response, "no body object in the envelope")
    return body


def _bad_body(response: httpx.Response, detail: str) -> Transient:
    return Transient(
        "bad_body", status=response.status_code, request_id=request_id_of(response), detail=detail
    )


def _parse_page(response: httpx.Response) -> tuple[list[Any], str | None]:
    body = _envelope_body(response)
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise _bad_body(response, "no body.rows list")
    pagination = body.get("pagination")
    if not isinstance(pagination, dict) or "nextCursor" not in pagination:
        # A missing cursor must not be read as "no more pages": that would truncate silently.
        raise _bad_body(response, "no body.pagination.nextCursor")
    cursor = pagination["nextCursor"]
    if cursor is not None and not (isinstance(cursor, str) and cursor):
        raise _bad_body(response, "nextCursor is neither a cursor string nor null")
    return rows, cursor


@dataclass(frozen=True)
class _Page:
    served_rows: int
    batch: pa.RecordBatch
    rejects: list[RejectedRow]
    extra_fields: set[str]
    next_cursor: str | None


def _read_page(response: httpx.Response, since: str, until: str) -> _Page:
    # Most pages are clean and not the last: Arrow reads those straight from the bytes. Every
    # other page takes the row-by-row path, which rejects with reasons.
    clean = read_canonical_page(response.content, since, until)
    if clean is not None:
        batch, cursor = clean
        return _Page(batch.num_rows, batch, [], set(), cursor)
    raw_rows, cursor = _parse_page(response)
    result = validate_rows(raw_rows, since, until)
    batch = result.batch if result.batch is not None else rows_to_batch(result.rows)
    return _Page(len(raw_rows), batch, result.rejects, result.extra_fields, cursor)


def _parse_total(response: httpx.Response) -> WindowTotal:
    pagination = _envelope_body(response).get("pagination")
    if not isinstance(pagination, dict):
        return WindowTotal(None, False, None)
    total = pagination.get("total")
    note = pagination.get("totalNote")
    return WindowTotal(
        total if isinstance(total, int) and not isinstance(total, bool) else None,
        pagination.get("totalExact") is True,
        note if isinstance(note, str) else None,
    )


def _reject_key(reject: RejectedRow) -> object:
    # The edge moves over valid rows only, so a re-read after a 504 can meet a reject again; one
    # without a public_id is recognised by what it holds.
    return reject.public_id or (reject.reason, repr(sorted(reject.values.items())))


def _advance_edge(edge: str, edge_ids: set[str], batch: pa.RecordBatch) -> tuple[str, set[str]]:
    """The latest ``communicated_at`` handed over so far and the public_ids at that instant."""
    stamps = batch.column("communicated_at")
    latest = pc.max(stamps).as_py()
    if latest is None or latest < edge:
        return edge, edge_ids
    at_latest = batch.column("public_id").filter(pc.equal(stamps, latest)).to_pylist()
    return latest, (edge_ids if latest == edge else set()) | set(at_latest)


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
        self._base_url = base_url.rstrip("/")
        self._page_limit = page_limit
        self._min_page_limit = min_page_limit
        self._max_concurrency = max_concurrency
        self._slice_size = slice_size
        self._min_window = min_window
        self._slice_reads = slice_reads
        self._section = section
        self._dataset = dataset
        self.stats = ClientStats(page_limit)
        connections = max_concurrency + 1
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self._retrier = Retrier(retry, self.stats, sleep)
        self._auth = TokenManager(
            credentials, self._http, self._base_url, self._retrier, self.stats
        )

    @property
    def lender_public_id(self) -> str:
        """The lender's UUID; logs in first when using login credentials."""
        return self._auth.lender_public_id

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
            return self._get(
                params,
                _parse_total,
                what="total",
                window=window,
                cancel=cancel,
                gateway_timeout_is_transient=False,
            )
        except _GatewayTimeout:
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
        if not todo:
            return
        work: queue.SimpleQueue[Window] = queue.SimpleQueue()
        for piece in todo:
            work.put(piece)
        # Bounded: a slow consumer blocks the workers instead of letting pages pile up in memory.
        events: queue.Queue[object] = queue.Queue(maxsize=2 * self._max_concurrency)
        cancel = threading.Event()
        closed = threading.Event()

        def deliver(item: object, *, final: bool = False) -> None:
            while True:
                try:
                    events.put(item, timeout=0.05)
                    return
                except queue.Full:
                    if closed.is_set() or (cancel.is_set() and not final):
                        raise Cancelled from None

        def worker() -> None:
            outcome: object = _WORKER_EXIT
            try:
                while not cancel.is_set():
                    try:
                        piece = work.get_nowait()
                    except queue.Empty:
                        break
                    deliver(self._read_slice(piece, cancel, deliver))
            except Cancelled:
                pass
            except BaseException as exc:  # handed to the consumer, which re-raises it
                cancel.set()
                outcome = _Failed(exc)
            with contextlib.suppress(Cancelled):
                deliver(outcome, final=True)

        threads = [
            threading.Thread(target=worker, name=f"d23-client-{number}", daemon=True)
            for number in range(min(self._max_concurrency, len(todo)))
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                item = events.get()
                if item is _WORKER_EXIT:
                    running -= 1
                elif isinstance(item, _Failed):
                    raise item.error
                else:
                    yield item  # type: ignore[misc]
        finally:
            closed.set()
            cancel.set()
            deadline = time.monotonic() + _JOIN_BUDGET_S
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _read_slice(
        self, piece: Window, cancel: threading.Event, deliver: Callable[[object], None]
    ) -> SliceDone:
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
        return SliceDone(piece, rows, rejects, pages, proof)

    def _path(self) -> str:
        lender = quote(self._auth.lender_public_id, safe="")
        return f"/admin/v3/lenders/{lender}/exports/{self._section}/{self._dataset}"

    def _get(
        self,
        params: dict[str, str],
        parse: Callable[[httpx.Response], T],
        *,
        what: str,
        window: Window,
        cancel: threading.Event | None,
        gateway_timeout_is_transient: bool = True,
    ) -> T:
        def attempt() -> T:
            for recovery in range(3):
                token, generation = self._auth.current()
                path = self._path()
                response = self._http.get(
                    self._base_url + path,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                )
                self.stats.add("requests")
                if response.status_code != 401:
                    break
                if recovery == 2:
                    raise AuthenticationError(
                        "the API still answers 401 after a token refresh and a fresh login "
                        "(is the lender inactive?)",
                        status=401,
                        request_id=request_id_of(response),
                        path=path,
                        window=window,
                    )
                log.info("401 on %s; replacing the token", what)
                self._auth.recover(generation, relogin=recovery == 1)
            status = response.status_code
            if status == 200:
                return parse(response)
            if status == 504 and not gateway_timeout_is_transient:
                raise _GatewayTimeout(request_id_of(response))
            failure = transient_for(response)
            if failure is not None:
                raise failure
            request_id = request_id_of(response)
            if status == 403:
                raise LenderMismatchError(
                    f"lender public id {self._auth.lender_public_id} in the path is not the "
                    "token's lender: check that D23_LENDER_PUBLIC_ID and the token (or the "
                    "login) belong to the same lender",
                    status=status,
                    request_id=request_id,
                    path=path,
                )
            if status == 404:
                raise DatasetNotFoundError(
                    f"dataset {self._section}/{self._dataset} is unknown or not enabled for "
                    "this lender",
                    status=status,
                    request_id=request_id,
                    path=path,
                )
            raise ExportsApiError(
                f"unexpected answer to {what}",
                status=status,
                request_id=request_id,
                path=path,
                window=window,
            )

        return self._retrier.call(
            attempt, what=what, path=self._path(), window=window, cancel=cancel
        )

    def _walk(
        self, window: Window, cancel: threading.Event | None, limit: int
    ) -> Iterator[SlicePage]:
        # A stack of parts still to read, each with the public_ids already handed over that sit
        # on its `since` instant; a 504 pushes narrower parts covering only what is left.
        pending: list[tuple[Window, frozenset[str]]] = [(window, frozenset())]
        strikes = 0  # 504s in a row since the last page that came through
        delivered_rejects: set[object] = set()
        while pending:
            part, skip = pending.pop()
            since, until = part.since_text, part.until_text
            # The API orders by (communicated_at, _id), so everything before `edge` is done and
            # at `edge` exactly `edge_ids` are; that is what a re-read must start from.
            edge, edge_ids = since, set(skip)
            seen_cursors: set[str] = set()
            cursor: str | None = None
            while True:
                params = {"since": since, "until": until, "limit": str(limit), "sort": "asc"}
                if cursor is not None:
                    params["cursor"] = cursor
                try:
                    page = self._get(
                        params,
                        partial(_read_page, since=since, until=until),
                        what=f"page of {self._section}/{self._dataset} {part}",
                        window=part,
                        cancel=cancel,
                        gateway_timeout_is_transient=False,
                    )
                except _GatewayTimeout as exc:
                    strikes += 1
                    remaining = Window(parse_timestamp(edge), part.until)
                    limit, parts = self._narrow(remaining, limit, strikes, exc.request_id)
                    self.stats.retry("504")
                    self._retrier.pause(self._retrier.policy.backoff(strikes), cancel)
                    if not parts:
                        continue
                    pending.extend((piece, frozenset()) for piece in reversed(parts[1:]))
                    pending.append((parts[0], frozenset(edge_ids)))
                    break
                strikes = 0
                batch, next_cursor = page.batch, page.next_cursor
                if skip:
                    already = pa.array(list(skip), pa.string())
                    batch = batch.filter(pc.invert(pc.is_in(batch.column("public_id"), already)))
                rejects = [r for r in page.rejects if _reject_key(r) not in delivered_rejects]
                edge, edge_ids = _advance_edge(edge, edge_ids, batch)
                delivered_rejects.update(_reject_key(r) for r in rejects)
                self.stats.page(page.served_rows, batch.num_rows, len(rejects), page.extra_fields)
                log.debug(
                    "page of %s: %d rows, %d rejects, %s",
                    part,
                    batch.num_rows,
                    len(rejects),
                    "more" if next_cursor else "last",
                )
                yield SlicePage(window, batch, rejects)
                if next_cursor is None:
                    break
                if next_cursor in seen_cursors:
                    raise CursorLoopError(
                        f"the API returned a nextCursor already seen in this walk, after "
                        f"{len(seen_cursors) + 1} pages; stopping rather than loop or skip",
                        window=part,
                        path=self._path(),
                    )
                seen_cursors.add(next_cursor)
                cursor = next_cursor

    def _narrow(
        self, remaining: Window, limit: int, strikes: int, request_id: str | None
    ) -> tuple[int, list[Window]]:
        """After a 504: retry as is, else lower the limit, else halve what is left, else fail."""
        if strikes == 1:
            log.info("504 on %s at limit %d; retrying once as is", remaining, limit)
            return limit, []
        if limit > self._min_page_limit:
            lower = max(self._min_page_limit, limit // 2)
            self.stats.limit_reduced(lower)
            log.info("504 again on %s; page limit %d -> %d", remaining, limit, lower)
            return lower, [remaining]
        if remaining.duration >= 2 * self._min_window:
            halves = list(remaining.halves())
            self.stats.add("window_splits")
            log.info("504 again on %s at limit %d; splitting it in two", remaining, limit)
            return limit, halves
        raise WindowTooHeavyError(
            f"the API kept timing out (504) even at page limit {limit} and the minimum window "
            f"of {self._min_window}; lower D23_PAGE_LIMIT or ask the API team",
            status=504,
            request_id=request_id,
            path=self._path(),
            window=remaining,
        )
