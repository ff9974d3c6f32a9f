"""Errors raised by the Exports API client.

Messages carry only what helps an operator: the URL path, the status, the ``requestId`` and the
window. Never headers, request bodies, tokens or passwords.
"""

from __future__ import annotations

from typing import TypedDict, Unpack

from d23_pipeline.client.windows import Window


class ErrorContext(TypedDict, total=False):
    """Where an answer came from: what every :class:`ExportsApiError` may name, all optional."""

    status: int | None
    request_id: str | None
    path: str | None
    window: Window | None


class ExportsApiError(Exception):
    """Base class: the API could not give a trustworthy answer."""

    def __init__(self, message: str, **context: Unpack[ErrorContext]) -> None:
        self.status = context.get("status")
        self.request_id = context.get("request_id")
        self.path = context.get("path")
        self.window = context.get("window")
        details = []
        if self.path:
            details.append(f"path {self.path}")
        if self.window is not None:
            details.append(f"window {self.window}")
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.request_id:
            details.append(f"requestId {self.request_id}")
        super().__init__(f"{message} ({', '.join(details)})" if details else message)


class AuthenticationError(ExportsApiError):
    """Login refused, or a 401 that survived token refresh and a fresh login."""


class LenderMismatchError(ExportsApiError):
    """403: the lender public id in the path is not the token's lender."""


class DatasetNotFoundError(ExportsApiError):
    """404: the section/dataset is unknown or not enabled for this lender."""


class NotTheApiError(ExportsApiError):
    """An answer without the Exports API's error body: ``D23_API_URL`` names another host (a
    typo, an old host, a proxy's page), which a later request would reach again."""


class ApiHostError(ExportsApiError):
    """``D23_API_URL``'s host cannot be the API as named: DNS says its name does not exist, or
    its certificate is not one this machine trusts. A retry meets the same answer."""


class RetriesExhaustedError(ExportsApiError):
    """A transient failure (429, 5xx, timeout, dropped connection) outlasted the retry budget;
    ``status`` is the last attempt's, ``statuses`` every attempt's that got an answer."""

    def __init__(
        self,
        message: str,
        *,
        cause: str,
        statuses: frozenset[int] = frozenset(),
        **context: Unpack[ErrorContext],
    ) -> None:
        super().__init__(f"{message}; last failure: {cause}", **context)
        self.cause = cause
        self.statuses = statuses


class WindowTooHeavyError(ExportsApiError):
    """504 persisted at the smallest page limit and the smallest window."""


class GatewayDownError(ExportsApiError):
    """Every export request timed out at the gateway (504), the narrowest windows included,
    for longer than a request's retry budget: the API or its gateway is down."""


class CursorLoopError(ExportsApiError):
    """The API handed back a ``nextCursor`` already seen in the same walk, or new ones on page
    after page that moved the walk no further (``walk.MAX_PAGES_IN_PLACE``)."""


class ProtocolError(ExportsApiError):
    """The answer was not the documented envelope (not JSON, no ``body.rows``, truncated)."""
