"""The client against the project's API simulator: in-process and over a real loopback socket."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import pytest
from api import pid
from api import row as d23_row

from d23_pipeline.client import (
    DatasetNotFoundError,
    ExportsClient,
    RetriesExhaustedError,
    RetryPolicy,
    SliceDone,
    SlicePage,
    Window,
    WindowTotal,
)
from d23_pipeline.client.completeness import SliceProof
from d23_pipeline.settings import LoginCredentials
from d23_pipeline.simulator import (
    FAKE_PII_MARKERS,
    BadRows,
    Faults,
    SimResponse,
    Simulator,
    SimulatorConfig,
    serve,
)

JANUARY = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
MS = timedelta(milliseconds=1)
BAD = BadRows(missing_public_id=2, bad_timestamp=4, wrong_type=3, extra_pii=3)


def simulator(**faults: Any) -> Simulator:
    sim = Simulator(SimulatorConfig(months=("2026-01",), rows_per_month=2000, bad_rows=BAD))
    sim.faults = Faults(**faults)
    return sim


def client_for(sim: Simulator, base_url: str = "http://sim.test", **options: Any) -> ExportsClient:
    config = sim.config
    options.setdefault("sleep", lambda seconds: None)
    options.setdefault("page_limit", 200)
    if base_url == "http://sim.test":
        options["transport"] = sim.transport()
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    return ExportsClient(base_url, credentials, **options)


def collect(events: Any) -> tuple[dict[str, dict[str, Any]], list[Any], int]:
    rows: dict[str, dict[str, Any]] = {}
    rejects: list[Any] = []
    done = 0
    for event in events:
        if isinstance(event, SliceDone):
            done += 1
            continue
        assert isinstance(event, SlicePage)
        for row in event.rows:
            assert row["public_id"] not in rows, f"duplicate {row['public_id']}"
            rows[row["public_id"]] = row
        rejects.extend(event.rejects)
    return rows, rejects, done


def truth(sim: Simulator, window: Window = JANUARY) -> dict[str, dict[str, Any]]:
    return {r["public_id"]: r for r in sim.valid_rows(window.since, window.until)}


def test_simulator_month_lands_exactly_with_bad_rows_rejected_and_no_pii() -> None:
    sim = simulator()
    with client_for(sim, max_concurrency=4) as client:
        rows, rejects, done = collect(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()
    assert rows == truth(sim)
    assert done == 31
    assert len(rejects) == BAD.missing_public_id + BAD.bad_timestamp + BAD.wrong_type
    assert set(stats["extra_fields"]) == {"notes", "phone", "email"}
    shown = repr(rows) + repr(rejects) + repr(stats)
    assert not any(marker in shown for marker in FAKE_PII_MARKERS)


def test_simulator_faults_end_in_the_exact_rows() -> None:
    sim = simulator(error_5xx_rate=0.15, rate_429=0.05, burst_429=3, drop_rate=0.15)
    sim.faults.retry_after_s = 0
    policy = RetryPolicy(max_attempts=12)
    with client_for(sim, page_limit=50, max_concurrency=4, retry=policy) as client:
        rows, _, _ = collect(client.iter_slices(JANUARY))
        retries = client.stats.as_dict()["retries"]
    assert rows == truth(sim)
    assert {"429", "connection"} <= set(retries) and sum(retries.values()) >= 10


def test_simulator_504s_narrow_the_window_to_the_exact_rows() -> None:
    sim = simulator(max_window_for_504=timedelta(hours=6))
    with client_for(sim, slice_size=timedelta(days=4), min_page_limit=50) as client:
        rows, _, done = collect(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()
    assert rows == truth(sim) and done == 8
    # The counts before each walk meet the gateway first and teach the walks the width.
    assert stats["count_splits"] > 0 and stats["retries"]["504"] > 0
    assert client.max_window == timedelta(hours=6)


def test_simulator_token_expiry_and_revocation_mid_walk() -> None:
    sim = simulator()
    with client_for(sim) as client:
        pages = client.iter_window(JANUARY)
        first = next(pages)
        sim.expire_tokens()
        rest = [next(pages)]
        sim.expire_tokens()
        sim.revoke_refresh_tokens()
        rows, _, _ = collect([first, *rest, *pages])
        assert (client.stats.token_refreshes, client.stats.logins) == (1, 2)
    assert rows == truth(sim)


def test_simulator_total_and_unknown_dataset() -> None:
    sim = simulator()
    week = JANUARY.split(timedelta(days=7))[0]
    with client_for(sim) as client:
        assert client.fetch_total(week) == WindowTotal(
            len(sim.rows(week.since, week.until)), True, None
        )
    with client_for(sim, dataset="D24") as client, pytest.raises(DatasetNotFoundError, match="D24"):
        list(client.iter_window(week))


def test_loopback_concurrent_walk_with_drops_and_errors_is_exact() -> None:
    sim = simulator(error_5xx_rate=0.1, drop_rate=0.15, rate_429=0.05)
    sim.faults.retry_after_s = 0
    policy = RetryPolicy(max_attempts=12)
    with (
        serve(sim) as base_url,
        client_for(sim, base_url, page_limit=50, max_concurrency=4, retry=policy) as client,
    ):
        rows, _, done = collect(client.iter_slices(JANUARY))
        stats = client.stats.as_dict()
    assert rows == truth(sim) and done == 31
    assert stats["retries"].get("connection", 0) > 0


def test_loopback_slow_server_times_out_into_a_clear_error() -> None:
    sim = simulator(latency_s=0.5)
    policy = RetryPolicy(max_attempts=2)
    with (
        serve(sim) as base_url,
        client_for(sim, base_url, timeout=0.1, retry=policy) as client,
        pytest.raises(RetriesExhaustedError, match="timeout"),
    ):
        list(client.iter_window(JANUARY))


def test_a_month_too_heavy_to_count_at_once_is_counted_in_halves() -> None:
    sim = simulator(max_window_for_504=timedelta(days=2))

    with client_for(sim) as client:
        total = client.fetch_total(JANUARY)

    assert total == WindowTotal(len(sim.rows(JANUARY.since, JANUARY.until)), True, None)
    assert client.stats.count_splits > 0


class EndingApi(Simulator):
    """Ends every walk after the row ``end_after`` (a point in its data, whatever the page
    size) or, without one, the first walk of all after two rows; its clock, in its answers'
    Date and in the rows it logs, is ``ahead`` of ours, its Date alone ``date_behind`` that;
    the tenant logs a row 'now' with each of its first ``logging`` data pages (one moved in
    from rows two days back)."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        *,
        end_after: str | None = None,
        ahead: timedelta = timedelta(0),
        date_behind: timedelta = timedelta(0),
        logging: int = 0,
    ) -> None:
        self.end_after, self.ahead, self.logging = end_after, ahead, logging
        self.date_behind = date_behind
        self.data_pages = 0
        long_ago = datetime.now(UTC) - timedelta(days=2)
        moved = [d23_row(10_000 + n, long_ago + n * timedelta(seconds=1)) for n in range(logging)]
        super().__init__(SimulatorConfig(), rows=rows + moved)

    def handle(self, method: str, path: str, query: Any, headers: Any, body: bytes) -> Any:
        page = "/exports/" in path and query.get("includeTotal") != "true"
        if page:
            self.data_pages += 1
            if self.data_pages <= self.logging:
                self.move_row(pid(10_000 + self.data_pages - 1), datetime.now(UTC) + self.ahead)
        answer = super().handle(method, path, query, headers, body)
        date = self.ahead - self.date_behind
        answer.headers["Date"] = formatdate(time.time() + date.total_seconds(), usegmt=True)
        if not page or answer.status != 200:
            return answer
        payload = answer.json()
        end = self._end([r["public_id"] for r in payload["body"]["rows"]])
        if end is None or end == len(payload["body"]["rows"]):
            return answer
        payload["body"]["rows"] = payload["body"]["rows"][:end]
        payload["body"]["pagination"]["nextCursor"] = None
        return SimResponse.from_json(payload)

    def _end(self, ids: list[str]) -> int | None:
        """How many of a page's rows it serves before it ends the walk, if it ends it there."""
        if self.end_after is None:
            return min(2, len(ids)) if self.data_pages == 1 else None
        return ids.index(self.end_after) + 1 if self.end_after in ids else None


def _read_again(sim: Simulator, window: Window) -> SliceProof:
    """The proof of ``window`` read as one slice, whose first read the API ends early."""
    with client_for(sim, slice_size=window.duration, max_concurrency=1) as client:
        events = list(client.iter_slices(window))
    return [e for e in events if isinstance(e, SliceDone)][-1].proof


def test_a_read_again_of_today_while_the_tenant_logs_rows_is_proven_complete() -> None:
    now = datetime.now(UTC)
    counted = [d23_row(n, now - timedelta(minutes=50) + n * timedelta(seconds=1)) for n in range(5)]
    sim = EndingApi(counted, logging=100)

    proof = _read_again(sim, Window(now - timedelta(hours=1), now + timedelta(hours=1)))

    # The rows logged since its count keep it reading on, without using up the read-ons of the
    # 5 rows counted.
    assert proof.reads == 2 and proof.verified, proof.reason
    assert proof.served == proof.total_after


@pytest.mark.parametrize(
    "date_behind",
    [timedelta(seconds=5), timedelta(seconds=11), timedelta(minutes=4), timedelta(days=365 * 56)],
    ids=["5 s behind", "11 s behind", "4 minutes behind", "a broken gateway's 1970"],
)
def test_a_read_again_reads_on_to_rows_logged_before_its_count_whatever_the_date_says(
    date_behind: timedelta,
) -> None:
    now = datetime.now(UTC)
    rows = [d23_row(0, now - timedelta(minutes=10)), d23_row(1, now - 200 * MS)]
    rows.append(d23_row(2, now - 100 * MS))  # logged just before the count
    sim = EndingApi(rows, end_after=pid(1), date_behind=date_behind)

    proof = _read_again(sim, Window(now - timedelta(hours=1), now + timedelta(hours=1)))

    assert proof.reads == 2 and proof.verified, proof.reason
    assert proof.served == 3


def test_a_read_again_reads_on_to_rows_an_api_clock_ahead_of_ours_holds() -> None:
    now = datetime.now(UTC)
    rows = [d23_row(0, now - timedelta(minutes=10)), d23_row(1, now + timedelta(seconds=70))]
    rows.append(d23_row(2, now + timedelta(seconds=110)))  # logged 'now' on the API's clock
    sim = EndingApi(rows, end_after=pid(1), ahead=timedelta(minutes=2))

    proof = _read_again(sim, Window(now - timedelta(hours=1), now + timedelta(hours=1)))

    assert proof.reads == 2 and proof.verified, proof.reason
    assert proof.served == 3
