"""A run of the whole D23 pipeline for one month in its own process, for crash tests to kill.

Usage: ``python crash_worker.py MONTH [--hang-before SQL_NAME --marker PATH]``, configured like a
deployment through the ``D23_*`` environment variables. With ``--hang-before``, the process writes
``PATH`` and then blocks forever just before the warehouse runs ``sql.SQL_NAME``: a deterministic
point inside (or right after) the merge at which the test kills it.
"""

import argparse
import threading
from pathlib import Path
from typing import Any

import dagster as dg

from d23_pipeline.definitions import defs
from d23_pipeline.defs.assets import logs as logs_asset
from d23_pipeline.warehouse import sql, store


def _hang_before(statement: str, marker: Path) -> None:
    real_execute = store.execute

    def execute(con: Any, text: str, params: Any = None) -> Any:
        if text == statement:
            marker.write_text("hanging")
            threading.Event().wait()
        return real_execute(con, text, params)

    store.execute = execute
    logs_asset.execute = execute


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("month", help="YYYY-MM")
    parser.add_argument("--hang-before", help="name of a statement in d23_pipeline.warehouse.sql")
    parser.add_argument("--marker", type=Path, help="file written when the hang begins")
    args = parser.parse_args()
    if args.hang_before:
        _hang_before(getattr(sql, args.hang_before), args.marker)
    dg.materialize(list(defs.assets), resources=defs.resources, partition_key=f"{args.month}-01")


if __name__ == "__main__":
    main()
