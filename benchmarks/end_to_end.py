"""Issue 10: a month through ``dagster asset materialize``, the command a user runs, end to end.

Each run is one ``dagster asset materialize -m d23_pipeline.definitions --select '*'
--partition 2026-03-01`` process (the project's executor is in-process, so every step runs in
it) against the bundled simulator in its own process, with a fresh ``D23_DATA_DIR`` and
``DAGSTER_HOME``. Measured per run: peak RSS (``ru_maxrss`` from ``wait4``), wall time, CPU time
(user + sys of every thread), and per phase (start-up, each step, Dagster's own work between and
after steps) the peak of ``VmRSS`` sampled every 20 ms and the CPU from ``/proc/<pid>/stat``.

``python -m benchmarks.end_to_end --rows 0 200000 1000000 --runs 3`` prints the tables; run.py
calls it as a subprocess. This process must stay small: Linux carries the spawning process's
peak RSS over into a child's ``ru_maxrss`` (the child starts as a copy of it), so nothing heavy
(pyarrow, DuckDB, Dagster) is imported here, and its own peak is printed beside the results.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from benchmarks.simulator_process import simulator

MONTH = "2026-03"
PARTITION = f"{MONTH}-01"
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The simulator's demo lender (SimulatorConfig's defaults).
LOGIN = {"D23_LENDER": "demo", "D23_EMAIL": "analyst@demo.example", "D23_PASSWORD": "demo-password"}
RUN_TIMEOUT_S = 1800
SAMPLE_EVERY_S = 0.02
_CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
_STEP_EVENT = re.compile(r" - (\S+) - (STEP_START|STEP_SUCCESS|STEP_FAILURE) - ")
_MERGED_AGAIN = re.compile(r"merging it again (within \S+|without a limit)")
STARTUP, DAGSTER = "start-up", "dagster (between and after steps)"

# Reads the import cost in a fresh interpreter: the interpreter alone, + dagster, + the project,
# then the libraries the steps load when they run, in the order a month's first step meets them
# (the floor under every month, empty or not).
_IMPORT_PROBE = """
import json, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
out = {"python_mb": hwm()}
t = time.perf_counter()
import dagster
out["dagster_s"], out["dagster_mb"] = time.perf_counter() - t, hwm()
t = time.perf_counter()
import d23_pipeline.definitions
out["definitions_s"], out["definitions_mb"] = time.perf_counter() - t, hwm()
import d23_pipeline.client, d23_pipeline.landing.snapshot
out["landing_mb"] = hwm()
import duckdb
con = duckdb.connect()
con.execute("SELECT 1").fetchall()
out["duckdb_mb"] = hwm()
from d23_pipeline.warehouse.store import execute
execute(con, "SELECT $n", {"n": 1}).fetchall()
out["bound_mb"] = hwm()
import d23_pipeline.schema_arrow, pyarrow.parquet
out["arrow_mb"] = hwm()
print(json.dumps(out))
"""


def _own_peak_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None  # exited, or a zombie whose memory is gone


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _CLOCK_TICK_S  # utime + stime


@dataclass
class Phase:
    name: str
    wall_s: float
    cpu_s: float
    peak_mb: float


@dataclass
class Run:
    """One materialize process, measured."""

    rows: int
    peak_mb: float
    wall_s: float
    cpu_s: float
    phases: list[Phase] = field(default_factory=list)
    # The out-of-memory ladder's steps the merge took (store.merge_within_memory_limit): a peak
    # reached without DuckDB's limit is not the bounded merge's.
    merged_again: list[str] = field(default_factory=list)


def cli_env(api_url: str, data_dir: Path, home: Path) -> dict[str, str]:
    """The environment of a CLI run against ``api_url`` with that data dir and Dagster home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D23_", "DAGSTER_"))}
    env.update(
        LOGIN,
        D23_API_URL=api_url,
        D23_DATA_DIR=str(data_dir),
        D23_START_MONTH=MONTH,
        DAGSTER_HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    return env


def dagster_home(path: Path) -> Path:
    """A fresh Dagster home at ``path`` with the instance file `make run` uses."""
    path.mkdir()
    (path / "dagster.yaml").write_text(
        (resources.files("d23_pipeline.deploy") / "dagster.yaml").read_text()
    )
    return path


def materialize_args(module: str, select: str, partition: str | None) -> list[str]:
    """``dagster asset materialize`` of ``select`` in ``module`` (of ``partition``, if given)."""
    args = [str(BIN / "dagster"), "asset", "materialize", "-m", module, "--select", select]
    # The phases are cut at the step events, which Dagster prints at DEBUG; the instance file's
    # python_logs (INFO) holds them back unless the console logger is asked for them.
    args += [
        "--config-json",
        json.dumps({"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}),
    ]
    return args if partition is None else [*args, "--partition", partition]


def materialize(
    rows: int,
    api_url: str,
    module: str = "d23_pipeline.definitions",
    check: Callable[[Path], None] | None = None,
    times: int = 1,
    lake_catalog: Callable[[], str] | None = None,
) -> Run:
    """Run ``dagster asset materialize`` ``times`` times with one fresh data dir and Dagster
    home and measure the last (with 2: a month read again, as the daily refresh does);
    ``check(data_dir)``, if given, runs on the data dir before it is removed. With
    ``lake_catalog`` (a new catalog database's DSN each call), into a fresh DuckLake whose data
    path is in the data dir, instead of the embedded DuckDB file."""
    scratch = Path(tempfile.mkdtemp(prefix="d23-bench-e2e-"))
    home = dagster_home(scratch / "dagster_home")
    partition = PARTITION if module == "d23_pipeline.definitions" else None
    args = materialize_args(module, "*", partition)
    env = cli_env(api_url, scratch / "data", home)
    if lake_catalog is not None:
        env.update(
            D23_WAREHOUSE="ducklake",
            D23_WAREHOUSE_DSN=lake_catalog(),
            D23_DUCKLAKE_DATA_PATH=str(scratch / "data" / "lake"),
        )
    try:
        for _ in range(times - 1):
            measured_run(rows, args, env)
        run = measured_run(rows, args, env)
        if check is not None:
            check(scratch / "data")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return run


def libraries_read_from_disk() -> None:
    """Drop the installed packages' shared objects from the page cache (the pages no process
    maps), so that the next run reads them from disk.

    A process's RSS counts the library pages it maps, and how many a fault maps depends on how
    the page cache holds the file: one pip has just written is held in large folios, each
    mapped whole (DuckDB's 27 MB mapped became 47 MB after `pip install --force-reinstall`).
    Read back from disk, every run starts alike, as after a reboot or in a container started
    from its image.
    """
    for path in _installed_shared_objects():
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@functools.cache
def _installed_shared_objects() -> tuple[Path, ...]:
    roots = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    # DuckDB's extensions (DuckLake, PostgreSQL, httpfs) are shared objects too.
    patterns = ("*.so*", "*.duckdb_extension")
    return tuple(path for root in roots for glob in patterns for path in Path(root).rglob(glob))


def measured_run(rows: int, args: list[str], env: dict[str, str], cwd: Path = REPO) -> Run:
    libraries_read_from_disk()
    samples: list[tuple[float, float]] = []
    events: list[tuple[float, str, str, float]] = []
    log_tail: list[str] = []
    merged_again: list[str] = []
    started = time.monotonic()
    process = subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _rss_mb(process.pid)
            if rss is not None:
                samples.append((time.monotonic(), rss))
            time.sleep(SAMPLE_EVERY_S)

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log_tail[:] = [*log_tail[-200:], line.rstrip()]
            if again := _MERGED_AGAIN.search(line):
                merged_again.append(again[1])
            if match := _STEP_EVENT.search(line):
                cpu = _cpu_s(process.pid)
                events.append((time.monotonic(), match[1], match[2], cpu or 0.0))

    threads = [threading.Thread(target=t, daemon=True) for t in (sample, read_log)]
    for t in threads:
        t.start()
    try:
        status, usage = _wait(process, RUN_TIMEOUT_S)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=10)
    ended = time.monotonic()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n" + "\n".join(log_tail))
    cpu = usage.ru_utime + usage.ru_stime
    return Run(
        rows=rows,
        peak_mb=usage.ru_maxrss / 1024,
        wall_s=ended - started,
        cpu_s=cpu,
        phases=_phases(started, ended, cpu, events, samples),
        merged_again=merged_again,
    )


def _wait(process: subprocess.Popen, timeout_s: float) -> tuple[int, Any]:
    """``wait4`` the process (its rusage is the point), killing its group after ``timeout_s``."""
    timer = threading.Timer(timeout_s, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return status, usage


def _phases(
    started: float,
    ended: float,
    cpu_total: float,
    events: list[tuple[float, str, str, float]],
    samples: list[tuple[float, float]],
) -> list[Phase]:
    """Split the run at its step events: start-up, each step, and Dagster's time outside steps."""
    bounds = [(started, STARTUP, 0.0)]
    for at, step, kind, cpu in events:
        bounds.append((at, step if kind == "STEP_START" else DAGSTER, cpu))
    bounds.append((ended, "", cpu_total))
    merged: dict[str, Phase] = {}
    for (begin, name, cpu_begin), (end, _, cpu_end) in zip(bounds, bounds[1:], strict=False):
        peak = max((rss for at, rss in samples if begin <= at <= end), default=0.0)
        phase = merged.setdefault(name, Phase(name, 0.0, 0.0, 0.0))
        phase.wall_s += end - begin
        phase.cpu_s += max(cpu_end - cpu_begin, 0.0)
        phase.peak_mb = max(phase.peak_mb, peak)
    return list(merged.values())


def import_cost(runs: int) -> dict[str, float]:
    """Medians over ``runs`` fresh interpreters of the import time and peak RSS of the
    definitions (and of ``import dagster`` alone, which they include)."""
    results = []
    for _ in range(runs):
        libraries_read_from_disk()
        probe = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE],
            env=cli_env("http://127.0.0.1:9", Path(tempfile.gettempdir()), REPO),
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(probe.stdout))
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def dlt_run(rows: int, api_url: str) -> Run:
    """dlt ``rest_api`` reading the same simulator into DuckDB, in its own measured process."""
    scratch = Path(tempfile.mkdtemp(prefix="d23-bench-e2e-dlt-"))
    libraries_read_from_disk()
    try:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.end_to_end", "--dlt-child", api_url, str(rows)],
            env=cli_env(api_url, scratch, scratch),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        status, usage = _wait(process, RUN_TIMEOUT_S)
        ended = time.monotonic()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("the dlt run failed")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Run(rows, usage.ru_maxrss / 1024, ended - started, usage.ru_utime + usage.ru_stime)


def _dlt_child(api_url: str, rows: int) -> None:
    import httpx

    from benchmarks.pages import PATH_TEMPLATE
    from benchmarks.throughput import dlt_load
    from d23_pipeline.months import month_end, month_start

    login = httpx.post(
        f"{api_url}/admin/auth/{LOGIN['D23_LENDER']}/login",
        json={"email": LOGIN["D23_EMAIL"], "password": LOGIN["D23_PASSWORD"]},
    ).json()
    dlt_load(
        rows,
        500,  # the pipeline's default page limit, D23_PAGE_LIMIT
        base_url=api_url,
        path=PATH_TEMPLATE.format(lender=login["lenderPublicId"]),
        token=login["token"],
        since=month_start(MONTH),
        until=month_end(MONTH),
        data_dir=Path(os.environ["D23_DATA_DIR"]),
    )


def bench(
    sizes: Sequence[int],
    runs: int,
    big: Sequence[int] = (),
    big_runs: int = 1,
    dlt_runs: int = 0,
    reread: bool = False,
    ducklake: bool = False,
) -> dict[str, Any]:
    """Every size in ``sizes`` ``runs`` times (``big`` sizes ``big_runs`` times), each against
    its own simulator; the trivial project and the import cost ``runs`` times; dlt ``dlt_runs``
    times on the same server as the smallest non-empty size; with ``reread``, each non-empty
    size also read again into the warehouse its first read filled. With ``ducklake``, every
    month into a fresh DuckLake whose catalog is on a throwaway PostgreSQL cluster."""
    with _lake_catalogs() if ducklake else contextlib.nullcontext() as catalog:
        out = _bench(sizes, runs, big, big_runs, dlt_runs, reread, catalog)
    out["warehouse"] = "ducklake" if ducklake else "duckdb"
    return out


@contextlib.contextmanager
def _lake_catalogs() -> Iterator[Callable[[], str]]:
    """New DuckLake catalog databases on a PostgreSQL cluster of the tests' kind (started here,
    deleted after; it needs the server binaries: ``make postgres-server``). Its CPU is not the
    run's: the catalog's queries run in the server's processes."""
    sys.path.insert(0, str(REPO / "d23_pipeline_tests"))
    from postgres import postgres_cluster  # the tests' helper; psycopg2, no heavy imports

    with postgres_cluster() as server:
        yield server.new_database


def _bench(
    sizes: Sequence[int],
    runs: int,
    big: Sequence[int],
    big_runs: int,
    dlt_runs: int,
    reread: bool,
    lake_catalog: Callable[[], str] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": {}, "dlt": [], "rereads": {}}
    out["trivial"] = [
        asdict(materialize(0, "http://127.0.0.1:9", "benchmarks.trivial_definitions"))
        for _ in range(runs)
    ]
    out["imports"] = import_cost(runs)
    plan = [(rows, runs) for rows in sizes] + [(rows, big_runs) for rows in big]
    dlt_rows = min((rows for rows, _ in plan if rows), default=0)
    for rows, repeats in plan:
        with simulator(rows, MONTH) as url:
            measured = []
            for run in range(max(repeats, dlt_runs if rows == dlt_rows else 0)):
                # Interleaved with dlt, so a burst of load on the shared machine hits both.
                if run < repeats:
                    measured.append(asdict(materialize(rows, url, lake_catalog=lake_catalog)))
                if rows == dlt_rows and run < dlt_runs:
                    out["dlt"].append(asdict(dlt_run(rows, url)))
            out["runs"][str(rows)] = measured
            if reread and rows:
                out["rereads"][str(rows)] = [
                    asdict(materialize(rows, url, times=2, lake_catalog=lake_catalog))
                    for _ in range(repeats)
                ]
    out["measuring_process_peak_mb"] = _own_peak_mb()
    return out


def bench_in_subprocess(
    sizes: Sequence[int],
    runs: int,
    big: Sequence[int] = (),
    big_runs: int = 1,
    dlt_runs: int = 0,
    reread: bool = False,
) -> dict[str, Any]:
    """:func:`bench` from a fresh, small interpreter (see the module docstring)."""
    args = ["--rows", *map(str, sizes), "--runs", str(runs), "--dlt-runs", str(dlt_runs)]
    if reread:
        args.append("--reread")
    if big:
        args += ["--big-rows", *map(str, big), "--big-runs", str(big_runs)]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.end_to_end", *args, "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _spread(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    values = [r[key] for r in runs]
    median = format(statistics.median(values), fmt)
    if len(values) == 1:
        return f"{median} (1 run)"
    return f"{median} ({format(min(values), fmt)}-{format(max(values), fmt)}, {len(values)} runs)"


def _phase_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    names = [p["name"] for p in runs[0]["phases"]]
    return {
        name: {
            key: statistics.median(
                next((p[key] for p in r["phases"] if p["name"] == name), 0.0) for r in runs
            )
            for key in ("wall_s", "cpu_s", "peak_mb")
        }
        for name in names
    }


def _measured_months(result: dict[str, Any]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """``(label, rows, runs)`` of every month measured: first reads, then reads again."""
    first = [
        ("empty month" if rows == "0" else f"{int(rows):,} rows", int(rows), measured)
        for rows, measured in result["runs"].items()
    ]
    again = [
        (f"{int(rows):,} rows, read again", int(rows), measured)
        for rows, measured in result.get("rereads", {}).items()
    ]
    return first + again


def _warehouse_line(result: dict[str, Any]) -> list[str]:
    if result.get("warehouse") != "ducklake":
        return []
    return [
        "",
        "**Into a DuckLake**: each run a fresh catalog database on a throwaway PostgreSQL "
        "cluster on 127.0.0.1 and its data path in the run's D23_DATA_DIR. The catalog's "
        "queries run in PostgreSQL's processes: their CPU is not in these figures.",
    ]


def markdown(result: dict[str, Any]) -> list[str]:
    """The benchmark's tables."""
    runs = result["runs"]
    empty = runs.get("0")
    empty_cpu = _median(empty, "cpu_s") if empty else 0.0
    trivial = result["trivial"]
    lines = [
        f"### End to end: `dagster asset materialize --select '*' --partition {PARTITION}`",
        "",
        "One process per run, fresh D23_DATA_DIR and DAGSTER_HOME, the simulator in its own "
        "process on 127.0.0.1, `D23_PAGE_LIMIT` 500, `D23_MAX_CONCURRENCY` 4, the installed "
        "libraries read from disk by each run (not held in the page cache as pip wrote them). "
        "Median (min-max).",
        *_warehouse_line(result),
        "",
        "| month | peak RSS (MB) | wall (s) | CPU user+sys (s) | CPU per row, net of the empty "
        "month |",
        "|---|---|---|---|---|",
        f"| trivial one-asset project | {_spread(trivial, 'peak_mb', '.0f')} "
        f"| {_spread(trivial, 'wall_s', '.2f')} | {_spread(trivial, 'cpu_s', '.2f')} | |",
    ]
    for label, rows, measured in _measured_months(result):
        per_row = ""
        if rows and empty:
            per_row = f"{(_median(measured, 'cpu_s') - empty_cpu) / rows * 1e6:.2f} µs"
        lines.append(
            f"| {label} | **{_spread(measured, 'peak_mb', '.0f')}** "
            f"| {_spread(measured, 'wall_s', '.2f')} | {_spread(measured, 'cpu_s', '.2f')} "
            f"| {per_row} |"
        )
    for dlt in result["dlt"][:1]:
        dlt_runs = result["dlt"]
        per_row = (_median(dlt_runs, "cpu_s")) / dlt["rows"] * 1e6
        lines.append(
            f"| dlt rest_api, {dlt['rows']:,} rows, same server | "
            f"{_spread(dlt_runs, 'peak_mb', '.0f')} | {_spread(dlt_runs, 'wall_s', '.2f')} "
            f"| {_spread(dlt_runs, 'cpu_s', '.2f')} | {per_row:.1f} µs (gross) |"
        )
    imports = result["imports"]
    lines += [
        "",
        f"Import cost (median of fresh interpreters): Python alone {imports['python_mb']:.0f} MB; "
        f"`import dagster` {imports['dagster_s']:.2f} s, {imports['dagster_mb']:.0f} MB; then "
        f"`import d23_pipeline.definitions` +{imports['definitions_s']:.2f} s, "
        f"{imports['definitions_mb']:.0f} MB peak. The libraries the steps load when they run, "
        f"then: the client and landing (httpx) "
        f"+{imports['landing_mb'] - imports['definitions_mb']:.0f} MB, "
        f"DuckDB and a connection +{imports['duckdb_mb'] - imports['landing_mb']:.0f} MB, a "
        f"bound parameter (pandas refused to DuckDB's probe: d23_pipeline/pandas_probes.py) "
        f"+{imports['bound_mb'] - imports['duckdb_mb']:.0f} MB: "
        f"+{imports['bound_mb'] - imports['definitions_mb']:.0f} MB on top of the start-up, "
        f"all an empty month loads; pyarrow and numpy, for the first page with a row or reject "
        f"(d23_pipeline/schema_arrow.py), +{imports['arrow_mb'] - imports['bound_mb']:.0f} MB "
        "more.",
        "",
        "Per phase (medians; peak of VmRSS sampled every 20 ms; CPU from /proc, 10 ms ticks):",
        "",
        "| month | " + " | ".join(_phase_medians(next(iter(runs.values())))) + " |",
        "|---|" + "---|" * len(_phase_medians(next(iter(runs.values())))),
    ]
    for label, _, measured in _measured_months(result):
        phases = _phase_medians(measured)
        cells = [
            f"{p['peak_mb']:.0f} MB, {p['wall_s']:.2f} s, {p['cpu_s']:.2f} s CPU"
            for p in phases.values()
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    retried = [
        f"{label}: {', '.join(run['merged_again'])}"
        for label, _, measured in _measured_months(result)
        for run in measured
        if run.get("merged_again")
    ]
    lines += [
        "",
        "Merges run again after running out of memory: " + ("; ".join(retried) or "none") + ".",
        "",
        f"(Measuring process peak: {result['measuring_process_peak_mb']:.0f} MB, the most a "
        "child's ru_maxrss can inherit from it.)",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[0, 200_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-rows", type=int, nargs="*", default=[])
    parser.add_argument("--big-runs", type=int, default=1)
    parser.add_argument("--dlt-runs", type=int, default=0, help="dlt on the smallest month")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument(
        "--reread", action="store_true", help="also read each month again (the daily refresh)"
    )
    parser.add_argument(
        "--ducklake",
        action="store_true",
        help="into a fresh DuckLake (catalog on a throwaway PostgreSQL) instead of the DuckDB file",
    )
    parser.add_argument("--dlt-child", nargs=2, metavar=("URL", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dlt_child:
        _dlt_child(args.dlt_child[0], int(args.dlt_child[1]))
        return
    result = bench(
        args.rows,
        args.runs,
        args.big_rows,
        args.big_runs,
        args.dlt_runs,
        reread=args.reread,
        ducklake=args.ducklake,
    )
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(result) if args.json else "\n".join(markdown(result)), flush=True)


if __name__ == "__main__":
    main()
