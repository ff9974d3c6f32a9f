"""``python -m d23_pipeline.simulator``: serve the simulated Exports API on loopback until stopped.

The first line printed is the base URL (useful with ``--port 0``).
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta

from d23_pipeline.months import is_month, months_up_to
from d23_pipeline.simulator.app import Simulator
from d23_pipeline.simulator.config import BadRows, Faults, SimulatorConfig
from d23_pipeline.simulator.server import serve


def recent_months(count: int, today: datetime | None = None) -> tuple[str, ...]:
    """The ``count`` months up to and including the current UTC month, oldest first."""
    return tuple(months_up_to(today or datetime.now(UTC), count))


def _months(value: str) -> tuple[str, ...]:
    months = tuple(m.strip() for m in value.split(",") if m.strip())
    if not months or not all(is_month(m) for m in months):
        raise argparse.ArgumentTypeError(f"expected YYYY-MM[,YYYY-MM...], got {value!r}")
    return months


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a count of 0 or more, got {value!r}")
    return number


def _parser() -> argparse.ArgumentParser:
    defaults = SimulatorConfig()
    p = argparse.ArgumentParser(prog="python -m d23_pipeline.simulator", description=__doc__)
    p.add_argument("--port", type=int, default=8023, help="0 picks a free port (default 8023)")
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="the same seed serves the same rows"
    )
    months = p.add_mutually_exclusive_group()
    months.add_argument(
        "--months", type=_months, help="comma-separated YYYY-MM list, e.g. 2026-01,2026-02"
    )
    months.add_argument(
        "--months-back", type=int, default=6, help="the N months up to the current one (default 6)"
    )
    p.add_argument(
        "--rows-per-month",
        type=int,
        default=defaults.rows_per_month,
        help=f"rows logged in each month (default {defaults.rows_per_month})",
    )
    p.add_argument("--lender-slug", default=defaults.lender_slug)
    p.add_argument("--email", default=defaults.email)
    p.add_argument("--password", default=defaults.password)
    p.add_argument("--token-ttl-s", type=float, default=defaults.token_ttl_s)
    p.add_argument(
        "--total-cap",
        type=int,
        default=defaults.total_cap,
        help="counts above this are answered as capped, not exact",
    )
    p.add_argument(
        "--error-5xx-rate",
        type=float,
        default=0.0,
        help="share of page and count requests answered 500, 502 or 503 (0 to 1)",
    )
    p.add_argument(
        "--rate-429", type=float, default=0.0, help="share of page and count requests answered 429"
    )
    p.add_argument(
        "--retry-after-s",
        type=float,
        default=Faults.retry_after_s,
        help=f"the Retry-After a 429 carries, in seconds (default {Faults.retry_after_s:g})",
    )
    p.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        help="share of page and count requests whose connection closes without an answer",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="time to answer each page or count, rendering included",
    )
    p.add_argument(
        "--max-window-504-hours",
        type=float,
        default=None,
        help="answer 504 to windows wider than this, or unbounded (default: never)",
    )
    p.add_argument(
        "--gateway-timeout-ms",
        type=float,
        default=0.0,
        help="time the gateway waits before each of its 504s (default: none)",
    )
    p.add_argument(
        "--max-count-window-hours",
        type=float,
        default=None,
        help="answer counts of windows wider than this with totalNote timeout (default: never)",
    )
    p.add_argument(
        "--truncate-rate",
        type=float,
        default=0.0,
        help="share of page requests that end the walk early (nextCursor null, rows left)",
    )
    p.add_argument(
        "--batch-end-every",
        type=int,
        default=0,
        help="about one instant in this many ends every walk that reaches it (0: none)",
    )
    p.add_argument(
        "--grow-per-page", type=int, default=0, help="rows added to the month per page served"
    )
    p.add_argument(
        "--delete-per-page",
        type=int,
        default=0,
        help="rows hard-deleted from the month per page served",
    )
    p.add_argument(
        "--burst-429",
        type=_count,
        default=0,
        help="the next N page and count requests answered 429 (default 0)",
    )
    p.add_argument(
        "--max-limit-504",
        type=_count,
        default=None,
        help="answer 504 to pages asking more rows than this (default: never)",
    )
    p.add_argument(
        "--page-size",
        type=_count,
        default=None,
        help="entries each page scans, at most its limit: short pages, or empty ones with 0 "
        "(default: the limit)",
    )
    p.add_argument(
        "--cursor-pages",
        type=_count,
        default=0,
        help="cursors expire: a walk gets this many pages, then its cursor is answered 500 "
        "(0: never)",
    )
    bad = p.add_argument_group("bad rows, per month (as the contract breaks them)")
    for kind, help_text in (
        ("missing-public-id", "rows without a public_id"),
        ("bad-timestamp", "rows whose timestamp is not ISO-8601 with an offset"),
        ("wrong-type", "rows with a field of the wrong type"),
        ("extra-pii", "valid rows carrying a field outside the D23 allowlist"),
    ):
        bad.add_argument(f"--{kind}", type=_count, default=0, metavar="N", help=help_text)
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator configuration a command line asks for."""
    months = args.months or recent_months(args.months_back)
    max_window = None
    if args.max_window_504_hours is not None:
        max_window = timedelta(hours=args.max_window_504_hours)
    faults = Faults(
        latency_s=args.latency_ms / 1000,
        error_5xx_rate=args.error_5xx_rate,
        rate_429=args.rate_429,
        retry_after_s=args.retry_after_s,
        drop_rate=args.drop_rate,
        max_window_for_504=max_window,
        gateway_timeout_s=args.gateway_timeout_ms / 1000,
        max_window_for_count=(
            None
            if args.max_count_window_hours is None
            else timedelta(hours=args.max_count_window_hours)
        ),
        truncate_rate=args.truncate_rate,
        batch_end_every=args.batch_end_every,
        grow_per_page=args.grow_per_page,
        delete_per_page=args.delete_per_page,
        burst_429=args.burst_429,
        max_limit_for_504=args.max_limit_504,
        page_size=None if args.page_size is None else functools.partial(min, args.page_size),
        cursor_pages=args.cursor_pages,
        seed=args.seed,
    )
    bad_rows = BadRows(
        missing_public_id=args.missing_public_id,
        bad_timestamp=args.bad_timestamp,
        wrong_type=args.wrong_type,
        extra_pii=args.extra_pii,
    )
    return SimulatorConfig(
        seed=args.seed,
        months=months,
        rows_per_month=args.rows_per_month,
        lender_slug=args.lender_slug,
        email=args.email,
        password=args.password,
        token_ttl_s=args.token_ttl_s,
        total_cap=args.total_cap,
        bad_rows=bad_rows,
        faults=faults,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    sim = Simulator(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with serve(sim, args.port) as url:
        print(url, flush=True)
        print(
            f"D23 simulator: lender slug {config.lender_slug!r}, email {config.email}, "
            "password: the --password value (default: the built-in demo password); "
            f"lenderPublicId {sim.lender_public_id}; months {', '.join(config.months)}, "
            f"{config.rows_per_month} rows a month (the current month: those logged so far). "
            "Ctrl-C to stop.",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    answered = ", ".join(f"{status}: {n}" for status, n in sorted(sim.stats.by_status.items()))
    print(f"D23 simulator stopped; its answers by status: {answered or 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
