"""Login, refresh on 401 (once, even for many threads), re-login, and held tokens."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import orjson
import pytest
from test_client_fakeapi import (
    BASE_URL,
    DAY,
    EMAIL,
    LENDER_ID,
    SLUG,
    FakeApi,
    error,
    ids_in,
    rows_at,
    walk_ids,
)

from d23_pipeline.client import AuthenticationError, ExportsClient, SlicePage
from d23_pipeline.settings import LoginCredentials, TokenCredentials


def test_login_gives_the_lender_id_and_a_bearer_token_for_data_calls() -> None:
    api = FakeApi(rows_at(range(3)))
    with api.client() as client:
        assert client.lender_public_id == LENDER_ID
        walk_ids(client)
    login, data = api.requests
    assert login.url.path == f"/admin/auth/{SLUG}/login"
    assert orjson.loads(login.content) == {"email": EMAIL, "password": api.password}
    assert data.url.path == f"/admin/v3/lenders/{LENDER_ID}/exports/S4/D23"
    assert data.headers["authorization"] == "Bearer tok-1"


def test_token_expiry_mid_walk_refreshes_once_and_keeps_every_row() -> None:
    api = FakeApi(rows_at(range(9)), page_size=lambda limit: 2)
    with api.client() as client:
        pages = client.iter_window(DAY)
        first = next(pages)
        api.expire_tokens()
        ids = [r["public_id"] for page in [first, *pages] for r in page.rows]
        assert client.stats.token_refreshes == 1
    assert ids == ids_in(api)
    assert (api.logins, api.refreshes) == (1, 1)


def test_a_failed_refresh_falls_back_to_a_fresh_login() -> None:
    api = FakeApi(rows_at(range(9)), page_size=lambda limit: 2)
    with api.client() as client:
        pages = client.iter_window(DAY)
        first = next(pages)
        api.expire_tokens()
        api.refresh_tokens.clear()
        ids = [r["public_id"] for page in [first, *pages] for r in page.rows]
    assert ids == ids_in(api)
    assert (api.logins, api.refreshes) == (2, 0)


def test_a_refused_relogin_is_an_authentication_error() -> None:
    api = FakeApi(rows_at(range(9)), page_size=lambda limit: 2)
    with api.client() as client:
        pages = client.iter_window(DAY)
        next(pages)
        api.expire_tokens()
        api.refresh_tokens.clear()
        api.password = "changed"
        with pytest.raises(AuthenticationError, match="login for lender 'demo' refused"):
            list(pages)


def test_a_401_that_survives_refresh_and_relogin_is_an_authentication_error() -> None:
    api = FakeApi(rows_at(range(3)))
    api.inject(error(401, "req-401"), times=99)
    with api.client() as client, pytest.raises(AuthenticationError, match="still answers 401"):
        walk_ids(client)
    assert (api.logins, api.refreshes) == (2, 1)


def test_wrong_password_is_an_authentication_error() -> None:
    api = FakeApi(rows_at(range(3)))
    api.password = "right"
    client = ExportsClient(
        BASE_URL,
        LoginCredentials(SLUG, EMAIL, "wrong"),
        transport=api.transport(),
    )
    with client, pytest.raises(AuthenticationError) as caught:
        client.lender_public_id  # noqa: B018 - the property logs in
    assert "HTTP 401" in str(caught.value) and "req-login" in str(caught.value)


def test_login_survives_a_transient_failure() -> None:
    api = FakeApi(rows_at(range(3)))
    api.inject(error(503), auth=True)
    with api.client() as client:
        assert walk_ids(client) == ids_in(api)
        assert client.stats.as_dict()["retries"] == {"503": 1}


def test_a_held_token_is_sent_as_is() -> None:
    api = FakeApi(rows_at(range(3)))
    api.tokens.add("held-token")
    credentials = TokenCredentials(LENDER_ID, "held-token")
    with ExportsClient(BASE_URL, credentials, transport=api.transport()) as client:
        assert walk_ids(client) == ids_in(api)
        assert client.lender_public_id == LENDER_ID
    assert api.logins == 0


def test_a_rejected_held_token_is_an_authentication_error_without_refresh() -> None:
    api = FakeApi(rows_at(range(3)))
    credentials = TokenCredentials(LENDER_ID, "stale-token")
    with (
        ExportsClient(BASE_URL, credentials, transport=api.transport()) as client,
        pytest.raises(AuthenticationError, match="cannot be refreshed"),
    ):
        walk_ids(client)
    assert api.logins == api.refreshes == 0


def test_concurrent_401s_cause_a_single_refresh() -> None:
    api = FakeApi(rows_at(range(0, 86_400_000, 3_600_000)))
    barrier = threading.Barrier(4)

    def all_at_once(request: httpx.Request) -> httpx.Response:
        barrier.wait(timeout=5)  # all four workers hold the same token at the same moment
        return httpx.Response(401, json={"success": False})

    api.inject(
        all_at_once, times=4, when=lambda r: r.headers.get("authorization") == "Bearer tok-1"
    )
    with api.client(max_concurrency=4, slice_size=timedelta(hours=6)) as client:
        events = list(client.iter_slices(DAY))
        assert client.stats.token_refreshes == 1
    ids = sorted(r["public_id"] for e in events if isinstance(e, SlicePage) for r in e.rows)
    assert ids == ids_in(api)
    assert (api.logins, api.refreshes) == (1, 1)
