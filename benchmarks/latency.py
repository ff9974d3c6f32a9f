"""Issue 5.2: a month over loopback at 100 ms per page, against the ideal pages x latency / C."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Timing, land_month
from benchmarks.pages import SLICE
from benchmarks.simulator_process import simulator
from d23_pipeline.client import ExportsClient
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import SimulatorConfig

MONTH = "2026-03"


def bench(
    rows: int, latency_s: float, concurrency: int, page_limit: int, repeats: int
) -> dict[str, Any]:
    """Wall time of landing one month, and the ideal from the pages the simulator served."""
    config = SimulatorConfig()
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    walls: list[float] = []
    pages: list[int] = []
    with simulator(rows, MONTH, "--latency-ms", str(latency_s * 1000)) as url:
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
