"""One authenticated GET of the export path: token recovery on 401, retries of transient
failures, and a clear error for every other status."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

import httpx

from d23_pipeline.client.auth import TokenManager
from d23_pipeline.client.body import BoundedHttp
from d23_pipeline.client.errors import (
    AuthenticationError,
    DatasetNotFoundError,
    ExportsApiError,
    LenderMismatchError,
    NotTheApiError,
)
from d23_pipeline.client.outage import OutageWatch
from d23_pipeline.client.retry import (
    Cancelled,
    Retrier,
    is_api_error,
    not_the_api,
    request_id_of,
    transient_for,
)
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.client.windows import Window

log = logging.getLogger("d23_pipeline.client")

T = TypeVar("T")

# How often a request waiting for a free slot looks at the cancel flag.
_SLOT_POLL_S = 0.05


class GatewayTimeout(Exception):
    """A 504 the caller handles itself (by narrowing the window) rather than retrying as is."""

    def __init__(self, request_id: str | None) -> None:
        super().__init__("504")
        self.request_id = request_id


class ExportsSession:
    """GETs of one lender's export of one dataset, with tokens and retries, at most
    ``max_in_flight`` of them at a time whichever threads send them."""

    def __init__(
        self,
        http: BoundedHttp,
        base_url: str,
        auth: TokenManager,
        retrier: Retrier,
        stats: ClientStats,
        outage: OutageWatch,
        *,
        section: str,
        dataset: str,
        max_in_flight: int,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._http = http
        self._base_url = base_url
        self._auth = auth
        self._retrier = retrier
        self._stats = stats
        self._outage = outage
        self.section = section
        self.dataset = dataset

    @property
    def path(self) -> str:
        """The export's URL path (logs in first when using login credentials)."""
        lender = quote(self._auth.lender_public_id, safe="")
        return f"/admin/v3/lenders/{lender}/exports/{self.section}/{self.dataset}"

    def get(
        self,
        params: dict[str, str],
        parse: Callable[[httpx.Response], T],
        *,
        what: str,
        window: Window,
        cancel: threading.Event | None,
    ) -> T:
        """``parse`` of the 200 answer to ``params``; a 504 raises :class:`GatewayTimeout`, which
        the caller reports to the client's :class:`OutageWatch`. A page or count read, or a
        refusal in the API's own error envelope (a 429, a 4xx), tells the watch the gateway is
        up; the API's own 5xx do not: an API that is down may answer some itself."""

        def attempt() -> T:
            response = self._send(params, what, window, cancel)
            status = response.status_code
            if status == 504:
                raise GatewayTimeout(request_id_of(response))
            if status == 200:
                answer = parse(response)
                self._outage.answered()
                return answer
            if status < 500 and is_api_error(response):
                self._outage.answered()
            failure = transient_for(response)
            if failure is not None:
                raise failure
            raise self._refusal(response, what, window)

        return self._retrier.call(attempt, what=what, path=self.path, window=window, cancel=cancel)

    def _send(
        self, params: dict[str, str], what: str, window: Window, cancel: threading.Event | None
    ) -> httpx.Response:
        for recovery in range(3):
            # The token as it is once this request may go: read before waiting for a slot, it
            # may have been replaced meanwhile, and its 401 would use up a recovery.
            self._take_slot(cancel)
            try:
                token, generation = self._auth.current()
                response = self._http.get(
                    self._base_url + self.path,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                )
            finally:
                self._slots.release()
            self._stats.add("requests")
            if response.status_code != 401:
                return response
            if recovery < 2:
                log.info("401 on %s; replacing the token", what)
                self._auth.recover(generation, relogin=recovery == 1, cancel=cancel)
        raise AuthenticationError(
            "the API still answers 401 after a token refresh and a fresh login "
            "(is the lender inactive?)",
            status=401,
            request_id=request_id_of(response),
            path=self.path,
            window=window,
        )

    def _take_slot(self, cancel: threading.Event | None) -> None:
        while not self._slots.acquire(timeout=_SLOT_POLL_S):
            if cancel is not None and cancel.is_set():
                raise Cancelled
        # Cancelled while it waited, the slot freed within the same poll: send nothing.
        if cancel is not None and cancel.is_set():
            self._slots.release()
            raise Cancelled

    def _refusal(self, response: httpx.Response, what: str, window: Window) -> ExportsApiError:
        status, request_id = response.status_code, request_id_of(response)
        if status == 403:
            return LenderMismatchError(
                f"lender public id {self._auth.lender_public_id} in the path is not the "
                "token's lender: check that D23_LENDER_PUBLIC_ID and the token (or the "
                "login) belong to the same lender",
                status=status,
                request_id=request_id,
                path=self.path,
            )
        if not is_api_error(response):
            return NotTheApiError(
                not_the_api(response, what),
                status=status,
                request_id=request_id,
                path=self.path,
                window=window,
            )
        if status == 404:
            return DatasetNotFoundError(
                f"dataset {self.section}/{self.dataset} is unknown or not enabled for this lender",
                status=status,
                request_id=request_id,
                path=self.path,
            )
        return ExportsApiError(
            f"unexpected answer to {what}",
            status=status,
            request_id=request_id,
            path=self.path,
            window=window,
        )
