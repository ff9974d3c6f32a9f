"""``python -m benchmarks.run [--quick] [--only NAME ...]``: the benchmarks, as Markdown.

Full sizes follow the issues (issue 5: 1M-row month, 5M for memory, 20M-row table; issue 10:
empty, 200k, 1M and 5M-row months end to end through the CLI); ``--quick`` runs the same code on
small sizes, to check the benchmarks themselves still work.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import (
    busy_month,
    dashboard_scaling,
    end_to_end,
    latency,
    memory,
    merge_scaling,
    throughput,
)
from benchmarks.common import machine


@dataclass(frozen=True)
class Sizes:
    month_rows: int
    runs: int
    dlt_runs: int
    latency_rows: int
    memory_rows: tuple[int, int]
    big_table: int
    big_table_runs: int
    e2e_rows: tuple[int, ...]
    e2e_runs: int
    e2e_big_rows: tuple[int, ...]
    e2e_big_runs: int
    e2e_dlt_runs: int
    busy_rows: int
    dashboard_rows: tuple[int, ...]


FULL = Sizes(
    1_000_000, 5, 5, 100_000, (1_000_000, 5_000_000), 20_000_000, 3,
    (0, 200_000, 1_000_000), 3, (5_000_000,), 1, 3, 5_000_000, (1_200_000, 6_000_000),
)  # fmt: skip
QUICK = Sizes(
    50_000, 2, 1, 20_000, (20_000, 100_000), 500_000, 2, (0, 20_000), 1, (), 1, 1, 20_000,
    (240_000,),
)  # fmt: skip
NAMES = ("throughput", "latency", "memory", "merge", "end_to_end", "busy_month", "dashboard")


def _throughput(sizes: Sizes) -> list[str]:
    r = throughput.bench(sizes.month_rows, 1000, sizes.runs, sizes.dlt_runs)
    return [
        f"### 1. In-process throughput ({r['rows']:,} rows, {r['pages']} pages of "
        f"{r['page_limit']})",
        "",
        "| | wall time | rows/s |",
        "|---|---|---|",
        f"| pipeline: client + validation + landing + merge | {r['pipeline']} "
        f"| {r['pipeline_rows_per_s']:,.0f} |",
        f"| of which landing (read, validate, Parquet) | {r['pipeline_land']} | |",
        f"| of which merge into d23.logs | {r['pipeline_merge']} | |",
        f"| dlt rest_api -> DuckDB, merge on public_id | {r['dlt']} | {r['dlt_rows_per_s']:,.0f} |",
        "",
        f"Pipeline / dlt speed: **{r['speedup']:.1f}x** (target >= 10x); pipeline rate "
        f"{r['pipeline_rows_per_s']:,.0f} rows/s (target >= 250,000).",
        "",
        f"The pipeline's timed runs asked for {r['unseen_answers']} answers the untimed run had "
        f"not (walks are cut where they stand when a worker asks for a share); rendering them "
        f"took {r['unseen_render_s']:.2f} s of the timed runs' {r['timed_s']:.2f} s, counted "
        "in the pipeline's times above.",
    ]


def _latency(sizes: Sizes) -> list[str]:
    lines = [
        f"### 2. Latency-bound month over loopback ({sizes.latency_rows:,} rows, 100 ms/request)",
        "",
        "| C | requests (pages + counts) | wall time | ideal requests x 0.1 s / C | ratio |",
        "|---|---|---|---|---|",
    ]
    for concurrency in (1, 2, 4, 8):
        r = latency.bench(sizes.latency_rows, 0.1, concurrency, 500, sizes.runs)
        lines.append(
            f"| {concurrency} | {r['requests']} | {r['wall']} | {r['ideal_s']:.2f} s "
            f"| **{r['ratio']:.2f}** |"
        )
    g = latency.bench_gateway(2_500, 0.05, 7.2, 4, sizes.runs)
    large_pages = latency.bench_page_gateway(2_500, 0.05, 200, 4, sizes.runs)
    lines += ["", "Target: ratio <= 1.10 at C=4 and C=8."]
    lines += _learning_and_knowing(
        f"#### 504s on windows wider than {g['max_window_hours']} h ({g['rows']:,} rows, "
        "50 ms/request, C=4)",
        g,
        {"learning": "learning the width", "knowing": "knowing the width"},
        " (target <= 1.2x requests)",
    )
    limit = large_pages["max_limit"]
    lines += _learning_and_knowing(
        f"#### 504s on pages of more than {limit} rows, at any width "
        f"({large_pages['rows']:,} rows, 50 ms/request, C=4, backoff pauses included)",
        large_pages,
        {"learning": "asking 500 rows", "knowing": f"told {limit}"},
    )
    return lines


def _learning_and_knowing(
    heading: str, results: dict[str, Any], clients: dict[str, str], target: str = ""
) -> list[str]:
    lines = [
        "",
        heading,
        "",
        "| client | requests | of them 504 | wall time |",
        "|---|---|---|---|",
    ]
    for name, client in clients.items():
        side = results[name]
        lines.append(f"| {client} | {side['requests']} | {side['504s']} | {side['wall']} |")
    return [
        *lines,
        "",
        f"Learning / knowing: **{results['request_ratio']:.2f}x** requests, "
        f"**{results['wall_ratio']:.2f}x** wall time{target}.",
    ]


def _memory(sizes: Sizes) -> list[str]:
    lines = [
        "### 3. Peak RSS while landing a month (fresh process per size, simulator in its own)",
        "",
        "| rows | baseline RSS after imports | peak RSS | landing time |",
        "|---|---|---|---|",
    ]
    for rows in sizes.memory_rows:
        r = memory.bench(rows)
        lines.append(
            f"| {rows:,} | {r['baseline_mb']:.0f} MB | **{r['peak_mb']:.0f} MB** "
            f"| {r['seconds']:.1f} s |"
        )
    lines += ["", "Target: < 400 MB, and no growth with the month's size. One run per size."]
    return lines


def _merge(sizes: Sizes) -> list[str]:
    small = 0
    r = merge_scaling.bench(
        sizes.month_rows,
        [small, sizes.big_table],
        {small: sizes.runs, sizes.big_table: sizes.big_table_runs},
    )
    tables = r["tables"]
    ratio = tables[sizes.big_table]["merge"].median / tables[small]["merge"].median
    return [
        f"### 4. Merge scaling ({r['month_rows']:,}-row month)",
        "",
        "| d23.logs before the merge | merge time | (building the table) |",
        "|---|---|---|",
        f"| empty | {tables[small]['merge']} | |",
        f"| {sizes.big_table:,} rows | {tables[sizes.big_table]['merge']} "
        f"| {tables[sizes.big_table]['build_s']:.0f} s |",
        "",
        f"Big table / empty table: **{ratio:.2f}x** for a {sizes.big_table // r['month_rows']}x "
        "larger table.",
    ]


def _end_to_end(sizes: Sizes) -> list[str]:
    return end_to_end.markdown(
        end_to_end.bench_in_subprocess(
            sizes.e2e_rows,
            sizes.e2e_runs,
            sizes.e2e_big_rows,
            sizes.e2e_big_runs,
            sizes.e2e_dlt_runs,
            reread=True,
        )
    )


def _busy_month(sizes: Sizes) -> list[str]:
    return busy_month.table_in_subprocess(sizes.busy_rows)


def _dashboard(sizes: Sizes) -> list[str]:
    rows = list(sizes.dashboard_rows)
    return [
        "### The dashboard's run on warehouses of 24 months (`dashboard_scaling.py`)",
        "",
        *dashboard_scaling.markdown(dashboard_scaling.bench(rows, sizes.e2e_runs)),
    ]


SECTIONS = {
    "throughput": _throughput,
    "latency": _latency,
    "memory": _memory,
    "merge": _merge,
    "end_to_end": _end_to_end,
    "busy_month": _busy_month,
    "dashboard": _dashboard,
}


def main() -> None:
    """Run the selected benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about 3 minutes")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--dlt-runs", type=int, help="dlt runs (full size: 5, ~3 min each)")
    args = parser.parse_args()
    if {"throughput", "end_to_end"} & set(args.only) and importlib.util.find_spec("dlt") is None:
        parser.error(
            "throughput and end_to_end compare with dlt, which is not installed: `make bench` "
            "installs it (the bench extra), or run "
            "`.venv/bin/pip install -c constraints.txt -e '.[dev,bench]'` once"
        )
    sizes = QUICK if args.quick else FULL
    if args.dlt_runs is not None:
        sizes = Sizes(**{**sizes.__dict__, "dlt_runs": args.dlt_runs})
    print(f"Machine: {machine()}\n")
    for name in args.only:
        started = time.perf_counter()
        print("\n".join(SECTIONS[name](sizes)))
        print(f"\n({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
