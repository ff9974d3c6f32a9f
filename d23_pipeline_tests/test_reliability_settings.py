"""Settings: a missing or malformed setting fails at load or at run start, naming the variable;
plain ``http://`` is refused for any host but loopback."""

import contextlib
import os
import re
import zoneinfo
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import duckdb
import pytest
from harness import Pipeline, failure_messages
from processes import clean_env, run_python

from d23_pipeline.client import Window
from d23_pipeline.defs.resources import ExportsApiResource
from d23_pipeline.landing.snapshot import SnapshotStore
from d23_pipeline.months import month_index, month_name, month_of, month_window
from d23_pipeline.settings import (
    LoginCredentials,
    SettingsError,
    load_api_connection,
    load_options,
    read_credentials,
    read_pool_limits,
    validate_timezone,
)

LOGIN = {"lender": "demo", "email": "analyst@demo.example", "password": "pw"}
LENDER_ID = "f59eb470-2d38-4c41-a1e1-548f2d437096"
CURRENT_MONTH = month_of(datetime.now(UTC))
NEXT_MONTH = month_name(month_index(CURRENT_MONTH) + 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("D23_START_MONTH", "2026-13"),
        ("D23_START_MONTH", "\uff12\uff10\uff12\uff16-01"),  # full-width digits
        ("D23_PAGE_LIMIT", "\uff11\uff10"),
        ("D23_PAGE_LIMIT", "1_000"),
        ("D23_START_MONTH", "May 2026"),
        ("D23_START_MONTH", "0202-01"),
        ("D23_START_MONTH", "1969-12"),  # before Dagster's first partition time
        ("D23_START_MONTH", "2026-00"),  # would be read as 2025-12
        ("D23_PAGE_LIMIT", "lots"),
        ("D23_PAGE_LIMIT", "0"),
        ("D23_PAGE_LIMIT", "5000"),
        ("D23_MAX_CONCURRENCY", "0"),
        ("D23_MAX_CONCURRENCY", "2.5"),
        ("D23_SLICE_HOURS", "-24"),
        ("D23_REFRESH_HOUR_UTC", "24"),
        ("D23_REFRESH_LOOKBACK_MONTHS", "two"),
        ("D23_REFRESH_LOOKBACK_MONTHS", "0"),
        ("D23_OUTCOME_MAPPING", "/nonexistent/outcome_classes.yaml"),
        ("D23_REPORT_TIMEZONE", "Mars/Olympus_Mons"),
        ("D23_REPORT_TIMEZONE", "+05:30"),
        ("D23_REPORT_TIMEZONE", "localtime"),
        ("D23_REPORT_TIMEZONE", "posixrules"),
        ("D23_REPORT_TIMEZONE", "posix/Asia/Kolkata"),
        ("D23_REPORT_TIMEZONE", "right/UTC"),
        ("D23_DATA_DIR", __file__),  # a file, not a folder
        ("D23_DATA_DIR", f"{__file__}/data"),
        ("D23_PAGE_LIMIT", "1" * 5000),  # past what int() converts: its error named nothing
        ("D23_MAX_DELETION_SHARE", "1_0e-1"),  # float() read 1.0: every deletion let through
        ("D23_MAX_DELETION_SHARE", "\uff10.\uff15"),  # full-width digits
        ("D23_MAX_DELETION_SHARE", "nan"),
        ("D23_MAX_DELETION_SHARE", "1.5"),
        ("D23_START_MONTH", NEXT_MONTH),  # Dagster offered it as a partition, read as empty
    ],
)
def test_malformed_option_fails_at_load_naming_it(name: str, value: str) -> None:
    if value == NEXT_MONTH:  # at the time of the test, should the run cross a month's end
        value = month_name(month_index(month_of(datetime.now(UTC))) + 1)
    with pytest.raises(SettingsError, match=name) as caught:
        load_options({name: value})
    assert len(str(caught.value)) < 300


def test_a_data_dir_this_user_cannot_write_in_fails_at_load_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service user without rights on /srv/...; the tests run as root, whom no mode stops.
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != tmp_path and access(path, mode)
    )

    with pytest.raises(SettingsError, match=r"D23_DATA_DIR .* cannot write in"):
        load_options({"D23_DATA_DIR": str(tmp_path / "d23" / "data")})


def test_a_raw_folder_that_cannot_be_made_stops_the_read_naming_the_setting() -> None:
    # /proc takes no new folder, whoever asks: a path that passed every check at load time.
    store = SnapshotStore(Path("/proc/d23/raw"))

    with pytest.raises(
        SettingsError, match=r"cannot make the raw snapshots' folder .*D23_DATA_DIR"
    ):
        store.begin("2026-03-01", [Window(*month_window("2026-03"))], "run-1")


@pytest.mark.parametrize(
    ("value", "share"), [("0.05", 0.05), ("5e-2", 0.05), (".5", 0.5), ("+1", 1.0), ("0", 0.0)]
)
def test_a_deletion_share_written_as_a_decimal_is_read(value: str, share: float) -> None:
    assert load_options({"D23_MAX_DELETION_SHARE": value}).max_deletion_share == share


def test_the_current_month_is_a_start_month() -> None:
    assert load_options({"D23_START_MONTH": CURRENT_MONTH}).start_month == CURRENT_MONTH


def test_every_report_timezone_the_setting_accepts_is_one_duckdb_knows() -> None:
    # Every file of the zone database on this machine: ZoneInfo opens them all.
    names = {"localtime", "posixrules"} | {
        str((Path(folder) / file).relative_to(root))
        for root in zoneinfo.TZPATH
        for folder, _, files in os.walk(root)
        for file in files
    }
    accepted = set()
    for name in names:
        with contextlib.suppress(SettingsError):
            accepted.add(validate_timezone(name))
    with duckdb.connect() as con:
        known = {name for (name,) in con.execute("SELECT name FROM pg_timezone_names()").fetchall()}

    assert "Asia/Kolkata" in accepted and "UTC" in accepted
    assert accepted <= known, sorted(accepted - known)[:10]


def test_loading_the_definitions_with_a_bad_setting_fails_naming_it(tmp_path: Path) -> None:
    env = clean_env(D23_DATA_DIR=str(tmp_path), D23_SLICE_HOURS="a day")
    loaded = run_python(["-c", "import d23_pipeline.definitions"], env)

    assert loaded.returncode != 0
    last_line = loaded.stderr.strip().splitlines()[-1]
    assert last_line.startswith("d23_pipeline.settings.SettingsError: D23_SLICE_HOURS")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("D23_API_POOL_LIMIT", "0"),
        ("D23_API_POOL_LIMIT", "two"),
        ("D23_WAREHOUSE_POOL_LIMIT", "-1"),
    ],
)
def test_a_pool_limit_that_would_hold_every_run_fails_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        read_pool_limits({name: value})
    assert read_pool_limits({}) == {"d23_api": 2, "d23_warehouse": 1}


def test_a_mapping_file_the_outcome_mix_would_refuse_fails_the_definitions_load(
    tmp_path: Path,
) -> None:
    mapping = tmp_path / "outcome_classes.yaml"
    mapping.write_text("promise: PTP\n")  # a code, not a list of codes
    env = clean_env(D23_DATA_DIR=str(tmp_path), D23_OUTCOME_MAPPING=str(mapping))

    loaded = run_python(["-c", "import d23_pipeline.definitions"], env)

    last_line = loaded.stderr.strip().splitlines()[-1]
    assert last_line.startswith("d23_pipeline.settings.SettingsError: D23_OUTCOME_MAPPING")
    assert "promise must be a list of codes" in last_line


def test_a_password_is_sent_as_given_spaces_included_its_line_break_not() -> None:
    env = {"D23_API_URL": "https://api.example", "D23_LENDER": " demo ",
           "D23_EMAIL": "analyst@demo.example", "D23_PASSWORD": " s3cret pass \n"}  # fmt: skip

    credentials = load_api_connection(env).credentials

    assert credentials == LoginCredentials("demo", "analyst@demo.example", " s3cret pass ")
    with pytest.raises(SettingsError, match="D23_PASSWORD"):
        load_api_connection({**env, "D23_PASSWORD": "   "})


@pytest.mark.parametrize(
    "name", ["D23_LENDER", "D23_EMAIL", "D23_PASSWORD", "D23_LENDER_PUBLIC_ID", "D23_TOKEN"]
)
def test_a_credential_holding_bytes_that_are_not_utf8_fails_naming_it_not_its_value(
    name: str,
) -> None:
    # A Latin-1 env file: the byte reaches Python as a lone surrogate, and the login's JSON
    # encoder failed on it in an error holding the whole body, password included.
    held = {"D23_LENDER_PUBLIC_ID": LENDER_ID, "D23_TOKEN": "t0k-SECRET"}
    login = {"D23_LENDER": "demo", "D23_EMAIL": "a@demo.example", "D23_PASSWORD": "pw-SECRET"}
    env = {"D23_API_URL": "https://api.example", **(held if name in held else login)}
    env[name] = os.fsdecode(b"Gr\xfcn-SECRET")

    with pytest.raises(SettingsError, match=f"{name} holds bytes that are not UTF-8") as caught:
        load_api_connection(env)

    assert "SECRET" not in f"{caught.value!s} {caught.value!r}"


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"api_url": None, **LOGIN}, "D23_API_URL"),
        ({"api_url": "https://h.example", "email": "a@b.example", "password": "pw"}, "D23_LENDER"),
        ({"api_url": "https://h.example", "lender": "demo", "password": "pw"}, "D23_EMAIL"),
        ({"api_url": "https://h.example", "lender": "demo", "email": "a@b"}, "D23_PASSWORD"),
        ({"api_url": "https://h.example", "token": "t0k"}, "D23_LENDER_PUBLIC_ID"),
        ({"api_url": "https://h.example", "lender_public_id": LENDER_ID}, "D23_TOKEN"),
        # It goes into every path: "demo/../admin" would have read another one.
        (
            {"api_url": "https://h.example", "lender_public_id": "demo/../admin", "token": "t"},
            "D23_LENDER_PUBLIC_ID",
        ),
        ({"api_url": "ftp://h.example", **LOGIN}, "D23_API_URL"),
        ({"api_url": "stage-v3-api.cleargrid.ai", **LOGIN}, "D23_API_URL"),
        ({"api_url": "https://h.example/admin/v3", **LOGIN}, "D23_API_URL"),
        ({"api_url": "https://h.example#top", **LOGIN}, "D23_API_URL"),
        ({"api_url": "https://user:pw@h.example", **LOGIN}, "D23_API_URL"),
        ({"api_url": "http://127.0.0.1:99999", **LOGIN}, "D23_API_URL"),
        # An empty query: the paths appended to it became its query, and login failed with 404.
        ({"api_url": "http://127.0.0.1:8000?", **LOGIN}, "D23_API_URL"),
        ({"api_url": "https://h.example:0", **LOGIN}, "D23_API_URL"),
        # Brackets are an IPv6 host to urlsplit, which quotes what is between them.
        ({"api_url": "https://d23:Pw[SECRET-part]x@h.example", **LOGIN}, "D23_API_URL"),
        ({"api_url": "https://[SECRET-part]", **LOGIN}, "D23_API_URL"),
    ],
    ids=[
        "no-url",
        "no-lender",
        "no-email",
        "no-password",
        "token-without-lender-id",
        "lender-id-without-token",
        "lender-id-not-a-uuid",
        "ftp-url",
        "url-without-scheme",
        "url-with-path",
        "url-with-fragment",
        "url-with-user-info",
        "url-with-bad-port",
        "url-with-empty-query",
        "url-with-port-0",
        "url-with-brackets-in-user-info",
        "url-with-a-bracketed-host",
    ],
)
def test_missing_or_malformed_connection_setting_fails_naming_it(fields: dict, name: str) -> None:
    with pytest.raises(SettingsError, match=name) as caught:
        ExportsApiResource(**fields).connection()
    assert "SECRET" not in str(caught.value)


LOGIN_ENV = {"D23_LENDER": "demo", "D23_EMAIL": "a@b.example", "D23_PASSWORD": "pw-SECRET"}


@pytest.mark.parametrize("login", [LOGIN_ENV, {"D23_EMAIL": "a@b.example"}], ids=["all", "one"])
def test_a_token_and_login_credentials_together_are_refused_naming_both_groups(
    login: dict[str, str],
) -> None:
    env = {**login, "D23_LENDER_PUBLIC_ID": LENDER_ID, "D23_TOKEN": "tok-SECRET"}

    with pytest.raises(SettingsError) as caught:
        read_credentials(env)

    assert str(caught.value) == (
        "both a token (D23_LENDER_PUBLIC_ID, D23_TOKEN) and login credentials (D23_LENDER, "
        "D23_EMAIL, D23_PASSWORD) are set: unset one group"
    )


def test_a_lender_public_id_beside_login_credentials_says_to_unset_it_or_supply_a_token() -> None:
    env = {**LOGIN_ENV, "D23_LENDER_PUBLIC_ID": LENDER_ID}

    with pytest.raises(SettingsError) as caught:
        read_credentials(env)

    message = str(caught.value)
    assert message.startswith("D23_LENDER_PUBLIC_ID is set beside login credentials")
    assert "unset it to log in, or supply D23_TOKEN" in message
    assert "SECRET" not in message and LENDER_ID not in message


def test_a_token_no_http_header_can_carry_fails_naming_d23_token_and_not_the_token() -> None:
    # A typographic quote pasted with the token: httpx would fail encoding the header, in an
    # error whose arguments hold the whole header.
    token = "eyJ-held-SECRET-token\u2019"
    fields = {"api_url": "https://h.example", "lender_public_id": LENDER_ID, "token": token}

    with pytest.raises(SettingsError, match="D23_TOKEN") as caught:
        ExportsApiResource(**fields).connection()

    assert "SECRET" not in f"{caught.value!s} {caught.value!r}"


def test_a_token_pasted_as_the_lender_public_id_is_refused_without_quoting_it() -> None:
    token = "sk_live_SECRET_4f9a1c2e8b7d6a5f3e2d1c0b"  # under 40 characters: all of it
    fields = {"api_url": "https://h.example", "lender_public_id": token, "token": LENDER_ID}

    with pytest.raises(SettingsError, match="D23_LENDER_PUBLIC_ID must be") as caught:
        ExportsApiResource(**fields).connection()

    assert "SECRET" not in f"{caught.value!s} {caught.value!r}"
    assert f"{len(token)} characters" in str(caught.value)


def test_a_mistyped_lender_public_id_is_quoted_to_show_the_typo() -> None:
    typo = LENDER_ID[:-1]
    fields = {"api_url": "https://h.example", "lender_public_id": typo, "token": "t0ken"}

    with pytest.raises(SettingsError, match=f"got '{typo}'"):
        ExportsApiResource(**fields).connection()


@pytest.mark.parametrize("prefix", ["Bearer ", "bearer ", "BEARER  "])
def test_a_token_pasted_with_its_bearer_prefix_is_refused_saying_to_drop_it(prefix: str) -> None:
    fields = {"api_url": "https://h.example", "lender_public_id": LENDER_ID}

    with pytest.raises(SettingsError) as caught:
        ExportsApiResource(**fields, token=f"{prefix}eyJ-held-SECRET-token").connection()

    assert str(caught.value) == (
        "D23_TOKEN starts with 'Bearer ': paste the token without that prefix (the client adds it)"
    )
    assert "SECRET" not in repr(caught.value)


@pytest.mark.parametrize(
    "url",
    ["http://stage-v3-api.cleargrid.ai", "http://10.0.0.5:8023", "http://localhost.evil.example"],
)
def test_plain_http_to_a_non_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match=r"D23_API_URL uses plain http:// .*use https://"):
        ExportsApiResource(api_url=url, **LOGIN).connection()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://stage\t-v3-api.cleargrid.ai", "a character that does not print"),
        ("https://xn--stage-api.cleargrid.ai", "not valid IDNA (xn--stage-api.cleargrid.ai)"),
    ],
)
def test_an_api_url_the_http_client_would_refuse_is_refused_naming_d23_api_url(
    url: str, says: str
) -> None:
    # Both passed, and failed every run in the client with an error that named no setting.
    with pytest.raises(SettingsError, match=f"D23_API_URL .*{re.escape(says)}"):
        ExportsApiResource(api_url=url, **LOGIN).connection()


@pytest.mark.parametrize(
    "url",
    [
        "https://stage-v3-api.cleargrid.ai",
        "http://127.0.0.1:8023",
        "http://localhost:8023/",
        "http://[::1]:8023",
        "https://stage-v3-api.cleargrid.ai\n",
        "https://bücher.example",
        "https://xn--bcher-kva.example",
    ],
)
def test_https_anywhere_and_http_on_loopback_are_accepted(url: str) -> None:
    accepted = ExportsApiResource(api_url=url, **LOGIN).connection().api_url
    assert accepted == url.strip().rstrip("/")


def test_a_run_with_a_missing_setting_fails_at_start_without_calling_the_api(
    pipeline: Pipeline,
) -> None:
    result = pipeline.materialize("2026-04", raise_on_error=False, password=None)

    failures = failure_messages(result)
    assert list(failures) == ["d23__raw_logs"]
    assert "D23_PASSWORD is not set" in failures["d23__raw_logs"]
    assert pipeline.sim.stats.requests == 0


def test_a_path_setting_starting_with_a_tilde_is_under_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an env file or a quoted value passes it: no shell expanded it.
    monkeypatch.setenv("HOME", str(tmp_path))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_bytes(
        resources.files("d23_pipeline.analytics").joinpath("outcome_classes.yaml").read_bytes()
    )
    env = {
        "D23_DATA_DIR": "~/d23",
        "D23_OUTCOME_MAPPING": "~/mapping.yaml",
        "D23_WAREHOUSE": "ducklake",
        "D23_WAREHOUSE_DSN": "host=db dbname=d23",
        "D23_DUCKLAKE_DATA_PATH": "~/lake",
    }

    options = load_options(env)

    assert options.data_dir == tmp_path / "d23"
    assert options.outcome_mapping == mapping
    assert options.ducklake_data_path == str(tmp_path / "lake")


def test_a_ducklake_data_path_that_is_a_file_fails_at_load_naming_it(tmp_path: Path) -> None:
    # Recorded in the catalog by the first run, a mistyped data path would outlive its fix.
    env = {
        "D23_WAREHOUSE": "ducklake",
        "D23_WAREHOUSE_DSN": "host=db dbname=d23",
        "D23_DUCKLAKE_DATA_PATH": str(tmp_path / "lake.txt"),
    }
    (tmp_path / "lake.txt").write_text("not a folder")

    with pytest.raises(SettingsError, match=r"D23_DUCKLAKE_DATA_PATH points to .* not a folder"):
        load_options(env)


@pytest.mark.parametrize("name", ["D23_DATA_DIR", "D23_OUTCOME_MAPPING"])
def test_a_path_under_the_home_folder_of_an_unknown_user_is_refused_naming_its_variable(
    name: str,
) -> None:
    with pytest.raises(SettingsError, match=f"{name} starts with '~nobody-d23-xyz'"):
        load_options({name: "~nobody-d23-xyz/d23"})


def test_a_thirteenth_month_is_refused_saying_what_a_month_is() -> None:
    with pytest.raises(
        SettingsError,
        match=r"D23_START_MONTH must be a month, YYYY-MM with MM "
        r"from 01 to 12 \(got '2025-13'\)",
    ):
        load_options({"D23_START_MONTH": "2025-13"})
