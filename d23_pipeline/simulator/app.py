"""Request handling of the simulated Exports API, independent of how it is served."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import random
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httpx
import orjson

from d23_pipeline.simulator.config import BadRowKind, Faults, SimulatorConfig
from d23_pipeline.simulator.data import Collection, format_ms, month_of, to_ms

_LOGIN = re.compile(r"^/admin/auth/([^/]+)/login/?$")
_REFRESH = re.compile(r"^/admin/auth/([^/]+)/refresh-token/?$")
_DATA = re.compile(r"^/admin/v3/lenders/([^/]+)/exports/([^/]+)/([^/]+)/?$")
_JSON = {"Content-Type": "application/json"}
_HTML = {"Content-Type": "text/html; charset=utf-8"}
_OID_LIMIT = 1 << 96

_GATEWAY_PAGE = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass
class SimResponse:
    """What the simulator answers; the servings turn it into an HTTP response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Sent a byte at a time, this many seconds apart: a gateway that keeps a connection busy
    # without ever quite answering. Over the socket the status line and headers trickle too;
    # in process only the body can.
    trickle_s: float = 0.0

    def json(self) -> Any:
        return orjson.loads(self.body)

    @classmethod
    def from_json(
        cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> SimResponse:
        """``payload`` as a JSON body."""
        return cls(status, {**_JSON, **(headers or {})}, orjson.dumps(payload))

    @classmethod
    def error(
        cls, status: int, message: str, request_id: str, headers: Mapping[str, str] | None = None
    ) -> SimResponse:
        """The documented error envelope; its ``requestId`` is also sent as ``X-Request-Id``."""
        body = {"success": False, "message": message, "requestId": request_id}
        return cls.from_json(body, status, {"X-Request-Id": request_id, **(headers or {})})

    @classmethod
    def gateway_page(cls, status: int, reason: str | None = None) -> SimResponse:
        """The gateway's own HTML error page, no JSON at all (``reason``: the status phrase)."""
        reason = HTTPStatus(status).phrase if reason is None else reason
        return cls(status, dict(_HTML), _GATEWAY_PAGE.format(code=status, reason=reason).encode())


@dataclass(frozen=True)
class Drop:
    """No answer: the connection is closed after ``after_s`` seconds. A client whose read
    timeout is shorter times out first; in process it does so at once, without the wait."""

    after_s: float = 0.0


DROP = Drop()
"""Returned by ``Simulator.handle`` when the connection must be dropped without an answer."""

Answer = SimResponse | Drop


@dataclass(frozen=True)
class SimRequest:
    """A request as the simulator sees it: what a script's ``when`` tests, and what the request
    log keeps (never headers or bodies, which carry tokens and passwords)."""

    kind: str  # "login", "refresh", "data" (a page), "count" (includeTotal) or "other"
    method: str
    path: str
    query: Mapping[str, str]


@dataclass(frozen=True)
class LoggedRequest:
    """A request and the status it was answered with (None: the connection was dropped)."""

    request: SimRequest
    status: int | None


@dataclass
class _Scripted:
    answer: Answer
    times: int
    when: Callable[[SimRequest], bool]
    auth: bool


def _always(request: SimRequest) -> bool:
    return True


class SimStats:
    """Thread-safe request counters; read the attributes or take a :meth:`snapshot`. With
    ``keep_log`` it also keeps every request in :attr:`log` (tests; a server left running would
    grow it without end)."""

    def __init__(self, keep_log: bool = False) -> None:
        self._lock = threading.Lock()
        self._keep_log = keep_log
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_kind: Counter[str] = Counter()
            self.by_status: Counter[int] = Counter()
            self.data_pages = 0
            self.empty_pages = 0
            self.rows_served = 0
            self.dropped = 0
            self._log: list[LoggedRequest] = []

    def record(self, request: SimRequest, status: int | None, rows: int | None = None) -> None:
        with self._lock:
            self.requests += 1
            self.by_kind[request.kind] += 1
            if self._keep_log:
                self._log.append(LoggedRequest(request, status))
            if status is None:
                self.dropped += 1
            else:
                self.by_status[status] += 1
            if rows is not None:
                self.data_pages += 1
                self.rows_served += rows
                if rows == 0:
                    self.empty_pages += 1

    @property
    def log(self) -> list[LoggedRequest]:
        """Every request since the last reset, in the order they were answered."""
        if not self._keep_log:
            raise RuntimeError("no request log: create the Simulator with log_requests=True")
        with self._lock:
            return list(self._log)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_kind": dict(self.by_kind),
                "by_status": dict(self.by_status),
                "data_pages": self.data_pages,
                "empty_pages": self.empty_pages,
                "rows_served": self.rows_served,
                "dropped": self.dropped,
            }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(
    key: tuple[int, int] | None, empty_pages: int = 0, served: int | None = None
) -> str:
    """Opaque cursor resuming after the boundary key ``(communicated_ms, object_id)`` (None: at
    the window's start). ``empty_pages`` counts the pages in a row that scanned nothing there
    (the page-size hook's), so that each of them still hands out a new cursor; ``served``, the
    pages its walk has served, where cursors expire."""
    payload: dict[str, Any] = {}
    if key is not None:
        payload.update(t=format_ms(key[0]), id=f"{key[1]:024x}")
    if empty_pages:
        payload["e"] = empty_pages
    if served is not None:
        payload["n"] = served
    return _b64(orjson.dumps(payload))


def decode_cursor(cursor: str) -> tuple[tuple[int, int] | None, int, int]:
    """Inverse of :func:`encode_cursor`: ``(key, empty_pages, served)``; ValueError on anything
    else."""
    try:
        raw = orjson.loads(_unb64(cursor))
        empty_pages = raw.get("e", 0)
        served = raw.get("n", 0)
        key = None
        if "t" in raw or "id" in raw or not empty_pages:
            key = (to_ms(datetime.fromisoformat(raw["t"])), int(raw["id"], 16))
    except (
        AttributeError,
        binascii.Error,
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
    ) as exc:
        raise ValueError(f"corrupt cursor: {exc}") from None
    if not isinstance(empty_pages, int) or empty_pages < 0:
        raise ValueError("corrupt cursor: bad page count")
    if not isinstance(served, int) or served < 0:
        raise ValueError("corrupt cursor: bad page number")
    if key is not None and (key[0] < 0 or not 0 <= key[1] < _OID_LIMIT):
        raise ValueError("corrupt cursor: key out of range")
    return key, empty_pages, served


def _parse_ts(value: str | None) -> int | None:
    # No 400 validation upstream: a malformed bound silently becomes no bound at all.
    if not value:
        return None
    try:
        return to_ms(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None


def _jwt_like(claims: dict[str, Any]) -> str:
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    return f"{header}.{_b64(orjson.dumps(claims))}.{_b64(secrets.token_bytes(32))}"


class _Auth:
    """Issued tokens, kept server-side so they can be expired and revoked at will."""

    def __init__(self, config: SimulatorConfig, lender_public_id: str) -> None:
        self._lock = threading.Lock()
        self.slug = config.lender_slug
        self.email = config.email
        self.password = config.password
        self.ttl_s = config.token_ttl_s
        self.lender_public_id = lender_public_id
        self._access: dict[str, float] = {}  # token -> monotonic expiry
        self._refresh: set[str] = set()

    def _issue_access(self) -> str:
        now = time.time()
        token = _jwt_like(
            {
                "sub": self.lender_public_id,
                "lender": self.slug,
                "typ": "access",
                "iat": int(now),
                "exp": int(now + self.ttl_s),
                "jti": secrets.token_hex(8),
            }
        )
        self._access[token] = time.monotonic() + self.ttl_s
        return token

    def login(self, slug: str, email: Any, password: Any) -> tuple[str, str] | None:
        with self._lock:
            if (slug, email, password) != (self.slug, self.email, self.password):
                return None
            refresh = _jwt_like(
                {"sub": self.lender_public_id, "typ": "refresh", "jti": secrets.token_hex(8)}
            )
            self._refresh.add(refresh)
            return self._issue_access(), refresh

    def refresh(self, slug: str, refresh_token: Any) -> str | None:
        with self._lock:
            if slug != self.slug or refresh_token not in self._refresh:
                return None
            return self._issue_access()

    def lender_of(self, authorization: str | None) -> str | None:
        """The token's lender, or None for a missing, unknown or expired token."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            expiry = self._access.get(token.strip())
            if expiry is None:
                return None
            if time.monotonic() >= expiry:
                del self._access[token.strip()]
                return None
        return self.lender_public_id

    def expire_tokens(self) -> None:
        with self._lock:
            self._access.clear()

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh.clear()

    def set_password(self, password: str) -> None:
        with self._lock:
            self.password = password


class Simulator:
    """A local stand-in for the Exports API serving one lender's D23 rows (section S4)."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        rows: Iterable[Mapping[str, Any]] | None = None,
        log_requests: bool = False,
    ) -> None:
        """Generate ``config.months``, or serve exactly ``rows`` (D23 rows as served: a 24-hex
        ``public_id``, canonical timestamps, the simulator's vocabulary) and nothing else.
        ``log_requests`` keeps every request in ``stats.log``."""
        config = SimulatorConfig() if config is None else config
        self.config = config
        self.lender_public_id = str(
            uuid.UUID(int=random.Random(f"lender:{config.seed}").getrandbits(128), version=4)
        )
        self._data = Collection(config, rows=rows)
        self._auth = _Auth(config, self.lender_public_id)
        self._fault_lock = threading.Lock()
        self.faults = dataclasses.replace(config.faults)
        self.stats = SimStats(keep_log=log_requests)
        self._script_lock = threading.Lock()
        self._scripts: list[_Scripted] = []

    # -- faults -----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._fault_lock:
            self._faults = faults
            self._fault_rng = random.Random(faults.seed)

    def _draw_fault(self) -> tuple[str, int, bool] | None:
        """Decide this data request's injected fault: ``(kind, status, html_body)`` or None."""
        with self._fault_lock:
            f = self._faults
            if f.burst_429 > 0:
                f.burst_429 -= 1
                return "429", 429, False
            rng = self._fault_rng
            roll = rng.random()
            if roll < f.drop_rate:
                return "drop", 0, False
            roll -= f.drop_rate
            if roll < f.rate_429:
                return "429", 429, False
            roll -= f.rate_429
            if roll < f.error_5xx_rate:
                status = rng.choice((500, 502, 503))
                return "5xx", status, status != 500 and rng.random() < 0.5
            return None

    # -- ground truth and change knobs --------------------------------------------------------

    def rows(self, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
        """Rows this lender's export currently serves for ``[since, until)``, as served."""
        return self._data.rows(*self._window_ms(since, until))

    def valid_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict]:
        """Rows a correct warehouse holds for the window: the contract-valid ones, nine fields."""
        return self._data.valid_rows(*self._window_ms(since, until))

    def bad_row_kinds(self) -> dict[str, str]:
        """Generated ``public_id`` -> bad-row kind (a missing_public_id row does not serve it)."""
        return self._data.bad_row_kinds()

    @staticmethod
    def _window_ms(since: datetime | None, until: datetime | None) -> tuple[int | None, ...]:
        return (None if since is None else to_ms(since), None if until is None else to_ms(until))

    def break_promises(self, n: int, month: str | None = None) -> list[str]:
        """Break ``n`` kept promises (PTP rows); returns their public_ids."""
        return self._data.break_promises(n, month)

    def deactivate(self, n: int, month: str | None = None) -> list[str]:
        """Soft-delete ``n`` active rows (``is_active`` becomes False)."""
        return self._data.deactivate(n, month)

    def hard_delete(self, n: int, month: str | None = None) -> list[str]:
        """Remove ``n`` rows outright, unannounced."""
        return self._data.hard_delete(n, month)

    def add_late_rows(self, n: int, month: str) -> list[str]:
        """Insert ``n`` rows communicated in ``month`` but created now."""
        return self._data.add_late_rows(n, month)

    def move_rows(self, n: int, from_month: str, to_month: str) -> list[str]:
        """Move ``n`` rows' ``communicated_at`` from one month into another."""
        return self._data.move_rows(n, from_month, to_month)

    def move_row(self, public_id: str, communicated_at: datetime) -> None:
        """Move this lender's row ``public_id`` to ``communicated_at``, as an update."""
        self._data.move_row(public_id, int(communicated_at.timestamp() * 1000))

    def hard_delete_row(self, public_id: str) -> None:
        """Remove this lender's row ``public_id`` outright, unannounced."""
        self._data.hard_delete_row(public_id)

    def corrupt_row(self, public_id: str, kind: BadRowKind, /, **fields: Any) -> None:
        """Serve the row ``public_id`` with ``fields`` replaced from now on: a bad row of
        ``kind`` (a :class:`BadRows` field), which ``valid_rows`` then treats as generated ones."""
        self._data.corrupt(public_id, kind, fields)

    def mend_row(self, public_id: str) -> None:
        """Serve the row ``public_id``, made bad by :meth:`corrupt_row`, valid again from now
        on, its ``updated_at`` unchanged (an API that mends a row in place without saying so)."""
        self._data.mend(public_id)

    def expire_tokens(self) -> None:
        """Invalidate every access token issued so far (refresh tokens still work)."""
        self._auth.expire_tokens()

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every refresh token, so only a new login helps."""
        self._auth.revoke_refresh_tokens()

    def set_password(self, password: str) -> None:
        self._auth.set_password(password)

    def reset_stats(self) -> None:
        self.stats.reset()

    # -- scripted answers ---------------------------------------------------------------------

    def script(
        self,
        answer: Answer,
        times: int = 1,
        when: Callable[[SimRequest], bool] = _always,
        auth: bool = False,
    ) -> None:
        """Answer the next ``times`` export requests (with ``auth``: login and refresh requests)
        for which ``when`` holds with ``answer``, ahead of everything else the simulator checks.

        Scripts are tried in the order given. ``when`` is called outside the simulator's locks,
        so it may wait for other requests (a barrier); requests arriving together may all be
        asked about before the answers run out. In process and over the socket alike.
        """
        with self._script_lock:
            self._scripts = [s for s in self._scripts if s.times > 0]
            self._scripts.append(_Scripted(answer, times, when, auth))

    def _scripted(self, request: SimRequest) -> Answer | None:
        auth = request.kind in ("login", "refresh")
        if not auth and request.kind not in ("data", "count"):
            return None
        with self._script_lock:
            candidates = [s for s in self._scripts if s.auth == auth and s.times > 0]
        for scripted in candidates:
            if scripted.when(request):
                with self._script_lock:
                    # Another request may have used up its last answer while ``when`` ran.
                    if scripted.times > 0:
                        scripted.times -= 1
                        return scripted.answer
        return None

    # -- HTTP -------------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An in-process transport for ``httpx.Client(transport=...)``."""
        return in_process(self.handle)

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Answer:
        """Answer one request; the single code path of both the in-process and socket servings."""
        request_id = uuid.uuid4().hex
        method = method.upper()
        route: tuple[str, ...] = ()
        if match := _LOGIN.match(path):
            kind, route = "login", match.groups()
        elif match := _REFRESH.match(path):
            kind, route = "refresh", match.groups()
        elif match := _DATA.match(path):
            # Counts (includeTotal) are told apart from pages, so page statistics stay exact.
            kind, route = ("count" if _is_count(query) else "data"), match.groups()
        else:
            kind = "other"
        request = SimRequest(kind, method, path, dict(query))
        scripted = self._scripted(request)
        if scripted is not None:
            served: Answer | tuple[SimResponse, int] = scripted
        elif kind == "login":
            served = self._login(method, route[0], body, request_id)
        elif kind == "refresh":
            served = self._refresh(method, route[0], body, request_id)
        elif kind == "other":
            served = SimResponse.error(404, f"Cannot {method} {path}", request_id)
        else:
            authorization = next(
                (v for k, v in headers.items() if k.lower() == "authorization"), None
            )
            served = self._export(method, route, query, authorization, request_id)
        # A data page comes with the number of rows on it, for the page statistics.
        answer, rows = served if isinstance(served, tuple) else (served, None)
        self.stats.record(request, None if isinstance(answer, Drop) else answer.status, rows)
        return answer

    def _login(self, method: str, slug: str, body: bytes, request_id: str) -> SimResponse:
        if method != "POST":
            return SimResponse.error(405, "Method not allowed", request_id)
        payload = _json_object(body)
        tokens = self._auth.login(slug, payload.get("email"), payload.get("password"))
        if tokens is None:
            return SimResponse.error(401, "Invalid credentials", request_id)
        token, refresh = tokens
        return SimResponse.from_json(
            {"lenderPublicId": self.lender_public_id, "token": token, "refreshToken": refresh}
        )

    def _refresh(self, method: str, slug: str, body: bytes, request_id: str) -> SimResponse:
        if method != "POST":
            return SimResponse.error(405, "Method not allowed", request_id)
        token = self._auth.refresh(slug, _json_object(body).get("refreshToken"))
        if token is None:
            return SimResponse.error(401, "Invalid or expired refresh token", request_id)
        return SimResponse.from_json({"token": token})

    def _export(
        self,
        method: str,
        route: tuple[str, ...],
        query: Mapping[str, str],
        authorization: str | None,
        request_id: str,
    ) -> Answer | tuple[SimResponse, int]:
        lender, section, dataset = route
        if method != "GET":
            return SimResponse.error(405, "Method not allowed", request_id)
        token_lender = self._auth.lender_of(authorization)
        if token_lender is None:
            return SimResponse.error(401, "Unauthorized", request_id)
        if lender != token_lender:
            return SimResponse.error(
                403, "Forbidden: token does not belong to this lender", request_id
            )
        if (section, dataset) != ("S4", "D23"):
            return SimResponse.error(
                404, f"Export {section}/{dataset} not found or not enabled", request_id
            )

        fault = self._draw_fault()
        if fault is not None:
            kind, status, html = fault
            if kind == "drop":
                return DROP
            if kind == "429":
                retry_after = {"Retry-After": _seconds(self._faults.retry_after_s)}
                return SimResponse.error(429, "Too many requests", request_id, retry_after)
            if html:
                return SimResponse.gateway_page(status)
            return SimResponse.error(status, HTTPStatus(status).phrase, request_id)

        since_raw, until_raw = query.get("since"), query.get("until")
        since, until = _parse_ts(since_raw), _parse_ts(until_raw)
        try:
            limit = min(max(int(query.get("limit", "500")), 1), 1000)
        except ValueError:
            limit = 500
        if self._too_heavy(since, until, limit):
            time.sleep(self._faults.gateway_timeout_s)
            return SimResponse.gateway_page(504, "Gateway Time-out")

        descending = query.get("sort", "asc").lower() == "desc"
        after, empty_pages, served = None, 0, 0
        if query.get("cursor"):
            try:
                after, empty_pages, served = decode_cursor(query["cursor"])
            except ValueError:
                return SimResponse.error(500, "Internal server error", request_id)
        lifetime = self._faults.cursor_pages
        if lifetime and served >= lifetime:
            return SimResponse.error(500, "Internal server error", request_id)

        started = time.monotonic()
        counting = _is_count(query)
        scan = limit
        if not counting:
            if since is not None:
                self._churn(month_of(since))
            if self._faults.page_size is not None:
                scan = min(limit, max(0, self._faults.page_size(limit)))
        ends_after = None if counting else self._batch_ends()
        page = self._data.page(since, until, after, scan, descending, ends_after)
        if page.at_end or (not counting and self._ends_early(query)):
            next_cursor = None
        elif page.last_key is None:
            # A page that scanned nothing stays where it was, but with a cursor of its own.
            next_cursor = encode_cursor(after, empty_pages + 1, served + 1 if lifetime else None)
        else:
            next_cursor = encode_cursor(page.last_key, served=served + 1 if lifetime else None)
        pagination: dict[str, Any] = {"nextCursor": next_cursor, "limit": limit}
        if counting:
            pagination.update(self._total(since, until))
        body = {
            "rows": page.rows,
            "pagination": pagination,
            "meta": {
                "dataset": "D23",
                "cursorField": "communicated_at",
                "since": since_raw,
                "until": until_raw,
                "sort": "desc" if descending else "asc",
            },
        }
        answer = SimResponse.from_json(
            {"code": 200, "message": "success", "errors": [], "body": body}
        )
        # The latency is the time to answer, rendering included, as an API's is. Rendered after
        # the sleep, each page came ~3.5 ms later than asked, and more at high concurrency: one
        # GIL renders every page of this process (benchmarks/README.md, 0b).
        left = self._faults.latency_s - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)
        if counting:
            return answer
        return answer, len(page.rows)

    def _too_heavy(self, since: int | None, until: int | None, limit: int) -> bool:
        """Whether the gateway times out on this request (504): a window too wide or unbounded,
        or a page limit too high."""
        max_window, max_limit = self._faults.max_window_for_504, self._faults.max_limit_for_504
        if max_window is not None and (
            since is None or until is None or until - since > max_window.total_seconds() * 1000
        ):
            return True
        return max_limit is not None and limit > max_limit

    def _churn(self, month: str) -> None:
        faults = self._faults
        if faults.grow_per_page:
            self._data.add_late_rows(faults.grow_per_page, month)
        if faults.delete_per_page:
            self._data.hard_delete(faults.delete_per_page, month)

    def _batch_ends(self) -> Callable[[int], bool] | None:
        every, seed = self._faults.batch_end_every, self._faults.seed
        if every <= 0:
            return None

        def ends_after(ms: int) -> bool:
            draw = hashlib.blake2b(repr((seed, ms)).encode(), digest_size=8).digest()
            return int.from_bytes(draw, "big") % every == 0

        return ends_after

    def _ends_early(self, query: Mapping[str, str]) -> bool:
        rate = self._faults.truncate_rate
        if rate <= 0:
            return False
        request = repr((self._faults.seed, sorted(query.items()))).encode()
        draw = int.from_bytes(hashlib.blake2b(request, digest_size=8).digest(), "big")
        return draw / 2**64 < rate

    def _total(self, since: int | None, until: int | None) -> dict[str, Any]:
        if since is None or until is None:
            return {"total": None, "totalExact": False, "totalNote": "window_required"}
        slow = self._faults.max_window_for_count
        if slow is not None and until - since > slow.total_seconds() * 1000:
            return {"total": None, "totalExact": False, "totalNote": "timeout"}
        count = self._data.count(since, until)
        cap = self.config.total_cap
        if count > cap:
            return {"total": cap, "totalExact": False, "totalNote": "capped"}
        return {"total": count, "totalExact": True, "totalNote": None}


Handler = Callable[[str, str, Mapping[str, str], Mapping[str, str], bytes], Answer]
"""What answers a request: ``Simulator.handle``'s signature, ``(method, path, query, headers,
body)``."""


def in_process(handle: Handler) -> httpx.MockTransport:
    """An in-process transport answering with ``handle``: a simulator's, or one in front of it."""

    def handler(request: httpx.Request) -> httpx.Response:
        answer = handle(
            request.method,
            request.url.path,
            dict(request.url.params),
            request.headers,
            request.read(),
        )
        if isinstance(answer, Drop):
            read_timeout = request.extensions.get("timeout", {}).get("read")
            if read_timeout is not None and answer.after_s >= read_timeout:
                raise httpx.ReadTimeout("The read operation timed out", request=request)
            time.sleep(answer.after_s)
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        # The socket serving's http.server sends a Date too: the API's clock, to the second.
        headers = {"Date": formatdate(usegmt=True), **answer.headers}
        if answer.trickle_s:
            trickle = trickled(answer.body, answer.trickle_s)
            return httpx.Response(answer.status, headers=headers, content=trickle)
        return httpx.Response(answer.status, headers=headers, content=answer.body)

    return httpx.MockTransport(handler)


def trickled(data: bytes, every_s: float) -> Iterator[bytes]:
    """``data`` a byte at a time, each ``every_s`` seconds after the last (see ``trickle_s``)."""
    for byte in data:
        time.sleep(every_s)
        yield bytes([byte])


def _is_count(query: Mapping[str, str]) -> bool:
    return query.get("includeTotal", "").lower() == "true"


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
