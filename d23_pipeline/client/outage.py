"""Telling a gateway that is down from windows that are too wide.

A 504 on a wide window is the gateway's advice to narrow it, and the walks and counts do so at
once. But a gateway whose API is down answers 504 to everything, after its own timeout (often
30-60 s): each slice's count is then narrowed to its narrowest parts and each walk backed off at
the narrowest width before the read gives up, about 130 timeouts per four workers, an hour of a
silent run at 30 s each. So the client watches the 504s of all its requests: once nothing but
504s has come back for as long as one request may spend on retries, and requests the client
can make no narrower (the narrowest window, at the smallest page) have timed out among them,
the read stops, naming the outage. Any answer of the API's own (a page, a count, a 429 in its
error envelope) says its gateway is up and starts the watch again.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from d23_pipeline.client.errors import GatewayDownError
from d23_pipeline.client.windows import Window

log = logging.getLogger("d23_pipeline.client")

# The share of the patience after which a run of 504s, narrowest requests among them, is
# warned of: a healthy read has no minute (of 300 s) without an answer once it asks no wider.
_WARN_AFTER = 0.2


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


class OutageWatch:
    """The client's run of 504s since the API last answered, across threads."""

    def __init__(self, patience_s: float, clock: Callable[[], float]) -> None:
        self._patience_s = patience_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the first 504 since the last answer came
        self._timeouts: Counter[str] = Counter()  # by what was asked: "count" or "page"
        self._narrowest: Window | None = None  # the narrowest window asked as narrow as it goes
        self._warned = False

    def answered(self) -> None:
        """The API itself answered an export request: its gateway is up."""
        with self._lock:
            self._since, self._narrowest, self._warned = None, None, False
            self._timeouts.clear()

    def timed_out(
        self, asked: str, window: Window, *, narrowest: bool, path: str, request_id: str | None
    ) -> None:
        """A ``"count"`` or ``"page"`` of ``window`` got a 504 (``narrowest``: the client asks
        it no narrower, nor a smaller page); raise :class:`GatewayDownError` once the run of
        504s says the gateway is down."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
            self._timeouts[asked] += 1
            if narrowest and (
                self._narrowest is None or window.duration < self._narrowest.duration
            ):
                self._narrowest = window
            lasted, narrowest_seen = now - self._since, self._narrowest
            if narrowest_seen is None or lasted < self._patience_s * _WARN_AFTER:
                return
            warn, self._warned = not self._warned, True
            what = ", ".join(_plural(n, kind) for kind, n in self._timeouts.items())
            if not self._timeouts["page"]:
                what += "; no page was asked meanwhile"
        if lasted < self._patience_s:
            if warn:
                log.warning(
                    "nothing but 504s (gateway timeouts) for %.0fs (%s), windows as narrow as "
                    "%s asked at the smallest page included: if the API answers nothing "
                    "within %.0fs of the first, the read stops (the API or its gateway is down)",
                    lasted,
                    what,
                    narrowest_seen.duration,
                    self._patience_s,
                )
            return
        raise GatewayDownError(
            f"every export request timed out at the gateway (504) for {lasted:.0f}s ({what}), "
            f"windows as narrow as {narrowest_seen.duration} asked at the smallest page "
            "included: the API or its gateway is down. Launch the run again once it answers "
            "(finished slices are kept)",
            status=504,
            request_id=request_id,
            path=path,
            window=window,
        )
