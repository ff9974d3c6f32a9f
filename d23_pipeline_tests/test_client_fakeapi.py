"""A tiny scriptable fake of the Exports API on ``httpx.MockTransport``, shared by client tests.

It paginates a given row list by ``(communicated_at, public_id)`` like the real API, with page
sizes chosen per request (short and empty pages), and lets a test inject faults precisely.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from d23_pipeline.client import ExportsClient, RetryPolicy, Window
from d23_pipeline.schema import format_timestamp
from d23_pipeline.settings import LoginCredentials

BASE_URL = "https://api.test"
SLUG = "demo"
EMAIL = "analyst@demo.example"
PASSWORD = "pw-demo"
LENDER_ID = "7f1c2d3e-0000-4000-8000-00000000d23a"
T0 = datetime(2026, 5, 1, tzinfo=UTC)
DAY = Window(T0, T0 + timedelta(days=1))

_CANONICAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
_DATA_PATH = re.compile(r"^/admin/v3/lenders/([^/]+)/exports/([^/]+)/([^/]+)$")
_AUTH_PATH = re.compile(r"^/admin/auth/([^/]+)/(login|refresh-token)$")

Handler = Callable[[httpx.Request], httpx.Response]


def row(n: int, at: datetime, **changes: Any) -> dict[str, Any]:
    """A valid D23 row numbered ``n`` communicated at ``at``."""
    stamp = format_timestamp(at)
    data = {
        "public_id": f"r{n:06d}",
        "communication_type": "CALL",
        "interaction_source": "AGENT",
        "outcome_option": "PTP",
        "is_active": True,
        "is_ptp_broken": False,
        "communicated_at": stamp,
        "created_at": stamp,
        "updated_at": stamp,
    }
    data.update(changes)
    return data


def rows_at(offsets_ms: Iterable[int], start: datetime = T0) -> list[dict[str, Any]]:
    """One row per offset (repeat an offset for ties), numbered in order."""
    return [row(n, start + timedelta(milliseconds=ms)) for n, ms in enumerate(offsets_ms)]


def html(status: int) -> Handler:
    """A gateway-style HTML error page (no JSON)."""
    return lambda request: httpx.Response(
        status,
        content=b"<html><body>Gateway Time-out</body></html>",
        headers={"content-type": "text/html"},
    )


def error(status: int, request_id: str = "req-1", **headers: str) -> Handler:
    """The documented JSON error envelope."""
    body = {"success": False, "message": f"status {status}", "requestId": request_id}
    return lambda request: httpx.Response(status, json=body, headers=headers)


def raises(exc_type: type[Exception]) -> Handler:
    """A transport failure (timeout, dropped connection) raised while sending."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("injected", request=request)

    return handler


@dataclass
class Fault:
    handler: Handler
    times: int
    when: Callable[[httpx.Request], bool]


@dataclass
class FakeApi:
    """The fake; ``transport()`` plugs it into an :class:`ExportsClient`."""

    rows: list[dict[str, Any]]
    page_size: Callable[[int], int] = lambda limit: limit
    password: str = PASSWORD
    requests: list[httpx.Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    auth_faults: list[Fault] = field(default_factory=list)
    heavy: Callable[[str, str, int], bool] = lambda since, until, limit: False
    tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    issued: int = 0
    logins: int = 0
    refreshes: int = 0
    latency_s: float = 0.0
    secret_prefix: str = ""

    def __post_init__(self) -> None:
        self.rows = sorted(self.rows, key=lambda r: (r["communicated_at"], r["public_id"]))
        self._lock = threading.RLock()
        self._cursors = 0

    def transport(self) -> httpx.MockTransport:
        """An in-process transport serving this fake."""
        return httpx.MockTransport(self.handle)

    def client(self, **options: Any) -> ExportsClient:
        """A login-credential client on this fake that never really sleeps."""
        options.setdefault("sleep", lambda seconds: None)
        options.setdefault("retry", RetryPolicy(max_attempts=4))
        return ExportsClient(
            BASE_URL,
            LoginCredentials(SLUG, EMAIL, self.password),
            transport=self.transport(),
            **options,
        )

    def inject(
        self,
        handler: Handler,
        times: int = 1,
        when: Callable[[httpx.Request], bool] = lambda request: True,
        auth: bool = False,
    ) -> None:
        """Answer the next ``times`` matching data (or auth) requests with ``handler``."""
        (self.auth_faults if auth else self.faults).append(Fault(handler, times, when))

    def expire_tokens(self) -> None:
        """Every access token issued so far now gets 401."""
        with self._lock:
            self.tokens.clear()

    @property
    def data_params(self) -> list[dict[str, str]]:
        """Query parameters of every data request, in order."""
        return [dict(r.url.params) for r in self.requests if r.method == "GET"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        auth_match = _AUTH_PATH.match(request.url.path)
        if self.latency_s:
            time.sleep(self.latency_s)
        with self._lock:
            self.requests.append(request)
            fault = self._take_fault(self.auth_faults if auth_match else self.faults, request)
        if fault is not None:
            return fault(request)  # outside the lock, so a fault may wait for other threads
        with self._lock:
            if auth_match:
                return self._auth(auth_match.group(1), auth_match.group(2), request)
            data_match = _DATA_PATH.match(request.url.path)
            if data_match is None:
                return httpx.Response(404, json={"success": False, "message": "no route"})
            return self._data(*data_match.groups(), request)

    def _take_fault(self, faults: list[Fault], request: httpx.Request) -> Handler | None:
        for fault in faults:
            if fault.times > 0 and fault.when(request):
                fault.times -= 1
                return fault.handler
        return None

    def _issue(self) -> str:
        self.issued += 1
        token = f"{self.secret_prefix}tok-{self.issued}"
        self.tokens.add(token)
        return token

    def _auth(self, slug: str, action: str, request: httpx.Request) -> httpx.Response:
        payload = orjson.loads(request.content)
        if action == "login":
            if slug != SLUG or payload != {"email": EMAIL, "password": self.password}:
                return httpx.Response(401, json={"success": False, "requestId": "req-login"})
            self.logins += 1
            refresh = f"{self.secret_prefix}refresh-{self.issued + 1}"
            self.refresh_tokens.add(refresh)
            answer = {"lenderPublicId": LENDER_ID, "token": self._issue(), "refreshToken": refresh}
            return httpx.Response(200, json=answer)
        if payload.get("refreshToken") not in self.refresh_tokens:
            return httpx.Response(401, json={"success": False, "requestId": "req-refresh"})
        self.refreshes += 1
        return httpx.Response(200, json={"token": self._issue()})

    def _data(
        self, lender: str, section: str, dataset: str, request: httpx.Request
    ) -> httpx.Response:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return httpx.Response(401, json={"success": False, "requestId": "req-401"})
        if lender != LENDER_ID:
            return httpx.Response(403, json={"success": False, "requestId": "req-403"})
        if (section, dataset) != ("S4", "D23"):
            return httpx.Response(404, json={"success": False, "requestId": "req-404"})
        params = request.url.params
        since, until = params["since"], params["until"]
        assert _CANONICAL.match(since) and _CANONICAL.match(until), (since, until)
        assert params.get("sort") == "asc"
        limit = int(params["limit"])
        if self.heavy(since, until, limit):
            return html(504)(request)
        selected = [r for r in self.rows if since <= r["communicated_at"] < until]
        total = {"total": len(selected), "totalExact": True, "totalNote": None}
        after = _decode(params["cursor"]) if "cursor" in params else None
        start = 0
        if after is not None:
            key = tuple(after)
            while start < len(selected) and _key(selected[start]) <= key:
                start += 1
        chunk = selected[start : start + min(limit, max(0, self.page_size(limit)))]
        boundary = _key(chunk[-1]) if chunk else after
        more = start + len(chunk) < len(selected)
        self._cursors += 1
        pagination: dict[str, Any] = {
            "nextCursor": _encode(boundary, self._cursors) if more else None,
            "limit": limit,
        }
        if params.get("includeTotal") == "true":
            pagination.update(total)
        body = {"rows": chunk, "pagination": pagination, "meta": {"dataset": "D23"}}
        return httpx.Response(
            200, json={"code": 200, "message": "success", "errors": [], "body": body}
        )


def _key(r: dict[str, Any]) -> tuple[str, str]:
    return (r["communicated_at"], r["public_id"])


def _encode(boundary: Any, serial: int) -> str:
    raw = orjson.dumps({"after": list(boundary) if boundary else None, "n": serial})
    return base64.urlsafe_b64encode(raw).decode()


def _decode(cursor: str) -> list[str] | None:
    return orjson.loads(base64.urlsafe_b64decode(cursor))["after"]


def walk_ids(client: ExportsClient, window: Window = DAY) -> list[str]:
    """The public_ids of every row ``iter_window`` yields, in order."""
    return [r["public_id"] for page in client.iter_window(window) for r in page.rows]


def ids_in(api: FakeApi, window: Window = DAY) -> list[str]:
    """The ground truth: public_ids of the fake's rows inside ``window``, in API order."""
    return [
        r["public_id"]
        for r in api.rows
        if window.since_text <= r["communicated_at"] < window.until_text
    ]


def test_fake_paginates_every_row_once_with_ties() -> None:
    api = FakeApi(rows_at([0, 0, 0, 5, 5, 9]), page_size=lambda limit: 2)
    with api.client(page_limit=50, min_page_limit=10) as client:
        assert walk_ids(client) == ids_in(api) == [f"r{n:06d}" for n in range(6)]


def test_fake_rejects_unknown_tokens() -> None:
    api = FakeApi([])
    response = api.transport().handle_request(
        httpx.Request("GET", f"{BASE_URL}/admin/v3/lenders/{LENDER_ID}/exports/S4/D23")
    )
    assert response.status_code == 401
