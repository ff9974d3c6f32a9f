"""Answers read whole but bounded: a 2xx body that decodes past ``max_bytes`` is a ``bad_body``
failure (retried, then a :class:`~d23_pipeline.client.errors.ProtocolError`), not a run that
holds a gateway's runaway answer or a gzip bomb in memory. Any other answer's status is the
answer, so its body is cut at ``max_bytes`` and handled as before.

httpx decodes gzip one received chunk at a time, so the most held is ``max_bytes`` plus one
decoded chunk (httpcore reads 64 KiB; gzip expands at most ~1,032x).

httpx's read timeout bounds each wait for bytes, not the whole answer: a gateway that trickles a
byte now and then would hold a walk (or the login, under the token lock) for as long as it
trickles. An answer's headers must therefore arrive whole within ``deadline_s`` of the first
wait for them, and its body within ``deadline_s`` of its headers, or the answer is a read
timeout, retried like any other.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from d23_pipeline.client.retry import Transient, shown_request_id
from d23_pipeline.credentials import REQUEST_EXTENSION, HeldCredentials

# A full page (1,000 rows of ~300 bytes) is ~0.3 MB: 32 MiB leaves room for rows 100x wider.
MAX_BODY_BYTES = 32 * 2**20

# Describe the encoded body; the answer handed on carries the decoded one.
_ENCODED_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BoundedHttp:
    """GET and POST through one ``httpx.Client``, each answer's body read to at most
    ``max_bytes`` decoded bytes, its headers and its body each within ``deadline_s``."""

    def __init__(
        self,
        http: httpx.Client,
        max_bytes: int = MAX_BODY_BYTES,
        deadline_s: float = 60.0,
        credentials: HeldCredentials | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1 (got {max_bytes})")
        _bound_socket_reads(http)
        self._http = http
        self._max_bytes = max_bytes
        self._deadline_s = deadline_s
        # Every request carries them, for what its answer shows to be screened against.
        self.credentials = credentials if credentials is not None else HeldCredentials()

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """``httpx.Client.get``, bounded."""
        return self._send(self._request("GET", url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """``httpx.Client.post``, bounded."""
        return self._send(self._request("POST", url, **kwargs))

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Request:
        extensions = {REQUEST_EXTENSION: self.credentials}
        return self._http.build_request(method, url, extensions=extensions, **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        with _arriving_within(self._deadline_s, "headers"):
            response = self._http.send(request, stream=True)
        try:
            with _arriving_within(self._deadline_s, "body") as deadline:
                body = self._read(response, deadline)
        finally:
            response.close()
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name not in _ENCODED_BODY_HEADERS
        ]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)

    def _read(self, response: httpx.Response, deadline: _Deadline) -> bytes:
        chunks: list[bytes] = []
        size = 0
        # The body's clock starts with the headers in hand, and is looked at between chunks
        # too: a transport without sockets (in process) bypasses _DeadlineStream.
        deadline.left()
        for chunk in response.iter_bytes():
            if deadline.left() <= 0:
                raise httpx.ReadTimeout(deadline.message, request=response.request)
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


class _Deadline:
    """The time one part of an answer (its headers or its body) may take, counted from the
    first wait for it: a request waiting for a pooled connection, or connecting, has not
    started its answer's clock."""

    def __init__(self, seconds: float, part: str) -> None:
        self.message = f"the answer's {part} took longer than {seconds:g} s to arrive"
        self._seconds = seconds
        self._at: float | None = None

    def restart(self) -> None:
        """Start the clock again at the next wait (an HTTPS proxy's tunnel is open: what was
        read so far was its answer to CONNECT, not this answer)."""
        self._at = None

    def left(self) -> float:
        """Seconds left; the first call starts the clock."""
        now = time.monotonic()
        if self._at is None:
            self._at = now + self._seconds
        return self._at - now


class _ThisThread(threading.local):
    """The deadline of the answer this thread is reading: httpx's sync client reads each answer
    on the thread that sent the request."""

    deadline: _Deadline | None = None


_current = _ThisThread()


@contextmanager
def _arriving_within(seconds: float, part: str) -> Iterator[_Deadline]:
    deadline = _Deadline(seconds, part)
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = None


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads stop at the deadline of the answer being read."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = _current.deadline
        if deadline is None:
            return self._stream.read(max_bytes, timeout)
        left = deadline.left()
        if left <= 0:
            raise httpcore.ReadTimeout(deadline.message)
        if timeout is not None and timeout <= left:
            return self._stream.read(max_bytes, timeout)
        try:
            return self._stream.read(max_bytes, left)
        except httpcore.ReadTimeout:
            raise httpcore.ReadTimeout(deadline.message) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))
        if _current.deadline is not None:
            _current.deadline.restart()
        return tls

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network, its connections read within the answer's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bound_socket_reads(http: httpx.Client) -> None:
    # httpx 0.28 has no setting for httpcore's network backend. Its connection pools (the
    # default transport's, and each proxy's from the environment) look it up whenever they open
    # a connection, so wrapping it before the first request reaches every socket. A transport
    # without sockets (in process) has no pool and is left as it is.
    for transport in (http._transport, *http._mounts.values()):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(
            backend, _DeadlineBackend
        ):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
