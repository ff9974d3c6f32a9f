"""The job that materializes the whole D23 pipeline for one month."""

import dagster as dg

from d23_pipeline.defs.keys import RETRY_WHOLE_RUN_TAGS
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
