"""Serving a :class:`Simulator` over a real loopback socket with the standard library."""

from __future__ import annotations

import contextlib
import io
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from d23_pipeline.simulator.app import Drop, Simulator, trickled


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The pipeline walks several windows at once; the default backlog of 5 refuses bursts.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is normal here (tests do it on purpose).
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        """Cut keep-alive connections, so a stopped simulator stops answering at once."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Trickling(io.BufferedIOBase):
    """A connection's writer that sends a byte at a time, ``every_s`` apart."""

    def __init__(self, out: io.BufferedIOBase, every_s: float) -> None:
        self._out = out
        self._every_s = every_s

    def write(self, data: bytes) -> int:  # type: ignore[override]
        for byte in trickled(data, self._every_s):
            self._out.write(byte)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def _handler_for(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real gateway
        server_version = "d23-simulator"
        timeout = 60  # an idle keep-alive connection must not pin a thread forever
        # Headers and body go out in two writes; with Nagle on, each page waits for a delayed ACK.
        disable_nagle_algorithm = True

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query: dict[str, str] = {}
            for name, value in parse_qsl(parts.query, keep_blank_values=True):
                query.setdefault(name, value)
            answer = sim.handle(self.command, unquote(parts.path), query, self.headers, body)
            if isinstance(answer, Drop):
                # Closing without a status line is what a reset upstream looks like to a client;
                # held open first, it is an upstream that never answers.
                time.sleep(answer.after_s)
                self.close_connection = True
                return
            out = self.wfile
            if answer.trickle_s:
                self.wfile = _Trickling(out, answer.trickle_s)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            finally:
                self.wfile = out  # the connection's next answer is its own

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # one line per page would drown the demo's console

    return Handler


@contextlib.contextmanager
def serve(sim: Simulator, port: int = 0) -> Iterator[str]:
    """Serve ``sim`` on ``127.0.0.1:port`` (0 picks a free port); yield the base URL."""
    server = _Server(("127.0.0.1", port), _handler_for(sim))
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        daemon=True,
        name=f"d23-simulator:{server.server_address[1]}",
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        thread.join(timeout=5)
