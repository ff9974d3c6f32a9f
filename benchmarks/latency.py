"""A month over loopback at a fixed latency per request, against the ideal requests x latency / C;
and the cost of learning the gateway's window width from 504s, against a reader that knew it."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import SLICE, Timing, land_month
from benchmarks.simulator_process import simulator
from d23_pipeline.client import ExportsClient
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import SimulatorConfig

MONTH = "2026-03"


def _land(url: str, concurrency: int, page_limit: int, **options: Any) -> tuple[float, dict]:
    """Wall time and client statistics of landing the month once, login excluded."""
    config = SimulatorConfig()
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    data_dir = Path(tempfile.mkdtemp(prefix="d23-bench-latency-"))
    client = ExportsClient(
        url,
        credentials,
        page_limit=page_limit,
        max_concurrency=concurrency,
        slice_size=SLICE,
        **options,
    )
    try:
        assert client.lender_public_id  # logs in before the clock starts
        started = time.perf_counter()
        land_month(client, data_dir, MONTH)
        return time.perf_counter() - started, client.stats.as_dict()
    finally:
        client.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _data_requests(stats: dict) -> int:
    return stats["requests"] - stats["logins"]


def bench(
    rows: int, latency_s: float, concurrency: int, page_limit: int, repeats: int
) -> dict[str, Any]:
    """Wall time of landing one month, and the ideal from the requests it took: pages and each
    slice's two counts, every one of them paying the latency."""
    walls: list[float] = []
    requests: list[int] = []
    with simulator(rows, MONTH, "--latency-ms", str(latency_s * 1000)) as url:
        for _ in range(repeats):
            wall, stats = _land(url, concurrency, page_limit)
            if stats["retries"]:
                raise AssertionError(f"a latency run retried: {stats}")
            walls.append(wall)
            requests.append(_data_requests(stats))
    wall = Timing(walls)
    ideal = requests[0] * latency_s / concurrency
    return {
        "rows": rows,
        "requests": requests[0],
        "concurrency": concurrency,
        "latency_s": latency_s,
        "wall": wall,
        "ideal_s": ideal,
        "ratio": wall.median / ideal,
    }


def bench_gateway(
    rows: int, latency_s: float, max_window_hours: float, concurrency: int, repeats: int
) -> dict[str, Any]:
    """A gateway answering 504 to windows wider than ``max_window_hours``: requests and wall
    time of the client learning the width, and of one told a working width up front."""
    known = timedelta(hours=24 / -(-24 // max_window_hours))  # the widest whole part of a day
    extra = ("--max-window-504-hours", str(max_window_hours))
    sides = {"learning": {"page_limit": 500}, "knowing": {"page_limit": 500, "max_window": known}}
    results = _learning_and_knowing(rows, latency_s, extra, sides, concurrency, repeats)
    return {"max_window_hours": max_window_hours, **results}


def bench_page_gateway(
    rows: int, latency_s: float, max_limit: int, concurrency: int, repeats: int
) -> dict[str, Any]:
    """A gateway answering 504 to pages of more than ``max_limit`` rows, at any width: the
    client asking 500 and learning the page that works (pauses included), and one told
    ``max_limit``."""
    extra = ("--max-limit-504", str(max_limit))
    sides = {"learning": {"page_limit": 500}, "knowing": {"page_limit": max_limit}}
    results = _learning_and_knowing(rows, latency_s, extra, sides, concurrency, repeats)
    return {"max_limit": max_limit, **results}


def _learning_and_knowing(
    rows: int,
    latency_s: float,
    faults: tuple[str, ...],
    sides: dict[str, dict[str, Any]],
    concurrency: int,
    repeats: int,
) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": rows}
    with simulator(rows, MONTH, "--latency-ms", str(latency_s * 1000), *faults) as url:
        for name, options in sides.items():
            runs = [_land(url, concurrency, **options) for _ in range(repeats)]
            results[name] = {
                "wall": Timing([wall for wall, _ in runs]),
                "requests": _data_requests(runs[0][1]),
                "504s": runs[0][1]["retries"].get("504", 0),
            }
    results["request_ratio"] = results["learning"]["requests"] / results["knowing"]["requests"]
    results["wall_ratio"] = results["learning"]["wall"].median / results["knowing"]["wall"].median
    return results
