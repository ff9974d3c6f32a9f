"""The one partitioning every D23 asset shares: calendar months in UTC, current month included."""

import dagster as dg

from d23_pipeline.defs.options import options

# end_offset=1 keeps the month in progress, which the daily refresh re-reads.
monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=f"{options.start_month}-01", timezone="UTC", end_offset=1
)
