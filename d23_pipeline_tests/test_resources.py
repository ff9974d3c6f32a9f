"""The Dagster resources' own contracts, apart from the assets that use them."""

from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import httpx
import pytest
from harness import MONTHS, Pipeline

from d23_pipeline.analytics import dashboard
from d23_pipeline.defs.resources import ExportsApiResource, LandingZoneResource, WarehouseResource
from d23_pipeline.settings import SettingsError, load_options


@pytest.fixture
def warehouse(tmp_path: Path) -> WarehouseResource:
    return WarehouseResource(database=str(tmp_path / "warehouse.duckdb"), lock_timeout_s=5)


def test_warehouse_resource_refuses_a_setting_it_would_ignore(tmp_path: Path) -> None:
    # Connections are opened by the warehouse's own code, which takes no DuckDB options.
    with pytest.raises(dg.DagsterInvalidConfigError, match="connection_config"):
        WarehouseResource(database=str(tmp_path / "w.duckdb"), connection_config={"threads": 1})


def test_warehouse_connection_writes_unless_read_only(warehouse: WarehouseResource) -> None:
    with warehouse.get_connection() as con:
        con.execute("CREATE TABLE d23.probe AS SELECT 1 AS x")
    with warehouse.get_connection(read_only=True) as con:
        assert con.execute("SELECT x FROM d23.probe").fetchall() == [(1,)]
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("INSERT INTO d23.probe VALUES (2)")


def test_warehouse_connection_is_closed_even_when_the_block_raises(
    warehouse: WarehouseResource,
) -> None:
    with pytest.raises(RuntimeError), warehouse.get_connection() as con:
        raise RuntimeError("the step failed")
    with pytest.raises(duckdb.ConnectionException):
        con.execute("SELECT 1")


def test_a_printed_resource_shows_no_secret() -> None:
    api = ExportsApiResource(
        api_url="http://127.0.0.1:1",
        lender="l",
        email="e",
        password="PW-SECRET",
        token="TOK-SECRET",
    )
    warehouse = WarehouseResource(
        database="w.duckdb",
        backend="ducklake",
        dsn="host=h password=DSN-SECRET",
        ducklake_data_path="/tmp/lake",
    )

    shown = " ".join([repr(api), str(api), repr(warehouse), str(warehouse)])

    assert "SECRET" not in shown
    assert (api.password, warehouse.dsn) == ("PW-SECRET", "host=h password=DSN-SECRET")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("page_limit", 0, "page_limit must be between 1 and 1000 (got 0)"),
        ("page_limit", 1001, "page_limit must be between 1 and 1000 (got 1001)"),
        ("max_concurrency", 33, "max_concurrency must be between 1 and 32 (got 33)"),
        ("slice_hours", 0, "slice_hours must be between 1 and 744 (got 0)"),
        ("retry_max_attempts", 0, "retry_max_attempts must be at least 1 (got 0)"),
        ("retry_base_delay_s", -0.5, "retry_base_delay_s must be at least 0 (got -0.5)"),
    ],
)
def test_a_runs_config_out_of_a_settings_range_fails_naming_the_field(
    pipeline: Pipeline, field: str, value: int, says: str
) -> None:
    # What the launchpad sends when someone edits the resource's config there.
    config = {"resources": {"exports_api": {"config": {field: value}}}}

    result = pipeline.materialize(MONTHS[0], raise_on_error=False, run_config=config)

    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    assert f"SettingsError: ExportsApiResource.{says}" in str(failure.event_specific_data.error)
    assert pipeline.sim.stats.snapshot()["by_kind"].get("data", 0) == 0
    assert not pipeline.warehouse_path.exists()


@pytest.mark.parametrize(
    ("resource", "field", "value", "says"),
    [
        ("warehouse", "max_deletion_share", 1.5, "between 0 and 1 (got 1.5)"),
        ("landing_zone", "resume_max_age_hours", -1, "at least 0 (got -1)"),
    ],
)
def test_each_resources_ranges_are_held_when_a_run_starts(
    pipeline: Pipeline, resource: str, field: str, value: float, says: str
) -> None:
    config = {"resources": {resource: {"config": {field: value}}}}

    result = pipeline.materialize(MONTHS[0], raise_on_error=False, run_config=config)

    (failure,) = [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    assert f".{field} must be {says}" in str(failure.event_specific_data.error)
    assert pipeline.sim.stats.snapshot()["by_kind"].get("data", 0) == 0


@pytest.mark.parametrize(
    ("memory_limit", "says"),
    [("2 gigs", "is not a size DuckDB reads"), ("80%", "such as 48MB"), ("8MB", "below 16MB")],
)
def test_a_runs_memory_limit_duckdb_cannot_take_fails_before_the_api_is_read(
    pipeline: Pipeline, memory_limit: str, says: str
) -> None:
    # DuckDB itself refused it only when the landing step opened the warehouse, after the
    # month was downloaded, and the run was retried.
    config = {"resources": {"warehouse": {"config": {"memory_limit": memory_limit}}}}

    result = pipeline.materialize(MONTHS[0], raise_on_error=False, run_config=config)

    (failure,) = [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    error = str(failure.event_specific_data.error)
    assert "SettingsError: WarehouseResource.memory_limit " in error and says in error
    assert pipeline.sim.stats.snapshot()["by_kind"].get("data", 0) == 0


@pytest.mark.parametrize("memory_limit", ["48MB", "1.5GB", "512MiB", "96 mb"])
def test_a_memory_limit_in_any_form_duckdb_reads_is_taken(
    tmp_path: Path, memory_limit: str
) -> None:
    resource = WarehouseResource(database=str(tmp_path / "w.duckdb"), memory_limit=memory_limit)

    with resource.get_connection() as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() is not None


@pytest.mark.parametrize(
    ("variable", "field", "low", "high"),
    [
        ("D23_PAGE_LIMIT", "page_limit", 1, 1000),
        ("D23_MAX_CONCURRENCY", "max_concurrency", 1, 32),
        ("D23_SLICE_HOURS", "slice_hours", 1, 744),
    ],
)
def test_a_resource_field_takes_exactly_what_its_variable_takes(
    variable: str, field: str, low: int, high: int
) -> None:
    for value in (low, high):
        load_options({variable: str(value)})
        ExportsApiResource(**{field: value}).check()
    for value in (low - 1, high + 1):
        with pytest.raises(SettingsError, match=variable):
            load_options({variable: str(value)})
        with pytest.raises(SettingsError, match=rf"ExportsApiResource\.{field} must be"):
            ExportsApiResource(**{field: value}).check()


@pytest.mark.parametrize(
    ("resource", "field", "value"),
    [
        (ExportsApiResource, "retry_base_delay_s", -0.1),
        (ExportsApiResource, "retry_max_attempts", 0),
        (WarehouseResource, "lock_timeout_s", -1.0),
        (WarehouseResource, "max_deletion_share", -0.01),
        (WarehouseResource, "max_deletion_share", 1.01),
        (WarehouseResource, "max_deletion_share", float("nan")),
        (LandingZoneResource, "resume_max_age_hours", -1),
    ],
)
def test_a_resource_setting_no_run_can_work_with_is_refused(
    tmp_path: Path, resource: type, field: str, value: float
) -> None:
    required = {
        WarehouseResource: {"database": str(tmp_path / "w.duckdb")},
        LandingZoneResource: {"raw_dir": str(tmp_path)},
    }.get(resource, {})
    with pytest.raises(SettingsError, match=rf"{resource.__name__}\.{field} must be"):
        resource(**required, **{field: value}).check()


def test_a_runs_config_of_one_field_keeps_the_other_settings_from_the_environment(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resource as the definitions build it from the environment; the run config is what
    # the launchpad sends when someone changes one field. Dagster replaces the whole config the
    # definitions gave with it, so the URL, the credentials and the slice width arrive unset.
    settings = {
        "D23_API_URL": pipeline.api_url,
        "D23_LENDER": pipeline.sim.config.lender_slug,
        "D23_EMAIL": pipeline.sim.config.email,
        "D23_PASSWORD": pipeline.sim.config.password,
        "D23_PAGE_LIMIT": "500",
        "D23_SLICE_HOURS": "12",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    as_defined = {
        "api_url": dg.EnvVar("D23_API_URL"),
        "lender": dg.EnvVar("D23_LENDER"),
        "email": dg.EnvVar("D23_EMAIL"),
        "password": dg.EnvVar("D23_PASSWORD"),
        "page_limit": 500,
        "slice_hours": 12,
    }
    config = {"resources": {"exports_api": {"config": {"page_limit": 200}}}}

    result = pipeline.materialize(
        MONTHS[0], selection="d23/raw_logs", run_config=config, **as_defined
    )

    metadata = result.asset_materializations_for_node("d23__raw_logs")[0].metadata
    assert metadata["final_page_limit"].value == 200  # the run's own
    assert metadata["slices"].value == 31 * 2  # D23_SLICE_HOURS's 12 hours, not the default 24
    assert metadata["dagster/row_count"].value == 1500


def test_a_runs_warehouse_config_of_one_field_keeps_the_warehouse_of_the_environment(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The launchpad's "max_deletion_share: 0.5" alone: the run must write the warehouse the
    # environment names, not lose it (nor, on DuckLake, its catalog).
    monkeypatch.setenv("D23_DATA_DIR", str(pipeline.data_dir))
    pipeline.materialize(MONTHS[0])
    (rows,) = pipeline.query("SELECT count(*) FROM d23.logs")
    gone = set(pipeline.sim.hard_delete(rows[0] * 3 // 10, MONTHS[0]))
    config = {"resources": {"warehouse": {"config": {"max_deletion_share": 0.5}}}}

    result = pipeline.materialize(MONTHS[0], run_config=config)

    assert result.success
    deleted = pipeline.query("SELECT public_id FROM d23.logs WHERE _deleted_at IS NOT NULL")
    assert {r[0] for r in deleted} == gone


def test_a_runs_dashboard_or_landing_config_of_one_field_keeps_the_others_from_the_environment(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The launchpad's dashboard path alone drew the dashboard in UTC, and its landing age
    # alone failed the run's config for want of the raw folder.
    monkeypatch.setenv("D23_DATA_DIR", str(pipeline.data_dir))
    monkeypatch.setenv("D23_REPORT_TIMEZONE", "Asia/Kolkata")
    drawn_in = []
    gather = dashboard.gather

    def gather_noting_the_zone(con: duckdb.DuckDBPyConnection, *args: Any) -> Any:
        drawn_in.append(args[1])
        return gather(con, *args)

    monkeypatch.setattr(dashboard, "gather", gather_noting_the_zone)
    elsewhere = tmp_path / "elsewhere.html"
    config = {
        "resources": {
            "dashboard_file": {"config": {"path": str(elsewhere)}},
            "landing_zone": {"config": {"resume_max_age_hours": 48}},
        }
    }

    result = pipeline.materialize(MONTHS[0], run_config=config)

    assert result.success and drawn_in == ["Asia/Kolkata"] and elsewhere.is_file()
    assert (pipeline.data_dir / "raw" / "d23" / f"{MONTHS[0]}-01").is_dir()


def test_a_warehouse_resource_given_every_field_reads_no_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Variables meant for another warehouse, or malformed: none of them is this resource's.
    monkeypatch.setenv("D23_WAREHOUSE", "ducklake")
    monkeypatch.setenv("D23_WAREHOUSE_DSN", "host=elsewhere")
    monkeypatch.setenv("D23_MAX_DELETION_SHARE", "abc")
    monkeypatch.setenv("D23_DATA_DIR", "/etc/passwd")
    resource = WarehouseResource(
        database=str(tmp_path / "w.duckdb"), backend="duckdb", max_deletion_share=0.5
    )

    with resource.get_connection() as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
    assert resource.allowed_deletion_share() == 0.5


def test_the_api_client_retries_and_waits_as_the_readme_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # README: 6 attempts, at most 300 s of pauses a request, a connection open within 10 s, an
    # answer's headers and then its body within 60 s each.
    for name, value in {
        "D23_LENDER": "demo",
        "D23_EMAIL": "a@b.example",
        "D23_PASSWORD": "pw",
    }.items():
        monkeypatch.setenv(name, value)
    with ExportsApiResource(api_url="http://127.0.0.1:9").client() as client:
        policy = client._retrier.policy
        http = client._http
        assert (policy.max_attempts, policy.max_total_wait_s) == (6, 300.0)
        assert http._http.timeout == httpx.Timeout(60.0, connect=10.0)
        assert http._deadline_s == 60.0
