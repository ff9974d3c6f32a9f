"""The D23 asset keys, named once: assets, their dependencies, checks and tests refer to these."""

import dagster as dg

RAW_LOGS = dg.AssetKey(["d23", "raw_logs"])
LOGS = dg.AssetKey(["d23", "logs"])
OUTCOME_MIX_MONTHLY = dg.AssetKey(["d23", "outcome_mix_monthly"])
OUTCOME_KPIS_MONTHLY = dg.AssetKey(["d23", "outcome_kpis_monthly"])
OUTCOME_MIX_DAILY = dg.AssetKey(["d23", "outcome_mix_daily"])
OUTCOME_DASHBOARD = dg.AssetKey(["d23", "outcome_dashboard"])
