"""What a proven deletion costs a re-read: the month is read a second time, looking for the rows
that look gone (``landing/month.py``, ``_not_moved``).

``python -m benchmarks.second_read [--rows N] [--runs N]`` prints one Markdown line: the wall time
of ``d23/raw_logs`` re-reading a month with nothing gone, and with one row hard-deleted since the
last read, interleaved. In process (``dg.materialize`` through the tests' harness, the simulator
on 127.0.0.1 in the same process), the landing step alone: a narrower path than the CLI, enough
for the ratio between the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.end_to_end import MONTH, REPO

sys.path.insert(0, str(REPO / "d23_pipeline_tests"))

from harness import Pipeline  # noqa: E402 - the tests' harness, found through the path above

from d23_pipeline.simulator import Simulator, SimulatorConfig, serve  # noqa: E402


def _seconds(pipeline: Pipeline) -> float:
    start = time.monotonic()
    pipeline.materialize(MONTH, selection="d23/raw_logs")
    return time.monotonic() - start


def bench(rows: int, runs: int) -> tuple[list[float], list[float]]:
    """Re-read times with nothing gone and with one row gone, ``runs`` of each, interleaved."""
    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=rows))
    nothing_gone, one_gone = [], []
    with serve(sim) as url, tempfile.TemporaryDirectory() as scratch:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=Path(scratch) / "data")
        pipeline.materialize(MONTH)
        for _ in range(runs):
            nothing_gone.append(_seconds(pipeline))
            sim.hard_delete(1, MONTH)
            one_gone.append(_seconds(pipeline))
            pipeline.materialize(MONTH)  # merged, so the next re-read finds nothing gone
    return nothing_gone, one_gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    plain, gone = bench(args.rows, args.runs)
    low, high = statistics.median(plain), statistics.median(gone)
    print(
        f"| {args.rows:,} rows | nothing gone {low:.2f} s ({min(plain):.2f}-{max(plain):.2f}) "
        f"| one row gone {high:.2f} s ({min(gone):.2f}-{max(gone):.2f}) | {high / low:.2f}x |"
    )


if __name__ == "__main__":
    main()
