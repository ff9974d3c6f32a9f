"""No error message, repr, traceback or log line ever carries a password or token."""

from __future__ import annotations

import html
import json
import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote, quote_plus

import httpx
import pytest
from api import DAY, T0, TIMEOUT, client, error, login, row, simulator

from d23_pipeline.client import (
    AuthenticationError,
    CursorLoopError,
    DatasetNotFoundError,
    ExportsApiError,
    ExportsClient,
    LenderMismatchError,
    ProtocolError,
    RetriesExhaustedError,
    RetryPolicy,
    WindowTooHeavyError,
)
from d23_pipeline.client.retry import (
    WITHHELD,
    _connection_failure,
    shown_request_id,
)
from d23_pipeline.settings import LoginCredentials, TokenCredentials, is_uuid
from d23_pipeline.simulator import Drop, SimResponse, Simulator, SimulatorConfig, serve

PASSWORD = "PW-SECRET-e1f2"
# Every token the simulator issues, access or refresh, is a JWT that starts with this header.
TOKEN_HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
HELD = "HELD-SECRET-9a8b"
LENDER_ID = "3f1c9a52-7b4e-4d0a-9c61-2e8f5b7d4a10"
SECRETS = (PASSWORD, TOKEN_HEADER, HELD, "SECRET")


def _walk(client: ExportsClient) -> None:
    for _ in client.iter_window(DAY):
        pass


def _after_first_page(prepare: Callable[[Simulator], None]) -> Callable[[Simulator], None]:
    def run(sim: Simulator) -> None:
        with client(sim) as reader:
            pages = reader.iter_window(DAY)
            next(pages)
            prepare(sim)
            list(pages)

    return run


def _with(prepare: Callable[[Simulator], None], **options: object) -> Callable[[Simulator], None]:
    def run(sim: Simulator) -> None:
        prepare(sim)
        with client(sim, **options) as reader:
            _walk(reader)

    return run


def _wrong_password(sim: Simulator) -> None:
    credentials = LoginCredentials(sim.config.lender_slug, sim.config.email, PASSWORD + "-wrong")
    with client(sim, credentials) as reader:
        _walk(reader)


def _held_token(sim: Simulator) -> None:
    with client(sim, TokenCredentials(sim.lender_public_id, HELD)) as reader:
        _walk(reader)


def _relogin_refused(sim: Simulator) -> None:
    sim.expire_tokens()
    sim.revoke_refresh_tokens()
    sim.set_password("rotated")


def _heavy(sim: Simulator) -> None:
    sim.faults.max_window_for_504 = timedelta(hours=1)  # narrower than the client's floor


def _scripted(answer: SimResponse | Drop, auth: bool = False) -> Callable[[Simulator], None]:
    return lambda sim: sim.script(answer, times=99, auth=auth)


_LOOP_PAGE = SimResponse.from_json({"body": {"rows": [], "pagination": {"nextCursor": "c"}}})
# Answers whose own words echo what the request carried: a key named more than once, a content
# type, a lender id.
_ECHOED_KEY = SimResponse(
    200,
    {"Content-Type": "application/json"},
    b'{"body": {"rows": [], "pagination": {"nextCursor": null}, '
    + f'"{TOKEN_HEADER}": 1, "{TOKEN_HEADER}": 2'.encode()
    + b"}}",
)
_ECHOED_CONTENT_TYPE = SimResponse(200, {"Content-Type": f"text/x-echo Bearer {TOKEN_HEADER}"})
_ECHOED_LENDER_ID = SimResponse.from_json({"token": "tok-abcdef", "lenderPublicId": PASSWORD})
# A login answer whose token no HTTP header can carry (httpx's error would hold the header).
_UNSENDABLE_TOKEN = SimResponse.from_json(
    {"token": f"{TOKEN_HEADER}.SECRET\u2019", "lenderPublicId": LENDER_ID}
)

SCENARIOS: list[tuple[str, Callable[[Simulator], None], type[ExportsApiError]]] = [
    ("login refused", _wrong_password, AuthenticationError),
    ("held token rejected", _held_token, AuthenticationError),
    ("relogin refused mid-walk", _after_first_page(_relogin_refused), AuthenticationError),
    ("401 forever", _with(_scripted(error(401))), AuthenticationError),
    ("403", _with(_scripted(error(403))), LenderMismatchError),
    ("404", _with(_scripted(error(404))), DatasetNotFoundError),
    ("500 forever", _with(_scripted(error(500))), RetriesExhaustedError),
    ("timeouts", _with(_scripted(TIMEOUT)), RetriesExhaustedError),
    ("login 503s", _with(_scripted(error(503), auth=True)), RetriesExhaustedError),
    ("html 200s", _with(_scripted(SimResponse.gateway_page(200))), ProtocolError),
    ("login token not ASCII", _with(_scripted(_UNSENDABLE_TOKEN, auth=True)), ProtocolError),
    ("504 at floor", _with(_heavy, min_window=timedelta(hours=12)), WindowTooHeavyError),
    ("cursor loop", _with(_scripted(_LOOP_PAGE)), CursorLoopError),
    ("teapot", _with(lambda sim: sim.script(error(418))), ExportsApiError),
    # Servers echoing what they were sent into the request id that errors and logs show.
    ("login refused, requestId = the password",
     _with(_scripted(error(401, f"req-{PASSWORD}"), auth=True)), AuthenticationError),
    ("login 503s, requestId = part of the password",
     _with(_scripted(error(503, f"r-{PASSWORD[3:11]}"), auth=True)), RetriesExhaustedError),
    ("401 forever, X-Request-Id = the token",
     _with(_scripted(SimResponse(401, {"X-Request-Id": f"gw-{TOKEN_HEADER}"}))),
     AuthenticationError),
    ("a key named twice = the token", _with(_scripted(_ECHOED_KEY)), ProtocolError),
    ("Content-Type = the token", _with(_scripted(_ECHOED_CONTENT_TYPE)), ProtocolError),
    ("login answer, lenderPublicId = the password",
     _with(_scripted(_ECHOED_LENDER_ID, auth=True)), ProtocolError),
    ("500s, X-Request-Id = the token, no body",
     _with(_scripted(SimResponse(500, {"X-Request-Id": f"{TOKEN_HEADER}.x"}))),
     RetriesExhaustedError),
    # A data request carries only the token; the API may still echo the password there.
    ("500s to data requests, requestId = the password",
     _with(_scripted(error(500, f"req-{PASSWORD}"))), RetriesExhaustedError),
    ("400 to a data request, requestId = the password",
     _with(_scripted(error(400, f"req-{PASSWORD}"))), ExportsApiError),
    ("Content-Type of a data answer = the password",
     _with(_scripted(SimResponse(200, {"Content-Type": f"text/x-echo {PASSWORD}"}))),
     ProtocolError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "expected"), [(s[1], s[2]) for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_errors_and_logs_never_carry_secrets(
    scenario: Callable[[Simulator], None],
    expected: type[ExportsApiError],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = simulator(
        [row(n, T0 + timedelta(minutes=n)) for n in range(6)],
        SimulatorConfig(password=PASSWORD),
        page_size=lambda limit: 2,
    )
    with pytest.raises(expected) as caught:
        scenario(sim)
    assert type(caught.value) is expected
    shown = "\n".join(
        [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
    )
    for secret in SECRETS:
        assert secret not in shown
        assert secret not in caplog.text
    assert caplog.records  # the scenario did log something worth checking


def test_every_token_the_simulator_issues_starts_with_the_header_looked_for() -> None:
    answer = login(simulator([]))
    assert answer["token"].startswith(TOKEN_HEADER)
    assert answer["refreshToken"].startswith(TOKEN_HEADER)


@pytest.mark.parametrize("token", [f"{TOKEN_HEADER}.SECRET ", f" {TOKEN_HEADER}.SECRET"])
def test_a_login_token_with_a_space_at_an_end_is_refused_before_it_is_sent(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Over a real socket: h11, which the in-process transport never reaches, refuses such a
    # header value in an error quoting the whole of it.
    caplog.set_level(logging.DEBUG)
    sim = simulator([row(n, T0 + timedelta(minutes=n)) for n in range(3)])
    sim.script(
        SimResponse.from_json({"token": token, "lenderPublicId": LENDER_ID}), times=99, auth=True
    )
    config = sim.config
    credentials = LoginCredentials(config.lender_slug, config.email, config.password)
    with serve(sim) as url:
        reader = ExportsClient(
            url, credentials, retry=RetryPolicy(max_attempts=2), sleep=lambda s: None
        )
        with reader, pytest.raises(ProtocolError) as caught:
            _walk(reader)
    shown = "\n".join(
        [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
    )
    assert "SECRET" not in shown and "SECRET" not in caplog.text


def test_a_malformed_answer_quoting_the_token_is_reported_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Over a real socket: h11 refuses a header line without a colon in an error quoting it.
    # httpcore's own DEBUG trace quotes it too; no instance file or run turns that on.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="d23_pipeline")
    sim = simulator([row(n, T0 + timedelta(minutes=n)) for n in range(3)])
    sim.script(SimResponse(502, {"X-Upstream Request": f"Authorization: Bearer {HELD}"}), times=99)
    with serve(sim) as url:
        reader = ExportsClient(
            url,
            TokenCredentials(sim.lender_public_id, HELD),
            retry=RetryPolicy(max_attempts=2),
            sleep=lambda s: None,
        )
        with reader, pytest.raises(RetriesExhaustedError) as caught:
            _walk(reader)
    shown = "\n".join(
        [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
    )
    assert "RemoteProtocolError" in shown  # what went wrong is still said
    assert HELD not in shown and HELD not in caplog.text


def test_an_answer_naming_many_keys_twice_gives_a_short_error() -> None:
    keys = ", ".join(
        f'"{name}": 1, "{name}": 2' for name in (f"k{n:03}" + "x" * 2_000 for n in range(500))
    )
    body = b'{"body": {"rows": [], "pagination": {"nextCursor": null}, ' + keys.encode() + b"}}"
    sim = simulator([])
    sim.script(SimResponse(200, {"Content-Type": "application/json"}, body), times=99)

    with client(sim) as reader, pytest.raises(ProtocolError) as caught:
        _walk(reader)

    assert len(str(caught.value)) < 1_000
    assert "names 'k000xxxxxx" in str(caught.value) and "and 495 more" in str(caught.value)


@pytest.mark.parametrize("auth", [False, True], ids=["export", "login"])
def test_a_redirect_is_not_followed_so_no_credential_goes_to_another_host(auth: bool) -> None:
    sim = simulator([row(n, T0 + timedelta(minutes=n)) for n in range(3)])
    elsewhere = "https://elsewhere.test/collect"
    sim.script(SimResponse(307, {"Location": elsewhere}), times=99, auth=auth)
    inner, hosts = sim.transport(), []

    def recording(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return inner.handle_request(request)

    reader = client(sim, transport=httpx.MockTransport(recording))
    with pytest.raises(ExportsApiError), reader:
        _walk(reader)

    assert hosts and set(hosts) == {"api.test"}


def test_a_tls_error_naming_a_host_that_shares_the_email_domain_is_shown() -> None:
    # The login's email is no secret: its domain is often the API host's, which TLS names.
    login = httpx.Request(
        "POST",
        "https://stage-v3-api.cleargrid.ai/admin/auth/demo/login",
        json={"email": "analyst@cleargrid.ai", "password": PASSWORD},
    )
    reason = "[SSL: CERTIFICATE_VERIFY_FAILED] not valid for 'stage-v3-api.cleargrid.ai'"

    shown = _connection_failure(httpx.ConnectError(reason, request=login))

    assert shown == f"ConnectError: {reason} [host stage-v3-api.cleargrid.ai]"
    echoed = httpx.ConnectError(f"refused {PASSWORD}", request=login)
    assert (
        _connection_failure(echoed) == f"ConnectError: {WITHHELD} [host stage-v3-api.cleargrid.ai]"
    )


@pytest.mark.parametrize(
    ("lender_id", "accepted"),
    [
        (LENDER_ID, True),
        (LENDER_ID.upper(), True),
        (LENDER_ID.replace("-", ""), True),
        ("{" + LENDER_ID + "}", True),
        (PASSWORD, False),
        (f"{LENDER_ID}\n2026-12-03 INFO forged", False),
    ],
)
def test_a_login_answers_lender_id_is_taken_in_any_form_of_a_uuid_only(
    lender_id: str, accepted: bool
) -> None:
    assert is_uuid(lender_id) is accepted


def test_a_request_httpx_refuses_to_send_is_named_without_its_headers() -> None:
    refused = httpx.LocalProtocolError(f"Illegal header value b'Bearer {TOKEN_HEADER}.SECRET '")
    assert _connection_failure(refused) == "LocalProtocolError"


def test_a_request_id_is_shown_printable_and_cut_and_withheld_when_it_echoes_a_credential() -> None:
    request = httpx.Request(
        "POST", "http://127.0.0.1/api/v1/auth/login", json={"password": PASSWORD}
    )
    answer = httpx.Response(401, request=request)

    forged = "req-1\n2026-12-03 INFO d23_pipeline.client: all good" + "x" * 200
    shown = shown_request_id(forged, answer)
    assert shown == forged.replace("\n", "?")[:100] + "..."  # no forged log line, 100 kept
    assert shown_request_id(f"id-{PASSWORD[-8:]}", answer) == WITHHELD
    assert shown_request_id(f"id-{PASSWORD[-7:]}", answer) == f"id-{PASSWORD[-7:]}"
    assert shown_request_id("req-7f3a", httpx.Response(500)) == "req-7f3a"  # no request known
    # A credential of a few characters is in ids by chance, not by echo.
    short = httpx.Response(401, request=httpx.Request("POST", request.url, json={"password": "7"}))
    assert shown_request_id("req-7f3a", short) == "req-7f3a"


# No 8 characters in a row of each password survive its echo unchanged.
QUOTED = 'ab"cdéfg\\hijklm"n/+'
SLASHED = "ab/cdefg/hijklm/n"
HTML = "ab&cdefg<hijklm>n"
NON_ASCII = "Grün-Käse-Öl1"  # each 8 characters in a row hold one


@pytest.mark.parametrize(
    ("password", "echo"),
    [
        (QUOTED, lambda pw: json.dumps({"password": pw})),  # JSON, non-ASCII escaped
        (QUOTED, lambda pw: json.dumps({"password": pw}, ensure_ascii=False)),  # '"', '\\'
        (SLASHED, lambda pw: json.dumps(pw).replace("/", "\\/")),  # JSON, '/' as '\\/'
        (HTML, html.escape),
        (QUOTED, lambda pw: quote(pw, safe="")),  # percent-encoded
        (QUOTED, quote_plus),  # form-encoded
        (NON_ASCII, ascii),  # as Python quotes text: \xfc
        (NON_ASCII, lambda pw: str(bytearray(pw.encode()))),  # a protocol error's bytes: \xc3\xbc
    ],
    ids=["json-ascii", "json", "json-slash", "html", "percent", "form", "python", "bytes"],
)
def test_a_request_id_echoing_a_credential_escaped_or_encoded_is_withheld(
    password: str, echo: Callable[[str], str]
) -> None:
    request = httpx.Request(
        "POST", "http://127.0.0.1/api/v1/auth/login", json={"password": password}
    )
    answer = httpx.Response(401, request=request)
    assert shown_request_id(f"waf-{echo(password)}", answer) == WITHHELD
