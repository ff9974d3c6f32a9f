"""Dagster resources: thin wrappers that build the plain-Python client, stores and mapping.

Dagster reads these classes when the definitions load (the assets' parameters name them), and
the webserver, the daemon and every run load the definitions: so this module imports no DuckDB,
Arrow or httpx. Each method imports what it builds when a step calls it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import dagster as dg
from pydantic import Field

from d23_pipeline.analytics.outcome_classes import check_mapping_setting, load_outcome_classes
from d23_pipeline.defs.run_retries import not_retried_when_its_config_is_refused
from d23_pipeline.settings import (
    DASHBOARD_FILE,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_RETRY_BASE_DELAY_S,
    DEFAULT_RETRY_MAX_ATTEMPTS,
    LOCK_TIMEOUT_S,
    MAX_CONCURRENCY_RANGE,
    PAGE_LIMIT_RANGE,
    RAW_FOLDER,
    RESUME_MAX_AGE,
    SLICE_HOURS_RANGE,
    ApiConnection,
    check_between,
    load_api_connection,
    read_api_limits,
    read_data_dir,
    read_max_deletion_share,
    read_report_timezone,
    read_warehouse_database,
    validate_memory_limit,
    validate_timezone,
    validate_warehouse,
)

if TYPE_CHECKING:
    import duckdb

    from d23_pipeline.analytics.outcome_classes import OutcomeClass
    from d23_pipeline.client import ExportsClient
    from d23_pipeline.landing.snapshot import SnapshotStore
    from d23_pipeline.warehouse.store import WarehouseBackend


class _CheckedWhenARunStarts(dg.ConfigurableResource):
    """A resource whose fields are checked when a run starts: :attr:`field_ranges`, and any
    more checks a subclass's :meth:`check` adds.

    Not pydantic's ``ge``/``le``: a value those refuse fails while Dagster builds the resource
    from the run's config (the launchpad's), before any code of ours runs, and the run was
    retried twice to fail the same way. Refused here, the run is not retried.
    """

    field_ranges: ClassVar[dict[str, tuple[float, float | None]]] = {}

    def check(self) -> None:
        """A SettingsError naming the first field out of its range."""
        for field, (low, high) in self.field_ranges.items():
            value = getattr(self, field)
            if value is not None:
                check_between(f"{type(self).__name__}.{field}", value, low, high)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        with not_retried_when_its_config_is_refused(context):
            self.check()


class ExportsApiResource(_CheckedWhenARunStarts):
    """The ClearGrid Exports API. Secrets arrive through ``dg.EnvVar`` and are never shown.

    A field left unset is read from its ``D23_*`` variable when a run uses it: a run's resource
    config (the launchpad's) replaces the whole config the definitions gave, not just the fields
    it names, so without that one changed field would drop the URL and credentials.
    """

    api_url: str | None = Field(default=None, description="D23_API_URL: host root")
    lender: str | None = Field(default=None, description="D23_LENDER: lender slug (login)")
    email: str | None = Field(default=None, description="D23_EMAIL (login)")
    # repr=False: a resource printed (a debugger, a log line) shows no secret.
    password: str | None = Field(default=None, description="D23_PASSWORD (login)", repr=False)
    lender_public_id: str | None = Field(default=None, description="D23_LENDER_PUBLIC_ID")
    token: str | None = Field(
        default=None, description="D23_TOKEN: a bearer token already held", repr=False
    )
    page_limit: int | None = Field(
        default=None, description="D23_PAGE_LIMIT: rows asked per page (1-1000)"
    )
    max_concurrency: int | None = Field(
        default=None, description="D23_MAX_CONCURRENCY: requests in flight (1-32)"
    )
    slice_hours: int | None = Field(
        default=None, description="D23_SLICE_HOURS: width of one slice (1-744)"
    )
    retry_base_delay_s: float = Field(
        default=DEFAULT_RETRY_BASE_DELAY_S,
        description="Ceiling of the jittered pause before the first retry (doubles per retry, "
        "up to 30 s)",
    )
    retry_max_attempts: int = Field(
        default=DEFAULT_RETRY_MAX_ATTEMPTS, description="Attempts per request, first one included"
    )
    # The first three bounded as their D23_* variables are: a run's config may set them too.
    field_ranges: ClassVar[dict[str, tuple[float, float | None]]] = {
        "page_limit": PAGE_LIMIT_RANGE,
        "max_concurrency": MAX_CONCURRENCY_RANGE,
        "slice_hours": SLICE_HOURS_RANGE,
        "retry_base_delay_s": (0, None),
        "retry_max_attempts": (1, None),
    }

    def limits(self) -> dict[str, int]:
        """``page_limit``, ``max_concurrency`` and ``slice_hours``, those unset from their
        variables; a malformed variable raises SettingsError naming it."""
        given = {
            "page_limit": self.page_limit,
            "max_concurrency": self.max_concurrency,
            "slice_hours": self.slice_hours,
        }
        from_env = read_api_limits(os.environ)
        return {name: from_env[name] if value is None else value for name, value in given.items()}

    @property
    def slice_size(self) -> timedelta:
        return timedelta(hours=self.limits()["slice_hours"])

    def connection(self) -> ApiConnection:
        """Validate the settings; a problem raises SettingsError naming the D23_* variable."""
        given = {
            "D23_API_URL": self.api_url,
            "D23_LENDER": self.lender,
            "D23_EMAIL": self.email,
            "D23_PASSWORD": self.password,
            "D23_LENDER_PUBLIC_ID": self.lender_public_id,
            "D23_TOKEN": self.token,
        }
        return load_api_connection(
            {
                name: os.environ.get(name, "") if value is None else value
                for name, value in given.items()
            }
        )

    @contextmanager
    def client(
        self, max_window: timedelta | None = None, learned_page_limit: int | None = None
    ) -> Iterator[ExportsClient]:
        """A client; ``max_window``, ``learned_page_limit``: the widest window and the largest
        page worth asking for (learned earlier)."""
        from d23_pipeline.client import ExportsClient, RetryPolicy

        connection, limits = self.connection(), self.limits()
        with ExportsClient(
            connection.api_url,
            connection.credentials,
            page_limit=limits["page_limit"],
            max_concurrency=limits["max_concurrency"],
            slice_size=timedelta(hours=limits["slice_hours"]),
            max_window=max_window,
            learned_page_limit=learned_page_limit,
            retry=RetryPolicy(
                max_attempts=self.retry_max_attempts, base_delay_s=self.retry_base_delay_s
            ),
        ) as client:
            yield client


class WarehouseResource(_CheckedWhenARunStarts):
    """The warehouse: the embedded DuckDB file, whose connections are serialised across processes
    by a file lock, or DuckLake on a PostgreSQL catalog; connections are closed even when the
    block raises.

    A field left unset is read from its ``D23_*`` variable, as :class:`ExportsApiResource`'s
    are: a run's resource config of ``max_deletion_share`` alone must not drop the DuckLake
    catalog and write to a DuckDB file instead.
    """

    database: str | None = Field(
        default=None, description="Path of the DuckDB file ($D23_DATA_DIR/warehouse.duckdb)"
    )
    backend: str | None = Field(default=None, description="D23_WAREHOUSE: duckdb or ducklake")
    dsn: str | None = Field(
        default=None,
        description="D23_WAREHOUSE_DSN: the DuckLake catalog's PostgreSQL DSN",
        repr=False,  # it holds the catalog's password
    )
    ducklake_data_path: str | None = Field(
        default=None, description="D23_DUCKLAKE_DATA_PATH: where DuckLake writes its Parquet files"
    )
    lock_timeout_s: float = Field(
        default=LOCK_TIMEOUT_S, description="How long to wait for the lock"
    )
    max_deletion_share: float | None = Field(
        default=None,
        description=(
            "D23_MAX_DELETION_SHARE: a merge that would mark more of a month's live rows "
            "deleted marks none until confirmed (0-1)"
        ),
    )
    memory_limit: str = Field(
        default=DEFAULT_MEMORY_LIMIT,
        description=(
            "DuckDB's memory_limit for every session, on the embedded file or a DuckLake on a "
            "folder; beyond it DuckDB spills under D23_DATA_DIR (warehouse.duckdb.tmp, "
            "ducklake.tmp), and a merge that still runs out of memory runs again within twice "
            "the limit, then without one"
        ),
    )

    field_ranges: ClassVar[dict[str, tuple[float, float | None]]] = {
        "lock_timeout_s": (0, None),
        "max_deletion_share": (0, 1),
    }

    def check(self) -> None:
        """The ranges, and a memory limit DuckDB takes, checked before a month is downloaded:
        DuckDB itself would refuse it only when the merge opens the warehouse."""
        super().check()
        validate_memory_limit(self.memory_limit, "WarehouseResource.memory_limit")

    def allowed_deletion_share(self) -> float:
        """The share of a month's live rows a merge may mark deleted without confirmation."""
        if self.max_deletion_share is not None:
            return self.max_deletion_share
        return read_max_deletion_share(os.environ)

    def warehouse(self) -> WarehouseBackend:
        from d23_pipeline.warehouse.backend import open_warehouse

        # Only the fields left unset are read, each from its own variable; the DuckLake ones
        # only for a DuckLake warehouse.
        env = os.environ
        backend, data_path = self.backend, self.ducklake_data_path
        if backend is None or (backend == "ducklake" and data_path is None):
            from_env, env_data_path = validate_warehouse(env)
            backend, data_path = backend or from_env, data_path or env_data_path
        if self.dsn is not None:
            # One read from a secrets file often ends in a newline, which libpq keeps in its
            # last value (a database "d23\n" that does not exist); a space may end an escaped
            # password.
            dsn = self.dsn.strip("\r\n") or None
        elif backend == "ducklake":
            dsn = env.get("D23_WAREHOUSE_DSN", "").strip() or None
        else:
            dsn = None
        return open_warehouse(
            backend,
            database=Path(self.database or read_warehouse_database(env)),
            dsn=dsn,
            ducklake_data_path=data_path,
            lock_timeout_s=self.lock_timeout_s,
            memory_limit=self.memory_limit,
        )

    @contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.warehouse().connect(read_only=read_only) as con:
            yield con


class LandingZoneResource(_CheckedWhenARunStarts):
    """Where raw monthly snapshots are written (``$D23_DATA_DIR/raw``)."""

    # Unset, read when a step runs: a run config naming only some fields keeps the others.
    raw_dir: str | None = Field(
        default=None, description="The raw snapshots' folder ($D23_DATA_DIR/raw when unset)"
    )
    resume_max_age_hours: int = Field(
        default=RESUME_MAX_AGE // timedelta(hours=1),
        description="An unfinished snapshot older than this is read again, not resumed",
    )
    field_ranges: ClassVar[dict[str, tuple[float, float | None]]] = {
        "resume_max_age_hours": (0, None)
    }

    def store(self) -> SnapshotStore:
        from d23_pipeline.landing.snapshot import SnapshotStore

        raw_dir = Path(self.raw_dir) if self.raw_dir else read_data_dir(os.environ) / RAW_FOLDER
        return SnapshotStore(raw_dir.resolve() / "d23", timedelta(hours=self.resume_max_age_hours))


class OutcomeMappingResource(_CheckedWhenARunStarts):
    """Which outcome codes count as contact, RPC, promise and refusal."""

    mapping_path: str | None = Field(
        default=None, description="D23_OUTCOME_MAPPING; the shipped mapping when unset"
    )

    def check(self) -> None:
        """A mapping file the outcome steps would refuse (a run config's) fails the run as it
        starts, not retried, rather than its outcome steps after the month's download."""
        check_mapping_setting(Path(self.mapping_path) if self.mapping_path else None)

    def classes(self) -> dict[str, OutcomeClass]:
        return load_outcome_classes(Path(self.mapping_path) if self.mapping_path else None)


class DashboardResource(_CheckedWhenARunStarts):
    """Where the outcome dashboard is written, and the time zone its times of day are in."""

    # Unset, read when a step runs: a run config naming only some fields keeps the others.
    path: str | None = Field(
        default=None,
        description="The HTML file ($D23_DATA_DIR/reports/outcome_dashboard.html when unset)",
    )
    timezone: str | None = Field(
        default=None, description="An IANA time zone ($D23_REPORT_TIMEZONE, else UTC, when unset)"
    )

    def check(self) -> None:
        """A time zone the dashboard would refuse fails the run as it starts, not retried."""
        self.zone()

    def zone(self) -> str:
        """The time zone, validated; a bad name raises SettingsError naming the field."""
        if self.timezone:
            return validate_timezone(self.timezone, f"{type(self).__name__}.timezone")
        return read_report_timezone(os.environ)

    def file(self) -> Path:
        """Where the dashboard is written."""
        if self.path:
            return Path(self.path).resolve()
        return (read_data_dir(os.environ) / DASHBOARD_FILE).resolve()
