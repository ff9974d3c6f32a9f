"""Deterministic D23 pages for benchmarks, rendered on demand, so no month is held by the source.

A month of ``rows`` rows is cut into day slices (the client's default slicing); each day's rows
are spread evenly over the day and paged ``limit`` at a time. A page is a pure function of
``(day, page number)``, so a handler can render it lazily (memory benchmark) or the whole month
can be rendered ahead of time (throughput benchmark, where rendering must not be timed).

Two walks reach the same pages: the client's per-day walks (``since`` = day start) and a
whole-month walk (``since`` = month start) whose cursors chain from one day into the next, the
walk a single dlt ``rest_api`` resource makes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from d23_pipeline.months import month_end, month_start
from d23_pipeline.schema import format_timestamp

LENDER_ID = "00000000-0000-4000-8000-000000000023"
TOKEN = "benchmark-token"
PATH_TEMPLATE = "/admin/v3/lenders/{lender}/exports/S4/D23"
PATH = PATH_TEMPLATE.format(lender=LENDER_ID)
BASE_URL = "http://bench.invalid"
SLICE = timedelta(days=1)  # the client's default slicing, which the page layout follows

_TYPES = ("CALL", "WHATSAPP", "SMS", "EMAIL", "FIELD_VISIT")
_SOURCES = ("AGENT", "IVR", "BORROWER")
_OUTCOMES = ("PTP", "RPC", "NO_ANSWER", "BUSY", "SWITCHED_OFF", "WRONG_NUMBER", "SETTLED")
_MONTH_WALK = "m"


@dataclass(frozen=True)
class MonthPages:
    """The page layout of one synthetic month."""

    month: str
    rows: int
    limit: int

    @property
    def days(self) -> int:
        return (month_end(self.month) - month_start(self.month)).days

    def day_rows(self, day: int) -> int:
        base, extra = divmod(self.rows, self.days)
        return base + (day < extra)

    def day_pages(self, day: int) -> int:
        return max(1, -(-self.day_rows(day) // self.limit))

    @property
    def pages(self) -> int:
        return sum(self.day_pages(d) for d in range(self.days))

    def day_text(self, day: int) -> str:
        return format_timestamp(month_start(self.month) + timedelta(days=day))

    def count(self, since: str, until: str) -> int:
        """Rows of the whole days inside ``[since, until)``: what ``includeTotal`` answers."""
        ends = [self.day_text(d + 1) for d in range(self.days - 1)] + [_until(self)]
        return sum(
            self.day_rows(d)
            for d in range(self.days)
            if since <= self.day_text(d) and ends[d] <= until
        )

    def page_rows(self, day: int, page: int) -> list[dict]:
        """The rows of page ``page`` of day ``day``, in the API's order."""
        count = self.day_rows(day)
        day_ms = int((month_start(self.month) + timedelta(days=day)).timestamp() * 1000)
        step = 86_400_000 // max(count, 1)
        rows = []
        for i in range(page * self.limit, min(count, (page + 1) * self.limit)):
            at = day_ms + i * step
            n = day * 10_000_000 + i
            rows.append(
                {
                    "public_id": f"{n:024x}",
                    "communication_type": _TYPES[n % 5],
                    "interaction_source": _SOURCES[n % 3],
                    "outcome_option": _OUTCOMES[n % 7],
                    "is_active": n % 11 != 0,
                    "is_ptp_broken": n % 13 == 0,
                    "communicated_at": _ms_text(at),
                    "created_at": _ms_text(at),
                    "updated_at": _ms_text(at + 3_600_000),
                }
            )
        return rows

    def render(self, day: int, page: int, *, month_walk: bool) -> bytes:
        """The 200 envelope of one page; its ``nextCursor`` follows the day or the month walk."""
        if page + 1 < self.day_pages(day):
            cursor = f"{_MONTH_WALK if month_walk else 'd'}.{day}.{page + 1}"
        elif month_walk and day + 1 < self.days:
            cursor = f"{_MONTH_WALK}.{day + 1}.0"
        else:
            cursor = None
        body = {
            "rows": self.page_rows(day, page),
            "pagination": {"nextCursor": cursor, "limit": self.limit},
        }
        return orjson.dumps({"code": 200, "message": "success", "errors": [], "body": body})


def _ms_text(ms: int) -> str:
    # Formatting by hand is several times faster than through datetime; rendering a 5M-row
    # month lazily must not make the source the bottleneck.
    days, ms = divmod(ms, 86_400_000)
    seconds, ms = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{_date_text(days)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}Z"


@functools.cache
def _date_text(epoch_day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=epoch_day)).strftime("%Y-%m-%d")


Render = Callable[[str, str, str | None], bytes]


def _first_page_keys(month: MonthPages) -> dict[tuple[str, str], tuple[int, bool]]:
    # A walk's first request carries no cursor: its window tells a day walk from the month walk.
    keys = {
        (month.day_text(d), month.day_text(d + 1) if d + 1 < month.days else _until(month)): (
            d,
            False,
        )
        for d in range(month.days)
    }
    keys[(month.day_text(0), _until(month))] = (0, True)
    return keys


def _until(month: MonthPages) -> str:
    return format_timestamp(month_end(month.month))


def lazy_renderer(month: MonthPages) -> Render:
    """Render each requested page on the fly: the source holds no more than one page."""
    first = _first_page_keys(month)

    def render(since: str, until: str, cursor: str | None) -> bytes:
        if cursor is None:
            day, month_walk = first[(since, until)]
            return month.render(day, 0, month_walk=month_walk)
        walk, day, page = cursor.split(".")
        return month.render(int(day), int(page), month_walk=walk == _MONTH_WALK)

    return render


def prerendered(month: MonthPages) -> Render:
    """Every page of both walks rendered ahead of time, so serving one costs a dict lookup."""
    by_cursor: dict[str, bytes] = {}
    by_window: dict[tuple[str, str], bytes] = {}
    for (since, until), (day, month_walk) in _first_page_keys(month).items():
        by_window[(since, until)] = month.render(day, 0, month_walk=month_walk)
    for day in range(month.days):
        for page in range(month.day_pages(day)):
            for walk in ("d", _MONTH_WALK):
                if page or walk == _MONTH_WALK:
                    by_cursor[f"{walk}.{day}.{page}"] = month.render(
                        day, page, month_walk=walk == _MONTH_WALK
                    )

    def render(since: str, until: str, cursor: str | None) -> bytes:
        return by_window[(since, until)] if cursor is None else by_cursor[cursor]

    return render


_HEADERS = {"content-type": "application/json"}


def mock_transport(month: MonthPages, render: Render) -> httpx.MockTransport:
    """An in-process transport answering pages from ``render`` and counts from ``month``."""

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if params.get("includeTotal") == "true":
            total = month.count(params["since"], params["until"])
            pagination = {"nextCursor": None, "total": total, "totalExact": True}
            body = orjson.dumps({"body": {"rows": [], "pagination": pagination}})
        else:
            body = render(params["since"], params["until"], params.get("cursor"))
        return httpx.Response(200, headers=_HEADERS, content=body)

    return httpx.MockTransport(handler)
