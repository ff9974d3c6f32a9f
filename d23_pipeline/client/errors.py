"""Errors raised by the Exports API client.

Messages carry only what helps an operator: the URL path, the status, the ``requestId`` and the
window. Never headers, request bodies, tokens or passwords.
"""

from __future__ import annotations

from d23_pipeline.client.windows import Window


class ExportsApiError(Exception):
    """Base class: the API could not give a trustworthy answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        path: str | None = None,
        window: Window | None = None,
    ) -> None:
        details = []
        if path:
            details.append(f"path {path}")
        if window is not None:
            details.append(f"window {window}")
        if status is not None:
            details.append(f"HTTP {status}")
        if request_id:
            details.append(f"requestId {request_id}")
        super().__init__(f"{message} ({', '.join(details)})" if details else message)
        self.status = status
        self.request_id = request_id
        self.path = path
        self.window = window


class AuthenticationError(ExportsApiError):
    """Login refused, or a 401 that survived token refresh and a fresh login."""


class LenderMismatchError(ExportsApiError):
    """403: the lender public id in the path is not the token's lender."""


class DatasetNotFoundError(ExportsApiError):
    """404: the section/dataset is unknown or not enabled for this lender."""


class RetriesExhaustedError(ExportsApiError):
    """A transient failure (429, 5xx, timeout, dropped connection) outlasted the retry budget."""

    def __init__(
        self,
        message: str,
        *,
        cause: str,
        status: int | None = None,
        request_id: str | None = None,
        path: str | None = None,
        window: Window | None = None,
    ) -> None:
        super().__init__(
            f"{message}; last failure: {cause}",
            status=status,
            request_id=request_id,
            path=path,
            window=window,
        )
        self.cause = cause


class WindowTooHeavyError(ExportsApiError):
    """504 persisted at the smallest page limit and the smallest window."""


class CursorLoopError(ExportsApiError):
    """The API handed back a ``nextCursor`` already seen in the same walk."""


class ProtocolError(ExportsApiError):
    """The answer was not the documented envelope (not JSON, no ``body.rows``, truncated)."""
