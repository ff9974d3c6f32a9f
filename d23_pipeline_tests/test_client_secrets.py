"""No error message, repr, traceback or log line ever carries a password or token."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from test_client_fakeapi import BASE_URL, DAY, EMAIL, SLUG, T0, FakeApi, error, html, raises, row

from d23_pipeline.client import (
    AuthenticationError,
    CursorLoopError,
    DatasetNotFoundError,
    ExportsApiError,
    ExportsClient,
    LenderMismatchError,
    ProtocolError,
    RetriesExhaustedError,
    WindowTooHeavyError,
)
from d23_pipeline.settings import LoginCredentials, TokenCredentials

PASSWORD = "PW-SECRET-e1f2"
PREFIX = "TOKEN-SECRET-"  # every issued access and refresh token starts with this
HELD = "HELD-SECRET-9a8b"
SECRETS = (PASSWORD, PREFIX, HELD, "SECRET")


def _walk(client: ExportsClient) -> None:
    for _ in client.iter_window(DAY):
        pass


def _after_first_page(prepare: Callable[[FakeApi], None]) -> Callable[[FakeApi], None]:
    def run(api: FakeApi) -> None:
        with api.client() as client:
            pages = client.iter_window(DAY)
            next(pages)
            prepare(api)
            list(pages)

    return run


def _with(inject: Callable[[FakeApi], None], **options: object) -> Callable[[FakeApi], None]:
    def run(api: FakeApi) -> None:
        inject(api)
        with api.client(**options) as client:  # type: ignore[arg-type]
            _walk(client)

    return run


def _wrong_password(api: FakeApi) -> None:
    credentials = LoginCredentials(SLUG, EMAIL, PASSWORD + "-wrong")
    with ExportsClient(BASE_URL, credentials, transport=api.transport()) as client:
        _walk(client)


def _held_token(api: FakeApi) -> None:
    credentials = TokenCredentials("7f1c2d3e-0000-4000-8000-00000000d23a", HELD)
    with ExportsClient(BASE_URL, credentials, transport=api.transport()) as client:
        _walk(client)


def _relogin_refused(api: FakeApi) -> None:
    api.expire_tokens()
    api.refresh_tokens.clear()
    api.password = "rotated"


def _loop_page(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"body": {"rows": [], "pagination": {"nextCursor": "c"}}})


def _heavy(api: FakeApi) -> None:
    api.heavy = lambda since, until, limit: True


SCENARIOS: list[tuple[str, Callable[[FakeApi], None], type[ExportsApiError]]] = [
    ("login refused", _wrong_password, AuthenticationError),
    ("held token rejected", _held_token, AuthenticationError),
    ("relogin refused mid-walk", _after_first_page(_relogin_refused), AuthenticationError),
    ("401 forever", _with(lambda a: a.inject(error(401), times=99)), AuthenticationError),
    ("403", _with(lambda a: a.inject(error(403), times=99)), LenderMismatchError),
    ("404", _with(lambda a: a.inject(error(404), times=99)), DatasetNotFoundError),
    ("500 forever", _with(lambda a: a.inject(error(500), times=99)), RetriesExhaustedError),
    (
        "timeouts",
        _with(lambda a: a.inject(raises(httpx.ReadTimeout), times=99)),
        RetriesExhaustedError,
    ),
    (
        "login 503s",
        _with(lambda a: a.inject(error(503), times=99, auth=True)),
        RetriesExhaustedError,
    ),
    ("html 200s", _with(lambda a: a.inject(html(200), times=99)), ProtocolError),
    ("504 at floor", _with(_heavy, min_window=timedelta(hours=12)), WindowTooHeavyError),
    ("cursor loop", _with(lambda a: a.inject(_loop_page, times=99)), CursorLoopError),
    ("teapot", _with(lambda a: a.inject(error(418))), ExportsApiError),
]


@pytest.mark.parametrize(
    ("scenario", "expected"), [(s[1], s[2]) for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_errors_and_logs_never_carry_secrets(
    scenario: Callable[[FakeApi], None],
    expected: type[ExportsApiError],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api = FakeApi(
        [row(n, T0 + timedelta(minutes=n)) for n in range(6)],
        page_size=lambda limit: 2,
        password=PASSWORD,
        secret_prefix=PREFIX,
    )
    with pytest.raises(expected) as caught:
        scenario(api)
    assert type(caught.value) is expected
    shown = "\n".join(
        [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
    )
    for secret in SECRETS:
        assert secret not in shown
        assert secret not in caplog.text
    assert caplog.records  # the scenario did log something worth checking
