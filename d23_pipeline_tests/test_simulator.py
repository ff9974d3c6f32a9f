"""The simulated Exports API keeps the contract in /work/shared/api-contract.md."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from api import T0, row
from api import pid as id_of

from d23_pipeline.months import month_window
from d23_pipeline.schema import D23_FIELDS, validate_rows
from d23_pipeline.simulator import (
    DROP,
    FAKE_PII_MARKERS,
    BadRows,
    Drop,
    Faults,
    SimResponse,
    Simulator,
    SimulatorConfig,
    serve,
)
from d23_pipeline.simulator.__main__ import _parser, config_from_args
from d23_pipeline.simulator.data import Collection, month_bounds, to_ms

JAN = month_window("2026-01")
JAN_Q = {"since": "2026-01-01T00:00:00.000Z", "until": "2026-02-01T00:00:00.000Z"}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def small(**overrides: Any) -> Simulator:
    config = dict(months=("2026-01", "2026-02"), rows_per_month=600)
    config.update(overrides)
    return Simulator(SimulatorConfig(**config))


class Api:
    """A tiny hand-written client: just enough to drive the simulator in tests."""

    def __init__(self, sim: Simulator, base_url: str | None = None) -> None:
        self.sim = sim
        if base_url is None:
            self.http = httpx.Client(transport=sim.transport(), base_url="http://sim")
        else:
            self.http = httpx.Client(base_url=base_url)
        self.token, self.refresh_token = self.login()

    def login(self, password: str = "demo-password", slug: str = "demo") -> tuple[str, str]:
        r = self.http.post(
            f"/admin/auth/{slug}/login",
            json={"email": "analyst@demo.example", "password": password},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["lenderPublicId"] == self.sim.lender_public_id
        return body["token"], body["refreshToken"]

    def get(self, lender: str | None = None, dataset: str = "S4/D23", **params: Any):
        lender = lender or self.sim.lender_public_id
        return self.http.get(
            f"/admin/v3/lenders/{lender}/exports/{dataset}",
            params={k: v for k, v in params.items() if v is not None},
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def page(self, **params: Any) -> dict:
        r = self.get(**params)
        assert r.status_code == 200, r.text
        return r.json()["body"]

    def walk(self, **params: Any) -> tuple[list[dict], list[dict]]:
        """All rows of a walk and every page body, following nextCursor until null."""
        rows, pages, cursor = [], [], None
        for _ in range(100_000):
            body = self.page(cursor=cursor, **params)
            pages.append(body)
            rows.extend(body["rows"])
            cursor = body["pagination"]["nextCursor"]
            if cursor is None:
                return rows, pages
        raise AssertionError("walk did not end")


@pytest.fixture
def sim() -> Simulator:
    return small()


@pytest.fixture
def api(sim: Simulator) -> Api:
    return Api(sim)


def ids(rows: list[dict]) -> list[str]:
    return [r["public_id"] for r in rows]


# -- pagination -------------------------------------------------------------------------------


def test_walk_returns_every_row_once_through_ties_and_empty_pages(sim: Simulator, api: Api):
    rows, pages = api.walk(limit=7, **JAN_Q)
    assert ids(rows) == ids(sim.rows(*JAN))
    assert len(set(ids(rows))) == len(rows) == 600
    assert any(not p["rows"] and p["pagination"]["nextCursor"] for p in pages)
    assert any(0 < len(p["rows"]) < 7 for p in pages)
    # Ties straddle a page boundary: a page's last row shares communicated_at with the next's first.
    full = [p["rows"] for p in pages if p["rows"]]
    assert any(a[-1]["communicated_at"] == b[0]["communicated_at"] for a, b in pairwise(full))


def test_rows_sorted_by_communicated_at_then_public_id(sim: Simulator):
    rows = sim.rows()
    keys = [(r["communicated_at"], r["public_id"]) for r in rows]
    assert keys == sorted(keys)
    counts = Counter(r["communicated_at"] for r in rows)
    assert max(counts.values()) >= 5  # bursts of one millisecond exist


def test_same_cursor_twice_returns_the_same_page(api: Api):
    first = api.page(limit=50, **JAN_Q)
    cursor = first["pagination"]["nextCursor"]
    assert api.page(limit=50, cursor=cursor, **JAN_Q) == api.page(limit=50, cursor=cursor, **JAN_Q)


def test_empty_pages_keep_a_cursor_and_only_null_ends_the_walk(api: Api):
    _, pages = api.walk(limit=20, **JAN_Q)
    empty = [p for p in pages if not p["rows"]]
    assert empty and all(p["pagination"]["nextCursor"] for p in empty)
    assert [p["pagination"]["nextCursor"] is None for p in pages].count(True) == 1


@pytest.mark.parametrize(("asked", "used"), [(0, 1), (-5, 1), (5000, 1000), ("abc", 500)])
def test_limit_is_clamped_not_rejected(api: Api, asked: Any, used: int):
    body = api.page(limit=asked, **JAN_Q)
    assert body["pagination"]["limit"] == used
    assert len(body["rows"]) <= used


def test_default_limit_is_500(api: Api):
    assert api.page(**JAN_Q)["pagination"]["limit"] == 500


def test_since_is_inclusive_and_until_exclusive(sim: Simulator, api: Api):
    pivot = sim.rows(*JAN)[300]["communicated_at"]
    after, _ = api.walk(since=pivot, until=JAN_Q["until"], limit=1000)
    before, _ = api.walk(since=JAN_Q["since"], until=pivot, limit=1000)
    assert after[0]["communicated_at"] == pivot
    assert all(r["communicated_at"] < pivot for r in before)
    assert ids(before) + ids(after) == ids(sim.rows(*JAN))


def test_sort_desc_walks_the_window_backwards(sim: Simulator, api: Api):
    rows, pages = api.walk(limit=9, sort="desc", **JAN_Q)
    assert ids(rows) == ids(sim.rows(*JAN))[::-1]
    assert pages[0]["meta"]["sort"] == "desc"


def test_envelope_matches_the_contract(api: Api):
    r = api.get(limit=3, **JAN_Q)
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert (doc["code"], doc["message"], doc["errors"]) == (200, "success", [])
    assert set(doc["body"]) == {"rows", "pagination", "meta"}
    assert doc["body"]["meta"]["cursorField"] == "communicated_at"
    assert set(doc["body"]["rows"][0]) == set(D23_FIELDS)


def test_malformed_since_is_not_validated_and_does_not_crash(api: Api):
    body = api.page(since="last tuesday", until=JAN_Q["until"], limit=5)
    assert body["meta"]["since"] == "last tuesday"


def test_corrupt_cursor_answers_500_with_request_id(api: Api):
    for cursor in ("not-a-cursor!!", "eyJ0IjoxfQ", "AAAA"):
        r = api.get(cursor=cursor, **JAN_Q)
        assert r.status_code == 500
        assert r.json()["success"] is False and r.json()["requestId"]


def test_walk_never_duplicates_or_skips_while_rows_change(sim: Simulator, api: Api):
    before = set(ids(sim.rows(*JAN)))
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        body = api.page(limit=40, cursor=cursor, **JAN_Q)
        seen.extend(ids(body["rows"]))
        pages += 1
        if pages % 3 == 0:
            sim.add_late_rows(3, "2026-01")
            sim.break_promises(2, "2026-01")
            sim.move_rows(1, "2026-02", "2026-01")
        cursor = body["pagination"]["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


# -- totals -----------------------------------------------------------------------------------


def test_include_total_is_exact_for_a_window(api: Api):
    p = api.page(includeTotal="true", limit=5, **JAN_Q)["pagination"]
    assert (p["total"], p["totalExact"], p["totalNote"]) == (600, True, None)


def test_include_total_is_capped_above_the_cap():
    api = Api(small(total_cap=100))
    p = api.page(includeTotal="true", limit=5, **JAN_Q)["pagination"]
    assert (p["total"], p["totalExact"], p["totalNote"]) == (100, False, "capped")


def test_include_total_without_a_window_is_window_required(api: Api):
    p = api.page(includeTotal="true", limit=5)["pagination"]
    assert p["total"] is None and p["totalNote"] == "window_required"


# -- auth and routes --------------------------------------------------------------------------


def test_login_rejects_wrong_password_and_unknown_slug(api: Api):
    for slug, password in (("demo", "nope"), ("other", "demo-password")):
        r = api.http.post(
            f"/admin/auth/{slug}/login",
            json={"email": "analyst@demo.example", "password": password},
        )
        assert r.status_code == 401 and r.json()["requestId"]


def test_missing_or_garbage_token_is_401(api: Api):
    url = f"/admin/v3/lenders/{api.sim.lender_public_id}/exports/S4/D23"
    assert api.http.get(url).status_code == 401
    assert api.http.get(url, headers={"Authorization": "Bearer x.y.z"}).status_code == 401


def test_expired_tokens_get_401_and_refresh_issues_a_working_one(sim: Simulator, api: Api):
    sim.expire_tokens()
    assert api.get(**JAN_Q).status_code == 401
    r = api.http.post("/admin/auth/demo/refresh-token", json={"refreshToken": api.refresh_token})
    assert r.status_code == 200
    api.token = r.json()["token"]
    assert api.get(**JAN_Q).status_code == 200


def test_token_expires_after_its_ttl():
    api = Api(small(token_ttl_s=0.05))
    assert api.get(**JAN_Q).status_code == 200
    time.sleep(0.1)
    assert api.get(**JAN_Q).status_code == 401


def test_revoked_refresh_tokens_and_changed_password_force_a_failed_login(sim: Simulator, api: Api):
    sim.expire_tokens()
    sim.revoke_refresh_tokens()
    r = api.http.post("/admin/auth/demo/refresh-token", json={"refreshToken": api.refresh_token})
    assert r.status_code == 401
    api.token, _ = api.login()
    assert api.get(**JAN_Q).status_code == 200
    sim.set_password("rotated")
    r = api.http.post(
        "/admin/auth/demo/login",
        json={"email": "analyst@demo.example", "password": "demo-password"},
    )
    assert r.status_code == 401


def test_other_lenders_path_is_403(api: Api):
    r = api.get(lender="00000000-0000-4000-8000-000000000000", **JAN_Q)
    assert r.status_code == 403 and r.json()["success"] is False


def test_d24_and_unknown_datasets_are_404_with_error_envelope(api: Api):
    for dataset in ("S4/D24", "S1/D23", "S9/D99"):
        r = api.get(dataset=dataset, **JAN_Q)
        assert r.status_code == 404
        doc = r.json()
        assert doc["success"] is False and doc["message"] and doc["requestId"]


# -- faults -----------------------------------------------------------------------------------


def test_wide_or_unbounded_window_gets_504_html(sim: Simulator, api: Api):
    sim.faults = Faults(max_window_for_504=timedelta(days=7))
    for params in (JAN_Q, {}, {"since": JAN_Q["since"]}):
        r = api.get(**params)
        assert r.status_code == 504
        assert r.headers["content-type"].startswith("text/html") and "<html>" in r.text
    ok = api.get(since="2026-01-01T00:00:00.000Z", until="2026-01-08T00:00:00.000Z")
    assert ok.status_code == 200


def test_429_carries_retry_after_and_bursts_then_recovers(sim: Simulator, api: Api):
    sim.faults = Faults(burst_429=2, retry_after_s=0.05)
    first, second, third = (api.get(**JAN_Q) for _ in range(3))
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert float(first.headers["retry-after"]) == 0.05
    sim.faults = Faults(rate_429=1.0, retry_after_s=2)
    assert api.get(**JAN_Q).headers["retry-after"] == "2"


def test_5xx_faults_carry_a_request_id_or_an_html_page(sim: Simulator, api: Api):
    sim.faults = Faults(error_5xx_rate=1.0, seed=1)
    answers = [api.get(**JAN_Q) for _ in range(40)]
    assert {r.status_code for r in answers} == {500, 502, 503}
    html = [r for r in answers if r.headers["content-type"].startswith("text/html")]
    assert html and all(r.status_code in (502, 503) for r in html)
    assert all(r.json()["requestId"] for r in answers if r not in html)


def test_fault_rates_are_roughly_honoured_and_only_hit_data(sim: Simulator, api: Api):
    sim.faults = Faults(error_5xx_rate=0.3, seed=5)
    codes = Counter(api.get(**JAN_Q).status_code for _ in range(400))
    assert 80 < 400 - codes[200] < 160
    assert api.login()  # login is never faulted


def test_faults_are_deterministic_for_a_seed(sim: Simulator, api: Api):
    def run() -> list[int]:
        sim.faults = Faults(rate_429=0.3, error_5xx_rate=0.2, seed=9)
        return [api.get(**JAN_Q).status_code for _ in range(30)]

    assert run() == run()


def test_latency_is_added_per_data_page(sim: Simulator, api: Api):
    sim.faults = Faults(latency_s=0.05)
    start = time.perf_counter()
    api.get(limit=1, **JAN_Q)
    assert time.perf_counter() - start >= 0.05


def test_drop_raises_remote_protocol_error_in_process(sim: Simulator, api: Api):
    sim.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(**JAN_Q)
    assert sim.stats.dropped == 1


def test_drop_closes_the_real_socket_without_an_answer(sim: Simulator):
    with serve(sim) as url:
        api = Api(sim, url)
        sim.faults = Faults(drop_rate=1.0)
        with pytest.raises(httpx.TransportError):
            api.get(**JAN_Q)
        sim.faults = Faults()
        assert api.get(**JAN_Q).status_code == 200


# -- real socket and concurrency --------------------------------------------------------------


def test_serve_binds_loopback_and_walks_concurrent_windows(sim: Simulator):
    starts = [f"2026-01-{d:02d}T00:00:00.000Z" for d in (1, 8, 15, 22, 29)]
    weeks = list(zip(starts, [*starts[1:], JAN_Q["until"]], strict=True))
    with serve(sim) as url:
        assert url.startswith("http://127.0.0.1:")
        api = Api(sim, url)
        with ThreadPoolExecutor(4) as pool:
            walks = list(pool.map(lambda w: api.walk(since=w[0], until=w[1], limit=25), weeks))
    got = [row for rows, _ in walks for row in rows]
    assert ids(got) == ids(sim.rows(*JAN))


def test_stats_count_requests_by_kind_status_and_pages(sim: Simulator, api: Api):
    sim.reset_stats()
    _, pages = api.walk(limit=20, **JAN_Q)
    api.get(dataset="S4/D24")
    snap = sim.stats.snapshot()
    assert snap["by_kind"]["data"] == len(pages) + 1
    assert snap["data_pages"] == len(pages)
    assert snap["empty_pages"] == sum(1 for p in pages if not p["rows"])
    assert snap["by_status"][404] == 1 and snap["rows_served"] == 600


# -- data -------------------------------------------------------------------------------------


def test_same_seed_same_data_and_another_seed_differs():
    assert small().rows() == small().rows()
    assert small().lender_public_id == small().lender_public_id
    assert ids(small(seed=24).rows()) != ids(small().rows())


def test_rows_look_like_d23(sim: Simulator):
    rows = sim.rows()
    assert len(rows) == 1200
    assert all(re.fullmatch(r"[0-9a-f]{24}", r["public_id"]) for r in rows)
    assert len(set(ids(rows))) == len(rows)
    for r in rows:
        assert TS.match(r["communicated_at"]) and TS.match(r["created_at"])
        assert r["communicated_at"] <= r["created_at"] <= r["updated_at"]
    outcomes = Counter(r["outcome_option"] for r in rows)
    assert outcomes.most_common(1)[0][0] == "NO_ANSWER"
    assert 0.06 <= outcomes["PTP"] / len(rows) <= 0.14
    assert Counter(r["communication_type"] for r in rows).most_common(1)[0][0] == "CALL"
    broken = [r for r in rows if r["is_ptp_broken"]]
    assert broken and all(r["updated_at"] > r["created_at"] for r in broken)
    assert any(not r["is_active"] for r in rows)
    assert validate_rows(rows, "2026-01-01T00:00:00.000Z", "2026-03-01T00:00:00.000Z").rejects == []


def test_current_month_only_holds_rows_in_the_past():
    now = datetime.now(UTC)
    month = f"{now.year:04d}-{now.month:02d}"
    rows = small(months=(month,), rows_per_month=20_000).rows()
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.999Z")
    assert all(r["updated_at"] <= stamp for r in rows)


def test_current_month_holds_its_days_so_far_at_the_usual_daily_rate():
    now = datetime(2026, 6, 10, 12, tzinfo=UTC)
    data = Collection(
        SimulatorConfig(months=("2026-05", "2026-06"), rows_per_month=3000), to_ms(now)
    )

    may = data.rows(*month_bounds("2026-05"))
    june = data.rows(*month_bounds("2026-06"))

    assert len(may) == 3000
    # 9.5 of June's 30 days: 950 rows drawn on average, less the few logged after now
    assert 870 <= len(june) <= 1030
    days = Counter(r["communicated_at"][:10] for r in june)
    assert sorted(days)[0] == "2026-06-01" and sorted(days)[-1] == "2026-06-10"
    assert max(days.values()) < 3 * 3000 / 30  # no day crammed with the month's rows


def test_a_simulator_started_later_in_the_month_serves_the_same_rows_and_more():
    # A restarted `make run`: the month in progress must not come back as other rows.
    config = SimulatorConfig(months=("2026-05", "2026-06"), rows_per_month=3000)
    june = month_bounds("2026-06")
    earlier = Collection(config, to_ms(datetime(2026, 6, 10, 12, tzinfo=UTC))).rows(*june)
    later = Collection(config, to_ms(datetime(2026, 6, 20, 12, tzinfo=UTC))).rows(*june)

    by_id = {r["public_id"]: r for r in later}
    assert len(later) > len(earlier) and set(ids(earlier)) <= set(by_id)
    for r in earlier:
        again = by_id[r["public_id"]]
        assert again["communicated_at"] == r["communicated_at"]
        assert again["outcome_option"] == r["outcome_option"]
        assert again["updated_at"] >= r["updated_at"]  # a promise broken since, at most


def test_a_simulator_started_in_the_next_month_serves_the_months_it_shares_under_the_same_ids():
    def june_and_may(months: tuple[str, ...], now: datetime) -> set[str]:
        config = SimulatorConfig(months=months, rows_per_month=500)
        data = Collection(config, to_ms(now))
        return set(ids(data.rows(*month_bounds("2026-05")) + data.rows(*month_bounds("2026-06"))))

    in_june = june_and_may(("2026-04", "2026-05", "2026-06"), datetime(2026, 6, 30, tzinfo=UTC))
    in_july = june_and_may(("2026-05", "2026-06", "2026-07"), datetime(2026, 7, 1, tzinfo=UTC))

    assert in_june and in_june <= in_july


def test_promises_break_only_once_they_are_old_enough():
    now = datetime(2026, 6, 4, tzinfo=UTC)
    data = Collection(
        SimulatorConfig(months=("2026-03", "2026-06"), rows_per_month=4000), to_ms(now)
    )

    def broken_share(month: str) -> float:
        promises = [r for r in data.rows(*month_bounds(month)) if r["outcome_option"] == "PTP"]
        return sum(r["is_ptp_broken"] for r in promises) / len(promises)

    assert 0.28 < broken_share("2026-03") < 0.42  # mature: about a third broke
    assert broken_share("2026-06") < 0.1  # three days old: few have broken yet
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert all(r["updated_at"] <= stamp for r in data.rows())


def test_bad_rows_are_served_and_valid_rows_excludes_them():
    sim = small(bad_rows=BadRows(missing_public_id=2, bad_timestamp=3, wrong_type=3, extra_pii=4))
    served = sim.rows(*JAN)
    result = validate_rows(served, JAN_Q["since"], JAN_Q["until"])
    assert len(result.rejects) == 8
    assert result.extra_fields == {"notes", "phone", "email"}
    assert sum(1 for r in served if "public_id" not in r or r["public_id"] == "") == 2
    pii = [r for r in served if "notes" in r]
    assert len(pii) == 4 and all(any(m in str(r) for m in FAKE_PII_MARKERS) for r in pii)
    valid = sim.valid_rows(*JAN)
    assert len(valid) == 600 - 8
    assert all(set(r) == set(D23_FIELDS) for r in valid)
    assert valid == result.rows  # what a correct warehouse holds
    assert Counter(sim.bad_row_kinds().values())["extra_pii"] == 8  # 4 per month


# -- change knobs -----------------------------------------------------------------------------


def by_id(sim: Simulator) -> dict[str, dict]:
    return {r["public_id"]: r for r in sim.rows()}


def test_break_promises_flips_ptp_rows_and_moves_updated_at(sim: Simulator):
    before = by_id(sim)
    changed = sim.break_promises(5, "2026-01")
    after = by_id(sim)
    assert len(changed) == 5
    for pid in changed:
        assert before[pid]["outcome_option"] == "PTP" and not before[pid]["is_ptp_broken"]
        assert after[pid]["is_ptp_broken"] and after[pid]["updated_at"] > before[pid]["updated_at"]
        assert after[pid]["communicated_at"].startswith("2026-01")


def test_deactivate_soft_deletes(sim: Simulator):
    before = by_id(sim)
    changed = sim.deactivate(4)
    after = by_id(sim)
    assert all(before[p]["is_active"] and not after[p]["is_active"] for p in changed)
    assert all(after[p]["updated_at"] > before[p]["updated_at"] for p in changed)


def test_hard_delete_makes_rows_vanish(sim: Simulator):
    gone = sim.hard_delete(6, "2026-02")
    assert len(gone) == 6 and not set(gone) & set(by_id(sim))
    assert len(sim.rows()) == 1194


def test_late_rows_land_in_a_past_month_created_now(sim: Simulator):
    new = sim.add_late_rows(3, "2026-01")
    rows = by_id(sim)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M")
    for pid in new:
        assert rows[pid]["communicated_at"].startswith("2026-01")
        assert rows[pid]["created_at"] == rows[pid]["updated_at"] >= now
    assert set(new) <= set(ids(sim.rows(*JAN)))


def test_move_rows_changes_month_and_keeps_public_id(sim: Simulator):
    moved = sim.move_rows(5, "2026-02", "2026-01")
    jan = {r["public_id"]: r for r in sim.rows(*JAN)}
    assert set(moved) <= set(jan)
    assert all(jan[p]["created_at"] >= jan[p]["communicated_at"] for p in moved)
    assert len(sim.rows()) == 1200


def test_repeated_changes_keep_updated_at_strictly_increasing():
    sim = small(months=("2026-01",), rows_per_month=1, other_lender_share=0.0)
    stamps = [sim.rows()[0]["updated_at"]]
    for _ in range(4):  # faster than the wall clock's millisecond
        assert len(sim.move_rows(1, "2026-01", "2026-01")) == 1
        stamps.append(sim.rows()[0]["updated_at"])
    assert stamps == sorted(set(stamps))


# -- a test's own rows, page sizes, scripted answers and request log -----------------------------

MAY_Q = {"since": "2026-05-01T00:00:00.000Z", "until": "2026-05-02T00:00:00.000Z"}


def given_row(n: int, ms: int, **changes: Any) -> dict[str, Any]:
    return row(n, T0 + timedelta(milliseconds=ms), **changes)


def test_given_rows_are_served_exactly_through_ties_and_short_pages():
    # Ids out of order within a tie: the API orders a tie by _id, not by the order given.
    rows = [given_row(n, ms) for n, ms in ((5, 0), (1, 0), (3, 0), (2, 5), (4, 5), (9, 9))]
    sizes = iter([2, 1, 0, 0, 3, 2])
    sim = Simulator(rows=rows)
    sim.faults = Faults(page_size=lambda limit: next(sizes))
    served, pages = Api(sim).walk(limit=50, **MAY_Q)
    assert ids(served) == ids(sim.rows()) == [id_of(n) for n in (1, 3, 5, 2, 4, 9)]
    assert served == sorted(rows, key=lambda r: (r["communicated_at"], r["public_id"]))
    assert [len(p["rows"]) for p in pages] == [2, 1, 0, 0, 3]
    assert pages[-1]["pagination"]["nextCursor"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"public_id": "r000001"},  # not an ObjectId's hex digits
        {"communicated_at": "2026-05-01T00:00:00Z"},  # not canonical
        {"outcome_option": "SOMETHING_NEW"},
        {"is_active": "yes"},
        {"notes": "an extra field"},
    ],
)
def test_rows_the_simulator_cannot_serve_exactly_are_refused(change: dict[str, Any]):
    with pytest.raises(ValueError, match="cannot serve"):
        Simulator(rows=[given_row(1, 0, **change)])


def test_rows_repeating_a_public_id_are_refused():
    with pytest.raises(ValueError, match="repeat a public_id"):
        Simulator(rows=[given_row(1, 0), given_row(1, 5)])


def test_empty_pages_of_the_page_size_hook_stay_put_with_cursors_of_their_own():
    sim = Simulator(rows=[given_row(1, 1), given_row(2, 2)])
    sim.faults = Faults(page_size=lambda limit: 0)
    api = Api(sim)
    cursors = [None]
    for _ in range(3):  # the first page too: it has no key to resume after yet
        body = api.page(limit=10, cursor=cursors[-1], **MAY_Q)
        assert body["rows"] == [] and body["pagination"]["nextCursor"]
        cursors.append(body["pagination"]["nextCursor"])
    assert len(set(cursors)) == 4
    assert api.page(limit=10, cursor=cursors[2], **MAY_Q)["pagination"]["nextCursor"] == cursors[3]
    sim.faults = Faults()
    assert ids(api.page(limit=10, cursor=cursors[-1], **MAY_Q)["rows"]) == [id_of(1), id_of(2)]


def test_a_page_limit_above_the_gateways_maximum_gets_504(sim: Simulator, api: Api):
    sim.faults = Faults(max_limit_for_504=100)
    assert api.get(limit=101, **JAN_Q).status_code == 504
    assert api.get(limit=100, **JAN_Q).status_code == 200
    assert api.get(limit=5, includeTotal="true", **JAN_Q).status_code == 200


def test_scripted_answers_come_first_for_the_requests_they_match(sim: Simulator, api: Api):
    teapot = SimResponse(418, {"X-Why": "scripted"}, b"short and stout")
    sim.script(teapot, times=2, when=lambda request: request.query.get("limit") == "7")
    sim.script(SimResponse.error(503, "busy", "req-x"), auth=True)
    unauthorised = api.http.get(f"/admin/v3/lenders/{sim.lender_public_id}/exports/S4/D23")
    assert unauthorised.status_code == 401  # not matched: no limit of 7
    answers = [api.get(limit=7, **JAN_Q) for _ in range(3)]
    assert [a.status_code for a in answers] == [418, 418, 200]
    assert answers[0].headers["x-why"] == "scripted" and answers[0].content == b"short and stout"
    refused = api.http.post("/admin/auth/demo/login", json={})
    assert (refused.status_code, refused.json()["requestId"]) == (503, "req-x")
    api.login()  # the auth script is used up
    assert sim.stats.by_status[418] == 2


def test_a_scripted_drop_held_past_the_read_timeout_is_a_timeout_in_process(
    sim: Simulator, api: Api
):
    sim.script(Drop(after_s=30.0))
    sim.script(Drop(after_s=0.01))
    assert api.http.get("/").status_code == 404  # not an export request: never scripted
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        api.get(**JAN_Q)  # httpx gives up after 5 s, before the 30 s hold ends
    assert time.perf_counter() - started < 1  # in process, nobody waits for it
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(**JAN_Q)  # held 10 ms, then dropped
    assert sim.stats.dropped == 2


def test_scripted_answers_work_over_the_socket(sim: Simulator):
    with serve(sim) as url:
        api = Api(sim, url)
        sim.script(SimResponse.gateway_page(502))
        sim.script(DROP)
        sim.script(Drop(after_s=0.5))
        assert api.get(**JAN_Q).status_code == 502
        with pytest.raises(httpx.TransportError):
            api.get(**JAN_Q)
        with pytest.raises(httpx.ReadTimeout):
            api.http.get(
                f"/admin/v3/lenders/{sim.lender_public_id}/exports/S4/D23",
                params=JAN_Q,
                headers={"Authorization": f"Bearer {api.token}"},
                timeout=0.1,
            )
        assert api.get(**JAN_Q).status_code == 200


def test_the_request_log_keeps_each_request_and_its_answer():
    sim = Simulator(SimulatorConfig(months=("2026-01",), rows_per_month=50), log_requests=True)
    api = Api(sim)
    api.get(limit=3, includeTotal="true", **JAN_Q)
    sim.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(limit=3, **JAN_Q)
    log = sim.stats.log
    assert [(e.request.kind, e.request.method, e.status) for e in log] == [
        ("login", "POST", 200),
        ("count", "GET", 200),
        ("data", "GET", None),
    ]
    assert log[2].request.query == {"limit": "3", **JAN_Q}
    assert log[2].request.path == f"/admin/v3/lenders/{sim.lender_public_id}/exports/S4/D23"
    sim.reset_stats()
    assert sim.stats.log == []
    with pytest.raises(RuntimeError, match="log_requests"):
        small().stats.log  # noqa: B018 - the property raises


def test_a_corrupted_row_is_served_broken_and_left_out_of_the_valid_rows():
    sim = Simulator(rows=[given_row(1, 0), given_row(2, 0)])
    sim.corrupt_row(id_of(2), "wrong_type", is_active="yes")
    assert sim.rows()[1]["is_active"] == "yes"
    assert ids(sim.valid_rows()) == [id_of(1)]
    assert sim.bad_row_kinds() == {id_of(2): "wrong_type"}
    with pytest.raises(KeyError):
        sim.corrupt_row(id_of(3), "wrong_type", is_active="yes")


# -- CLI --------------------------------------------------------------------------------------


def test_cli_prints_its_url_first_and_answers_logins():
    proc = subprocess.Popen(
        [sys.executable, "-m", "d23_pipeline.simulator", "--port", "0", "--rows-per-month", "50"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        r = httpx.post(
            f"{url}/admin/auth/demo/login",
            json={"email": "analyst@demo.example", "password": "demo-password"},
        )
        assert r.status_code == 200 and r.json()["token"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_the_cli_sets_every_fault_and_bad_row_kind_it_offers():
    args = _parser().parse_args(
        ["--months", "2026-01", "--rows-per-month", "40", "--missing-public-id", "1",
         "--bad-timestamp", "2", "--wrong-type", "1", "--extra-pii", "1", "--cursor-pages", "2",
         "--page-size", "7", "--burst-429", "2", "--max-limit-504", "100"]
    )  # fmt: skip

    sim = Simulator(config_from_args(args))

    assert Counter(sim.bad_row_kinds().values()) == {
        "missing_public_id": 1, "bad_timestamp": 2, "wrong_type": 1, "extra_pii": 1
    }  # fmt: skip
    faults = sim.faults
    assert (faults.cursor_pages, faults.burst_429, faults.max_limit_for_504) == (2, 2, 100)
    assert faults.page_size is not None
    assert (faults.page_size(500), faults.page_size(5)) == (7, 5)  # never past the limit
    api = Api(sim)
    assert [api.get(**JAN_Q, limit=10).status_code for _ in range(3)] == [429, 429, 200]
    cursor = api.page(**JAN_Q, limit=10)["pagination"]["nextCursor"]
    cursor = api.page(**JAN_Q, limit=10, cursor=cursor)["pagination"]["nextCursor"]
    assert api.get(**JAN_Q, limit=10, cursor=cursor).status_code == 500  # a walk gets 2 pages
    assert api.get(**JAN_Q, limit=101).status_code == 504


@pytest.mark.parametrize(
    "flag", ["--cursor-pages", "--page-size", "--max-limit-504", "--wrong-type"]
)
def test_the_cli_refuses_a_negative_count(flag: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stopped:
        _parser().parse_args([flag, "-1"])

    assert stopped.value.code == 2
    assert "expected a count of 0 or more, got '-1'" in capsys.readouterr().err


def test_serve_shuts_down_on_exit(sim: Simulator):
    with serve(sim) as url:
        pass
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=1)
    name = f"d23-simulator:{url.rsplit(':', 1)[1]}"
    assert name not in {t.name for t in threading.enumerate()}


def test_serve_exit_also_cuts_kept_alive_connections(sim: Simulator):
    with serve(sim) as url:
        api = Api(sim, url)  # its pooled connection stays open
        assert api.get(**JAN_Q).status_code == 200
    with pytest.raises(httpx.TransportError):
        api.get(**JAN_Q)


def test_client_hanging_up_mid_page_leaves_no_server_traceback(
    sim: Simulator, capsys: pytest.CaptureFixture[str]
):
    with serve(sim) as url:
        api = Api(sim, url)
        sim.faults = Faults(latency_s=0.2)
        with pytest.raises(httpx.ReadTimeout):
            api.http.get(
                f"/admin/v3/lenders/{sim.lender_public_id}/exports/S4/D23",
                headers={"Authorization": f"Bearer {api.token}"},
                timeout=0.05,
            )
        time.sleep(0.3)  # let the server try to write to the closed socket
    assert "Traceback" not in capsys.readouterr().err
