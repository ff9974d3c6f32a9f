"""A one-asset Dagster project: what ``dagster asset materialize`` costs before any of our code."""

import dagster as dg


@dg.asset
def one() -> int:
    return 1


defs = dg.Definitions(assets=[one])
