"""Telling a gateway that is down from windows that are too wide.

A 504 on a wide window is the gateway's advice to narrow it, and the walks and counts do so at
once. But a gateway whose API is down answers 504 to everything, after its own timeout (often
30-60 s): each slice's count is then narrowed to its narrowest parts and each walk backed off at
the narrowest width before the read gives up: about 440 timeouts, 4 at a time, 55 minutes of a
silent run at 30 s each (``benchmarks/README.md``). So the client watches the 504s of all its
requests: once a request it can make no narrower (the narrowest window, at the smallest page)
has timed out, and another does after nothing but 504s has come back for as long as one request
may spend on retries, the read stops, naming the outage. A walk that gives up at its narrowest
after that long of nothing but 504s has one instant of its window counted: a 504 there too is
the outage, an answer a window too heavy for pages. Any answer of the API's own (a page, a
count, a 429 in its error envelope) says its gateway is up and starts the watch again.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from d23_pipeline.client.errors import GatewayDownError, WindowTooHeavyError
from d23_pipeline.client.windows import Window
from d23_pipeline.wording import counted

log = logging.getLogger("d23_pipeline.client")

# The share of the patience after which a run of 504s since a narrowest one is warned of: a
# healthy read has no minute (of 300 s) without an answer once it asks no narrower.
_WARN_AFTER = 0.2
_RELAUNCH = "Launch the run again once it answers (finished slices are kept)"


class OutageWatch:
    """The client's run of 504s since the API last answered, across threads."""

    def __init__(self, patience_s: float, clock: Callable[[], float]) -> None:
        self._patience_s = patience_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the first 504 since the last answer came
        self._since_narrowest: float | None = None  # ... the first asked as narrow as it goes
        self._timeouts: Counter[str] = Counter()  # by what was asked: "count" or "page"
        self._narrowest: Window | None = None  # the narrowest window asked as narrow as it goes
        self._warned = False

    def answered(self) -> None:
        """The API itself answered an export request: its gateway is up."""
        with self._lock:
            self._since = self._since_narrowest = self._narrowest = None
            self._warned = False
            self._timeouts.clear()

    def timed_out(
        self, asked: str, window: Window, *, narrowest: bool, path: str, request_id: str | None
    ) -> None:
        """A ``"count"`` or ``"page"`` of ``window`` got a 504 (``narrowest``: the client asks
        it no narrower, nor a smaller page); raise :class:`GatewayDownError` if it is narrowest
        and the run of 504s since the first narrowest one has lasted the patience."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
            self._timeouts[asked] += 1
            if narrowest:
                if self._since_narrowest is None:
                    self._since_narrowest = now
                if self._narrowest is None or window.duration < self._narrowest.duration:
                    self._narrowest = window
            if self._since_narrowest is None or self._narrowest is None:
                return
            lasted, narrowest_seen = now - self._since_narrowest, self._narrowest
            if lasted < self._patience_s * _WARN_AFTER:
                return
            warn, self._warned = not self._warned, True
            run = self._run(now - self._since)
        how = (
            f"{lasted:.0f}s of it since one on a request the client asks no narrower (windows "
            f"down to {narrowest_seen.duration}, at the smallest page)"
        )
        if narrowest and lasted >= self._patience_s:
            raise GatewayDownError(
                f"every export request timed out at the gateway (504) for {run}, {how}: the "
                f"API or its gateway is down. {_RELAUNCH}",
                status=504,
                request_id=request_id,
                path=path,
                window=window,
            )
        if warn and lasted < self._patience_s:
            log.warning(
                "nothing but 504s (gateway timeouts) for %s, %s: if the API answers nothing for "
                "%.0fs since, the next such request to time out stops the read (the API or its "
                "gateway is down)",
                run,
                how,
                self._patience_s,
            )

    def outage_behind(self, gave_up: WindowTooHeavyError) -> GatewayDownError | None:
        """The outage a walk that ``gave_up`` at its narrowest window and smallest page may have
        met: nothing but 504s for the patience. Report its last 504 to :meth:`timed_out`
        first; a walk alone cannot tell that from a window too heavy, so ask again after
        counting an instant of its window."""
        with self._lock:
            now = self._clock()
            if self._since is None or now - self._since < self._patience_s:
                return None
            run = self._run(now - self._since)
        return GatewayDownError(
            f"every export request timed out at the gateway (504) for {run}, a walk giving up "
            f"at its narrowest window and smallest page: the API or its gateway is down. "
            f"{_RELAUNCH}",
            status=504,
            request_id=gave_up.request_id,
            path=gave_up.path,
            window=gave_up.window,
        )

    def _run(self, lasted: float) -> str:
        """How long the run of 504s has lasted, and what timed out."""
        what = ", ".join(counted(n, kind) for kind, n in self._timeouts.items())
        if not self._timeouts["page"]:
            what += "; no page was asked meanwhile"
        return f"{lasted:.0f}s ({what})"
