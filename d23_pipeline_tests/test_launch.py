"""``make run``'s choices: its first month, what it prints, the pool limits it sets."""

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import httpx
import pytest
from processes import clean_env, free_port, make_dagster_home, run_python

from d23_pipeline import launch
from d23_pipeline.client import ExportsClient, Window
from d23_pipeline.definitions import defs
from d23_pipeline.landing.snapshot import SnapshotStore
from d23_pipeline.launch import (
    _guide,
    _prepare_dagster_home,
    set_pool_limits,
    simulator_start_month,
)
from d23_pipeline.months import month_window
from d23_pipeline.settings import (
    LoginCredentials,
    SettingsError,
    read_credentials,
    read_pool_limits,
)
from d23_pipeline.simulator import Simulator, SimulatorConfig, serve


def test_simulator_start_month_counts_in_utc_whatever_the_local_zone() -> None:
    # 20:30 on 31 May in New York is already 1 June in UTC, where the simulator's six months
    # run from January to June.
    new_york_evening = datetime(2026, 5, 31, 20, 30, tzinfo=ZoneInfo("America/New_York"))
    assert simulator_start_month(new_york_evening) == "2026-01"
    assert simulator_start_month(datetime(2026, 5, 31, 23, 59, tzinfo=UTC)) == "2025-12"


def test_the_backfill_hint_covers_exactly_the_partitions_and_the_dashboard_path_is_given(
    tmp_path: Path,
) -> None:
    current = f"{datetime.now(UTC):%Y-%m}"

    guide = _guide({"D23_START_MONTH": "2026-07", "D23_DATA_DIR": str(tmp_path)})

    assert f".venv/bin/python -m d23_pipeline.backfill 2026-07 {current}\n" in guide
    assert guide.endswith(str(tmp_path.resolve() / "reports" / "outcome_dashboard.html"))


def test_a_ui_on_another_port_gets_a_backfill_command_that_reaches_it(tmp_path: Path) -> None:
    guide = _guide({"D23_START_MONTH": "2026-07", "D23_DATA_DIR": str(tmp_path)}, ui_port=3300)

    assert " --url http://127.0.0.1:3300\n" in guide


def _make_run(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    serve_ui: Callable[[dict[str, str], int], None],
    **settings: str,
) -> None:
    """``make run`` (launch.main) with ``settings`` its only D23_* ones, no pool limits set and
    ``serve_ui`` called with the environment and port `dg dev` would have been given."""
    for name in [n for n in os.environ if n.startswith(("D23_", "DAGSTER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("D23_DATA_DIR", str(tmp_path / "data"))
    for name, value in {"D23_UI_PORT": str(free_port()), **settings}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch, "set_pool_limits", lambda env: None)
    monkeypatch.setattr(launch, "_serve_ui", serve_ui)
    monkeypatch.setattr(launch.signal, "signal", lambda *handler: None)  # pytest's own stays
    launch.main()


def _stops_before_the_ui(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **settings: str) -> str:
    """What ``make run`` with ``settings`` stops with, having started no UI."""

    def no_ui(env: dict[str, str], port: int) -> None:
        pytest.fail(f"the UI was started on port {port}")

    with pytest.raises(SystemExit) as stopped:
        _make_run(monkeypatch, tmp_path, no_ui, **settings)
    return str(stopped.value)


def test_make_run_names_the_ui_port_it_serves_on_and_a_backfill_command_that_reaches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served = []
    port = free_port()  # not the default 3000, and free
    before = f"{datetime.now(UTC):%Y-%m}"
    _make_run(
        monkeypatch,
        tmp_path,
        lambda env, port: served.append(port),
        D23_API_URL="http://127.0.0.1:9",  # a real API: no simulator
        D23_LENDER="lender",
        D23_EMAIL="analyst@lender.example",
        D23_PASSWORD="a-password",
        D23_START_MONTH="2026-01",
        D23_UI_PORT=str(port),
    )
    after = f"{datetime.now(UTC):%Y-%m}"  # a month may end while it runs

    out = capsys.readouterr().out
    assert served == [port]
    assert f"; UI on http://127.0.0.1:{port}\n" in out
    assert any(
        f"d23_pipeline.backfill 2026-01 {current} --url http://127.0.0.1:{port}\n" in out
        for current in (before, after)
    )


@pytest.mark.parametrize("setting", ["D23_UI_PORT", "D23_SIMULATOR_PORT"])
def test_make_run_stops_before_starting_anything_when_another_program_holds_its_port(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
) -> None:
    # A program that does not answer HTTP holds it as much as an earlier UI or simulator does
    # (the simulator would fail to bind it, with a traceback).
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"D23_UI_PORT": str(free_port()), "D23_SIMULATOR_PORT": str(free_port())}
        message = _stops_before_the_ui(monkeypatch, tmp_path, **{**ports, setting: str(port)})

    assert message == (
        f"{setting} {port} is already in use by another program: stop it, or set {setting} "
        "to a free port"
    )
    assert "Bundled API simulator" not in capsys.readouterr().out
    assert not (tmp_path / "dagster_home").exists()


def test_make_run_stops_when_the_ui_and_the_simulator_are_given_one_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(free_port())

    with pytest.raises(SystemExit, match=f"D23_UI_PORT and D23_SIMULATOR_PORT are both {port}:"):
        _make_run(
            monkeypatch,
            tmp_path,
            lambda env, ui_port: None,
            D23_SIMULATOR_PORT=port,
            D23_UI_PORT=port,
        )

    assert "Bundled API simulator" not in capsys.readouterr().out


def test_make_run_says_which_runs_it_marked_failed_before_the_ui_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = []

    def left_behind(instance: dg.DagsterInstance, noticed_by: str) -> list[str]:
        homes.append(instance.root_directory)
        return ["run-a", "run-b"]

    monkeypatch.setattr(launch, "fail_runs_whose_process_is_gone", left_behind)
    # What it says instead on an instance shared with other hosts (PostgreSQL).
    monkeypatch.setattr(launch, "runs_maybe_left_in_progress", lambda instance: ["run-c"])
    _make_run(
        monkeypatch,
        tmp_path,
        lambda env, port: print("UI started"),
        D23_SIMULATOR_PORT=str(free_port()),
    )

    assert homes == [str(tmp_path / "dagster_home")]
    out = capsys.readouterr().out
    marked = "Marked failed 2 run(s) a stopped `make run` left in progress"
    assert marked in out and "run-a, run-b" in out
    assert out.index(marked) < out.index("UI started")
    named = "1 run(s) are in progress with no process of theirs on this host: run-c. If a stopped"
    assert named in out and "Terminate, then force" in out


def test_make_run_with_a_real_api_and_no_credentials_stops_before_the_ui_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _stops_before_the_ui(
        monkeypatch,
        tmp_path,
        D23_API_URL="https://stage-v3-api.cleargrid.ai",
        D23_START_MONTH="2026-01",
    )

    assert message.startswith("error: D23_LENDER is not set: configure D23_LENDER")


A_REAL_API = {
    "D23_API_URL": "http://127.0.0.1:9",  # no simulator
    "D23_LENDER": "lender",
    "D23_EMAIL": "analyst@lender.example",
    "D23_PASSWORD": "a-password",
}


def test_make_run_with_a_mapping_file_the_code_location_refuses_stops_before_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = tmp_path / "outcome_classes.yaml"
    mapping.write_text("promise: PTP\n")  # a code, not a list of codes

    message = _stops_before_the_ui(
        monkeypatch,
        tmp_path,
        **A_REAL_API,
        D23_OUTCOME_MAPPING=str(mapping),
    )

    # What loading the definitions (dg check defs, the UI's code location) says.
    assert message.startswith("error: D23_OUTCOME_MAPPING: ")
    assert "promise must be a list of codes" in message


def test_make_run_with_a_ducklake_dsn_libpq_cannot_read_stops_before_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _stops_before_the_ui(
        monkeypatch,
        tmp_path,
        **A_REAL_API,
        D23_WAREHOUSE="ducklake",
        # An unencoded '/' in the password: libpq would read its start as the port.
        D23_WAREHOUSE_DSN="postgresql://d23:SECRETpw/x@127.0.0.1:5432/d23",
        D23_DUCKLAKE_DATA_PATH=str(tmp_path / "lake"),
    )

    assert message.startswith("error: D23_WAREHOUSE_DSN is not a PostgreSQL connection string")
    assert "percent-encode" in message and "SECRET" not in message


def test_make_run_with_a_warehouse_file_this_user_cannot_write_stops_before_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    warehouse.parent.mkdir()
    warehouse.touch()
    # A file another user made, or a read-only share; the tests run as root, whom no mode stops.
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != warehouse and access(p, mode))

    message = _stops_before_the_ui(
        monkeypatch,
        tmp_path,
        **A_REAL_API,
        D23_DATA_DIR=str(warehouse.parent),
    )

    assert message == (
        f"error: this user cannot write {warehouse}: make it writable, or set D23_DATA_DIR to a "
        "folder this user can write"
    )


def test_make_run_against_another_api_than_its_data_folder_mirrors_stops_before_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo's first read recorded its source (the simulator on 127.0.0.1) in the folder.
    SnapshotStore(tmp_path / "data" / "raw" / "d23").record_source(
        "127.0.0.1", "f59eb470-2d38-4c41-a1e1-548f2d437096"
    )

    message = _stops_before_the_ui(
        monkeypatch,
        tmp_path,
        **{**A_REAL_API, "D23_API_URL": "https://stage-v3-api.cleargrid.ai"},
    )

    assert message.startswith("error: D23_DATA_DIR holds lender f59eb470")
    assert "read from 127.0.0.1; this run reads from stage-v3-api.cleargrid.ai" in message


def test_make_run_logs_in_to_its_simulator_as_the_demo_user_whatever_credentials_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logged_in = []

    def log_in(env: dict[str, str], port: int) -> None:
        with ExportsClient(env["D23_API_URL"], read_credentials(env)) as client:
            logged_in.append(client.lender_public_id)

    _make_run(
        monkeypatch,
        tmp_path,
        log_in,
        D23_SIMULATOR_PORT=str(free_port()),
        D23_PASSWORD="a-real-lenders-password",  # left from a real API's settings
        D23_TOKEN="a-real-lenders-token",
    )

    assert logged_in == [Simulator(SimulatorConfig()).lender_public_id]
    out = capsys.readouterr().out
    assert (
        "Not used with the bundled simulator (it has its demo user): D23_PASSWORD, D23_TOKEN" in out
    )
    assert "a-real-lenders" not in out


@pytest.mark.parametrize("given", ["2025-01", "", " "])  # blank, as an env file leaves it
def test_make_run_starts_the_partitions_at_a_start_month_set_else_where_its_simulator_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    start_months = []

    _make_run(
        monkeypatch,
        tmp_path,
        lambda env, port: start_months.append(env["D23_START_MONTH"]),
        D23_SIMULATOR_PORT=str(free_port()),
        D23_START_MONTH=given,
    )

    first = given.strip() or simulator_start_month(datetime.now(UTC))
    out = capsys.readouterr().out
    assert "Bundled API simulator on http://127.0.0.1:" in out
    assert start_months == [first]
    assert f"d23_pipeline.backfill {first} " in out


def test_the_simulator_make_run_starts_serves_rows_from_the_first_partition_on_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = []

    def count_rows(env: dict[str, str], port: int) -> None:
        start, end = month_window(env["D23_START_MONTH"])
        credentials = LoginCredentials(env["D23_LENDER"], env["D23_EMAIL"], env["D23_PASSWORD"])
        with ExportsClient(env["D23_API_URL"], credentials) as client:
            for window in (Window(start - timedelta(days=31), start), Window(start, end)):
                counted.append(client.count(window).exact_total)

    _make_run(monkeypatch, tmp_path, count_rows, D23_SIMULATOR_PORT=str(free_port()))

    # The 31 days before the first partition: nothing; its month: all of the simulator's 2,000
    # rows a month (a month before the current one is served whole).
    assert counted == [0, 2000]


def test_a_dagster_home_from_an_older_version_is_kept_and_its_missing_settings_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "dagster_home"
    shipped = (resources.files("d23_pipeline.deploy") / "dagster.yaml").read_text()
    older = shipped.replace("  free_slots_after_run_end_seconds: 60\n", "")
    older = older[: older.index("python_logs:")]  # and before python_logs, too
    make_dagster_home(home, config=older)

    _prepare_dagster_home({"DAGSTER_HOME": str(home)})

    assert (home / "dagster.yaml").read_text() == older  # never overwritten
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(
            "and lacks run_monitoring.free_slots_after_run_end_seconds, python_logs, telemetry: "
            "copy them from there"
        )
    )
    make_dagster_home(home)
    _prepare_dagster_home({"DAGSTER_HOME": str(home)})
    assert capsys.readouterr().out == ""
    make_dagster_home(home, config="run_monitoring: [unclosed\n")  # Dagster's to report
    _prepare_dagster_home({"DAGSTER_HOME": str(home)})
    assert (
        capsys.readouterr().out.strip().endswith("it differs from d23_pipeline/deploy/dagster.yaml")
    )


@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_dagster_home_is_the_default_not_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"DAGSTER_HOME": blank}

    home = _prepare_dagster_home(env)

    assert home == tmp_path / ".dagster_home"
    assert env["DAGSTER_HOME"] == str(home)
    assert (home / "dagster.yaml").is_file() and not (tmp_path / "dagster.yaml").exists()


def test_a_dagster_home_given_with_a_tilde_is_made_in_the_home_folder_not_a_folder_named_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an env file or a quoted export passes it on: the shell never expanded it.
    monkeypatch.setenv("HOME", str(tmp_path / "someone"))
    monkeypatch.chdir(tmp_path)
    env = {"DAGSTER_HOME": "~/d23_home"}

    home = _prepare_dagster_home(env)

    assert home == tmp_path / "someone" / "d23_home"
    assert env["DAGSTER_HOME"] == str(home)
    assert (home / "dagster.yaml").is_file() and not (tmp_path / "~").exists()


def test_a_dagster_home_in_the_home_folder_of_an_unknown_user_is_refused_naming_it() -> None:
    with pytest.raises(SettingsError, match="DAGSTER_HOME starts with '~no_such_user_d23'"):
        _prepare_dagster_home({"DAGSTER_HOME": "~no_such_user_d23/home"})


def test_a_start_month_after_this_month_stops_make_run_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="D23_START_MONTH 2999-01 has not begun"):
        _guide({"D23_START_MONTH": "2999-01", "D23_DATA_DIR": str(tmp_path)})


def test_a_bad_setting_stops_make_run_naming_it() -> None:
    with pytest.raises(SystemExit, match="D23_REPORT_TIMEZONE"):
        _guide({"D23_REPORT_TIMEZONE": "Atlantis/Capital"})


# `D23_API_URL=` left blank in an env file means no real API, as much as leaving it out does.
@pytest.mark.parametrize("api_url", [{}, {"D23_API_URL": " "}], ids=["unset", "blank"])
def test_a_bad_setting_stops_make_run_and_the_simulator_it_started(
    tmp_path: Path, api_url: dict[str, str]
) -> None:
    # A data folder read from another API: found only once the simulator's address is known.
    SnapshotStore(tmp_path / "data" / "raw" / "d23").record_source(
        "stage-v3-api.cleargrid.ai", "f59eb470-2d38-4c41-a1e1-548f2d437096"
    )
    port = free_port()
    env = clean_env(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        D23_DATA_DIR=str(tmp_path / "data"),
        D23_SIMULATOR_PORT=str(port),
        D23_UI_PORT=str(free_port()),
        **api_url,
    )

    launched = run_python(["-m", "d23_pipeline.launch"], env)

    assert launched.returncode == 1
    assert "D23_DATA_DIR holds lender f59eb470" in launched.stderr
    assert "Bundled API simulator" in launched.stdout  # it had been started
    with pytest.raises(httpx.ConnectError):  # and is gone: the next `make run` gets its port
        httpx.get(f"http://127.0.0.1:{port}", timeout=2)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"D23_PAGE_LIMIT": "0"}, "D23_PAGE_LIMIT must be between 1 and 1000 (got 0)"),
        (
            {
                "D23_WAREHOUSE": "ducklake",
                "D23_WAREHOUSE_DSN": "postgresql://d23:SECRETpw/x@127.0.0.1:5432/d23",
                "D23_DUCKLAKE_DATA_PATH": "/tmp/d23-lake-never-made",
            },
            "D23_WAREHOUSE_DSN is not a PostgreSQL connection string",
        ),
    ],
    ids=["page-limit", "dsn"],
)
def test_a_setting_no_api_is_needed_for_stops_make_run_before_it_starts_the_simulator(
    tmp_path: Path, setting: dict[str, str], named: str
) -> None:
    env = clean_env(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        D23_DATA_DIR=str(tmp_path / "data"),
        D23_SIMULATOR_PORT=str(free_port()),
        D23_UI_PORT=str(free_port()),
        **setting,
    )

    launched = run_python(["-m", "d23_pipeline.launch"], env)

    assert launched.returncode == 1
    assert named in launched.stderr and "SECRET" not in launched.stderr
    assert "Bundled API simulator" not in launched.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [("D23_UI_PORT", "http"), ("D23_SIMULATOR_PORT", "70000"), ("D23_API_POOL_LIMIT", "0")],
)
def test_a_bad_port_or_pool_limit_stops_make_run_with_one_line_naming_it(
    tmp_path: Path, name: str, value: str
) -> None:
    settings = {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "D23_DATA_DIR": str(tmp_path / "data"),
        "D23_SIMULATOR_PORT": str(free_port()),
        "D23_UI_PORT": str(free_port()),
    }
    env = clean_env(**{**settings, name: value})

    launched = run_python(["-m", "d23_pipeline.launch"], env)

    assert launched.returncode == 1
    assert launched.stderr.strip().splitlines()[-1].startswith(f"error: {name} must be")
    assert "Traceback" not in launched.stderr


def test_every_pool_the_assets_use_gets_an_explicit_limit(tmp_path: Path) -> None:
    # A limit left to the instance's default_limit is inserted by the first run that claims the
    # pool; two runs doing so at once fail one of them on PostgreSQL (dagster-io/dagster#33552).
    home = make_dagster_home(tmp_path / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "D23_API_POOL_LIMIT": "3"}

    set_pool_limits(env)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        limits = instance.event_log_storage.get_pool_limits()
    assert {(p.name, p.limit, p.from_default) for p in limits} == {
        ("d23_api", 3, False),
        ("d23_warehouse", 1, False),
    }
    assert {asset.op.pool for asset in defs.assets} == set(read_pool_limits(env))
    assert read_pool_limits({"D23_WAREHOUSE_POOL_LIMIT": "4"})["d23_warehouse"] == 4


def test_make_run_stops_when_another_program_holds_the_simulators_port(tmp_path: Path) -> None:
    # A simulator left by an earlier `make run`, say: every run would have read it.
    with serve(Simulator(SimulatorConfig(months=("2026-01",), rows_per_month=1))) as other:
        port = httpx.URL(other).port
        env = clean_env(
            DAGSTER_HOME=str(tmp_path / "dagster_home"),
            D23_DATA_DIR=str(tmp_path / "data"),
            D23_SIMULATOR_PORT=str(port),
            D23_UI_PORT=str(free_port()),
        )

        launched = run_python(["-m", "d23_pipeline.launch"], env)

    assert launched.returncode == 1
    assert f"D23_SIMULATOR_PORT {port} is already in use by another program" in launched.stderr


@pytest.mark.parametrize("where", ["a file", "/proc"])
def test_a_dagster_home_that_cannot_be_made_stops_make_run_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    home = tmp_path / "dagster_home" if where == "a file" else Path("/proc/d23_dagster_home")
    if where == "a file":
        home.write_text("not a folder")

    message = _stops_before_the_ui(monkeypatch, tmp_path, DAGSTER_HOME=str(home))

    assert message.startswith(f"error: DAGSTER_HOME is '{home}', but this user cannot ")
    assert message.endswith("set DAGSTER_HOME to a folder this user can write")


@pytest.mark.parametrize("warehouse", ["duckdb", "ducklake"])
def test_a_data_folder_nothing_can_be_made_in_stops_make_run_before_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warehouse: str
) -> None:
    # A lake's runs land their raw snapshots in D23_DATA_DIR too.
    lake = {
        "D23_WAREHOUSE_DSN": "postgresql://d23@127.0.0.1:9/d23",
        "D23_DUCKLAKE_DATA_PATH": str(tmp_path / "lake"),
    }
    message = _stops_before_the_ui(
        monkeypatch,
        tmp_path,
        **A_REAL_API,
        D23_WAREHOUSE=warehouse,
        **(lake if warehouse == "ducklake" else {}),
        D23_DATA_DIR="/proc/d23_data",  # root passes access() there; nothing can be made
    )

    assert message.startswith("error: cannot make the raw snapshots' folder /proc/d23_data/raw/d23")


def test_a_dagster_yaml_that_cannot_be_read_stops_make_run_naming_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    (home / "dagster.yaml").mkdir(parents=True)  # a folder where the file should be

    message = _stops_before_the_ui(monkeypatch, tmp_path, DAGSTER_HOME=str(home))

    assert message.startswith(f"error: DAGSTER_HOME is '{home}', but this user cannot make it, ")
    assert "(Is a directory)" in message
