"""The busiest tenant's month end to end: ``dagster asset materialize`` of a 5M-row month while
the gateway answers 504 to wide windows and 0.1 % of requests fail, then a check that the
warehouse holds exactly the source's month (issue 10).

``python -m benchmarks.busy_month [--rows N]`` prints one Markdown table row. The run is measured
as ``end_to_end`` measures it (peak RSS of the CLI process, wall, CPU); the check runs in its own
process after the run: it regenerates the simulator's month from the same seed and compares
every live ``public_id`` and ``updated_at`` of ``d23.logs``, and the rejected rows, with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

from benchmarks.end_to_end import MONTH, PARTITION, REPO, materialize
from benchmarks.simulator_process import simulator

GATEWAY_WINDOW_HOURS = 12  # 504 to anything wider: every day slice and its counts hit it
FAULTS = ("--error-5xx-rate", "0.0005", "--drop-rate", "0.0005")  # 0.1 % of requests
_CHECK_LINE_PREFIX = "check: "


def _fingerprint(pairs: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """Count and order-independent digest of ``(public_id, updated_at)`` pairs."""
    count = digest = 0
    for public_id, updated_at in pairs:
        key = f"{public_id}|{updated_at}".encode()
        digest = (digest + int.from_bytes(hashlib.blake2b(key, digest_size=8).digest())) % 2**64
        count += 1
    return count, digest


def _source(rows: int) -> dict[str, int]:
    """The month as the simulator serves it, regenerated from the same seed, a day at a time."""
    from d23_pipeline.months import month_window
    from d23_pipeline.simulator import Simulator, SimulatorConfig

    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=rows))
    start, end = month_window(MONTH)
    served = 0  # every row the API serves, bad ones included

    def pairs() -> Iterator[tuple[str, str]]:
        nonlocal served
        for day in range((end - start).days):
            since, until = start + timedelta(days=day), start + timedelta(days=day + 1)
            served += len(sim.rows(since, until))
            for row in sim.valid_rows(since, until):
                yield row["public_id"], row["updated_at"]

    valid, digest = _fingerprint(pairs())
    return {"valid": valid, "digest": digest, "rejects": served - valid}


def _warehouse(data_dir: Path) -> dict[str, int]:
    import duckdb

    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        cursor = con.execute(
            "SELECT public_id, strftime(updated_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%gZ') "
            "FROM d23.logs WHERE _partition = $p AND _deleted_at IS NULL",
            {"p": PARTITION},
        )

        def pairs() -> Iterator[tuple[str, str]]:
            while batch := cursor.fetchmany(100_000):
                yield from batch

        valid, digest = _fingerprint(pairs())
        rejects = con.execute(
            "SELECT count(*) FROM d23.rejected_rows WHERE _partition = $p", {"p": PARTITION}
        ).fetchone()
    finally:
        con.close()
    return {"valid": valid, "digest": digest, "rejects": rejects[0] if rejects else 0}


def check_exact(rows: int, data_dir: Path) -> dict[str, object]:
    """Compare the landed month with the source in a separate process (it is big)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.busy_month", "--check", str(data_dir), str(rows)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith(_CHECK_LINE_PREFIX))
    return json.loads(line.removeprefix(_CHECK_LINE_PREFIX))


def run(rows: int) -> dict[str, object]:
    """One measured materialize of the busy month, and its exactness check."""
    checked: dict[str, object] = {}
    options = ("--max-window-504-hours", str(GATEWAY_WINDOW_HOURS), *FAULTS)
    with simulator(rows, MONTH, *options) as url:
        measured = materialize(rows, url, check=lambda d: checked.update(check_exact(rows, d)))
    return {"rows": rows, "peak_mb": measured.peak_mb, "wall_s": measured.wall_s,
            "cpu_s": measured.cpu_s, **checked}  # fmt: skip


def table_in_subprocess(rows: int) -> list[str]:
    """:func:`run` from a fresh, small interpreter (see ``end_to_end``), as Markdown."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.busy_month", "--rows", str(rows)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return [
        "### The busiest tenant's month end to end, with 504s and faults",
        "",
        "| month | peak RSS | wall | CPU user+sys | landed |",
        "|---|---|---|---|---|",
        out.stdout.splitlines()[-1],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--check", nargs=2, metavar=("DATA_DIR", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        data_dir, rows = Path(args.check[0]), int(args.check[1])
        source, landed = _source(rows), _warehouse(data_dir)
        result = {
            "exact": source == landed,
            "source_valid": source["valid"],
            "landed_valid": landed["valid"],
            "source_rejects": source["rejects"],
            "landed_rejects": landed["rejects"],
        }
        print(_CHECK_LINE_PREFIX + json.dumps(result), flush=True)
        return
    r = run(args.rows)
    print(
        f"| {r['rows']:,} rows, 504 above {GATEWAY_WINDOW_HOURS} h, 0.1 % faults "
        f"| {r['peak_mb']:.0f} MB | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s "
        f"| {'exact' if r['exact'] else 'NOT EXACT'}: {r['landed_valid']:,} of "
        f"{r['source_valid']:,} rows, {r['landed_rejects']} of {r['source_rejects']} rejects |",
        flush=True,
    )


if __name__ == "__main__":
    main()
