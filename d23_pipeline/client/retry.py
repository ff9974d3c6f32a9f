"""Bounded retries with exponential backoff, full jitter and ``Retry-After``.

Policy (documented choice): a transient failure is retried up to ``max_attempts`` attempts in all.
Without ``Retry-After`` the pause before retry *n* is uniform in ``[0, min(max_delay_s,
base_delay_s * 2**(n-1))]`` ("full jitter", so concurrent workers do not retry in lock-step). A
``Retry-After`` (seconds or HTTP-date) is honoured, and it holds every data request of the client,
not only the one it answered: a rate limit is the client's, and workers that kept sending would
only earn more 429s. Each held request then waits up to a tenth more, drawn on its own, so they do
not all come back at one instant. A 429 with a ``Retry-After`` of a second or more is the API
pacing the client, not a failure: it does not count against ``max_attempts`` (unless that is 1,
no retries). ``max_total_wait_s`` bounds the sum of pauses for one request, time held by another
request's ``Retry-After`` included; a pause that would exceed it ends the retries at once with a
clear error. Logins and token refreshes are not held: they run under the token lock, which every
worker waits on, and must not sit out a hold there.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import orjson

from d23_pipeline.client.errors import (
    ApiHostError,
    ErrorContext,
    ProtocolError,
    RetriesExhaustedError,
)
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.client.windows import Window
from d23_pipeline.credentials import (
    REQUEST_EXTENSION,
    SHORTEST_CREDENTIAL,
    repeats_a_credential,
)
from d23_pipeline.settings import DEFAULT_RETRY_BASE_DELAY_S, DEFAULT_RETRY_MAX_ATTEMPTS

log = logging.getLogger("d23_pipeline.client")

T = TypeVar("T")

# Of the 5xx, those that say this host can never serve the request; any other is a server's or a
# gateway's failure (a CDN's 520-530 too), worth another try.
_NEVER_SERVED_5XX = frozenset({501, 505, 506, 510, 511})


def _retryable(status: int) -> bool:
    """429, and a 5xx other than 501, 505, 506, 510 and 511."""
    return status == 429 or (500 <= status <= 599 and status not in _NEVER_SERVED_5XX)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one request (see the module docstring)."""

    max_attempts: int = DEFAULT_RETRY_MAX_ATTEMPTS
    base_delay_s: float = DEFAULT_RETRY_BASE_DELAY_S
    max_delay_s: float = 30.0
    max_total_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, retry_number: int) -> float:
        """The jittered pause before retry number ``retry_number`` (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (retry_number - 1))
        return random.uniform(0.0, ceiling)


class Transient(Exception):
    """A failure worth retrying; ``cause`` is the stats key (``"503"``, ``"timeout"``, ...)."""

    def __init__(
        self,
        cause: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.detail = detail

    def describe(self) -> str:
        """``cause`` plus the detail, for messages."""
        return f"{self.cause} ({self.detail})" if self.detail else self.cause


class Cancelled(Exception):
    """The consumer went away; a worker stops where it is."""


def server_time(response: httpx.Response) -> datetime | None:
    """The answer's ``Date`` header (RFC 9110: an origin server with a clock sends one), or
    ``None`` without a valid one."""
    try:
        stamp = parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError):
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _clock_of(response: httpx.Response) -> datetime | None:
    """The answer's ``Date``, unless it is a day or more off ours (a server clock never set):
    then ``None``, and ours counts."""
    stamp = server_time(response)
    if stamp is None or abs(stamp - datetime.now(UTC)) >= timedelta(days=1):
        return None
    return stamp


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds, or an HTTP-date counted
    from ``now``: the answer's own ``Date``, so that a server clock off ours asks what it
    means); None without one, or without a delay in it (the policy's backoff applies)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    # No delay: a NaN or an infinity, or 0 or less (a date in the past), which waited out as
    # given sent every attempt of a 503 outage within milliseconds.
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def request_id_of(response: httpx.Response) -> str | None:
    """The ``requestId`` of an error envelope, or an ``X-Request-Id`` header, if any, as
    :func:`shown_request_id` lets errors and logs show it."""
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    request_id = payload.get("requestId") if isinstance(payload, dict) else None
    if not isinstance(request_id, str):
        request_id = response.headers.get("x-request-id")
    return shown_request_id(request_id, response)


# The server's own text (a request id, a key or content type it sent, a protocol error quoting
# its bytes) is shown in errors and the run log: a server (or a gateway) that echoes a credential
# there must not carry it into them, even in part, nor flood them.
_REQUEST_ID_MAX_CHARS = 100
WITHHELD = "(withheld: it repeats a credential this client holds)"
_SECRET_BODY_FIELDS = ("password", "refreshToken")


def shown_request_id(request_id: str | None, response: httpx.Response) -> str | None:
    """``request_id`` as :func:`shown_server_text` shows it, at most 100 characters."""
    if request_id is None:
        return None
    return shown_server_text(request_id, request_of(response), _REQUEST_ID_MAX_CHARS)


def shown_server_text(text: str, request: httpx.Request | None, max_chars: int) -> str:
    """``text`` withheld if it repeats a credential (see :mod:`.credentials`) that ``request``
    carried (its bearer token, or the password or refresh token its JSON body sent) or that
    its client holds; else printable and at most ``max_chars`` characters."""
    if repeats_a_credential(text, _credentials_of(request)):
        return WITHHELD
    shown = "".join(c if c.isprintable() else "?" for c in text[:max_chars])
    return shown + ("..." if len(text) > max_chars else "")


def request_of(response: httpx.Response) -> httpx.Request | None:
    """The request ``response`` answered, if it was built with one."""
    try:
        return response.request
    except RuntimeError:  # a response built without its request
        return None


def _credentials_of(request: httpx.Request | None) -> list[str]:
    if request is None:
        return []
    held = list(request.extensions.get(REQUEST_EXTENSION, ()))
    try:
        body = orjson.loads(request.content) if request.content else None
    except orjson.JSONDecodeError:
        body = None
    _, _, token = request.headers.get("authorization", "").partition(" ")
    sent = [token]
    # Not the login's email: its domain is often the API host's, which a TLS error names.
    if isinstance(body, dict):
        sent += [body[k] for k in _SECRET_BODY_FIELDS if isinstance(body.get(k), str)]
    return held + [secret for secret in sent if len(secret) >= SHORTEST_CREDENTIAL]


def is_api_error(response: httpx.Response) -> bool:
    """Whether ``response`` carries the Exports API's own error envelope (``"success": false``):
    a host that is not the API (a mistyped ``D23_API_URL``, a proxy) answers without it."""
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("success") is False


def not_the_api(response: httpx.Response, what: str) -> str:
    """Why ``response`` to ``what`` points at ``D23_API_URL`` rather than at the request."""
    answered = "an HTML page" if is_html(response) else "no Exports API error body"
    return (
        f"{what}: the host at D23_API_URL ({response.request.url.host}) answered HTTP "
        f"{response.status_code} with {answered}: check that D23_API_URL is the API's host root"
    )


def is_html(response: httpx.Response) -> bool:
    """Whether ``response`` is a web page: a web app's host answers any path with one."""
    content_type: str = response.headers.get("content-type", "")
    return content_type.lower().startswith("text/html")


def transient_for(response: httpx.Response) -> Transient | None:
    """A :class:`Transient` for a retryable status (:func:`_retryable`), else None."""
    if not _retryable(response.status_code):
        return None
    return Transient(
        str(response.status_code),
        status=response.status_code,
        request_id=request_id_of(response),
        retry_after=parse_retry_after(response.headers.get("retry-after"), _clock_of(response)),
    )


# user:password@ in a URL (a proxy's, say) that a socket or TLS error might quote.
_USERINFO = re.compile(r"//[^/\s]*@")  # up to the last @: a password may hold one


def _connection_failure(exc: httpx.TransportError) -> str:
    """The error's kind and the socket's or TLS layer's own words (name not resolved, refused,
    certificate), which tell the operator what to fix; never a header, and no URL's userinfo.
    A protocol error quotes the server's bytes: shown only as :func:`shown_server_text` allows."""
    if isinstance(exc, httpx.LocalProtocolError):  # our own request refused: it quotes it
        return type(exc).__name__
    try:
        request: httpx.Request | None = exc.request
    except RuntimeError:  # an error raised without its request
        request = None
    reason = shown_server_text(_USERINFO.sub("//***@", str(exc)), request, 200)
    failure = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    # A mistyped D23_API_URL shows here; settings refuse userinfo.
    return failure if request is None else f"{failure} [host {request.url.host}]"


def _host_named_wrong(exc: httpx.TransportError) -> str | None:
    """Why ``D23_API_URL``'s host cannot be the API whatever a retry does: a name DNS says does
    not exist (not one it could not look up now), a certificate this machine does not trust."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without its request
        return None
    if _through_a_proxy(url):  # the name or certificate may be the proxy's, not the API's
        return None
    host = url.host
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = getattr(cause, "verify_message", None) or str(cause)  # set by ssl's checks
            return (
                f"the host at D23_API_URL ({host}) presented a certificate this machine does not "
                f"trust ({reason}): check D23_API_URL, or the machine's CA certificates"
            )
        if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME:
            return f"the host name in D23_API_URL ({host}) does not exist: check D23_API_URL"
        cause = cause.__cause__ or cause.__context__
    return None


def _through_a_proxy(url: httpx.URL) -> bool:
    """Whether httpx sends a request for ``url`` through a proxy the environment names
    (``HTTPS_PROXY``, ``ALL_PROXY``, ... unless ``NO_PROXY`` exempts the host)."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    # In urllib.request since Python 2, not in its type stubs.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return not bypass(url.host, proxies)


class OversizedInt:
    """A JSON integer longer than Python converts (4,300 digits), kept as its text: one bad
    value, or an extra field ignored like any other, not a page that cannot be parsed."""

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | OversizedInt:
    try:
        return int(text)
    except ValueError:
        return OversizedInt(text)


def decode_json(
    response: httpx.Response,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """The parsed body of a 200, or a ``bad_body`` :class:`Transient` (HTML, truncated, empty).
    With ``object_pairs_hook``, every object goes through it (Python's parser, slower)."""
    if object_pairs_hook is None:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
    try:
        # Valid JSON that orjson refuses: a lone surrogate escape, a number past a double, a
        # byte that is not UTF-8 (kept as a lone surrogate), an integer too long for Python.
        # One such value is one bad row (schema.validate_rows), not a page that fails every
        # retry.
        content = response.content
        text = content.decode(json.detect_encoding(content), "surrogateescape")  # a BOM, UTF-16
        return json.loads(text, parse_int=_parse_int, object_pairs_hook=object_pairs_hook)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        content_type = response.headers.get("content-type", "no content type").split(";")[0]
        kind = shown_server_text(content_type, request_of(response), 64)
        raise Transient(
            "bad_body",
            status=response.status_code,
            request_id=request_id_of(response),
            detail=f"not valid JSON (or nested deeper than the parser goes): "
            f"{len(response.content)} bytes of {kind}",
        ) from None


class Retrier:
    """Runs one logical request under a :class:`RetryPolicy`, counting retries by cause; shared by
    every request of one client, so that a ``Retry-After`` holds them all."""

    def __init__(
        self, policy: RetryPolicy, stats: ClientStats, sleep: Callable[[float], None]
    ) -> None:
        self.policy = policy
        self._stats = stats
        self._sleep = sleep
        self._lock = threading.Lock()
        self._not_before = 0.0  # on now()'s clock: no request goes out before it
        self._slept_injected = 0.0  # an injected sleep (tests) moves the clock as a real one would

    def now(self) -> float:
        """Seconds on a monotonic clock that an injected sleep (tests) moves too."""
        return time.monotonic() + self._slept_injected

    def pause(self, seconds: float, cancel: threading.Event | None) -> None:
        """Sleep, or raise :class:`Cancelled` if the walk was cancelled meanwhile."""
        # With the real clock, wait on the cancel event so a closing consumer does not have to
        # sit out a 30 s backoff; an injected sleep (tests) is called as given.
        if cancel is not None and self._sleep is time.sleep:
            if cancel.wait(seconds):
                raise Cancelled
            return
        self._sleep(seconds)
        if self._sleep is not time.sleep:
            with self._lock:
                self._slept_injected += seconds
        if cancel is not None and cancel.is_set():
            raise Cancelled

    def _hold_all(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, self.now() + seconds)

    def _wait_turn(self, cancel: threading.Event | None, budget: float) -> float:
        """Wait out the ``Retry-After`` any request of this client was given, plus this
        request's own jitter (none past ``budget``, the seconds this request may still wait),
        checking again for one given meanwhile; how long it waited."""
        waited = 0.0
        while True:
            with self._lock:
                remaining = self._not_before - self.now()
            if remaining <= 0:
                return waited
            pause = min(remaining * random.uniform(1.0, 1.1), max(remaining, budget - waited))
            self.pause(pause, cancel)
            waited += pause

    def call(
        self,
        attempt: Callable[[], T],
        *,
        what: str,
        path: str,
        window: Window | None = None,
        cancel: threading.Event | None = None,
        held: bool = True,
    ) -> T:
        """Return ``attempt()``, retrying :class:`Transient` failures, timeouts and drops;
        ``held``: wait out the client's ``Retry-After`` first (see the module docstring)."""
        waited = 0.0
        number = 0
        counted = 0  # the attempts that count against max_attempts: not those paced by a 429
        statuses: set[int] = set()
        while True:
            number += 1
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if held:
                waited += self._wait_turn(cancel, self.policy.max_total_wait_s - waited)
            try:
                return attempt()
            except httpx.TimeoutException as exc:
                failure = Transient("timeout", detail=_connection_failure(exc))
            except httpx.TransportError as exc:
                named_wrong = _host_named_wrong(exc)
                if named_wrong is not None:
                    raise ApiHostError(f"{what}: {named_wrong}", path=path, window=window) from None
                failure = Transient("connection", detail=_connection_failure(exc))
            except httpx.DecodingError as exc:  # a body its Content-Encoding cannot undo
                failure = Transient("bad_body", detail=type(exc).__name__)
            except Transient as exc:
                failure = exc
            if failure.status is not None:
                statuses.add(failure.status)
            retry_after = failure.retry_after
            paced = (
                failure.status == 429
                and retry_after is not None
                and retry_after >= 1.0
                and self.policy.max_attempts > 1
            )
            counted += not paced
            if counted >= self.policy.max_attempts:
                raise self._give_up(
                    failure, f"{what} failed after {number} attempts", path, window, statuses
                )
            delay = retry_after if retry_after is not None else self.policy.backoff(number)
            if waited + delay > self.policy.max_total_wait_s:
                raise self._give_up(
                    failure,
                    f"{what} failed after {number} attempts: waiting {delay:.1f}s more"
                    + " (the API's Retry-After)" * (retry_after is not None)
                    + f" would exceed the {self.policy.max_total_wait_s:.0f}s retry budget",
                    path,
                    window,
                    statuses,
                )
            self._stats.retry(failure.cause)
            log.info(
                "retrying %s (%s, requestId %s) in %.2fs: attempt %d, %d of %d failures allowed",
                what,
                failure.describe(),
                failure.request_id,
                delay,
                number + 1,
                counted,
                self.policy.max_attempts - 1,
            )
            if retry_after is None:
                self.pause(delay, cancel)
                waited += delay
                continue
            self._hold_all(delay)
            if not held:  # not waited out at the top: wait for it here, without the jitter
                self.pause(delay, cancel)
                waited += delay

    @staticmethod
    def _give_up(
        failure: Transient, message: str, path: str, window: Window | None, statuses: set[int]
    ) -> ProtocolError | RetriesExhaustedError:
        context: ErrorContext = {
            "status": failure.status,
            "request_id": failure.request_id,
            "path": path,
            "window": window,
        }
        if failure.cause == "bad_body":
            return ProtocolError(
                f"{message}: the API kept answering with an invalid body: {failure.detail}",
                **context,
            )
        return RetriesExhaustedError(
            message, cause=failure.describe(), statuses=frozenset(statuses), **context
        )
