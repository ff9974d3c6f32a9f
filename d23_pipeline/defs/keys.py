"""The D23 asset keys and run tags, named once: assets, their dependencies, checks, jobs, the
backfill command and tests refer to these. Imports nothing of ours, so the command line can."""

import dagster as dg

RAW_LOGS = dg.AssetKey(["d23", "raw_logs"])
LOGS = dg.AssetKey(["d23", "logs"])
OUTCOME_MIX_MONTHLY = dg.AssetKey(["d23", "outcome_mix_monthly"])
OUTCOME_KPIS_MONTHLY = dg.AssetKey(["d23", "outcome_kpis_monthly"])
OUTCOME_MIX_DAILY = dg.AssetKey(["d23", "outcome_mix_daily"])
OUTCOME_DASHBOARD = dg.AssetKey(["d23", "outcome_dashboard"])

# Dagster's automatic retry of a failed run re-executes only the failed steps by default. A month
# fails in d23/logs (its blocking check) when a slice stayed unverified, and only a new read by
# d23/raw_logs can verify it, so the retry of a month re-runs every step.
RETRY_WHOLE_RUN_TAGS = {"dagster/retry_strategy": "ALL_STEPS"}
