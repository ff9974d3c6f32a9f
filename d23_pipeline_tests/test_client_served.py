"""What a read served, for the deletion rule: ExportsClient.served_ids, confirm_absent and
find_served prove a row gone only from a walk whose counts it served exactly, rejects included."""

from __future__ import annotations

from contextvars import ContextVar
from datetime import timedelta

import httpx
from api import (
    DAY,
    T0,
    client,
    count_answer,
    counts_of,
    ending_the_walk,
    is_page,
    pid,
    row,
    rows_at,
    simulator,
)

from d23_pipeline.client.windows import ONE_MS, Window
from d23_pipeline.simulator import SimResponse, Simulator

SIX_HOURS = timedelta(hours=6)
HOURLY = range(0, 86_400_000, 3_600_000)  # a row at every hour of DAY, in ms


def _tied_pair(sim_fault: str | None = None, **fields: object) -> Simulator:
    """Rows 0 and 1 at 00:00 and row 2 at 12:00; row 1 served broken (``sim_fault``) if given."""
    sim = simulator(rows_at([0, 0, 43_200_000]))
    if sim_fault is not None:
        sim.corrupt_row(pid(1), sim_fault, **fields)  # type: ignore[arg-type]
    return sim


def test_an_instant_serving_a_bad_row_without_its_public_id_holds_its_candidates_unproven() -> None:
    sim = _tied_pair("missing_public_id", public_id="")
    with client(sim) as reader:
        # Row 1 is still there, served without its id: it may be the row asked about.
        assert reader.served_ids(Window(T0, T0 + ONE_MS)) == ({pid(0)}, True)
        # Held as unproven, not dropped: it looks gone, and the read must say so.
        assert reader.confirm_absent([(pid(1), T0), (pid(0), T0)]) == (set(), set(), {pid(1)})


def test_a_row_served_broken_at_its_instant_is_not_confirmed_absent() -> None:
    sim = _tied_pair("wrong_type", is_active="yes")
    with client(sim) as reader:
        assert reader.confirm_absent([(pid(1), T0)]) == (set(), set(), set())


def test_a_row_gone_from_an_instant_that_also_serves_a_bad_row_is_confirmed_absent() -> None:
    sim = _tied_pair("wrong_type", is_active="yes")
    with client(sim) as reader:
        assert reader.confirm_absent([(pid(99), T0), (pid(0), T0)]) == ({pid(99)}, set(), set())


def test_a_walk_of_an_instant_ended_short_of_its_count_holds_its_candidates_unproven() -> None:
    sim = _tied_pair()
    short = {"rows": [row(0, T0)], "pagination": {"nextCursor": None}}  # row 1 left out
    sim.script(SimResponse.from_json({"body": short}), when=lambda r: r.kind == "data")
    with client(sim) as reader:
        assert reader.confirm_absent([(pid(1), T0)]) == (set(), {pid(1)}, set())


def test_a_row_served_and_deleted_before_the_count_does_not_stand_in_for_one_never_reached() -> (
    None
):
    # Rows 0, 1 and 2 at one instant; the API ends every walk just before row 2. Row 1 is
    # deleted once served: counted after the walk alone, 2 rows for the 2 served.
    sim = simulator(rows_at([0, 0, 0]))
    transport = sim.transport()

    def handle(request: httpx.Request) -> httpx.Response:
        response = transport.handle_request(request)
        if not is_page(request):
            return response
        if pid(1) in response.read().decode():
            sim.hard_delete_row(pid(1))
        return ending_the_walk(response, without=pid(2))

    with client(sim, transport=httpx.MockTransport(handle)) as reader:
        assert reader.confirm_absent([(pid(2), T0)]) == (set(), {pid(2)}, set())
    assert pid(2) in {r["public_id"] for r in sim.rows(T0, T0 + ONE_MS)}


def test_a_bad_row_served_twice_by_an_instants_walk_counts_once_against_its_count() -> None:
    # Rows 1, 2 (bad), 3 and 4 at one instant, two a page. The second page's cursor is refused
    # (500s) and row 1 deleted meanwhile: the walk reads on from the instant, where the bad row
    # now has no row before it, and serves it again. Row 0 then moves in behind the cursor, and
    # the last page ends the walk without row 4: 4 counted, 4 served if the bad row counted
    # twice, and row 4 would be proven gone.
    sim = simulator([row(0, T0 + SIX_HOURS), *rows_at([0] * 5)[1:]], page_size=lambda n: 2)
    sim.corrupt_row(pid(2), "wrong_type", is_active="yes")
    transport = sim.transport()
    pages = refused = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal pages, refused
        if not is_page(request):
            return transport.handle_request(request)
        if request.url.params.get("cursor") and pages == 1 and refused < 4:
            refused += 1
            if refused == 1:
                sim.hard_delete_row(pid(1))
            return httpx.Response(500, json={"message": "Internal server error"})
        pages += 1
        response = transport.handle_request(request)
        if pages == 2:
            sim.move_row(pid(0), T0)
        return ending_the_walk(response, without=pid(4)) if pages == 3 else response

    with client(sim, page_limit=2, transport=httpx.MockTransport(handle)) as reader:
        assert reader.confirm_absent([(pid(4), T0)]) == (set(), {pid(4)}, set())
    assert refused == 4 and pages == 3  # the history above happened


def test_a_lookup_not_proven_complete_holds_its_candidates_unproven() -> None:
    sim = _tied_pair()
    sim.script(count_answer(None, "timeout"), times=99, when=lambda r: r.kind == "count")
    with client(sim) as reader:
        assert reader.confirm_absent([(pid(99), T0), (pid(98), T0 + SIX_HOURS)]) == (
            set(),
            {pid(99), pid(98)},
            set(),
        )


def test_find_served_proves_a_row_absent_from_a_window_read_in_slices() -> None:
    sim = simulator(rows_at(HOURLY))
    with client(sim, slice_size=SIX_HOURS, max_concurrency=2) as reader:
        assert reader.find_served(DAY, {pid(99)}) == set()
        assert reader.find_served(DAY, {pid(3), pid(99)}) == {pid(3)}


def test_find_served_proves_nothing_of_a_window_serving_a_bad_row_without_its_public_id() -> None:
    sim = simulator(rows_at(HOURLY))
    sim.corrupt_row(pid(5), "missing_public_id", public_id="")
    with client(sim, slice_size=SIX_HOURS) as reader:
        assert reader.find_served(DAY, {pid(99)}) is None


def test_find_served_finds_a_row_served_broken() -> None:
    sim = simulator(rows_at(HOURLY))
    sim.corrupt_row(pid(5), "wrong_type", is_active="yes")
    with client(sim, slice_size=SIX_HOURS) as reader:
        assert reader.find_served(DAY, {pid(5), pid(99)}) == {pid(5)}


def test_find_served_proves_a_window_whose_slice_was_read_twice() -> None:
    sim = simulator(rows_at(HOURLY))
    first = DAY.split(SIX_HOURS)[0]
    # 6 rows, counted 9 before and after the first read's walk: the slice is read again.
    sim.script(count_answer(9), times=2, when=counts_of(first, 1, 2))
    with client(sim, slice_size=SIX_HOURS) as reader:
        assert reader.find_served(DAY, {pid(99)}) == set()
        assert reader.stats.slice_rereads == 1


def test_find_served_proves_nothing_when_a_slice_served_short_of_its_count_after_its_walk() -> None:
    sim = simulator(rows_at(HOURLY))
    first = DAY.split(SIX_HOURS)[0]
    sim.script(count_answer(7), when=counts_of(first, 2))  # 6 served, 7 counted after
    with client(sim, slice_size=SIX_HOURS, slice_reads=1) as reader:
        assert reader.find_served(DAY, {pid(99)}) is None


def test_find_served_proves_nothing_when_a_row_served_broken_is_served_again_elsewhere() -> None:
    # Row 3, served broken at 03:00, moves to 07:30 while the window is read and is served
    # there again, valid; every count still adds up. Any id served twice may hide one served
    # nowhere (another row that moved the other way), so nothing is proven.
    sim = simulator(rows_at(HOURLY))
    sim.corrupt_row(pid(3), "wrong_type", is_active="yes")
    second = DAY.split(SIX_HOURS)[1]
    moved_in = sorted(
        [row(n, T0 + n * timedelta(hours=1)) for n in range(6, 12)]
        + [row(3, T0 + timedelta(hours=7, minutes=30))],
        key=lambda r: r["communicated_at"],
    )
    page = {"body": {"rows": moved_in, "pagination": {"nextCursor": None}}}
    sim.script(
        SimResponse.from_json(page),
        when=lambda r: r.kind == "data" and r.query["since"] == second.since_text,
    )
    sim.script(count_answer(7), times=2, when=counts_of(second, 1, 2))
    sim.script(count_answer(25), times=9, when=counts_of(DAY, *range(1, 10)))
    with client(sim, slice_size=SIX_HOURS) as reader:
        assert reader.find_served(DAY, {pid(99)}) is None


def test_the_instants_confirmed_absent_are_read_in_the_callers_context() -> None:
    # On the client's own threads, as its slices are: the landing's refusal of pandas to
    # pyarrow's probe (d23_pipeline/pandas_probes.py) holds there too.
    caller: ContextVar[str] = ContextVar("caller", default="a new thread's")
    caller.set("the landing's")
    seen: list[str] = []
    with client(_tied_pair()) as reader:
        served_ids = reader.served_ids

        def looked_up(window: Window) -> tuple[set[str], bool] | None:
            seen.append(caller.get())
            return served_ids(window)

        reader.served_ids = looked_up  # type: ignore[method-assign]
        assert reader.confirm_absent([(pid(99), T0), (pid(98), T0 + timedelta(hours=12))])[0] == {
            pid(99),
            pid(98),
        }
    assert seen == ["the landing's"] * 2
