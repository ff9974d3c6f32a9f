"""Knobs of the simulated Exports API: the data it generates and the faults it injects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal


@dataclass
class Faults:
    """Runtime-mutable faults, applied to authorised data requests only (never login/refresh)."""

    # The time to answer a page or count, rendering included (the rest of it is slept).
    latency_s: float = 0.0
    error_5xx_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 0.05
    burst_429: int = 0
    drop_rate: float = 0.0
    max_window_for_504: timedelta | None = None
    # How long the gateway waits for the API before it answers 504: its own timeout.
    gateway_timeout_s: float = 0.0
    # The gateway's other advice, "lower the limit": pages asking more rows than this get 504.
    max_limit_for_504: int | None = None
    # A slow count (documented): counts of windows wider than this answer `total: null`,
    # `totalNote: "timeout"`, as the API does for a count it gives up on.
    max_window_for_count: timedelta | None = None
    # Entries the next page scans, given the limit it asks (capped at that limit): short and
    # empty pages on demand. A page that scans nothing still moves its cursor on, as a page of
    # other tenants' rows does; with only this lender's rows the scan is the page's row count.
    page_size: Callable[[int], int] | None = None
    # Share of page requests whose walk ends early: `nextCursor: null` although rows remain.
    # Decided by a hash of the request, so the same request always ends the same way.
    truncate_rate: float = 0.0
    # An early end tied to the data, as where a parent batch ends: every walk that reaches the
    # end of such an instant ends there (`nextCursor: null`, rows left), whatever its page size.
    # About one instant in this many holding a row of this lender ends walks; 0 for none.
    batch_end_every: int = 0
    # Rows added to / hard-deleted from the month being read, on every page request: a month
    # that changes while it is read, as the current month does every day.
    grow_per_page: int = 0
    delete_per_page: int = 0
    # Cursors that expire, as an API's server-side cursors may: a walk gets this many pages,
    # its first (asked without a cursor) included; the cursor the last of them hands out is
    # answered 500, as a corrupt one is (documented). 0 for never.
    cursor_pages: int = 0
    seed: int = 0


# The kinds of bad row, one per field of BadRows.
BadRowKind = Literal["missing_public_id", "bad_timestamp", "wrong_type", "extra_pii"]


@dataclass
class BadRows:
    """Per month, how many rows are generated broken (or, for ``extra_pii``, valid but leaky)."""

    missing_public_id: int = 0
    bad_timestamp: int = 0
    wrong_type: int = 0
    extra_pii: int = 0


@dataclass
class SimulatorConfig:
    """What the simulator generates; ``faults`` only seeds ``Simulator.faults``."""

    seed: int = 23
    months: tuple[str, ...] = ("2026-01", "2026-02", "2026-03")
    rows_per_month: int = 2000
    lender_slug: str = "demo"
    email: str = "analyst@demo.example"
    password: str = "demo-password"
    other_lender_share: float = 0.3
    tie_share: float = 0.2
    token_ttl_s: float = 3600.0
    total_cap: int = 100_000
    bad_rows: BadRows = field(default_factory=BadRows)
    faults: Faults = field(default_factory=Faults)
