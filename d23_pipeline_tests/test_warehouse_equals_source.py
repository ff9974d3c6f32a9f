"""Any history of source changes and reads, faulty, interrupted or clean: no read marks a row
deleted that its month still serves, no row is stored twice, and a clean read makes the month
in the warehouse equal the source."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import api
import httpx
import pytest
from harness import Lake, SimulatedCrash, crashing_after, source_rows, stored_rows
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from postgres import PostgresServer

from d23_pipeline.client import RetriesExhaustedError, Window
from d23_pipeline.client.windows import ONE_MS
from d23_pipeline.landing.month import MonthRead, read_month
from d23_pipeline.landing.snapshot import Snapshot, SnapshotStore
from d23_pipeline.months import month_window
from d23_pipeline.simulator import Faults, Simulator, SimulatorConfig
from d23_pipeline.warehouse import store
from d23_pipeline.warehouse.ducklake import DuckLakeWarehouse, retry_on_conflict
from d23_pipeline.warehouse.store import Warehouse, WarehouseBackend, merge_within_memory_limit

MONTHS = ("2026-03", "2026-04")
SLICE = timedelta(days=4)
# Where in a month a row moves to, as a share of it; 1.0 would be the next month's first instant.
_WITHIN = st.floats(0, 1, exclude_max=True)


def _instant_in(month: str, share: float) -> datetime:
    """The millisecond ``share`` of the way into ``month``: inside it for any share below 1
    (a timedelta times 0.9999999999999999 rounds to the whole month, the next one's first
    instant)."""
    since, until = month_window(month)
    return since + timedelta(milliseconds=int((until - since) / ONE_MS * share))


_faults = st.builds(
    Faults,
    truncate_rate=st.sampled_from([0.0, 0.3]),
    batch_end_every=st.sampled_from([0, 7]),
    grow_per_page=st.integers(0, 1),
    delete_per_page=st.integers(0, 1),
    error_5xx_rate=st.sampled_from([0.0, 0.1]),
    cursor_pages=st.sampled_from([0, 2]),
    seed=st.integers(0, 1000),
)


class WarehouseAgainstSource(RuleBasedStateMachine):
    """Two months of a simulator's rows, changed at will and read in any order."""

    lake_server: ClassVar[PostgresServer | None] = None  # a DuckLake on it, else a DuckDB file

    @initialize(
        page_limit=st.sampled_from([7, 25]),
        total_cap=st.sampled_from([9, 100_000]),
        tie_share=st.sampled_from([0.0, 0.5]),
        max_concurrency=st.sampled_from([1, 4]),
        loaded=st.booleans(),
        part_rows=st.sampled_from([7, store.LOGS_PART_ROWS]),
    )
    def start(
        self,
        page_limit: int,
        total_cap: int,
        tie_share: float,
        max_concurrency: int,
        loaded: bool,
        part_rows: int,
    ) -> None:
        """A simulator and a data folder; with ``loaded``, both months read into the warehouse
        already (what most histories worth trying start from). A month of more than
        ``part_rows`` rows is merged, and weighed for rows gone, one range of its ids at a
        time."""
        config = SimulatorConfig(
            months=MONTHS, rows_per_month=40, total_cap=total_cap, tie_share=tie_share
        )
        self.sim = Simulator(config)
        self.folder = tempfile.TemporaryDirectory()
        root = Path(self.folder.name)
        self.store = SnapshotStore(root / "raw")
        self.warehouse: WarehouseBackend = Warehouse(root / "w.duckdb")
        if self.lake_server is not None:
            lake = Lake.create(self.lake_server, root / "lake")
            self.warehouse = DuckLakeWarehouse(lake.dsn, str(lake.data_path))
        self.parts = pytest.MonkeyPatch()
        self.parts.setattr(store, "LOGS_PART_ROWS", part_rows)
        self.parts.setattr(type(self.warehouse), "merge_part_rows", part_rows)
        served = api.checked_transport(self.sim)
        self.before_request: Callable[[httpx.Request], None] = lambda request: None

        def handle(request: httpx.Request) -> httpx.Response:
            self.before_request(request)
            return served.handle_request(request)

        self.client = api.client(
            self.sim,
            page_limit=page_limit,
            slice_size=SLICE,
            min_window=timedelta(hours=1),
            max_concurrency=max_concurrency,
            transport=httpx.MockTransport(handle),
        )
        self.runs = 0
        self.held_when_read: dict[Path, set[str]] = {}
        self.unchanged_while_read: dict[Path, set[tuple]] = {}
        # Rows the source serves broken, and their months (they move no more).
        self.broken: dict[str, str] = {}
        for month in MONTHS if loaded else ():
            self.read_cleanly(month)

    def teardown(self) -> None:
        if hasattr(self, "parts"):
            self.parts.undo()
        if hasattr(self, "client"):
            self.client.close()
            self.folder.cleanup()

    # -- the source changes --------------------------------------------------------------

    @rule(
        change=st.sampled_from(["break_promises", "deactivate", "hard_delete", "add_late_rows"]),
        month=st.sampled_from(MONTHS),
        n=st.integers(1, 3),
    )
    def change_rows(self, change: str, month: str, n: int) -> None:
        """Promises broken, rows deactivated or deleted outright, or rows logged late."""
        getattr(self.sim, change)(n, month)

    @rule(month=st.sampled_from(MONTHS), n=st.integers(1, 3))
    def move_to_the_other_month(self, month: str, n: int) -> None:
        (other,) = set(MONTHS) - {month}
        self.sim.move_rows(n, month, other)

    @rule(month=st.sampled_from(MONTHS), pick=st.integers(0, 10**6), at=_WITHIN)
    def move_within_its_month(self, month: str, pick: int, at: float) -> None:
        self._move_a_row(month, pick, month, at)

    @rule(
        month=st.sampled_from(MONTHS),
        pick=st.integers(0, 10**6),
        without_id=st.booleans(),
        moved_to=st.none() | _WITHIN,
    )
    def break_a_row(self, month: str, pick: int, without_id: bool, moved_to: float | None) -> None:
        """The source starts serving a row against the contract (a wrong type, or no id), in
        the same change moving it within its month, maybe."""
        rows = self.sim.valid_rows(*month_window(month))
        if rows:
            public_id = rows[pick % len(rows)]["public_id"]
            if moved_to is not None:
                self.sim.move_row(public_id, _instant_in(month, moved_to))
            if without_id:
                self.sim.corrupt_row(public_id, "missing_public_id", public_id="")
            else:
                self.sim.corrupt_row(public_id, "wrong_type", is_active="yes")
            self.broken[public_id] = month

    @rule(pick=st.integers(0, 10**6))
    def delete_a_broken_row(self, pick: int) -> None:
        if self.broken:
            public_id = sorted(self.broken)[pick % len(self.broken)]
            self.sim.hard_delete_row(public_id)
            del self.broken[public_id]

    # -- reads and merges, as runs' d23/raw_logs and d23/logs steps do them ------------------

    @rule(month=st.sampled_from(MONTHS))
    def read_cleanly(self, month: str) -> None:
        read = self._land(month, Faults())
        self._merge(read.snapshot)
        if not read.slices_resumed:
            self._assert_equals_the_source(month)

    @rule(month=st.sampled_from(MONTHS), faults=_faults)
    def read_through_faults(self, month: str, faults: Faults) -> None:
        before = self._query("SELECT * FROM d23.logs ORDER BY public_id")
        try:
            read = self._land(month, faults)
        except RetriesExhaustedError:  # the run fails; its retry finishes the job
            assert self._query("SELECT * FROM d23.logs ORDER BY public_id") == before
        else:
            self._merge(read.snapshot)
            self._assert_rows_unchanged_while_read_are_stored(read)

    @rule(month=st.sampled_from(MONTHS), after_slices=st.integers(1, 6))
    def read_interrupted(self, month: str, after_slices: int) -> None:
        with crashing_after(after_slices), contextlib.suppress(SimulatedCrash):
            self._merge(self._land(month, Faults()).snapshot)

    @rule(
        month=st.sampled_from(MONTHS),
        after_pages=st.integers(1, 12),
        to_month=st.sampled_from(MONTHS),
        latest=st.integers(0, 4),
        at=st.floats(0, 0.5),
    )
    def read_while_a_row_moves(
        self, month: str, after_pages: int, to_month: str, latest: int, at: float
    ) -> None:
        """One of the month's latest rows moves while the month is read (walks go forward in
        time): into a slice read already, say, where this read does not see it."""
        pages = 0

        def move_once(request: httpx.Request) -> None:
            nonlocal pages
            if api.is_page(request):
                pages += 1
                if pages == after_pages:
                    self._move_a_row(month, -1 - latest, to_month, at)

        self.before_request = move_once
        try:
            read = self._land(month, Faults())
        finally:
            self.before_request = lambda request: None
        self._merge(read.snapshot)

    @rule(month=st.sampled_from(MONTHS))
    def land_only(self, month: str) -> None:
        """A run whose merge step has not run yet."""
        self._land(month, Faults())

    @rule(month=st.sampled_from(MONTHS))
    def merge_the_latest_landed(self, month: str) -> None:
        """A run's d23/logs step: it merges the month's latest complete snapshot."""
        snapshot = self.store.current(f"{month}-01")
        if snapshot is not None:
            self._merge(snapshot)

    @rule(month=st.sampled_from(MONTHS), after_looking=st.booleans())
    def read_while_another_run_merges(self, month: str, after_looking: bool) -> None:
        """Another run's d23/logs step of the month commits while this run reads it: while
        it lands slices, or after it looked for rows gone."""
        if after_looking:
            confirm = self.client.confirm_absent

            def merge_then_confirm(*args: Any, **kwargs: Any) -> Any:
                self.merge_the_latest_landed(month)
                return confirm(*args, **kwargs)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(self.client, "confirm_absent", merge_then_confirm)
                read = self._land(month, Faults())
        else:
            merged = False

            def merge_once(message: str) -> None:
                nonlocal merged
                if not merged:
                    merged = True
                    self.merge_the_latest_landed(month)

            read = self._land(month, Faults(), progress=merge_once)
        self._merge(read.snapshot)

    # -- what must hold ------------------------------------------------------------------

    def _move_a_row(self, month: str, pick: int, to_month: str, at: float) -> None:
        rows = self.sim.valid_rows(*month_window(month))
        if rows:
            self.sim.move_row(rows[pick % len(rows)]["public_id"], _instant_in(to_month, at))

    def _land(
        self, month: str, faults: Faults, progress: Callable[[str], None] = lambda message: None
    ) -> MonthRead:
        """Read ``month`` through ``faults`` into a complete snapshot, and note which rows the
        source held in the month when it finished."""
        self.sim.faults = dataclasses.replace(faults)
        self.runs += 1
        at_start = source_rows(self.sim, month)
        try:
            read = read_month(
                self.client,
                self.store,
                self.warehouse,
                partition=f"{month}-01",
                slices=Window(*month_window(month)).split(SLICE),
                run_id=f"run-{self.runs}",
                progress=progress,
            )
        finally:
            self.sim.faults = Faults()
        self.unchanged_while_read[read.snapshot.directory] = at_start & source_rows(self.sim, month)
        served = {row["public_id"] for row in self.sim.rows(*month_window(month))}
        self.held_when_read[read.snapshot.directory] = served | {
            public_id for public_id, where in self.broken.items() if where == month
        }
        return read

    def _merge(self, snapshot: Snapshot) -> None:
        """Merge ``snapshot``: no row is stored twice (DuckLake has no key to refuse it), and
        no row its month held when the read finished is marked deleted."""
        retry_on_conflict(
            lambda: merge_within_memory_limit(self.warehouse, snapshot, max_deletion_share=1.0)
        )
        assert self._query("SELECT count(*) - count(DISTINCT public_id) FROM d23.logs") == [(0,)]
        month = snapshot.partition[:7]
        deleted = self._ids(month, "_deleted_at IS NOT NULL")
        assert deleted & self.held_when_read[snapshot.directory] == set()

    def _assert_rows_unchanged_while_read_are_stored(self, read: MonthRead) -> None:
        """After a read that proved every slice complete, merged at once: every row the month
        held, unchanged, from the read's start to its end, is stored as the source holds it,
        whatever else changed meanwhile (a row logged or deleted while a walk went on must not
        stand in, in a slice's count, for one an early end left unread)."""
        if read.slices_resumed or read.snapshot.unverified:
            return
        month = read.snapshot.partition[:7]
        unchanged = self.unchanged_while_read[read.snapshot.directory]
        assert unchanged <= stored_rows(self._query, month)

    def _assert_equals_the_source(self, month: str) -> None:
        """The month as a clean read leaves it: every valid row as the source serves it; a row
        the source broke keeps its last good version and is quarantined; a row gone from the
        month is deleted, unless the read could not prove it gone, and then it is listed in
        d23.deletions_pending or lies in a slice the read could not prove complete (an instant
        holding more rows than the API counts, say), which fails the run."""
        served = self.sim.rows(*month_window(month))
        source = source_rows(self.sim, month)
        stored = {row for row in stored_rows(self._query, month) if row[0] not in self.broken}
        assert source <= stored
        unproven = self._ids(
            month, "public_id IN (SELECT public_id FROM d23.deletions_pending)"
        ) | self._ids(
            month,
            "EXISTS (SELECT 1 FROM d23.slice_verification v WHERE NOT v.verified "
            "AND communicated_at >= v.slice_since AND communicated_at < v.slice_until)",
        )
        assert {row[0] for row in stored - source} <= unproven
        quarantined = {
            r[0]
            for r in self._query(
                "SELECT public_id FROM d23.rejected_rows WHERE slice_since >= ? "
                "AND slice_until <= ?",
                month,
            )
        }
        assert {row["public_id"] for row in served if row["public_id"] in self.broken} <= (
            quarantined
        )

    def _ids(self, month: str, condition: str) -> set[str]:
        rows = self._query(
            f"SELECT public_id FROM d23.logs WHERE {condition} "
            "AND communicated_at >= ? AND communicated_at < ?",
            month,
        )
        return {r[0] for r in rows}

    def _query(self, statement: str, params: Sequence[Any] | str = ()) -> list[tuple]:
        """``statement`` on the warehouse, with ``params`` (a month: its bounds)."""
        if isinstance(params, str):
            params = month_window(params)
        with self.warehouse.connect(read_only=True) as con:
            return con.execute(statement, list(params)).fetchall()


WarehouseAgainstSource.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_warehouse_equals_the_source_after_any_history = WarehouseAgainstSource.TestCase


class LakeAgainstSource(WarehouseAgainstSource):
    """The same, on DuckLake: its merges commit otherwise (snapshots, conflicts retried)."""


def test_the_lake_equals_the_source_after_any_history(postgres: PostgresServer) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LakeAgainstSource, "lake_server", postgres)
        run_state_machine_as_test(
            LakeAgainstSource,
            settings=settings(
                max_examples=8,
                stateful_step_count=10,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


def test_a_row_broken_at_its_months_last_millisecond_is_not_marked_deleted() -> None:
    """A history the state machine found: a row broken and moved, in one change, to the last
    millisecond its month's window holds is one of the month's rejects, not a row gone."""
    machine = WarehouseAgainstSource()
    try:
        machine.start(
            page_limit=7, total_cap=9, tie_share=0.0, max_concurrency=1, loaded=False, part_rows=7
        )
        machine.read_cleanly("2026-04")
        machine.break_a_row("2026-04", pick=0, without_id=False, moved_to=0.9999999999999999)
        moved = next(iter(machine.broken))
        assert machine.sim.rows(*month_window("2026-04"))[-1]["public_id"] == moved
        machine.read_cleanly("2026-04")  # its merge asserts that no row the month held is deleted
    finally:
        machine.teardown()
