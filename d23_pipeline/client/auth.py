"""Bearer tokens: login, refresh on 401, and one refresh for many threads.

Concurrent workers that get a 401 at the same moment each report the token *generation* they
used; only the first one refreshes, the others see a newer generation and simply retry.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import quote

from d23_pipeline.client.body import BoundedHttp
from d23_pipeline.client.errors import (
    AuthenticationError,
    ExportsApiError,
    NotTheApiError,
    ProtocolError,
)
from d23_pipeline.client.retry import (
    Retrier,
    Transient,
    decode_json,
    is_api_error,
    is_html,
    not_the_api,
    request_id_of,
    transient_for,
)
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.settings import Credentials, LoginCredentials, fits_a_header, is_uuid

log = logging.getLogger("d23_pipeline.client")

_ABOUT_CREDENTIALS = frozenset({400, 401, 403})


class TokenManager:
    """Holds the current token for one set of credentials; thread-safe."""

    def __init__(
        self,
        credentials: Credentials,
        http: BoundedHttp,
        base_url: str,
        retrier: Retrier,
        stats: ClientStats,
    ) -> None:
        self._credentials = credentials
        self._http = http
        self._base_url = base_url
        self._retrier = retrier
        self._stats = stats
        self._lock = threading.Lock()
        self._generation = 0
        self._token: str | None = None
        self._refresh_token: str | None = None
        self._lender_public_id: str | None = None
        self._login_failure: ExportsApiError | None = None
        if isinstance(credentials, LoginCredentials):
            http.credentials.hold(credentials.password)
        else:
            http.credentials.hold(credentials.token)
            self._token = credentials.token
            self._lender_public_id = credentials.lender_public_id

    @property
    def lender_public_id(self) -> str:
        """The lender's UUID (logs in first when using login credentials)."""
        with self._lock:
            self._ensure_token()
            assert self._lender_public_id is not None
            return self._lender_public_id

    def current(self) -> tuple[str, int]:
        """The token to send and its generation (to hand back to :meth:`recover`)."""
        with self._lock:
            return self._ensure_token(), self._generation

    def recover(
        self,
        stale_generation: int,
        *,
        relogin: bool = False,
        cancel: threading.Event | None = None,
    ) -> None:
        """Replace a token the API answered 401 to: refresh it, else log in again; a read
        cancelled meanwhile (``cancel``) stops its retries, and the other workers' wait."""
        with self._lock:
            if stale_generation != self._generation:
                return  # another thread already replaced it
            credentials = self._credentials
            if not isinstance(credentials, LoginCredentials):
                raise AuthenticationError(
                    "the API rejected the configured token (401) and a held token cannot be "
                    "refreshed: supply a fresh D23_TOKEN, or use D23_LENDER/D23_EMAIL/"
                    "D23_PASSWORD login credentials"
                )
            if self._refresh_token and not relogin:
                try:
                    self._refresh(credentials, cancel)
                    return
                except ExportsApiError as exc:  # whatever it was, a fresh login may work
                    log.info("token refresh failed (%s); logging in again", type(exc).__name__)
            self._login(credentials, cancel)

    def _ensure_token(self) -> str:
        if self._token is None:
            assert isinstance(self._credentials, LoginCredentials)
            self._login(self._credentials)
        assert self._token is not None
        return self._token

    def _auth_path(self, credentials: LoginCredentials, action: str) -> str:
        return f"/admin/auth/{quote(credentials.lender, safe='')}/{action}"

    def _post(
        self,
        path: str,
        payload: dict[str, str],
        what: str,
        cancel: threading.Event | None,
        refused_hint: str = "",
    ) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            response = self._http.post(self._base_url + path, json=payload)
            self._stats.add("requests")
            failure = transient_for(response)
            if failure is not None:
                raise failure
            # 400, 401 and 403 are answers about the credentials whatever their body (a
            # gateway's 401 has none of the API's); others without its envelope are not the API's.
            status = response.status_code
            if status != 200 and status not in _ABOUT_CREDENTIALS and not is_api_error(response):
                raise NotTheApiError(
                    not_the_api(response, what),
                    status=status,
                    request_id=request_id_of(response),
                    path=path,
                )
            if status != 200:
                raise AuthenticationError(
                    f"{what} refused{refused_hint}",
                    status=status,
                    request_id=request_id_of(response),
                    path=path,
                )
            # The first answer of a read: a page here is a web app's host, not a maintenance
            # page (those come as 503s, retried above).
            if is_html(response):
                raise NotTheApiError(not_the_api(response, what), status=status, path=path)
            answer = decode_json(response)
            if not isinstance(answer, dict):
                raise Transient("bad_body", status=200, detail="answer is not a JSON object")
            return answer

        # Not held by a data request's Retry-After: this runs under the token lock.
        return self._retrier.call(attempt, what=what, path=path, held=False, cancel=cancel)

    def _login(self, credentials: LoginCredentials, cancel: threading.Event | None = None) -> None:
        # A login that failed after its retries fails the read. The other workers, waiting on
        # the lock meanwhile, get the same failure: each would otherwise retry from the start.
        if self._login_failure is not None:
            raise self._login_failure
        try:
            self._log_in(credentials, cancel)
        except ExportsApiError as exc:
            self._login_failure = exc
            raise

    def _log_in(self, credentials: LoginCredentials, cancel: threading.Event | None) -> None:
        path = self._auth_path(credentials, "login")
        answer = self._post(
            path,
            {"email": credentials.email, "password": credentials.password},
            f"login for lender {credentials.lender!r}",
            cancel,
            refused_hint=": check D23_LENDER, D23_EMAIL and D23_PASSWORD",
        )
        token, refresh, lender_id = (
            answer.get("token"),
            answer.get("refreshToken"),
            answer.get("lenderPublicId"),
        )
        if not (isinstance(token, str) and token and isinstance(lender_id, str) and lender_id):
            raise ProtocolError("the login answer has no token or lenderPublicId", path=path)
        if not fits_a_header(token):
            raise ProtocolError("the login answer's token is not printable ASCII", path=path)
        if not is_uuid(lender_id):  # it goes into every path and log line: not quoted here
            raise ProtocolError("the login answer's lenderPublicId is not a UUID", path=path)
        self._token = token
        self._refresh_token = refresh if isinstance(refresh, str) and refresh else None
        self._http.credentials.hold(token, self._refresh_token)
        self._lender_public_id = lender_id
        self._generation += 1
        self._stats.add("logins")
        log.info("logged in as lender %s (%s)", credentials.lender, lender_id)

    def _refresh(self, credentials: LoginCredentials, cancel: threading.Event | None) -> None:
        assert self._refresh_token is not None
        path = self._auth_path(credentials, "refresh-token")
        answer = self._post(path, {"refreshToken": self._refresh_token}, "token refresh", cancel)
        token = answer.get("token")
        if not (isinstance(token, str) and token):
            raise ProtocolError("the refresh answer has no token", path=path)
        if not fits_a_header(token):
            raise ProtocolError("the refresh answer's token is not printable ASCII", path=path)
        self._token = token
        self._http.credentials.hold(token)
        self._generation += 1
        self._stats.add("token_refreshes")
        log.info("refreshed the API token after a 401")
