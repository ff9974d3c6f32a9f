"""The jobs: the whole D23 pipeline for one month, and the dashboard alone."""

import dagster as dg

from d23_pipeline.defs.keys import OUTCOME_DASHBOARD, RETRY_WHOLE_RUN_TAGS
from d23_pipeline.defs.partitions import monthly_partitions

d23_pipeline_job = dg.define_asset_job(
    name="d23_pipeline_job",
    selection=dg.AssetSelection.key_prefixes(["d23"]),
    partitions_def=monthly_partitions,
    tags=RETRY_WHOLE_RUN_TAGS,
    description=(
        "Read one month from the Exports API, merge it into d23.logs, rebuild its outcome mix."
    ),
)

d23_dashboard_job = dg.define_asset_job(
    name="d23_dashboard_job",
    selection=dg.AssetSelection.assets(OUTCOME_DASHBOARD),
    description="Rebuild the analysts' dashboard from every month in the warehouse, as it is.",
)
