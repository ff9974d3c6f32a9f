"""The client tests' simulators: exactly the rows a test chooses, served in process.

Every client test talks to the project's one fake of the API, the simulator: the rows come from
here (ties and instants to the millisecond), short and empty pages from its page-size hook,
scripted answers from ``Simulator.script`` and what the client sent from its request log.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from d23_pipeline.client import ExportsClient, RetryPolicy, Window
from d23_pipeline.schema import format_timestamp
from d23_pipeline.settings import Credentials, LoginCredentials
from d23_pipeline.simulator import (
    Drop,
    Faults,
    SimRequest,
    SimResponse,
    Simulator,
    SimulatorConfig,
)

BASE_URL = "https://api.test"
T0 = datetime(2026, 5, 1, tzinfo=UTC)
DAY = Window(T0, T0 + timedelta(days=1))
# Held longer than the client's 60 s read timeout, so the client times out (in process, at once).
TIMEOUT = Drop(after_s=120.0)
GATEWAY_TIMEOUT = SimResponse.gateway_page(504, "Gateway Time-out")

_CANONICAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def pid(n: int) -> str:
    """The public_id of row ``n``: 24 hex digits, an ObjectId as the simulator serves it."""
    return f"{n:024x}"


def row(n: int, at: datetime, **changes: Any) -> dict[str, Any]:
    """A valid D23 row numbered ``n`` communicated at ``at``."""
    stamp = format_timestamp(at)
    data = {
        "public_id": pid(n),
        "communication_type": "CALL",
        "interaction_source": "AGENT",
        "outcome_option": "PTP",
        "is_active": True,
        "is_ptp_broken": False,
        "communicated_at": stamp,
        "created_at": stamp,
        "updated_at": stamp,
    }
    data.update(changes)
    return data


def rows_at(offsets_ms: Iterable[int], start: datetime = T0) -> list[dict[str, Any]]:
    """One row per offset (repeat an offset for ties), numbered in order."""
    return [row(n, start + timedelta(milliseconds=ms)) for n, ms in enumerate(offsets_ms)]


def simulator(
    rows: Iterable[dict[str, Any]], config: SimulatorConfig | None = None, **faults: Any
) -> Simulator:
    """A simulator serving exactly ``rows``, with ``faults`` (:class:`Faults` fields, such as
    ``page_size``) and its request log on."""
    config = dataclasses.replace(config or SimulatorConfig(), faults=Faults(**faults))
    return Simulator(config, rows=rows, log_requests=True)


def client(sim: Simulator, credentials: Credentials | None = None, **options: Any) -> ExportsClient:
    """A client of ``sim`` in process that never really sleeps; it logs in unless given
    ``credentials``."""
    if credentials is None:
        config = sim.config
        credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    options.setdefault("sleep", lambda seconds: None)
    options.setdefault("retry", RetryPolicy(max_attempts=4))
    options.setdefault("transport", checked_transport(sim))
    return ExportsClient(BASE_URL, credentials, **options)


def checked_transport(sim: Simulator) -> httpx.MockTransport:
    """``sim``'s transport, asserting first what the API never checks (it has no 400 answers,
    so a malformed bound would quietly widen the window): canonical bounds and ``sort=asc``."""
    transport = sim.transport()

    def handle(request: httpx.Request) -> httpx.Response:
        if "/exports/" in request.url.path:
            params = request.url.params
            assert _CANONICAL.match(params["since"]) and _CANONICAL.match(params["until"]), params
            assert params.get("sort") == "asc", params
        return transport.handle_request(request)

    return httpx.MockTransport(handle)


def is_page(request: httpx.Request) -> bool:
    """Whether ``request`` asks for a page of an export, not for its count."""
    return "/exports/" in request.url.path and "includeTotal" not in request.url.params


def ending_the_walk(page: httpx.Response, *, without: str | None = None) -> httpx.Response:
    """``page`` as an API that ends the walk there answers: no ``nextCursor``, and without the
    row ``without`` if given."""
    page.read()
    payload = orjson.loads(page.content)
    payload["body"]["rows"] = [r for r in payload["body"]["rows"] if r["public_id"] != without]
    payload["body"]["pagination"]["nextCursor"] = None
    return httpx.Response(200, headers=page.headers, content=orjson.dumps(payload))


def login(sim: Simulator) -> dict[str, Any]:
    """A login of the test's own, outside any client: ``token``, ``refreshToken``, ..."""
    config = sim.config
    with httpx.Client(transport=sim.transport(), base_url=BASE_URL) as http:
        answer = http.post(
            f"/admin/auth/{config.lender_slug}/login",
            json={"email": config.email, "password": config.password},
        )
    answer.raise_for_status()
    payload: dict[str, Any] = answer.json()
    return payload


def walk_ids(client: ExportsClient, window: Window = DAY) -> list[str]:
    """The public_ids of every row ``iter_window`` yields, in order."""
    return [r["public_id"] for page in client.iter_window(window) for r in page.rows]


def ids_in(sim: Simulator, window: Window = DAY) -> list[str]:
    """The ground truth: public_ids of the simulator's rows inside ``window``, in API order."""
    return [r["public_id"] for r in sim.rows(window.since, window.until)]


def queries(sim: Simulator) -> list[dict[str, str]]:
    """Query parameters of every export request (pages and counts), in the order answered."""
    return [dict(e.request.query) for e in sim.stats.log if e.request.kind in ("data", "count")]


def answered(sim: Simulator, kind: str, status: int = 200) -> int:
    """How many ``kind`` requests (``"login"``, ``"refresh"``, ...) were answered ``status``."""
    return sum(1 for e in sim.stats.log if e.request.kind == kind and e.status == status)


def count_answer(total: int | None, note: str | None = None) -> SimResponse:
    """The answer to a count (``includeTotal``): exact with a ``total``, else given up."""
    counted = {"total": total, "totalExact": total is not None, "totalNote": note}
    return SimResponse.from_json({"body": {"rows": [], "pagination": counted}})


def counts_of(window: Window, *nths: int) -> Callable[[SimRequest], bool]:
    """Whether a request is one of the ``nths`` counts of exactly ``window`` (1 the first)."""
    seen = itertools.count(1)

    def when(request: SimRequest) -> bool:
        query = request.query
        return (
            request.kind == "count"
            and (query["since"], query["until"]) == (window.since_text, window.until_text)
            and next(seen) in nths
        )

    return when


def error(status: int, request_id: str = "req-1", **headers: str) -> SimResponse:
    """The documented JSON error envelope."""
    return SimResponse.error(status, f"status {status}", request_id, headers)
