"""The one place where the D23 pipeline is wired together: ``defs``, loaded by workspace.yaml."""

import os

import dagster as dg

from d23_pipeline.analytics.outcome_classes import check_mapping_setting, mapping_version
from d23_pipeline.defs.assets.dashboard import outcome_dashboard
from d23_pipeline.defs.assets.logs import logs
from d23_pipeline.defs.assets.outcome_mix import (
    outcome_kpis_monthly,
    outcome_mix_daily,
    outcome_mix_monthly,
)
from d23_pipeline.defs.assets.raw_logs import raw_logs
from d23_pipeline.defs.dashboard_refresh import (
    dashboard_after_blocked_run,
    dashboard_behind_the_warehouse,
)
from d23_pipeline.defs.jobs import d23_dashboard_job, d23_pipeline_job
from d23_pipeline.defs.lost_runs import lost_run_watchdog
from d23_pipeline.defs.options import options
from d23_pipeline.defs.partitions import monthly_partitions
from d23_pipeline.defs.pools import pool_watchdog
from d23_pipeline.defs.resources import (
    DashboardResource,
    ExportsApiResource,
    LandingZoneResource,
    OutcomeMappingResource,
    WarehouseResource,
)
from d23_pipeline.defs.sensors import build_daily_refresh_sensor


def _env(name: str) -> dg.EnvVar | None:
    # Unset variables stay None so the resource reports which D23_* setting is missing, and
    # secrets reach the resource as EnvVar, which the UI never displays.
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else None


# A mapping file the outcome-mix steps would refuse fails here, when the definitions load
# (dg check defs, a code location reload), not in every run after its download.
check_mapping_setting(options.outcome_mapping)
# The outcome-mix counts change with the outcome mapping, so its digest is their code version:
# a new mapping marks every month stale. Set here, from the same setting the resource gets.
_mapping_version = mapping_version(options.outcome_mapping)
outcome_assets = dg.map_asset_specs(
    lambda spec: spec.replace_attributes(code_version=_mapping_version),
    [outcome_mix_monthly, outcome_kpis_monthly, outcome_mix_daily],
)
# The warehouse's tables show the store a setting chose (D23_WAREHOUSE: "duckdb" or "ducklake",
# each a kind the UI has an icon for), not the one the assets are declared with.
warehouse_assets = dg.map_asset_specs(
    lambda spec: spec.replace_attributes(kinds={options.warehouse}), [logs, *outcome_assets]
)

defs = dg.Definitions(
    assets=[raw_logs, *warehouse_assets, outcome_dashboard],
    jobs=[d23_pipeline_job, d23_dashboard_job],
    # One process per run, steps in it one after another (they depend on each other anyway): a
    # subprocess per step costs seconds of imports while holding its pool slot.
    executor=dg.in_process_executor,
    sensors=[
        build_daily_refresh_sensor(
            d23_pipeline_job.name,
            monthly_partitions,
            options.refresh_hour_utc,
            options.refresh_lookback_months,
        ),
        pool_watchdog,
        lost_run_watchdog,
        dashboard_after_blocked_run,
        dashboard_behind_the_warehouse,
    ],
    resources={
        "exports_api": ExportsApiResource(
            api_url=_env("D23_API_URL"),
            lender=_env("D23_LENDER"),
            email=_env("D23_EMAIL"),
            password=_env("D23_PASSWORD"),
            lender_public_id=_env("D23_LENDER_PUBLIC_ID"),
            token=_env("D23_TOKEN"),
            page_limit=options.page_limit,
            max_concurrency=options.max_concurrency,
            slice_hours=options.slice_hours,
        ),
        "warehouse": WarehouseResource(
            database=str(options.warehouse_path.resolve()),
            backend=options.warehouse,
            dsn=_env("D23_WAREHOUSE_DSN"),
            ducklake_data_path=options.ducklake_data_path,
            max_deletion_share=options.max_deletion_share,
        ),
        "landing_zone": LandingZoneResource(raw_dir=str(options.raw_dir.resolve())),
        "outcome_mapping": OutcomeMappingResource(
            mapping_path=str(options.outcome_mapping) if options.outcome_mapping else None
        ),
        "dashboard_file": DashboardResource(
            path=str(options.dashboard_path.resolve()), timezone=options.report_timezone
        ),
    },
)
