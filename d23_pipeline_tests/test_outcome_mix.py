"""Outcome mix and KPIs on a small hand-made month, checked against numbers worked out by hand."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from d23_pipeline.analytics import charts
from d23_pipeline.analytics.outcome_classes import (
    OutcomeMappingError,
    default_mapping_path,
    load_outcome_classes,
    mapping_version,
)
from d23_pipeline.analytics.outcome_mix import (
    load_classes,
    rebuild_months_due,
    rebuild_outcome_kpis_monthly,
    rebuild_outcome_mix_daily,
    rebuild_outcome_mix_monthly,
)
from d23_pipeline.definitions import defs
from d23_pipeline.defs import checks
from d23_pipeline.defs.assets.outcome_mix import (
    outcome_kpis_monthly,
    outcome_mix_daily,
    outcome_mix_monthly,
)
from d23_pipeline.defs.options import options
from d23_pipeline.defs.resources import OutcomeMappingResource, WarehouseResource
from d23_pipeline.months import month_window
from d23_pipeline.warehouse import sql
from d23_pipeline.warehouse.store import Warehouse, fetch_dicts

APRIL = month_window("2026-04")

# (public_id, outcome, is_active, is_ptp_broken, day of communicated_at, deleted)
FIXTURE = [
    ("p1", "PTP", True, False, "2026-04-01", False),
    ("p2", "PTP", True, True, "2026-04-01", False),
    ("p3", "PTP", False, False, "2026-04-01", False),  # deactivated: not an attempt
    ("r1", "RPC", True, False, "2026-04-01", False),
    ("f1", "REFUSED_TO_PAY", True, False, "2026-04-02", False),
    ("w1", "WRONG_NUMBER", True, False, "2026-04-02", False),
    ("n1", "NO_ANSWER", True, False, "2026-04-02", False),
    ("n2", "NO_ANSWER", True, False, "2026-04-02", True),  # hard-deleted at the source
    ("m1", "MYSTERY_CODE", True, False, "2026-04-02", False),  # not in the mapping
    ("b1", "BUSY", True, False, "2026-05-01", False),  # next month
]


def _insert(
    con: duckdb.DuckDBPyConnection,
    public_id: str,
    outcome: str,
    at: datetime,
    active: bool = True,
    broken: bool = False,
    deleted: bool = False,
) -> None:
    con.execute(
        "INSERT INTO d23.logs VALUES (?, 'CALL', 'AGENT', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [public_id, outcome, active, broken, at, at, at, f"{at:%Y-%m}-01", at, at,
         at if deleted else None],
    )  # fmt: skip


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.connect() as con:
        for public_id, outcome, active, broken, day, deleted in FIXTURE:
            at = datetime.fromisoformat(f"{day}T09:30:00+00:00")
            _insert(con, public_id, outcome, at, active, broken, deleted)
    return warehouse


def _kpis(warehouse: Warehouse, mapping_path: Path | None = None) -> dict:
    classes = load_outcome_classes(mapping_path)
    with warehouse.connect() as con:
        rebuild_outcome_mix_monthly(con, date(2026, 4, 1), *APRIL, classes)
        rebuild_outcome_kpis_monthly(con, date(2026, 4, 1))
        (kpis,) = fetch_dicts(con, "SELECT * FROM d23.outcome_kpis_monthly")
    return kpis


def test_monthly_kpis_equal_hand_computed_values(warehouse: Warehouse) -> None:
    kpis = _kpis(warehouse)

    # Attempts: p1 p2 r1 f1 w1 n1 m1. Contacts: p1 p2 r1 f1 w1. RPCs: p1 p2 r1 f1.
    assert (kpis["attempts"], kpis["contacts"], kpis["rpcs"]) == (7, 5, 4)
    assert (kpis["promises"], kpis["refusals"], kpis["broken_promises"]) == (2, 1, 1)
    assert kpis["unmapped_attempts"] == 1
    assert kpis["contact_rate"] == pytest.approx(5 / 7)
    assert kpis["rpc_rate"] == pytest.approx(4 / 7)
    assert kpis["ptp_per_rpc"] == pytest.approx(2 / 4)
    assert kpis["ptp_per_attempt"] == pytest.approx(2 / 7)
    assert kpis["refusal_rate"] == pytest.approx(1 / 4)
    assert kpis["broken_promise_share"] == pytest.approx(1 / 2)


def test_a_rebuild_whose_bookkeeping_row_is_gone_fails_naming_it_and_changes_nothing(
    warehouse: Warehouse,
) -> None:
    before = _kpis(warehouse)
    with warehouse.connect() as con:
        _insert(con, "p4", "PTP", APRIL[0] + timedelta(hours=10))
        con.execute("DELETE FROM d23.mix_rebuilds")  # without it, DuckLake rebuilds never conflict
        with pytest.raises(RuntimeError, match=r"d23.mix_rebuilds has lost its row"):
            rebuild_outcome_mix_monthly(con, date(2026, 4, 1), *APRIL, load_outcome_classes())
        (attempts,) = con.execute("SELECT sum(attempts) FROM d23.outcome_mix_monthly").fetchone()

    assert attempts == before["attempts"]  # the month's mix as it was, without p4


def test_rebuilding_a_month_replaces_it(warehouse: Warehouse) -> None:
    _kpis(warehouse)
    _kpis(warehouse)

    with warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM d23.outcome_kpis_monthly").fetchone() == (1,)
        mix_attempts = con.execute("SELECT sum(attempts) FROM d23.outcome_mix_monthly").fetchone()
    assert mix_attempts == (7,)


def test_a_months_kpis_stay_due_until_they_are_built_from_its_rebuilt_mix(
    warehouse: Warehouse,
) -> None:
    april = date(2026, 4, 1)
    _kpis(warehouse)
    with warehouse.connect() as con:
        # A merge of May took r1 over from April: April's mix and KPIs count it still.
        con.execute(
            "UPDATE d23.logs SET _partition = '2026-05-01', communicated_at = ? "
            "WHERE public_id = 'r1'",
            [datetime.fromisoformat("2026-05-03T09:30:00+00:00")],
        )
        con.execute(
            "INSERT INTO d23.mix_rebuilds_due VALUES (?, 'outcome_mix_monthly'), "
            "(?, 'outcome_kpis_monthly')",
            [april, april],
        )
        # April's own KPI step runs before any mix step has rebuilt April's mix ...
        rebuild_outcome_kpis_monthly(con, april)
        assert rebuild_months_due(con, "outcome_kpis_monthly", lambda *_: None) == []
        # ... then May's mix step rebuilds April's, and May's KPI step April's KPIs.
        classes = load_outcome_classes()
        rebuild_months_due(
            con,
            "outcome_mix_monthly",
            lambda month, since, until: rebuild_outcome_mix_monthly(
                con, month, since, until, classes
            ),
        )
        rebuilt = rebuild_months_due(
            con,
            "outcome_kpis_monthly",
            lambda month, *_: rebuild_outcome_kpis_monthly(con, month),
        )
        (attempts,) = con.execute("SELECT attempts FROM d23.outcome_kpis_monthly").fetchone()
        due = con.execute("SELECT count(*) FROM d23.mix_rebuilds_due").fetchone()

    assert rebuilt == [april]
    assert (attempts, due) == (6, (0,))


def test_unmapped_codes_are_counted_and_reported_never_dropped(warehouse: Warehouse) -> None:
    _kpis(warehouse)

    with warehouse.connect(read_only=True) as con:
        result = checks.unmapped_outcome_codes(con, date(2026, 4, 1))
        (mystery,) = con.execute(
            "SELECT attempts, is_mapped FROM d23.outcome_mix_monthly "
            "WHERE outcome_option = 'MYSTERY_CODE'"
        ).fetchall()
    assert not result.passed
    assert result.metadata["unmapped_codes"].value == "MYSTERY_CODE: 1"
    assert result.description.startswith(
        "codes the outcome mapping does not classify, with their attempts: MYSTERY_CODE 1;"
    )
    assert mystery == (1, False)


def test_broken_flags_on_codes_not_classed_as_promises_are_reported(warehouse: Warehouse) -> None:
    # p2 is a broken promise; an RPC and an unknown code flagged broken are not counted as
    # broken promises, and say so. A deleted row and next month's are not April's attempts.
    with warehouse.connect() as con:
        load_classes(con, load_outcome_classes())
        clean = checks.broken_flags_on_promises_only(con, *APRIL)
        con.execute(
            "UPDATE d23.logs SET is_ptp_broken = true WHERE public_id IN ('r1', 'm1', 'n2', 'b1')"
        )
        flagged = checks.broken_flags_on_promises_only(con, *APRIL)
        rebuild_outcome_mix_monthly(con, date(2026, 4, 1), *APRIL, load_outcome_classes())
        rebuild_outcome_kpis_monthly(con, date(2026, 4, 1))
        (broken,) = con.execute("SELECT broken_promises FROM d23.outcome_kpis_monthly").fetchone()

    assert broken == 1  # p2's: the flags on RPC and MYSTERY_CODE are no broken promise
    assert clean.passed and clean.metadata["broken_flags_outside_promises"].value == "none"
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert flagged.metadata["broken_flags_outside_promises"].value == "MYSTERY_CODE: 1; RPC: 1"
    assert flagged.description.startswith(
        "attempts flagged is_ptp_broken under codes not classed as a promise: MYSTERY_CODE 1, "
        "RPC 1; the broken-promise share does not count them."
    )


def test_a_month_whose_broken_flags_changed_since_its_mix_is_behind_the_logs(
    warehouse: Warehouse,
) -> None:
    _kpis(warehouse)  # April's mix; May's is not built, so May is behind throughout
    with warehouse.connect() as con:
        rebuild_outcome_mix_daily(con, *APRIL, load_outcome_classes())
        before = fetch_dicts(con, sql.MIX_BEHIND_LOGS)
        con.execute("UPDATE d23.logs SET is_ptp_broken = true WHERE public_id = 'p1'")
        after = fetch_dicts(con, sql.MIX_BEHIND_LOGS)

    may, april = {"month": date(2026, 5, 1)}, {"month": date(2026, 4, 1)}
    assert (before, after) == ([may], [april, may])  # same attempts, one more broken promise


def test_the_rows_a_month_shows_as_stored_are_those_not_deleted(warehouse: Warehouse) -> None:
    with warehouse.connect(read_only=True) as con:
        months = {r["partition"]: r["rows"] for r in fetch_dicts(con, sql.MONTHS_LAST_READ)}

    assert months == {"2026-04-01": 8, "2026-05-01": 1}  # April's nine, n2 deleted


def test_a_user_mapping_overrides_the_shipped_one(warehouse: Warehouse, tmp_path: Path) -> None:
    mapping = tmp_path / "classes.yaml"
    mapping.write_text("promise: [PTP, MYSTERY_CODE]\nno_contact: [NO_ANSWER]\n")

    kpis = _kpis(warehouse, mapping)

    assert kpis["promises"] == 3
    assert kpis["rpcs"] == 3  # a promise always counts as a right-party contact
    assert kpis["unmapped_attempts"] == 3  # RPC, REFUSED_TO_PAY and WRONG_NUMBER now unmapped


def test_an_empty_outcome_code_is_unmapped_until_the_mapping_names_it_quoted(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    with warehouse.connect() as con:
        _insert(con, "e1", "", datetime(2026, 4, 3, 9, 30, tzinfo=UTC))
    mapping = tmp_path / "classes.yaml"
    mapping.write_text(
        "promise: [PTP]\nrefusal: [REFUSED_TO_PAY]\nright_party_contact: [RPC]\n"
        "contact: [WRONG_NUMBER]\nno_contact: [NO_ANSWER, '']\n"
    )

    shipped = _kpis(warehouse)
    with warehouse.connect(read_only=True) as con:
        unmapped = checks.unmapped_outcome_codes(con, date(2026, 4, 1))
    named = _kpis(warehouse, mapping)

    assert shipped["unmapped_attempts"] == 2  # MYSTERY_CODE and the empty code
    assert unmapped.metadata["unmapped_codes"].value == '"": 1; MYSTERY_CODE: 1'
    assert (named["unmapped_attempts"], named["attempts"]) == (1, 8)
    assert named["contacts"] == shipped["contacts"]  # classed as no contact


def test_mapping_version_changes_with_the_mapping_content_only(tmp_path: Path) -> None:
    shipped = default_mapping_path().read_text()
    copy, edited = tmp_path / "copy.yaml", tmp_path / "edited.yaml"
    copy.write_text(shipped)
    edited.write_text(shipped.replace("  - WRONG_NUMBER\n", ""))

    assert mapping_version(copy) == mapping_version() == mapping_version(default_mapping_path())
    assert mapping_version(edited) != mapping_version()


def test_outcome_mix_assets_carry_the_mapping_version_as_code_version() -> None:
    # Dagster marks an asset stale when its code version changes, so an edited mapping does.
    expected = mapping_version(options.outcome_mapping)
    graph = defs.resolve_asset_graph()
    for asset in (outcome_mix_monthly, outcome_kpis_monthly, outcome_mix_daily):
        assert graph.get(asset.key).code_version == expected


def test_month_without_attempts_has_zero_counts_and_no_rates(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "empty.duckdb")

    kpis = _kpis(warehouse)

    assert kpis["attempts"] == 0
    assert kpis["contact_rate"] is None and kpis["broken_promise_share"] is None


def test_daily_trend_adds_up_to_the_month(warehouse: Warehouse) -> None:
    with warehouse.connect() as con:  # a broken flag on an RPC is no broken promise, daily too
        con.execute("UPDATE d23.logs SET is_ptp_broken = true WHERE public_id = 'r1'")
    monthly = _kpis(warehouse)
    with warehouse.connect() as con:
        rebuild_outcome_mix_daily(con, *APRIL, load_outcome_classes())
        days = fetch_dicts(con, "SELECT * FROM d23.outcome_mix_daily ORDER BY day")

    assert [d["day"] for d in days] == [date(2026, 4, 1), date(2026, 4, 2)]
    assert [d["attempts"] for d in days] == [3, 4]
    assert days[0]["ptp_per_attempt"] == pytest.approx(2 / 3)
    for name in ("attempts", "contacts", "rpcs", "promises", "refusals", "broken_promises"):
        assert sum(d[name] for d in days) == monthly[name]


def test_a_row_at_a_months_first_instant_counts_in_that_month_only(warehouse: Warehouse) -> None:
    may = month_window("2026-05")
    with warehouse.connect() as con:
        _insert(con, "e1", "BUSY", may[0])
        classes = load_outcome_classes()
        rebuild_outcome_mix_daily(con, *may, classes)
        rebuild_outcome_mix_daily(con, *APRIL, classes)  # April's days, not May 1st
        days = fetch_dicts(con, "SELECT day, attempts FROM d23.outcome_mix_daily ORDER BY day")
    monthly = _kpis(warehouse)

    assert monthly["attempts"] == 7  # April's seven, without e1
    assert days[-1] == {"day": date(2026, 5, 1), "attempts": 2}  # b1 and e1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("promise: PTP\n", "must be a list"),
        (
            "promise: [PTP, 12, null]\n",
            r"promise lists 12, None, not codes: a code is text \(quote a number",
        ),
        ("", "lists no code: every attempt would count as unmapped"),
        ("promise: []\nrefusal:\n", "lists no code"),
        ("promises: [PTP]\n", "keys among"),
        ("promise: [PTP]\nno_contact: [PTP]\n", "both contact and no_contact"),
        (
            "contact: [WRONG_NUMBER]\nno_contact: [NO_ANSWER, WRONG_NUMBER]\n",
            r"\['WRONG_NUMBER'\] listed as both contact and no_contact",
        ),
        (
            "no_contact:\n  - NO_ANSWER\n  -\n",
            r"no_contact lists None, not codes: .* empty code is ''",
        ),
        (
            "promise: [PTP, MAYBE]\nrefusal: [REFUSED_TO_PAY, MAYBE]\n",
            r"\['MAYBE'\] listed as both promise and refusal",
        ),
    ],
)
def test_malformed_mapping_is_refused_with_the_reason(
    tmp_path: Path, text: str, problem: str
) -> None:
    mapping = tmp_path / "bad.yaml"
    mapping.write_text(text)

    with pytest.raises(OutcomeMappingError, match=problem):
        load_outcome_classes(mapping)


def test_the_daily_chart_leaves_a_gap_on_a_day_without_attempts(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # April's attempts fall on the 1st, the 2nd and now the 5th: the 3rd and 4th have none.
    with warehouse.connect() as con:
        _insert(con, "r5", "RPC", datetime(2026, 4, 5, 9, 30, tzinfo=UTC))
    drawn: dict[str, Any] = {}

    def rate_chart(days: list, series: dict, title: str) -> str:
        drawn.update(days=days, series=series)
        return "chart"

    monkeypatch.setattr(charts, "rate_chart", rate_chart)
    dg.materialize(
        [outcome_mix_daily],
        resources={
            "warehouse": WarehouseResource(database=str(warehouse.path)),
            "outcome_mapping": OutcomeMappingResource(),
        },
        partition_key="2026-04-01",
    )

    assert drawn["days"] == [date(2026, 4, d) for d in range(1, 6)]
    contact = drawn["series"]["contact_rate"]
    assert contact[2] is None and contact[3] is None  # a gap, not a line from the 2nd to the 5th
    assert contact[4] == 1.0 and None not in contact[:2]


def test_the_outcome_steps_check_the_whole_month_and_chart_each_daily_rate(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warehouse.connect() as con:  # a broken flag on a code that is no promise, on 2 April
        con.execute("UPDATE d23.logs SET is_ptp_broken = true WHERE public_id = 'n1'")
    drawn: list[list[str]] = []

    def rate_chart(days: list, series: dict, title: str) -> str:
        drawn.append(list(series))
        return "chart"

    monkeypatch.setattr(charts, "rate_chart", rate_chart)
    result = dg.materialize(
        [outcome_mix_monthly, outcome_mix_daily],
        resources={
            "warehouse": WarehouseResource(database=str(warehouse.path)),
            "outcome_mapping": OutcomeMappingResource(),
        },
        partition_key="2026-04-01",
    )

    (check,) = [
        e for e in result.get_asset_check_evaluations()
        if e.check_name == "broken_flags_on_promises_only"
    ]  # fmt: skip
    assert not check.passed
    assert drawn == [["contact_rate", "rpc_rate", "ptp_per_attempt"]]


def test_the_mix_preview_tells_apart_groups_that_differ_only_in_spaces(
    warehouse: Warehouse,
) -> None:
    with warehouse.connect() as con:  # "PTP " padded: another code than PTP, and unmapped
        _insert(con, "s1", "PTP ", datetime(2026, 4, 3, 9, 30, tzinfo=UTC))
        con.execute("UPDATE d23.logs SET communication_type = 'CALL ' WHERE public_id = 's1'")

    result = dg.materialize(
        [outcome_mix_monthly],
        resources={
            "warehouse": WarehouseResource(database=str(warehouse.path)),
            "outcome_mapping": OutcomeMappingResource(),
        },
        partition_key="2026-04-01",
    )

    (materialization,) = result.asset_materializations_for_node("d23__outcome_mix_monthly")
    preview = materialization.metadata["preview"].value
    assert '| "CALL " | AGENT | "PTP " | 1 | 0 |' in preview
    assert "| CALL | AGENT | PTP | 2 | 1 |" in preview  # p1, p2: the unpadded group as is
    assert "more rows" not in preview  # all of the month's rows are shown
