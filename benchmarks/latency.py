"""Issue 5.2: a month over loopback at 100 ms per page, against the ideal pages x latency / C."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import Timing, land_month
from benchmarks.pages import SLICE
from d23_pipeline.client import ExportsClient
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import SimulatorConfig

MONTH = "2026-03"


@contextmanager
def _simulator_process(rows: int, latency_s: float) -> Iterator[str]:
    # In its own process, like the real API: served from a thread of the benchmark, its page
    # rendering competed with the client for the GIL and added ~25 ms to every page at C=8.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "d23_pipeline.simulator",
            "--port",
            "0",
            "--months",
            MONTH,
            "--rows-per-month",
            str(rows),
            "--latency-ms",
            str(latency_s * 1000),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def bench(
    rows: int, latency_s: float, concurrency: int, page_limit: int, repeats: int
) -> dict[str, Any]:
    """Wall time of landing one month, and the ideal from the pages the simulator served."""
    config = SimulatorConfig()
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    walls: list[float] = []
    pages: list[int] = []
    with _simulator_process(rows, latency_s) as url:
        for _ in range(repeats):
            data_dir = Path(tempfile.mkdtemp(prefix="d23-bench-latency-"))
            client = ExportsClient(
                url,
                credentials,
                page_limit=page_limit,
                max_concurrency=concurrency,
                slice_size=SLICE,
            )
            try:
                assert client.lender_public_id  # logs in before the clock starts
                started = time.perf_counter()
                land_month(client, data_dir, MONTH)
                walls.append(time.perf_counter() - started)
                stats = client.stats.as_dict()
            finally:
                client.close()
                shutil.rmtree(data_dir, ignore_errors=True)
            # Without retries every data request is one page the simulator served.
            if stats["retries"] or stats["requests"] != stats["pages"] + stats["logins"]:
                raise AssertionError(f"requests other than pages were made: {stats}")
            pages.append(stats["pages"])
    wall = Timing(walls)
    ideal = pages[0] * latency_s / concurrency
    return {
        "rows": rows,
        "pages": pages[0],
        "concurrency": concurrency,
        "latency_s": latency_s,
        "wall": wall,
        "ideal_s": ideal,
        "ratio": wall.median / ideal,
    }
