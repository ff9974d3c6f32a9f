"""Bad input: broken rows are quarantined with their reason, PII lands nowhere, and a broken API
answer ends the run with one clear error and the warehouse as it was."""

import json
import re
import shutil
import sqlite3
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import (
    ExportHookSimulator,
    Pipeline,
    failure_messages,
    files_containing,
    warehouse_digest,
)

from d23_pipeline.client.stats import WITHHELD_NAME
from d23_pipeline.months import month_window
from d23_pipeline.schema import format_timestamp
from d23_pipeline.simulator import (
    FAKE_PII_MARKERS,
    BadRows,
    SimResponse,
    Simulator,
    SimulatorConfig,
    serve,
)

MONTH = "2026-04"
BAD = BadRows(missing_public_id=3, bad_timestamp=4, wrong_type=3, extra_pii=5)
QUARANTINED = BAD.missing_public_id + BAD.bad_timestamp + BAD.wrong_type  # extra_pii rows are kept
FAST_RETRIES = {"retry_base_delay_s": 0.001}


class MisbehavingSimulator(ExportHookSimulator):
    """The simulator, except that export requests get the answer named by ``mode``, and pages
    serve ``latin1``, if set, in Latin-1 instead of UTF-8."""

    mode = "normal"
    latin1: str | None = None

    def handle(self, *args: Any) -> SimResponse | object:
        answer = super().handle(*args)
        if self.latin1 and isinstance(answer, SimResponse) and answer.status == 200:
            body = answer.body.replace(self.latin1.encode(), self.latin1.encode("latin-1"))
            answer = SimResponse(answer.status, answer.headers, body)
        return answer

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        if self.mode == "unknown_dataset":
            return path.replace("/S4/D23", "/S4/D99"), None
        if self.mode == "non_json":
            return path, SimResponse(200, {"Content-Type": "text/html"}, b"<html>down</html>")
        if self.mode == "no_rows" and query.get("includeTotal") != "true":  # pages, not counts
            envelope = {"code": 200, "body": {"pagination": {"nextCursor": None, "limit": 200}}}
            return path, SimResponse(
                200, {"Content-Type": "application/json"}, orjson.dumps(envelope)
            )
        return path, None


@dataclass
class Loaded:
    """A month loaded from a simulator with bad rows; tests work on copies of its data folder."""

    sim: MisbehavingSimulator
    api_url: str
    data_dir: Path
    result: dg.ExecuteInProcessResult

    def copy(self, tmp_path: Path) -> Pipeline:
        shutil.copytree(self.data_dir, tmp_path / "data")
        return Pipeline(sim=self.sim, api_url=self.api_url, data_dir=tmp_path / "data")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    sim = MisbehavingSimulator(SimulatorConfig(months=(MONTH,), rows_per_month=1500, bad_rows=BAD))
    with serve(sim) as url:
        data_dir = tmp_path_factory.mktemp("loaded") / "data"
        result = Pipeline(sim=sim, api_url=url, data_dir=data_dir).materialize(MONTH)
        yield Loaded(sim, url, data_dir, result)


def test_the_rejected_rows_check_says_what_broke_and_names_a_few_rows(
    loaded: Loaded, tmp_path: Path
) -> None:
    stored = loaded.copy(tmp_path).query(
        "SELECT reason, count(*), list(public_id) FROM d23.rejected_rows GROUP BY reason"
    )
    (check,) = [
        c for c in loaded.result.get_asset_check_evaluations() if c.check_name == "rejected_rows"
    ]

    table = check.metadata["rejects_by_reason"].value
    assert sum(rows for _, rows, _ in stored) == QUARANTINED
    for reason, rows, ids in stored:
        # One line per reason: its rows, and up to three of its ids (a row without one, none).
        (line,) = [line for line in table.splitlines() if line.startswith(f"| {reason} |")]
        assert f"| {reason} | {rows} | " in line
        examples = line.split(" | ")[2].rstrip(" |")
        shown = [] if examples == "(no public_id)" else examples.split(", ")
        assert len(shown) == min(3, len([i for i in ids if i])) and set(shown) <= set(ids)


def test_each_bad_row_kind_is_quarantined_with_its_reason(loaded: Loaded, tmp_path: Path) -> None:
    pipeline = loaded.copy(tmp_path)
    kinds = loaded.sim.bad_row_kinds()
    rejected = pipeline.query(
        "SELECT public_id, reason, allowlisted_values, _partition FROM d23.rejected_rows"
    )

    by_kind: dict[str, list[str]] = {}
    for public_id, reason, values, partition in rejected:
        kind = kinds.get(public_id, "missing_public_id")
        by_kind.setdefault(kind, []).append(reason)
        assert partition == f"{MONTH}-01"
        assert not any(marker in values for marker in FAKE_PII_MARKERS)
    assert {k: len(v) for k, v in by_kind.items()} == {
        "missing_public_id": BAD.missing_public_id,
        "bad_timestamp": BAD.bad_timestamp,
        "wrong_type": BAD.wrong_type,
    }
    # The run's page says so too, on both steps.
    for step in ("d23__raw_logs", "d23__logs"):
        (event,) = loaded.result.asset_materializations_for_node(step)
        assert event.metadata["rejected_rows"].value == QUARANTINED, step
    assert all("public_id" in reason for reason in by_kind["missing_public_id"])
    assert all("ISO-8601 timestamp" in reason for reason in by_kind["bad_timestamp"])
    assert all(" expected a " in reason for reason in by_kind["wrong_type"])
    # Rows carrying extra fields are valid D23 rows: kept, with the extra fields dropped.
    leaky = {pid for pid, kind in kinds.items() if kind == "extra_pii"}
    (kept,) = pipeline.query("SELECT count(*) FROM d23.logs WHERE public_id IN ?", (list(leaky),))
    assert kept == (BAD.extra_pii,)
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])


def test_a_resumed_read_reports_and_quarantines_the_rejects_of_the_slices_it_kept(
    loaded: Loaded, tmp_path: Path
) -> None:
    # The run that resumes reads only the slices the crashed one had not finished: the month's
    # rejects are those of both runs.
    pipeline = Pipeline(sim=loaded.sim, api_url=loaded.api_url, data_dir=tmp_path / "data")
    assert not pipeline.materialize_crashing(MONTH, after_slices=10).success

    resumed = pipeline.materialize(MONTH)

    (raw,) = resumed.asset_materializations_for_node("d23__raw_logs")
    assert (raw.metadata["slices_resumed"].value, raw.metadata["rejected_rows"].value) == (
        10,
        QUARANTINED,
    )
    assert pipeline.query("SELECT count(*) FROM d23.rejected_rows") == [(QUARANTINED,)]


def test_pii_reaches_no_table_and_no_file(loaded: Loaded) -> None:
    served = repr(loaded.sim.rows())
    assert all(marker in served for marker in FAKE_PII_MARKERS)  # the source does send PII

    assert files_containing(loaded.data_dir, FAKE_PII_MARKERS) == {}


def test_the_file_scan_sees_through_compression(tmp_path: Path) -> None:
    secret = FAKE_PII_MARKERS[0] + " in a compressed page"
    pq.write_table(pa.table({"note": [secret] * 1000}), tmp_path / "rows.parquet")
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("CREATE TABLE t AS SELECT ? || range AS note FROM range(5000)", [secret])
    con.close()
    sqlite = sqlite3.connect(tmp_path / "runs.db")
    sqlite.execute("CREATE TABLE snapshots (body BLOB)")
    sqlite.execute("INSERT INTO snapshots VALUES (?)", (zlib.compress(secret.encode() * 50),))
    sqlite.commit()
    sqlite.close()

    hits = files_containing(tmp_path, [FAKE_PII_MARKERS[0]])

    assert set(hits) >= {"rows.parquet", "warehouse.duckdb", "runs.db"}


def _wrong_lender(pipeline: Pipeline) -> dict[str, Any]:
    other = "00000000-0000-4000-8000-000000000000"
    return {"lender_public_id": other, "token": pipeline.login_token()}


def _expired_token(pipeline: Pipeline) -> dict[str, Any]:
    token = pipeline.login_token()
    pipeline.sim.expire_tokens()
    return {"lender_public_id": pipeline.sim.lender_public_id, "token": token}


@pytest.mark.parametrize(
    ("mode", "overrides", "message"),
    [
        ("non_json", None, "kept answering with an invalid body: not valid JSON"),
        ("no_rows", None, "invalid body: no body.rows list"),
        ("unknown_dataset", None, "dataset S4/D23 is unknown or not enabled for this lender"),
        # The folder holds the token's lender: refused before the API's 403 could say so.
        ("normal", _wrong_lender, "this run reads lender 00000000-0000-4000-8000-000000000000"),
        ("normal", _expired_token, "a held token cannot be refreshed: supply a fresh D23_TOKEN"),
    ],
    ids=["non-json-page", "no-rows", "unknown-dataset", "wrong-lender", "expired-token"],
)
def test_broken_answer_ends_in_one_clear_error_with_the_warehouse_unchanged(
    loaded: Loaded, tmp_path: Path, mode: str, overrides: Any, message: str
) -> None:
    pipeline = loaded.copy(tmp_path)
    before = warehouse_digest(pipeline.warehouse_path)
    api = overrides(pipeline) if overrides else {}
    loaded.sim.mode = mode
    try:
        result = pipeline.materialize(MONTH, raise_on_error=False, **FAST_RETRIES, **api)
    finally:
        loaded.sim.mode = "normal"

    failures = failure_messages(result)
    assert list(failures) == ["d23__raw_logs"]
    assert message in failures["d23__raw_logs"]
    assert not result.asset_materializations_for_node("d23__logs")
    assert warehouse_digest(pipeline.warehouse_path) == before


@pytest.fixture
def small_month(tmp_path: Path) -> Iterator[Pipeline]:
    sim = MisbehavingSimulator(SimulatorConfig(months=(MONTH,), rows_per_month=300))
    with serve(sim) as url:
        yield Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")


def test_pii_nested_in_a_contract_field_reaches_no_table_and_no_file(
    small_month: Pipeline,
) -> None:
    marker = "PII-NOTE-call-me-+15550100"
    victim = small_month.sim.rows()[10]["public_id"]
    small_month.sim.corrupt_row(victim, "wrong_type", outcome_option={"notes": marker})

    small_month.materialize(MONTH)

    ((values,),) = small_month.query(
        "SELECT allowlisted_values FROM d23.rejected_rows WHERE public_id = ?", (victim,)
    )
    assert orjson.loads(values)["outcome_option"] == "<dict>"
    assert files_containing(small_month.data_dir, [marker]) == {}


def _conflicting_versions_warning(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    """The run succeeded and its check conflicting_versions warned: that evaluation."""
    assert result.success, failure_messages(result)
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "conflicting_versions"
    ]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    return check


def test_a_version_served_under_an_older_updated_at_is_kept_out_and_warned_of(
    small_month: Pipeline,
) -> None:
    # The source's updated_at went back (a restore, a slow clock). Latest updated_at wins, so
    # the stored version stays; before, the month then differed from the source in silence.
    small_month.materialize(MONTH)
    victim = small_month.sim.valid_rows()[10]
    earlier = datetime.fromisoformat(victim["updated_at"]) - timedelta(minutes=1)
    other = "PTP" if victim["outcome_option"] != "PTP" else "RPC"
    small_month.sim.corrupt_row(  # a valid row: "extra_pii" is the simulator's kind for those
        victim["public_id"],
        "extra_pii",
        outcome_option=other,
        updated_at=format_timestamp(earlier),
    )

    result = small_month.materialize(MONTH, raise_on_error=False)

    check = _conflicting_versions_warning(result)
    assert check.metadata["older_versions_served"].value == 1
    assert f"stored version's: 1 (e.g. {victim['public_id']});" in str(check.description)
    assert check.metadata["older_version_examples"].value == victim["public_id"]
    assert small_month.query(
        "SELECT outcome_option FROM d23.logs WHERE public_id = ?", (victim["public_id"],)
    ) == [(victim["outcome_option"],)]


def test_pii_in_an_extra_field_name_reaches_no_file_and_not_the_event_log(
    small_month: Pipeline, tmp_path: Path
) -> None:
    # Only names are ever reported, never values; here the name is the data.
    name = f"{FAKE_PII_MARKERS[0]} call back on {FAKE_PII_MARKERS[1]}99"
    victim = small_month.sim.rows()[10]["public_id"]
    small_month.sim.corrupt_row(victim, "extra_pii", **{name: True})

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = small_month.materialize(MONTH, instance=instance)
        events = repr(instance.all_logs(result.run_id))

    assert FAKE_PII_MARKERS[0] not in events
    (raw,) = result.asset_materializations_for_node("d23__raw_logs")
    assert raw.metadata["ignored_extra_fields"].value == {WITHHELD_NAME: 1}
    assert files_containing(tmp_path, FAKE_PII_MARKERS[:2]) == {}
    assert small_month.live_rows([MONTH]) == small_month.expected_rows([MONTH])


@pytest.mark.parametrize("page_limit", [3, 500], ids=["within a walk", "on its last page"])
def test_a_value_that_is_not_utf8_costs_its_row_only(
    small_month: Pipeline, page_limit: int
) -> None:
    outcome = "NO_CONTESTA_TEL\u00c9FONO"
    days: dict[str, list[str]] = {}
    for row in small_month.sim.rows():
        days.setdefault(str(row["communicated_at"])[:10], []).append(row["public_id"])
    # A day's second row: on its slice's first page of 3, which has a page after it.
    victim = next(ids for ids in days.values() if len(ids) > 6)[1]
    small_month.sim.corrupt_row(victim, "wrong_type", outcome_option=outcome)
    small_month.sim.latin1 = outcome

    result = small_month.materialize(MONTH, raise_on_error=False, page_limit=page_limit)

    assert result.success, failure_messages(result)
    ((reason,),) = small_month.query(
        "SELECT reason FROM d23.rejected_rows WHERE public_id = ?", (victim,)
    )
    assert reason.startswith("outcome_option is not valid Unicode text") and "UTF-8" in reason
    assert small_month.live_rows([MONTH]) == small_month.expected_rows([MONTH])


def test_a_timestamp_with_no_utc_instant_is_quarantined_and_the_month_lands(
    small_month: Pipeline,
) -> None:
    # Year 1 at +01:00 is 31 December of year 0 in UTC, outside Python's datetime range.
    victim = small_month.sim.rows()[10]["public_id"]
    small_month.sim.corrupt_row(victim, "bad_timestamp", created_at="0001-01-01T00:30:00.000+01:00")

    result = small_month.materialize(MONTH, raise_on_error=False)

    assert result.success, failure_messages(result)
    ((reason,),) = small_month.query(
        "SELECT reason FROM d23.rejected_rows WHERE public_id = ?", (victim,)
    )
    assert reason.startswith("created_at is outside the range of UTC timestamps")


def test_a_row_served_without_its_public_id_keeps_its_last_good_version(
    small_month: Pipeline,
) -> None:
    small_month.materialize(MONTH)
    victim = small_month.sim.rows()[10]["public_id"]
    small_month.sim.corrupt_row(victim, "missing_public_id", public_id="")

    small_month.materialize(MONTH, raise_on_error=False)

    assert small_month.query("SELECT _deleted_at FROM d23.logs WHERE public_id = ?", (victim,)) == [
        (None,)
    ]
    (rejects,) = small_month.query("SELECT count(*) FROM d23.rejected_rows WHERE public_id IS NULL")
    assert rejects == (1,)


def test_rows_gone_from_an_instant_serving_a_row_without_its_public_id_are_listed_unproven(
    small_month: Pipeline,
) -> None:
    # Before, the read again of that instant dropped them from both "gone" and "not proven":
    # they stayed live, but no pending list, check or dashboard said a deletion was held.
    small_month.materialize(MONTH)
    by_instant: dict[str, list[str]] = {}
    for row in small_month.sim.valid_rows():
        by_instant.setdefault(row["communicated_at"], []).append(row["public_id"])
    broken, deleted = next(ids for ids in by_instant.values() if len(ids) >= 2)[:2]
    small_month.sim.corrupt_row(broken, "missing_public_id", public_id="")
    small_month.sim.hard_delete_row(deleted)

    result = small_month.materialize(MONTH, raise_on_error=False)

    assert deleted in _live_ids(small_month)
    pending = dict(small_month.query("SELECT public_id, reason FROM d23.deletions_pending"))
    assert set(pending) == {broken, deleted}
    assert "own instant served a bad row without a usable public_id" in pending[deleted]
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "deletions_proven"
    ]
    assert check.description.startswith(f"{MONTH}-01: 2 rows look deleted at the source")


def test_an_id_served_in_two_versions_under_one_updated_at_fails_a_warn_check_on_d23_logs(
    small_month: Pipeline,
) -> None:
    # Before, only the run log said so: the merge quarantined the version, d23/raw_logs'
    # rejected_rows check (the read's own rejects) passed with 0, and no check of d23/logs failed.
    kept, second = small_month.sim.valid_rows()[10:12]
    other = "PTP" if kept["outcome_option"] != "PTP" else "RPC"
    small_month.sim.corrupt_row(  # a valid row: "extra_pii" is the simulator's kind for those
        second["public_id"],
        "extra_pii",
        public_id=kept["public_id"],
        updated_at=kept["updated_at"],
        outcome_option=other,
    )

    result = small_month.materialize(MONTH, raise_on_error=False)

    conflict = _conflicting_versions_warning(result)
    assert conflict.metadata["conflicting_versions"].value == 1
    assert "quarantined in d23.rejected_rows: 1 " in str(conflict.description)
    ((quarantined,),) = small_month.query(
        "SELECT count(*) FROM d23.rejected_rows "
        "WHERE public_id = ? AND reason LIKE 'served again%'",
        (kept["public_id"],),
    )
    assert quarantined == 1


def test_a_row_moved_within_its_month_and_served_without_its_public_id_is_not_deleted(
    small_month: Pipeline,
) -> None:
    # The row leaves its instant (so a lookup there proves it gone) for another day's slice,
    # which does not change while it is read, and comes back without a usable public_id: the
    # bad row the read served there may be this one, so nothing proves it deleted.
    small_month.materialize(MONTH)
    victim = small_month.sim.valid_rows()[10]
    moved_to = datetime.fromisoformat(victim["communicated_at"]) + timedelta(days=12)
    small_month.sim.move_row(victim["public_id"], moved_to)
    small_month.sim.corrupt_row(victim["public_id"], "missing_public_id", public_id="")

    result = small_month.materialize(MONTH, raise_on_error=False)

    assert small_month.query(
        "SELECT _deleted_at FROM d23.logs WHERE public_id = ?", (victim["public_id"],)
    ) == [(None,)]
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "deletions_proven"
    ]
    assert "bad rows without a usable public_id" in check.description


def test_deletions_a_read_cannot_prove_are_reported_until_a_read_proves_them(
    small_month: Pipeline,
) -> None:
    # One bad row without a public_id holds every deletion of its month (any of the rows gone
    # may be it): the rows really deleted stay live and counted, and every place an analyst or
    # operator looks says so, until a read without such a row proves them gone.
    small_month.materialize(MONTH)
    rows = small_month.sim.valid_rows()
    # Three active rows and one deactivated, which no KPI counts as an attempt.
    inactive = next(r["public_id"] for r in rows if not r["is_active"])
    deleted = {r["public_id"] for r in rows[20:] if r["is_active"]}
    deleted = set(sorted(deleted)[:3]) | {inactive}
    for public_id in deleted:
        small_month.sim.hard_delete_row(public_id)
    broken = rows[10]["public_id"]
    small_month.sim.corrupt_row(broken, "missing_public_id", public_id="")

    held = small_month.materialize(MONTH, raise_on_error=False)

    assert deleted <= _live_ids(small_month)
    (check,) = [e for e in held.get_asset_check_evaluations() if e.check_name == "deletions_proven"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "4 rows look deleted at the source (e.g. " in check.description
    assert "), but the read served 1 bad rows without a usable public_id" in check.description
    assert all(public_id in check.description for public_id in deleted)
    # The broken row's old id looks gone too, and its own instant serves the bad row.
    assert (
        f"1 rows look deleted at the source (e.g. {broken}), but the read again of their own "
        "instant served a bad row without a usable public_id"
    ) in check.description
    logs = held.asset_materializations_for_node("d23__logs")[0].metadata
    assert logs["deletions_unproven"].value == 5
    raw = held.asset_materializations_for_node("d23__raw_logs")[0].metadata
    assert (raw["deletion_candidates"].value, raw["proven_absent"].value) == (5, 0)
    assert set(small_month.query("SELECT public_id FROM d23.deletions_pending")) == {
        (public_id,) for public_id in deleted | {broken}
    }
    page = small_month.dashboard_path.read_text()
    assert "Deletions not applied" in page and "not proven: the read served 1 bad rows" in page
    # Four rows not applied, three of them counted as attempts.
    assert re.search(r"<tr><td>2026-04</td><td>4</td><td>3</td><td>not proven: ", page)
    # The month's freshness row says its KPIs still count them, the broken row's old id too.
    assert "<th>deletions not applied</th>" in page
    assert re.search(r"<tr><td>2026-04</td>(<td>[^<]*</td>){7}<td>5</td></tr>", page)

    small_month.sim.hard_delete_row(broken)  # the bad row gone, the read proves again
    proven = small_month.materialize(MONTH, raise_on_error=False)

    assert not (deleted | {broken}) & _live_ids(small_month)
    assert [
        e.passed for e in proven.get_asset_check_evaluations() if e.check_name == "deletions_proven"
    ] == [True]
    assert small_month.query("SELECT count(*) FROM d23.deletions_pending") == [(0,)]
    assert "every deletion is applied" in small_month.dashboard_path.read_text()


def _live_ids(pipeline: Pipeline) -> set[str]:
    return {
        pid for (pid,) in pipeline.query("SELECT public_id FROM d23.logs WHERE _deleted_at IS NULL")
    }


def test_a_row_gone_whose_other_months_reject_cannot_be_read_again_is_reported_unproven(
    tmp_path: Path,
) -> None:
    # The row moved to April and broke there (April stores its reject), then was deleted. April
    # now serves a bad row without a public_id, so its read again cannot prove the row gone from
    # April: March keeps it, and says so, while its other deletion is made.
    sim = Simulator(SimulatorConfig(months=("2026-03", MONTH), rows_per_month=200))
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        for month in ("2026-03", MONTH):
            pipeline.materialize(month)
        march, april = (sim.valid_rows(*month_window(m)) for m in ("2026-03", MONTH))
        moved, gone = march[50]["public_id"], march[60]["public_id"]
        sim.move_row(moved, datetime(2026, 4, 10, 12, tzinfo=UTC))
        sim.corrupt_row(moved, "wrong_type", outcome_option=7)
        pipeline.materialize(MONTH, raise_on_error=False)
        sim.hard_delete_row(moved)
        sim.hard_delete_row(gone)
        sim.corrupt_row(april[5]["public_id"], "missing_public_id", public_id="")

        result = pipeline.materialize("2026-03", raise_on_error=False)

    assert moved in _live_ids(pipeline) and gone not in _live_ids(pipeline)
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "deletions_proven"
    ]
    assert not check.passed
    assert f"1 rows look deleted at the source (e.g. {moved}), but 2026-04 held them" in (
        check.description
    )
    assert pipeline.query("SELECT public_id, held FROM d23.deletions_pending") == [(moved, False)]


def test_a_row_gone_whose_instant_cannot_be_read_again_completely_is_reported_unproven(
    tmp_path: Path,
) -> None:
    # The API ends the read again of the row's own instant (one millisecond, shared with
    # another row) early: a "via" dataset may. Nothing proves the row gone, and that is said.
    sim = Simulator(SimulatorConfig(months=(MONTH,), rows_per_month=200, tie_share=0.5))
    rows = sim.valid_rows(*month_window(MONTH))
    instant = next(
        r["communicated_at"]
        for r in rows
        if sum(s["communicated_at"] == r["communicated_at"] for s in rows) > 1
    )
    gone = next(r["public_id"] for r in rows if r["communicated_at"] == instant)
    one_ms = datetime.fromisoformat(instant) + timedelta(milliseconds=1)
    early_end = {"body": {"rows": [], "pagination": {"nextCursor": None}}}
    with serve(sim) as url:
        pipeline = Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")
        pipeline.materialize(MONTH)
        sim.hard_delete_row(gone)
        sim.script(
            SimResponse.from_json(early_end),
            times=99,
            when=lambda r: (
                r.kind == "data"
                and r.query.get("since") == instant
                and datetime.fromisoformat(r.query["until"]) == one_ms
            ),
        )

        result = pipeline.materialize(MONTH, raise_on_error=False)

    assert gone in _live_ids(pipeline)
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "deletions_proven"
    ]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert f"1 rows look deleted at the source (e.g. {gone}), but the read again of their own" in (
        check.description
    )
    assert (
        result.asset_materializations_for_node("d23__logs")[0].metadata["deletions_unproven"].value
        == 1
    )
    assert pipeline.query("SELECT public_id, held FROM d23.deletions_pending") == [(gone, False)]


def test_a_pending_deletion_an_older_read_applies_later_is_no_longer_listed(
    small_month: Pipeline,
) -> None:
    # On DuckLake two hosts may merge reads of a month out of order: the newer read could not
    # prove two rows gone (a bad row without a public_id), the older one, merged after it, did.
    small_month.materialize(MONTH)
    rows = small_month.sim.valid_rows()
    deleted = {rows[20]["public_id"], rows[21]["public_id"]}
    for public_id in deleted:
        small_month.sim.hard_delete_row(public_id)
    small_month.materialize(MONTH, selection="d23/raw_logs")
    store = small_month.resources()["landing_zone"].store()
    older = store.current(f"{MONTH}-01")
    kept = shutil.copytree(older.directory, small_month.data_dir / "older")
    small_month.sim.corrupt_row(rows[10]["public_id"], "missing_public_id", public_id="")
    small_month.materialize(MONTH, selection="d23/raw_logs")
    small_month.materialize(MONTH, selection="d23/logs", raise_on_error=False)
    # The two, and the broken row, whose own instant serves the bad row.
    assert len(small_month.query("SELECT * FROM d23.deletions_pending")) == 3

    shutil.copytree(kept, older.directory)  # the older read, as the other host landed it
    (older.directory.parent / "CURRENT").write_text(json.dumps({"snapshot": older.directory.name}))
    small_month.materialize(MONTH, selection="d23/logs*", raise_on_error=False)

    assert not deleted & _live_ids(small_month)
    # Only the broken row is left not applied: the older read saw it, the newer one could not
    # prove it gone.
    page = small_month.dashboard_path.read_text()
    assert re.search(r"<tr><td>2026-04</td>(<td>[^<]*</td>){7}<td>1</td></tr>", page)
