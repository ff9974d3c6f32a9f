"""``make run``: Dagster UI and daemon on the warehouse ``D23_WAREHOUSE`` names (the embedded
DuckDB file by default), against the bundled simulator unless ``D23_API_URL`` points at a real
Exports API."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import httpx
import yaml

from d23_pipeline.analytics.outcome_classes import check_mapping_setting
from d23_pipeline.backfill import DEFAULT_URL
from d23_pipeline.defs.lost_runs import fail_runs_whose_process_is_gone, runs_maybe_left_in_progress
from d23_pipeline.landing.snapshot import SnapshotStore, unwritable_raw_folder
from d23_pipeline.months import months_up_to
from d23_pipeline.settings import (
    RAW_FOLDER,
    SettingsError,
    load_api_connection,
    load_options,
    local_path,
    read_data_dir,
    read_local_ports,
    read_pool_limits,
    read_warehouse_database,
    refused_folder,
)
from d23_pipeline.warehouse.ducklake import NOT_A_DSN, split_password
from d23_pipeline.warehouse.store import Warehouse

SIMULATOR_MONTHS = 6
DEMO_CREDENTIALS = {
    "D23_LENDER": "demo",
    "D23_EMAIL": "analyst@demo.example",
    "D23_PASSWORD": "demo-password",
}


# On a shared instance a run's process may be on another host: the operator decides.
MAYBE_LEFT_IN_PROGRESS = (
    "{count} run(s) are in progress with no process of theirs on this host: {ids}. If a "
    "stopped `make run` here left them, terminate them in the UI (the run's page, Terminate, "
    "then force), and their months can run again; runs of another host sharing this instance "
    "are still running there (runs on a PostgreSQL instance are not marked failed "
    "automatically)."
)


def _prepare_dagster_home(env: dict[str, str]) -> Path:
    # Blank, as an env file leaves it, is unset: Path("") is the current folder.
    value = env.get("DAGSTER_HOME", "").strip()
    home = (local_path("DAGSTER_HOME", value) if value else Path.cwd() / ".dagster_home").resolve()
    env["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    template = (resources.files("d23_pipeline.deploy") / "dagster.yaml").read_text()
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not config.exists():
            config.write_text(template)
        kept_text = config.read_text()
    except OSError as exc:
        raise SettingsError(
            f"DAGSTER_HOME is {str(home)!r}, but this user cannot make it, or make or read its "
            f"dagster.yaml ({exc.strerror}): set DAGSTER_HOME to a folder this user can write"
        ) from None
    if kept_text != template:
        # An edited instance config (Postgres, other limits) is kept, never overwritten; a home
        # made by an older version lacks the settings added since, which are named.
        try:
            kept = yaml.safe_load(kept_text)
        except yaml.YAMLError:  # Dagster names what is wrong in it when it loads the instance
            kept = None
        missing = missing_settings(yaml.safe_load(template), kept) if kept is not None else []
        print(
            f"Using {config} as is: it differs from d23_pipeline/deploy/dagster.yaml"
            + (f", and lacks {', '.join(missing)}: copy them from there" if missing else "")
        )
    return home


def missing_settings(shipped: object, kept: object, prefix: str = "") -> list[str]:
    """The settings (dotted paths) of the shipped instance file that ``kept`` does not have."""
    if not isinstance(shipped, dict):
        return []
    kept = kept if isinstance(kept, dict) else {}
    missing: list[str] = []
    for key, value in shipped.items():
        if key not in kept:
            missing.append(f"{prefix}{key}")
        else:
            missing += missing_settings(value, kept[key], f"{prefix}{key}.")
    return missing


def simulator_start_month(now: datetime) -> str:
    """The first of the months the simulator serves from ``now`` on: it counts them in UTC, so a
    local date near a month's end would start the partitions a month off."""
    return months_up_to(now.astimezone(UTC), SIMULATOR_MONTHS)[0]


def _start_simulator(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "d23_pipeline.simulator",
            "--port",
            str(port),
            "--months-back",
            str(SIMULATOR_MONTHS),
        ],
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API simulator exited with code {process.returncode}")
        if _answers(url):
            break
        time.sleep(0.2)
    else:
        process.terminate()
        raise SystemExit(f"the API simulator did not answer on {url} within 60 s")
    env["D23_API_URL"] = url
    # The simulator knows its demo user only: credentials left in the environment for a real
    # API would make every run's login fail.
    demo = {**DEMO_CREDENTIALS, "D23_LENDER_PUBLIC_ID": "", "D23_TOKEN": ""}
    replaced = sorted(name for name, value in demo.items() if env.get(name, value) != value)
    if replaced:
        print(f"Not used with the bundled simulator (it has its demo user): {', '.join(replaced)}")
    env.update(demo)
    # The simulator serves the six months up to now; start the partitions where its data does
    # (unless a start month is set: blank, as an env file leaves it, is unset).
    if not env.get("D23_START_MONTH", "").strip():
        env["D23_START_MONTH"] = simulator_start_month(datetime.now(UTC))
    return process


def _refuse_taken_ports(port: int, simulator_port: int | None) -> None:
    """Stop before anything starts when `dg dev` could not serve the UI on ``port`` (it would
    fail while its daemon ran on without a UI, and the backfill command printed would reach
    whatever holds the port), or the bundled simulator could not serve on ``simulator_port``
    (every run would read whatever holds it: a simulator an earlier `make run` left, stale)."""
    if port == simulator_port:
        raise SystemExit(
            f"D23_UI_PORT and D23_SIMULATOR_PORT are both {port}: the UI and the bundled "
            "simulator need a port each; set one of them to another free port"
        )
    _refuse_a_taken_port("D23_UI_PORT", port)
    if simulator_port is not None:
        _refuse_a_taken_port("D23_SIMULATOR_PORT", simulator_port)


def _refuse_a_taken_port(setting: str, port: int) -> None:
    """Stop, naming ``setting``, when ``port`` on 127.0.0.1 cannot be listened on."""
    # A bind, not a request: a program holding the port need not answer HTTP. SO_REUSEADDR as
    # the servers set it, so that a connection of an earlier one closing down does not count.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SystemExit(
                    f"{setting} {port} is already in use by another program: stop it, or set "
                    f"{setting} to a free port"
                ) from None
            raise SystemExit(
                f"{setting} {port} cannot be listened on ({exc.strerror}): set {setting} to "
                "another port"
            ) from None


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True


def _guide(env: dict[str, str], ui_port: int = 3000) -> str:
    """Where the dashboard is and a backfill command for the months the partitions have."""
    try:
        options = load_options(env)
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    first = options.start_month
    last = months_up_to(datetime.now(UTC).date(), 1)[0]
    ui = f"http://127.0.0.1:{ui_port}"
    url = "" if ui == DEFAULT_URL else f" --url {ui}"
    return (
        f"Backfill months {first} to {last}: "
        f".venv/bin/python -m d23_pipeline.backfill {first} {last}{url}\n"
        f"Dashboard (rebuilt by every run; open it in a browser): "
        f"{options.dashboard_path.resolve()}"
    )


def check_before_the_ui(env: Mapping[str, str]) -> None:
    """Raise SettingsError for a setting the UI would only reveal later: an outcome mapping file
    the outcome-mix steps refuse (the code location would not load), a DuckLake DSN libpq
    cannot read, or a raw snapshots' folder or warehouse file this user cannot write (every run
    would fail)."""
    options = load_options(env)
    check_mapping_setting(options.outcome_mapping)
    if options.warehouse == "ducklake" and split_password(env["D23_WAREHOUSE_DSN"]) is None:
        raise SettingsError(NOT_A_DSN)
    raw = raw_snapshots(env).root
    if (refused := refused_folder(raw)) is not None:
        raise unwritable_raw_folder(raw, refused)
    if options.warehouse == "duckdb":
        Warehouse(Path(read_warehouse_database(env))).check_usable()


def raw_snapshots(env: Mapping[str, str]) -> SnapshotStore:
    """The raw snapshots of ``env``'s data folder, as the landing zone resource finds them."""
    return SnapshotStore(read_data_dir(env).resolve() / RAW_FOLDER / "d23")


def set_pool_limits(env: Mapping[str, str]) -> None:
    """Write every pool's limit into the instance of ``env``'s DAGSTER_HOME.

    Set explicitly, not left to the instance's ``default_limit``: on PostgreSQL, two runs that
    claim a pool for the first time at once make Dagster insert its default limit twice, and
    the second run fails (dagster-io/dagster#33552; a backfill's months reach d23/logs together).
    """
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    for pool, limit in read_pool_limits(env).items():
        subprocess.run(
            [dagster, "instance", "concurrency", "set", pool, str(limit)],
            env=dict(env),
            check=True,
            stdout=subprocess.DEVNULL,
        )


def main() -> None:
    # A shell starting us in the background makes SIGINT ignored, and children inherit that;
    # with a handler here, Ctrl-C stops us and every process started below sees SIGINT again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    env = dict(os.environ)
    try:
        ui_port, simulator_port = read_local_ports(env)
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    uses_simulator = not env.get("D23_API_URL", "").strip()
    _refuse_taken_ports(ui_port, simulator_port if uses_simulator else None)
    try:
        home = _prepare_dagster_home(env)
        # Settings no API is needed for: refused before a simulator is started for nothing.
        check_before_the_ui(env)
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    simulator = None
    if uses_simulator:
        simulator = _start_simulator(env, simulator_port)
        print(f"Bundled API simulator on {env['D23_API_URL']} (set D23_API_URL for a real API)")
    # From here on the simulator stops with us, also when a bad setting stops us before the UI
    # starts: left running, it would hold its port against the next `make run`.
    try:
        # Every run would fail at its first step without them: say so before the UI starts.
        connection = load_api_connection(env)
        raw_snapshots(env).check_host(urlsplit(connection.api_url).hostname or "")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            left = fail_runs_whose_process_is_gone(instance, "the next `make run`")
            maybe_left = runs_maybe_left_in_progress(instance)
        if left:
            print(
                f"Marked failed {len(left)} run(s) a stopped `make run` left in progress "
                f"(retried as failed runs are): {', '.join(left)}"
            )
        if maybe_left:
            print(MAYBE_LEFT_IN_PROGRESS.format(count=len(maybe_left), ids=", ".join(maybe_left)))
        set_pool_limits(env)
        print(f"Dagster home: {home}; UI on http://127.0.0.1:{ui_port}")
        print(_guide(env, ui_port))
        _serve_ui(env, ui_port)
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(timeout=10)


def _serve_ui(env: dict[str, str], port: int) -> None:
    """Run `dg dev` until it stops, passing Ctrl-C and a supervisor's SIGTERM on to it."""
    bindir = str(Path(sys.executable).parent)
    # `dg dev` loads the code location pyproject.toml's [tool.dg] names, under the same location
    # name as workspace.yaml. Its own process group: a stop reaches it once, through the handlers
    # below, and whatever it leaves behind (a code server it restarted while shutting down) is
    # ended with the group.
    ui = subprocess.Popen(
        [shutil.which("dg", path=bindir) or "dg", "dev", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        start_new_session=True,
    )
    # `dg dev` shuts its webserver, daemon and code server down cleanly on SIGINT; a
    # supervisor's SIGTERM is passed on as SIGINT too.
    signal.signal(signal.SIGTERM, lambda *_: ui.send_signal(signal.SIGINT))
    try:
        while ui.poll() is None:
            try:
                ui.wait()
            except KeyboardInterrupt:
                ui.send_signal(signal.SIGINT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
