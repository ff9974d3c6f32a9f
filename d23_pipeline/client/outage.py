"""Telling a gateway that is down from windows that are too wide.

A 504 on a wide window is the gateway's advice to narrow it, and the walks and counts do so at
once. But a gateway whose API is down answers 504 to everything, after its own timeout (often
30-60 s): each slice's count is then narrowed to its narrowest parts and each walk backed off at
the narrowest width before the read gives up, about 130 timeouts per four workers, an hour of a
silent run at 30 s each. So the client watches the 504s of all its requests: once nothing but
504s has come back for as long as one request may spend on retries, and windows as narrow as
the client asks have timed out among them, no narrower window is left to try and the read
stops, naming the outage.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from d23_pipeline.client.errors import GatewayDownError
from d23_pipeline.client.windows import Window

log = logging.getLogger("d23_pipeline.client")


class OutageWatch:
    """The client's run of 504s since an export request last came through, across threads."""

    def __init__(self, patience_s: float, clock: Callable[[], float]) -> None:
        self._patience_s = patience_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # the first 504 since the last answer
        self._timeouts: Counter[str] = Counter()  # by what was asked: "count" or "page"
        self._narrowest: Window | None = None  # the narrowest window among them

    def answered(self) -> None:
        """An export request came through: the gateway is up."""
        with self._lock:
            self._since, self._narrowest = None, None
            self._timeouts.clear()

    def timed_out(
        self, asked: str, window: Window, *, narrowest: bool, path: str, request_id: str | None
    ) -> None:
        """A ``"count"`` or ``"page"`` of ``window`` got a 504 (``narrowest``: the client asks
        none narrower); raise :class:`GatewayDownError` once the run of them says the gateway is
        down."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
            self._timeouts[asked] += 1
            first_narrowest = narrowest and self._narrowest is None
            if narrowest and (
                self._narrowest is None or window.duration < self._narrowest.duration
            ):
                self._narrowest = window
            lasted, narrowest_seen = now - self._since, self._narrowest
            timeouts = self._timeouts.total()
            what = ", ".join(f"{n} {kind}{'s' * (n != 1)}" for kind, n in self._timeouts.items())
        if first_narrowest:
            log.warning(
                "504 on %s, among %d requests in a row that timed out at the gateway over "
                "%.0fs: no narrower window is left to try; if nothing else comes back within "
                "%.0fs of the first, the read stops (the API or its gateway is down)",
                window,
                timeouts,
                lasted,
                self._patience_s,
            )
        if narrowest_seen is None or lasted < self._patience_s:
            return
        raise GatewayDownError(
            f"every export request timed out at the gateway (504) for {lasted:.0f}s, "
            f"{timeouts} in a row ({what}), windows as narrow as {narrowest_seen.duration} "
            "included: the API or its gateway is down. Launch the run again once it answers "
            "(finished slices are kept)",
            status=504,
            request_id=request_id,
            path=path,
            window=window,
        )
