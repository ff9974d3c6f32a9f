"""Shared by the benchmarks: landing a month as ``d23/raw_logs`` does, timing, the machine."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from d23_pipeline.client import ExportsClient, Window
from d23_pipeline.landing.month import read_month
from d23_pipeline.landing.snapshot import Snapshot, SnapshotStore
from d23_pipeline.months import month_end, month_start
from d23_pipeline.settings import Credentials
from d23_pipeline.warehouse.store import MergeSummary, Warehouse, merge_snapshot

SLICE = timedelta(days=1)  # the client's default slicing


def client_for(
    base_url: str,
    credentials: Credentials,
    *,
    transport: httpx.BaseTransport | None = None,
    page_limit: int = 1000,
    max_concurrency: int = 4,
) -> ExportsClient:
    """A client reading day slices, as the pipeline's does."""
    return ExportsClient(
        base_url,
        credentials,
        page_limit=page_limit,
        max_concurrency=max_concurrency,
        slice_size=SLICE,
        transport=transport,
    )


def land_month(client: ExportsClient, data_dir: Path, month: str) -> Snapshot:
    """Read ``month`` slice by slice into a complete raw snapshot, as ``d23/raw_logs`` does."""
    window = Window(month_start(month), month_end(month))
    return read_month(
        client,
        SnapshotStore(data_dir / "raw"),
        Warehouse(data_dir / "warehouse.duckdb"),
        partition=month,
        slices=window.split(SLICE),
        run_id="bench",
    ).snapshot


def merge_month(data_dir: Path, snapshot: Snapshot) -> MergeSummary:
    """Merge a landed snapshot into the warehouse of ``data_dir``, as ``d23/logs`` does."""
    with Warehouse(data_dir / "warehouse.duckdb").connect() as con:
        return merge_snapshot(con, snapshot)


@dataclass(frozen=True)
class Timing:
    """Wall times of repeated runs of one measurement."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def __str__(self) -> str:
        spread = f"{min(self.runs):.2f}-{max(self.runs):.2f}"
        return f"median {self.median:.2f} s over {len(self.runs)} runs ({spread})"


def machine() -> str:
    """nproc, CPU model, RAM, OS and Python: the line every result table starts with."""
    cpu = platform.processor() or "unknown CPU"
    ram_gb = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = int(line.split()[1]) / 1024**2
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {ram_gb:.1f} GB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average {load}"
    )
