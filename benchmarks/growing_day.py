"""What a month costs to land while agents log into its last day: a first read whose slice
counts moved is read again, on past its walks' ends (``client/completeness.py``, ``judge``).

``python -m benchmarks.growing_day [--rows N] [--runs N]`` prints one Markdown line: the export
requests (pages and counts) of ``d23/raw_logs`` landing a month for the first time, unchanged
while read, and with one row logged into its last day on every page request, interleaved. In
process (``dg.materialize`` through the tests' harness, the simulator on 127.0.0.1 in the same
process), the landing step alone. Requests, not time: moving a row in the simulator's
in-memory month takes longer than the page it answers, and it runs in the measured process.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

from benchmarks.end_to_end import MONTH, REPO

sys.path.insert(0, str(REPO / "d23_pipeline_tests"))

from harness import ExportHookSimulator, Pipeline  # noqa: E402 - the tests' harness, found through the path above

from d23_pipeline.months import month_window  # noqa: E402
from d23_pipeline.simulator import SimResponse, SimulatorConfig, serve  # noqa: E402

_NEXT = "2026-04"  # where the rows logged into the last day come from


class _GrowingLastDay(ExportHookSimulator):
    """Moves one row of the next month into ``MONTH``'s last day on every page request."""

    def __init__(self, config: SimulatorConfig, *, growing: bool) -> None:
        super().__init__(config)
        self.growing = growing
        self._reserve: Iterator[str] = iter(
            [r["public_id"] for r in self.valid_rows(*month_window(_NEXT))]
        )
        self._at = month_window(MONTH)[1] - timedelta(hours=6)
        self._ms = itertools.count()

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if self.growing and "includeTotal" not in query:
            self.move_row(next(self._reserve), self._at + timedelta(milliseconds=next(self._ms)))
        return path, None


def _land(pipeline: Pipeline, sim: _GrowingLastDay) -> int:
    before = sim.stats.snapshot()["by_kind"]
    pipeline.materialize(MONTH, selection="d23/raw_logs")
    after = sim.stats.snapshot()["by_kind"]
    return sum(after.get(k, 0) - before.get(k, 0) for k in ("data", "count"))


def bench(rows: int, runs: int) -> dict[bool, list[int]]:
    """``runs`` first landings each of the month unchanged and growing, interleaved."""
    results: dict[bool, list[int]] = {False: [], True: []}
    for _ in range(runs):
        for growing in (False, True):
            config = SimulatorConfig(months=(MONTH, _NEXT), rows_per_month=rows)
            sim = _GrowingLastDay(config, growing=growing)
            with serve(sim) as url, tempfile.TemporaryDirectory() as scratch:
                pipeline = Pipeline(sim=sim, api_url=url, data_dir=Path(scratch) / "data")
                results[growing].append(_land(pipeline, sim))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = bench(args.rows, args.runs)
    line = [f"| {args.rows:,} rows"]
    for growing in (False, True):
        asked = results[growing]
        label = "last day growing" if growing else "unchanged"
        line.append(f"{label}: {statistics.median(asked):.0f} requests ({min(asked)}-{max(asked)})")
    print(" | ".join(line) + " |")


if __name__ == "__main__":
    main()
