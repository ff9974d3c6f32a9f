"""Login, refresh on 401 (once, even for many threads), re-login, and held tokens."""

from __future__ import annotations

import itertools
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import httpx
import orjson
import pytest
from api import (
    DAY,
    answered,
    checked_transport,
    client,
    error,
    ids_in,
    login,
    rows_at,
    simulator,
    walk_ids,
)

from d23_pipeline.client import (
    ApiHostError,
    AuthenticationError,
    ExportsApiError,
    ExportsClient,
    NotTheApiError,
    RetriesExhaustedError,
    RetryPolicy,
    SlicePage,
)
from d23_pipeline.client.stats import ClientStats
from d23_pipeline.settings import LoginCredentials, TokenCredentials
from d23_pipeline.simulator import SimRequest, SimResponse, Simulator


def test_login_gives_the_lender_id_and_a_bearer_token_for_data_calls() -> None:
    sim = simulator(rows_at(range(3)))
    checked = checked_transport(sim)
    exchanges: list[tuple[httpx.Request, httpx.Response]] = []

    def recorded(request: httpx.Request) -> httpx.Response:
        exchanges.append((request, checked.handle_request(request)))
        return exchanges[-1][1]

    with client(sim, transport=httpx.MockTransport(recorded)) as reader:
        assert reader.lender_public_id == sim.lender_public_id
        walk_ids(reader)
    (login, answer), (data, _) = exchanges
    config = sim.config
    assert login.url.path == f"/admin/auth/{config.lender_slug}/login"
    assert orjson.loads(login.content) == {"email": config.email, "password": config.password}
    assert data.url.path == f"/admin/v3/lenders/{sim.lender_public_id}/exports/S4/D23"
    assert data.headers["authorization"] == f"Bearer {answer.json()['token']}"


def _walk_past_expired_tokens(
    sim: Simulator, then: Callable[[], object] = lambda: None
) -> tuple[list[str], ClientStats]:
    """The ids a walk of DAY returns, and its stats, when after its first page the tokens
    expire and ``then`` runs."""
    with client(sim) as reader:
        pages = reader.iter_window(DAY)
        first = next(pages)
        sim.expire_tokens()
        then()
        return [r["public_id"] for page in [first, *pages] for r in page.rows], reader.stats


def test_token_expiry_mid_walk_refreshes_once_and_keeps_every_row() -> None:
    sim = simulator(rows_at(range(9)), page_size=lambda limit: 2)
    ids, stats = _walk_past_expired_tokens(sim)
    assert ids == ids_in(sim) and stats.token_refreshes == 1
    assert (answered(sim, "login"), answered(sim, "refresh")) == (1, 1)


def test_a_failed_refresh_falls_back_to_a_fresh_login() -> None:
    sim = simulator(rows_at(range(9)), page_size=lambda limit: 2)
    assert _walk_past_expired_tokens(sim, sim.revoke_refresh_tokens)[0] == ids_in(sim)
    assert (answered(sim, "login"), answered(sim, "refresh")) == (2, 0)
    assert answered(sim, "refresh", 401) == 1


def test_a_refreshed_token_no_header_can_carry_falls_back_to_a_fresh_login() -> None:
    sim = simulator(rows_at(range(9)), page_size=lambda limit: 2)
    unsendable = SimResponse.from_json({"token": "refreshed\u2019"})

    def answer_unsendable() -> None:
        sim.script(unsendable, auth=True, when=lambda request: request.kind == "refresh")

    assert _walk_past_expired_tokens(sim, answer_unsendable)[0] == ids_in(sim)
    assert answered(sim, "login") == 2


def test_a_gateways_403_at_login_says_the_login_was_refused() -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(SimResponse.gateway_page(403), auth=True)
    with client(sim) as reader, pytest.raises(AuthenticationError, match="refused"):
        reader.lender_public_id  # noqa: B018 - the property logs in


def test_a_refused_relogin_is_an_authentication_error() -> None:
    sim = simulator(rows_at(range(9)), page_size=lambda limit: 2)
    with client(sim) as reader:
        pages = reader.iter_window(DAY)
        next(pages)
        sim.expire_tokens()
        sim.revoke_refresh_tokens()
        sim.set_password("changed")
        with pytest.raises(
            AuthenticationError,
            match="login for lender 'demo' refused: check D23_LENDER, D23_EMAIL and D23_PASSWORD",
        ):
            list(pages)


def test_a_401_that_survives_refresh_and_relogin_is_an_authentication_error() -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(error(401, "req-401"), times=99)
    with client(sim) as reader, pytest.raises(AuthenticationError, match="still answers 401"):
        walk_ids(reader)
    assert (answered(sim, "login"), answered(sim, "refresh")) == (2, 1)


def test_wrong_password_is_an_authentication_error() -> None:
    sim = simulator(rows_at(range(3)))
    config = sim.config
    wrong = LoginCredentials(config.lender_slug, config.email, "wrong")
    with client(sim, wrong) as reader, pytest.raises(AuthenticationError) as caught:
        reader.lender_public_id  # noqa: B018 - the property logs in
    request_id = caught.value.request_id
    assert request_id is not None and re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert "HTTP 401" in str(caught.value) and request_id in str(caught.value)


@pytest.mark.parametrize(
    ("status", "answer"), [(503, error(503)), (522, SimResponse.gateway_page(522, "origin error"))]
)
def test_login_survives_a_transient_failure(status: int, answer: SimResponse) -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(answer, auth=True)
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.stats.as_dict()["retries"] == {str(status): 1}


def test_a_login_that_failed_is_not_tried_again_by_each_worker_that_waited_for_it() -> None:
    sim = simulator(rows_at(range(0, 86_400_000, 3_600_000)))
    sim.script(error(503), times=99, auth=True)
    # Real pauses between the login's attempts: the other workers queue for the token meanwhile.
    with (
        client(sim, max_concurrency=4, slice_size=timedelta(hours=6), sleep=_pause) as reader,
        pytest.raises(RetriesExhaustedError, match="login for lender 'demo' failed after 4"),
    ):
        list(reader.iter_slices(DAY))

    assert answered(sim, "login", 503) == 4  # one round of retries, not one per worker


def _pause(seconds: float) -> None:
    time.sleep(0.05)


def test_a_held_token_is_sent_as_is() -> None:
    sim = simulator(rows_at(range(3)))
    # A token from a login of the test's own: what an operator's D23_TOKEN is.
    credentials = TokenCredentials(sim.lender_public_id, login(sim)["token"])
    with client(sim, credentials) as reader:
        assert walk_ids(reader) == ids_in(sim)
        assert reader.lender_public_id == sim.lender_public_id
        assert reader.stats.logins == 0
    assert sim.stats.by_kind["login"] == 1  # the test's own


def test_a_rejected_held_token_is_an_authentication_error_without_refresh() -> None:
    sim = simulator(rows_at(range(3)))
    credentials = TokenCredentials(sim.lender_public_id, "stale-token")
    with (
        client(sim, credentials) as reader,
        pytest.raises(AuthenticationError, match="cannot be refreshed"),
    ):
        walk_ids(reader)
    assert sim.stats.by_kind["login"] == sim.stats.by_kind["refresh"] == 0


def test_concurrent_401s_cause_a_single_refresh() -> None:
    sim = simulator(rows_at(range(0, 86_400_000, 3_600_000)))
    barrier = threading.Barrier(4)
    asked = itertools.count()

    def all_at_once(request: SimRequest) -> bool:
        # The first four requests are the four workers' first (their counts): none is answered
        # before all four have been sent, so all four carry the login's token.
        if next(asked) >= 4:
            return False
        barrier.wait(timeout=5)
        return True

    sim.script(error(401), times=4, when=all_at_once)
    with client(sim, max_concurrency=4, slice_size=timedelta(hours=6)) as reader:
        events = list(reader.iter_slices(DAY))
        assert reader.stats.token_refreshes == 1
    ids = sorted(r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows)
    assert ids == ids_in(sim)
    assert (answered(sim, "login"), answered(sim, "refresh")) == (1, 1)
    assert answered(sim, "count", 401) == 4


def _not_the_api(status: int) -> httpx.MockTransport:
    """A host that is not the Exports API (a mistyped or old D23_API_URL): its own error page."""
    page = "<html><body>Not Found</body></html>"
    return httpx.MockTransport(lambda request: httpx.Response(status, text=page))


@pytest.mark.parametrize("status", [404, 405, 501])
@pytest.mark.parametrize(
    "credentials",
    [
        LoginCredentials("demo", "analyst@demo.example", "pw"),
        TokenCredentials("f59eb470-2d38-4c41-a1e1-548f2d437096", "token"),
    ],
    ids=["login", "held-token"],
)
def test_a_host_that_is_not_the_api_is_named_not_the_credentials_or_the_dataset(
    status: int, credentials: LoginCredentials | TokenCredentials
) -> None:
    with (
        ExportsClient(
            "https://wrong-host.example", credentials, transport=_not_the_api(status)
        ) as c,
        pytest.raises(ExportsApiError) as caught,
    ):
        list(c.iter_window(DAY))

    # Not "refused" (the README's sign of wrong credentials) nor "not enabled" (ask ClearGrid),
    # and a class of its own, which run retries leave alone.
    assert type(caught.value) is NotTheApiError
    assert "the host at D23_API_URL (wrong-host.example) answered HTTP" in str(caught.value)
    assert "check that D23_API_URL is the API's host root" in str(caught.value)


def test_a_web_apps_host_answering_the_login_with_a_page_is_named_at_once() -> None:
    # A single-page web app answers every path with its index page, 200.
    requests = []

    def web_app(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, html="<!doctype html><html><div id=app></div></html>")

    credentials = LoginCredentials("demo", "analyst@demo.example", "pw")
    with (
        ExportsClient(
            "https://app.example", credentials, transport=httpx.MockTransport(web_app)
        ) as c,
        pytest.raises(NotTheApiError, match=r"answered HTTP 200 with an HTML page: check that"),
    ):
        list(c.iter_window(DAY))
    assert len(requests) == 1  # not retried: a page is no flaky answer of the API


def _failing_to_connect(cause: OSError) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    tried: list[httpx.Request] = []

    def connect(request: httpx.Request) -> httpx.Response:
        tried.append(request)
        raise httpx.ConnectError(str(cause), request=request) from cause

    return httpx.MockTransport(connect), tried


@pytest.mark.parametrize(
    ("cause", "named"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "does not exist"),
        (
            ssl.SSLCertVerificationError(
                1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
            ),
            "presented a certificate this machine does not trust",
        ),
    ],
    ids=["no-such-name", "untrusted-certificate"],
)
def test_a_host_name_that_does_not_exist_or_is_not_trusted_fails_at_once_naming_the_setting(
    cause: OSError, named: str
) -> None:
    transport, tried = _failing_to_connect(cause)
    credentials = LoginCredentials("demo", "analyst@demo.example", "pw")
    with (
        ExportsClient("https://typo.example", credentials, transport=transport) as c,
        pytest.raises(ApiHostError, match=named) as caught,
    ):
        list(c.iter_window(DAY))
    assert "D23_API_URL" in str(caught.value) and "typo.example" in str(caught.value)
    assert len(tried) == 1


def _retried_times(cause: OSError) -> int:
    """How many times a login failing to connect with ``cause`` is tried, of 3 allowed."""
    transport, tried = _failing_to_connect(cause)
    credentials = LoginCredentials("demo", "analyst@demo.example", "pw")
    with (
        ExportsClient(
            "https://api.example",
            credentials,
            transport=transport,
            retry=RetryPolicy(max_attempts=3),
            sleep=lambda seconds: None,
        ) as c,
        pytest.raises(RetriesExhaustedError),
    ):
        list(c.iter_window(DAY))
    return len(tried)


def test_a_name_that_does_not_exist_behind_a_proxy_is_not_blamed_on_the_api_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The name that failed may be the proxy's own (HTTPS_PROXY mistyped), not D23_API_URL's.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    assert _retried_times(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == 3


def test_a_host_name_dns_cannot_look_up_now_is_retried() -> None:
    dns_down = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    assert _retried_times(dns_down) == 3


@pytest.mark.parametrize(
    "refusal",
    [
        SimResponse(401, {}, b""),
        SimResponse.gateway_page(401),
        SimResponse.from_json({"message": "Unauthorized"}, 401),  # a gateway's own JSON
    ],
    ids=["empty", "html", "gateway-json"],
)
def test_a_refresh_refused_without_the_apis_error_body_falls_back_to_a_fresh_login(
    refusal: SimResponse,
) -> None:
    sim = simulator(rows_at(range(9)), page_size=lambda limit: 2)
    with client(sim) as reader:
        pages = reader.iter_window(DAY)
        first = next(pages)
        sim.expire_tokens()
        sim.script(refusal, auth=True, when=lambda request: request.kind == "refresh")
        ids = [row["public_id"] for page in [first, *pages] for row in page.rows]

    assert ids == ids_in(sim)


def test_a_401_that_outlasts_the_refresh_is_sent_again_with_the_fresh_logins_token() -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(error(401), times=2)
    with client(sim) as reader:
        assert walk_ids(reader) == ids_in(sim)
    assert (answered(sim, "login"), answered(sim, "refresh")) == (2, 1)


def test_the_requests_count_includes_requests_answered_401() -> None:
    sim = simulator(rows_at(range(3)))
    sim.script(error(401))
    with client(sim) as reader:
        walk_ids(reader)
        assert reader.stats.as_dict()["requests"] == sim.stats.requests
    assert answered(sim, "data", 401) == 1


def test_a_request_waiting_for_a_slot_while_the_token_is_replaced_sends_the_new_one() -> None:
    # Read before the wait, the old token earned a 401 and used up one of the request's recoveries.
    sim = simulator(rows_at(range(0, 86_400_000, 3_600_000)))
    inner = sim.transport()
    first_sent, release_first, waiting = threading.Event(), threading.Event(), threading.Event()
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if "/exports/" in request.url.path:
            sent.append(request.headers["authorization"])
            if len(sent) == 1:  # holds the only slot until the token is replaced
                first_sent.set()
                release_first.wait(10)
        return inner.handle_request(request)

    with client(sim, max_concurrency=1, transport=httpx.MockTransport(handle)) as reader:
        reader.lender_public_id  # noqa: B018 - the property logs in
        session, auth = reader._session, reader._auth
        take_slot = session._take_slot

        def take_slot_noted(cancel: threading.Event | None) -> None:
            waiting.set()
            take_slot(cancel)

        first = threading.Thread(target=reader.count, args=(DAY,))
        first.start()
        assert first_sent.wait(10)
        session._take_slot = take_slot_noted  # type: ignore[method-assign]
        second = threading.Thread(target=reader.count, args=(DAY,))
        second.start()
        assert waiting.wait(10)
        _, generation = auth.current()
        sim.expire_tokens()
        auth.recover(generation)  # another worker's 401 replaced the token meanwhile
        replaced = f"Bearer {auth.current()[0]}"
        release_first.set()
        first.join(10)
        second.join(10)

    # The first request went out before the refresh, the rest after it.
    assert [header == replaced for header in sent] == [False, True, True]
    assert answered(sim, "count", 401) == 1


def _quiet_log_length(sim: Simulator, quiet_s: float = 0.5, timeout_s: float = 10.0) -> int:
    """The simulator's request count once no request has come for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    length = len(sim.stats.log)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        if len(sim.stats.log) == length:
            return length
        length = len(sim.stats.log)
    raise AssertionError(f"requests kept coming for {timeout_s:g} s")


def test_a_read_closed_while_the_token_refresh_waits_stops_its_workers_and_sends_nothing_more() -> (
    None
):
    # The refresh waits out a Retry-After under the token lock: closed, the read's workers
    # went on for its whole wait (and then logged in again, password and all).
    sim = simulator(rows_at(range(0, 86_400_000, 60_000)), page_size=lambda limit: 10)
    refresh_tried = threading.Event()

    def refresh(request: SimRequest) -> bool:
        if request.kind != "refresh":
            return False
        refresh_tried.set()
        return True

    sim.script(
        error(503, "req-refresh", **{"Retry-After": "60"}), times=99, auth=True, when=refresh
    )
    earlier = set(threading.enumerate())  # another test's, in this process, are not this read's
    with client(sim, max_concurrency=4, slice_size=timedelta(hours=3), sleep=time.sleep) as reader:
        events = reader.iter_slices(DAY)
        for seen, _ in enumerate(events):
            if seen == 5:
                sim.expire_tokens()
            if seen == 6:
                break
        assert refresh_tried.wait(10)  # and now waits out its Retry-After
        # A request already on its way when the refresh began is logged as it arrives; the
        # others wait for the token, sending nothing.
        closed_at = _quiet_log_length(sim)
        events.close()
        workers = [
            t for t in threading.enumerate() if t.name.startswith("d23-client") and t not in earlier
        ]
        for worker in workers:
            worker.join(10)

        assert not any(worker.is_alive() for worker in workers)
        assert [e.request.kind for e in sim.stats.log[closed_at:]] == []
