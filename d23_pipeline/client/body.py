"""Answers read whole but bounded: a 2xx body that decodes past ``max_bytes`` is a ``bad_body``
failure (retried, then a :class:`~d23_pipeline.client.errors.ProtocolError`), not a run that
holds a gateway's runaway answer or a gzip bomb in memory. Any other answer's status is the
answer, so its body is cut at ``max_bytes`` and handled as before.

httpx decodes gzip one received chunk at a time, so the most held is ``max_bytes`` plus one
decoded chunk (httpcore reads 64 KiB; gzip expands at most ~1,032x).

httpx's read timeout bounds each wait for bytes, not the whole body: a gateway that trickles a
byte now and then would hold a walk (or the login, under the token lock) for as long as it
trickles. A body must therefore arrive whole within ``body_deadline_s`` of its headers, or the
answer is a read timeout, retried like any other.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from d23_pipeline.client.retry import Transient, shown_request_id

# A full page (1,000 rows of ~300 bytes) is ~0.3 MB: 32 MiB leaves room for rows 100x wider.
MAX_BODY_BYTES = 32 * 2**20

# Describe the encoded body; the answer handed on carries the decoded one.
_ENCODED_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BoundedHttp:
    """GET and POST through one ``httpx.Client``, each answer's body read to at most
    ``max_bytes`` decoded bytes."""

    def __init__(
        self, http: httpx.Client, max_bytes: int = MAX_BODY_BYTES, body_deadline_s: float = 60.0
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1 (got {max_bytes})")
        self._http = http
        self._max_bytes = max_bytes
        self._body_deadline_s = body_deadline_s

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """``httpx.Client.get``, bounded."""
        return self._send(self._http.build_request("GET", url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """``httpx.Client.post``, bounded."""
        return self._send(self._http.build_request("POST", url, **kwargs))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = self._http.send(request, stream=True)
        try:
            body = self._read(response)
        finally:
            response.close()
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name not in _ENCODED_BODY_HEADERS
        ]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)

    def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self._body_deadline_s
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(
                    f"the answer's body took longer than {self._body_deadline_s:g} s to arrive",
                    request=response.request,
                )
            size += len(chunk)
            if size > self._max_bytes:
                if not response.is_success:
                    chunks.append(chunk[: len(chunk) - (size - self._max_bytes)])
                    break
                raise Transient(
                    "bad_body",
                    status=response.status_code,
                    request_id=shown_request_id(response.headers.get("x-request-id"), response),
                    detail=f"a body longer than {self._max_bytes:,} bytes (decoded); "
                    "stopped reading it",
                )
            chunks.append(chunk)
        return b"".join(chunks)
