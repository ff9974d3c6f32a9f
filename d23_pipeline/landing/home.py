"""The one ``D23_DATA_DIR`` whose raw snapshots a warehouse's runs land in.

A read weighs what other months' reads landed there and have not merged yet: the bad rows they
served and the rows they proved gone (``landing/month.py``). A run landing in another folder, on
another host of a shared DuckLake, cannot see those, and could mark a live row deleted or resume
a read it should start over. So the first merge records its folder in the warehouse
(``d23.landing_home``), and a run from any other folder is refused, a read before it reads the
API and a merge before it merges, until an operator moves the home on purpose
(``D23_TAKE_OVER_LANDING``).
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

from d23_pipeline.landing.snapshot import unwritable_raw_folder
from d23_pipeline.settings import SettingsError
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.store import MergeGuard, WarehouseBackend, execute, transaction

log = logging.getLogger("d23_pipeline.landing")

# In the raw snapshots' folder, so it goes where the folder goes: with the folder's path, it
# tells the home from a copy of it (_is_home).
ID_FILE = "landing_id.json"
TAKE_OVER_VARIABLE = "D23_TAKE_OVER_LANDING"


class LandingHomeError(SettingsError):
    """This run's ``D23_DATA_DIR`` is not the one the warehouse's runs land in."""


def data_dir_id(raw_dir: Path) -> str:
    """The lasting id of the raw snapshots' folder ``raw_dir``, made on first use."""
    path = raw_dir / ID_FILE
    if not path.is_file():
        made = raw_dir / f".{ID_FILE}.{uuid.uuid4().hex}"
        try:
            raw_dir.mkdir(parents=True, exist_ok=True)
            made.write_text(json.dumps({"id": uuid.uuid4().hex}))
            # Two runs starting at once: the first link wins, and both read its id.
            path.hardlink_to(made)
        except FileExistsError:
            pass
        except OSError as exc:
            raise unwritable_raw_folder(raw_dir, exc) from None
        finally:
            made.unlink(missing_ok=True)
    return str(json.loads(path.read_text())["id"])


def requested_take_over(env: Mapping[str, str]) -> str | None:
    """The home id ``D23_TAKE_OVER_LANDING`` names, if set."""
    return env.get(TAKE_OVER_VARIABLE, "").strip() or None


def _is_home(
    home: tuple[Any, ...] | None, mine: str, raw_dir: Path, warehouse: WarehouseBackend
) -> bool:
    # And its path, unless the warehouse moves with the folder (the embedded file in
    # D23_DATA_DIR: a copy of it is a warehouse of its own). Otherwise a copy of the folder
    # elsewhere (a restored backup, a cloned volume) keeps the id, and its unmerged snapshots
    # part ways with the original's from its first run.
    if home is None or home[0] != mine:
        return False
    return warehouse.holds(raw_dir) or home[1] == str(raw_dir)


def _refusal(
    home: tuple[Any, ...], raw_dir: Path, take_over: str | None = None
) -> LandingHomeError:
    # A take-over id mistyped (or of an older home) would otherwise go unmentioned.
    ignored = (
        f" ({TAKE_OVER_VARIABLE} is set, to {take_over[:64]!r}, which is not that id: it moved "
        "nothing)"
        if take_over
        else ""
    )
    return LandingHomeError(
        f"this warehouse's runs land their raw snapshots in {home[1]} on host {home[2]} "
        f"(since {home[3]:%Y-%m-%d %H:%M} UTC); this run's folder is {raw_dir} on host "
        f"{socket.gethostname()}, so it stopped before reading or merging. A read weighs the "
        "snapshots other months' reads landed there and have not merged yet, which it cannot "
        "see from here, and could mark live rows deleted. Run the pipeline with that folder "
        "(D23_DATA_DIR); or, if it is gone for good, run once with "
        f"{TAKE_OVER_VARIABLE}={home[0]} to land here from now on (and read the months it held "
        f"unmerged again){ignored}"
    )


def check_landing_home(warehouse: WarehouseBackend, raw_dir: Path, take_over: str | None) -> None:
    """Raise :class:`LandingHomeError` if the warehouse's runs land elsewhere than ``raw_dir``
    and ``take_over`` does not name that home; record nothing (a read that then fails leaves the
    warehouse as it was: the merge records the home, :func:`claim_landing_home`)."""
    if not warehouse.exists():
        return
    raw_dir, mine = raw_dir.resolve(), data_dir_id(raw_dir)
    try:
        with warehouse.connect(read_only=True) as con:
            home = execute(con, sql.LANDING_HOME).fetchone()
    except duckdb.CatalogException:  # a warehouse made before the table: no home yet
        return
    if home is not None and not _is_home(home, mine, raw_dir, warehouse) and home[0] != take_over:
        raise _refusal(home, raw_dir, take_over)


def claim_landing_home(
    warehouse: WarehouseBackend,
    con: duckdb.DuckDBPyConnection,
    raw_dir: Path,
    take_over: str | None,
) -> None:
    """On a write session ``con`` of ``warehouse``: record ``raw_dir`` as where its runs land
    if no run did yet, or if ``take_over`` names the recorded home's id, or if the folder moved
    with the warehouse; pass if it is the home; otherwise raise :class:`LandingHomeError`."""
    raw_dir, mine = raw_dir.resolve(), data_dir_id(raw_dir)
    execute(con, sql.CREATE_LANDING_HOME)
    home = execute(con, sql.LANDING_HOME).fetchone()
    if home is not None and (home[0], home[1]) == (mine, str(raw_dir)):
        return
    moved = _is_home(home, mine, raw_dir, warehouse)  # with the warehouse: recorded anew
    if home is not None and not moved and home[0] != take_over:
        raise _refusal(home, raw_dir, take_over)
    with transaction(con):
        execute(con, sql.FORGET_LANDING_HOME)
        execute(con, sql.CLAIM_LANDING_HOME, _claim(mine, raw_dir))
    if home is not None and not moved:
        log.warning(
            "took the landing over from %s on host %s (%s=%s): runs land in %s now",
            home[1],
            home[2],
            TAKE_OVER_VARIABLE,
            take_over,
            raw_dir,
        )


def still_the_home(raw_dir: Path) -> MergeGuard:
    """A guard for the merge's own transaction (``merge_snapshot``): raise
    :class:`LandingHomeError` unless the warehouse's recorded home is ``raw_dir``, as
    :func:`claim_landing_home` left it."""
    raw_dir, mine = raw_dir.resolve(), data_dir_id(raw_dir)

    # The claim's session has ended by the time the merge's begins, and another folder's
    # take-over may commit in between. The merge's session holds the writers' turn (the file's
    # lock), so a take-over now commits before this check or after the merge.
    def check(con: duckdb.DuckDBPyConnection) -> None:
        home = execute(con, sql.LANDING_HOME).fetchone()
        if home is None:
            raise LandingHomeError(
                f"d23.landing_home no longer records {raw_dir}, claimed by this step as where "
                "the warehouse's runs land, so the merge stopped with nothing changed; re-run it"
            )
        if (home[0], home[1]) != (mine, str(raw_dir)):
            raise _refusal(home, raw_dir)

    return check


def _claim(mine: str, raw_dir: Path) -> dict[str, str]:
    return {"data_dir_id": mine, "raw_dir": str(raw_dir), "host": socket.gethostname()}
