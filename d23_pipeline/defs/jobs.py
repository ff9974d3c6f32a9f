"""The job that materializes the whole D23 pipeline for one month."""

import dagster as dg

from d23_pipeline.defs.partitions import monthly_partitions

# Dagster's automatic retry of a failed run re-executes only the failed steps by default. A month
# fails in d23/logs (its blocking check) when a slice stayed unverified, and only a new read by
# d23/raw_logs can verify it, so the retry of a month re-runs every step.
RETRY_WHOLE_RUN_TAGS = {"dagster/retry_strategy": "ALL_STEPS"}

d23_pipeline_job = dg.define_asset_job(
    name="d23_pipeline_job",
    selection=dg.AssetSelection.key_prefixes(["d23"]),
    partitions_def=monthly_partitions,
    tags=RETRY_WHOLE_RUN_TAGS,
    description=(
        "Read one month from the Exports API, merge it into d23.logs, rebuild its outcome mix."
    ),
)
