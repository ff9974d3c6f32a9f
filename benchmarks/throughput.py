"""Issue 5.1: one month through client, validation, landing and merge, against dlt ``rest_api``.

Both sides get the simulator's pages in-process, rendered before the clock starts and replayed
(``pages.Replay``): the pipeline through an ``httpx.MockTransport``, dlt through a ``requests``
adapter mounted on its session. Neither opens a socket, so what is measured is the reader, not a
server. The exception: windows of walks cut at other rows than in the untimed run, rendered in
the timed run and reported with their rendering time (counted against the pipeline).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from benchmarks.common import Timing, client_for, land_month, merge_month
from benchmarks.pages import BASE_URL, PATH_TEMPLATE, Replay, held_token, month_simulator
from d23_pipeline.months import month_end, month_start
from d23_pipeline.schema import format_timestamp
from d23_pipeline.settings import TokenCredentials
from d23_pipeline.simulator import SimResponse

MONTH = "2026-03"


def run_pipeline(
    replay: Replay, credentials: TokenCredentials, rows: int, limit: int
) -> dict[str, float]:
    """One end-to-end run into a fresh warehouse; seconds for landing and for the merge."""
    data_dir = Path(tempfile.mkdtemp(prefix="d23-bench-"))
    try:
        started = time.perf_counter()
        transport = replay.transport()
        with client_for(BASE_URL, credentials, transport=transport, page_limit=limit) as client:
            snapshot = land_month(client, data_dir, MONTH)
        landed = time.perf_counter()
        summary = merge_month(data_dir, snapshot)
        merged = time.perf_counter()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if summary.inserted != rows or snapshot.rows != rows:
        raise AssertionError(f"expected {rows} rows, landed {snapshot.rows}, merged {summary}")
    return {"total": merged - started, "land": landed - started, "merge": merged - landed}


class _ReplayAdapter(requests.adapters.BaseAdapter):
    """Answers dlt's requests from the replay, like the pipeline's MockTransport does."""

    def __init__(self, replay: Replay) -> None:
        super().__init__()
        self._replay = replay

    def __deepcopy__(self, memo: dict[int, Any]) -> _ReplayAdapter:
        # dlt deep-copies its configuration, this session included: the replay (and the
        # simulator's locks) is shared, not copied.
        return self

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url)
        answer = self._replay.handle(
            request.method, url.path, dict(parse_qsl(url.query)), request.headers, b""
        )
        assert isinstance(answer, SimResponse), answer  # the benchmark scripts no drops
        response = requests.Response()
        response.status_code = answer.status
        response._content = answer.body
        response.headers.update(answer.headers)
        response.url = request.url
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def run_dlt(replay: Replay, token: str, rows: int, limit: int) -> dict[str, float]:
    """dlt ``rest_api`` walking the month's pages into DuckDB with a merge on public_id."""
    data_dir = Path(tempfile.mkdtemp(prefix="d23-bench-dlt-"))
    session = requests.Session()
    session.mount(BASE_URL, _ReplayAdapter(replay))
    try:
        elapsed = dlt_load(
            rows,
            limit,
            base_url=BASE_URL,
            path=PATH_TEMPLATE.format(lender=replay.sim.lender_public_id),
            token=token,
            since=month_start(MONTH),
            until=month_end(MONTH),
            data_dir=data_dir,
            session=session,
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"total": elapsed}


def dlt_load(
    rows: int,
    limit: int,
    *,
    base_url: str,
    path: str,
    token: str,
    since: datetime,
    until: datetime,
    data_dir: Path,
    session: requests.Session | None = None,
) -> float:
    """dlt ``rest_api`` reading ``[since, until)`` as one cursor walk into a DuckDB file under
    ``data_dir``, merging on public_id; seconds taken. Fails unless it loaded ``rows`` rows."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    client: dict[str, Any] = {
        "base_url": base_url,
        "headers": {"Authorization": f"Bearer {token}"},
        "paginator": {
            "type": "cursor",
            "cursor_path": "body.pagination.nextCursor",
            "cursor_param": "cursor",
        },
    }
    if session is not None:
        client["session"] = session
    source = rest_api_source(
        {
            "client": client,
            "resources": [
                {
                    "name": "logs",
                    "primary_key": "public_id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": path,
                        "data_selector": "body.rows",
                        "params": month_walk_params(since, until, limit),
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="d23_bench",
        destination=dlt.destinations.duckdb(str(data_dir / "dlt.duckdb")),
        dataset_name="d23",
        pipelines_dir=str(data_dir / "pipelines"),
        progress=None,
    )
    started = time.perf_counter()
    pipeline.run(source)
    elapsed = time.perf_counter() - started
    with pipeline.sql_client() as sql_client:
        loaded = sql_client.execute_sql("SELECT count(*) FROM logs")[0][0]
    if loaded != rows:
        raise AssertionError(f"dlt loaded {loaded} rows, expected {rows}")
    return elapsed


def month_walk_params(since: datetime, until: datetime, limit: int) -> dict[str, Any]:
    """The query of dlt's walk: the whole window as one cursor walk (plus ``cursor``)."""
    return {
        "since": format_timestamp(since),
        "until": format_timestamp(until),
        "limit": limit,
        "sort": "asc",
    }


def _render_month_walk(replay: Replay, token: str, limit: int) -> None:
    """Have the replay render every page of dlt's walk of the month, before any timed run."""
    path = PATH_TEMPLATE.format(lender=replay.sim.lender_public_id)
    params = month_walk_params(month_start(MONTH), month_end(MONTH), limit)
    query = {name: str(value) for name, value in params.items()}
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        answer = replay.handle("GET", path, query, headers, b"")
        assert isinstance(answer, SimResponse) and answer.status == 200, answer
        cursor = answer.json()["body"]["pagination"]["nextCursor"]
        if cursor is None:
            return
        query["cursor"] = cursor


def bench(rows: int, limit: int, repeats: int, dlt_repeats: int) -> dict[str, Any]:
    """Alternate pipeline and dlt runs over the same pages; medians and the ratio."""
    sim = month_simulator(MONTH, rows)
    replay = Replay(sim)
    credentials = held_token(sim)
    # An untimed first run has the simulator render every page and count the pipeline asks for.
    run_pipeline(replay, credentials, rows, limit)
    pages = sim.stats.data_pages
    if dlt_repeats:
        _render_month_walk(replay, credentials.token, limit)
    rendered, render_s = replay.rendered, replay.render_s
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for run in range(max(repeats, dlt_repeats)):
        # Interleaved, so a burst of load on a shared machine hits both sides alike.
        if run < repeats:
            ours.append(run_pipeline(replay, credentials, rows, limit))
        if run < dlt_repeats:
            theirs.append(run_dlt(replay, credentials.token, rows, limit))
    total = Timing([r["total"] for r in ours])
    dlt_total = Timing([r["total"] for r in theirs])
    return {
        "rows": rows,
        "pages": pages,
        "page_limit": limit,
        "pipeline": total,
        "pipeline_land": Timing([r["land"] for r in ours]),
        "pipeline_merge": Timing([r["merge"] for r in ours]),
        "dlt": dlt_total,
        "pipeline_rows_per_s": rows / total.median,
        "dlt_rows_per_s": rows / dlt_total.median,
        "speedup": dlt_total.median / total.median,
        "unseen_answers": replay.rendered - rendered,
        "unseen_render_s": replay.render_s - render_s,
        "timed_s": sum(total.runs),
    }
