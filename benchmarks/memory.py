"""Issue 5.3: peak RSS of landing a month, measured in a fresh process per size.

The child reads the month from the simulator in a process of its own over loopback, so the
source's memory (the simulator holds the month) is never in the child and the peak is the
pipeline's own.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import client_for, land_month
from benchmarks.end_to_end import libraries_read_from_disk
from benchmarks.simulator_process import simulator
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import SimulatorConfig

MONTH = "2026-03"


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process's own address space; ru_maxrss would carry over the peak of
    # the parent that forked it (the throughput benchmark's pre-rendered month).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(api_url: str, rows: int) -> dict[str, Any]:
    """Land ``rows`` rows from the simulator at ``api_url`` in this process; its peak RSS
    before and after."""
    import pyarrow  # noqa: F401 - its import is part of the baseline, not of the month

    data_dir = Path(tempfile.mkdtemp(prefix="d23-bench-memory-"))
    baseline = _peak_rss_mb()
    started = time.perf_counter()
    config = SimulatorConfig()  # the simulator process serves its default lender
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    try:
        with client_for(api_url, credentials) as client:
            snapshot = land_month(client, data_dir, MONTH)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if snapshot.rows != rows:
        raise AssertionError(f"landed {snapshot.rows} rows, expected {rows}")
    return {
        "rows": rows,
        "baseline_mb": baseline,
        "peak_mb": _peak_rss_mb(),
        "seconds": time.perf_counter() - started,
    }


def bench(rows: int) -> dict[str, Any]:
    """Run :func:`child` in a new interpreter, so nothing earlier inflates the peak, against a
    simulator of the month in another."""
    with simulator(rows, MONTH) as api_url:
        libraries_read_from_disk()
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", api_url, str(rows)],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout.splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]))))
