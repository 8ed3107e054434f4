"""Configurable access limits over loopback HTTP: the dashboard's sign-in rate limits and the
optional bearer token on /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from hub.config import Settings
from tests.support.dashboard import PASSWORDS, csrf_from, managers_with_passwords

METRICS_TOKEN = "metrics-token-7c1e9a"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], request: pytest.FixtureRequest) -> Settings:
    web: dict[str, Any] = getattr(request, "param", {})
    return settings_factory(managers=managers_with_passwords(), web=web)


async def _try_sign_in(
    session: aiohttp.ClientSession, base_url: str, csrf: str, username: str, password: str
) -> aiohttp.ClientResponse:
    return await session.post(
        f"{base_url}/dashboard/login",
        data={"csrf": csrf, "username": username, "password": password, "next": "/dashboard"},
        allow_redirects=False,
    )


@pytest.mark.parametrize(
    "settings", [{"login_rate_limit": "3/m", "login_manager_rate_limit": "0"}], indirect=True
)
async def test_configured_per_address_sign_in_limit_applies(base_url: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        csrf = csrf_from(await (await session.get(f"{base_url}/dashboard/login")).text())
        # Different manager ids from one address: only the per-address limit (3/m) counts.
        statuses = [
            (await _try_sign_in(session, base_url, csrf, name, "guess")).status
            for name in ("taras", "iryna", "andrii")
        ]
        assert statuses == [401, 401, 401]
        limited = await _try_sign_in(session, base_url, csrf, "olena", PASSWORDS["olena"])
        assert limited.status == 429  # even the right password waits
        assert 1 <= int(limited.headers["Retry-After"]) <= 61


@pytest.mark.parametrize(
    "settings", [{"login_rate_limit": "0", "login_manager_rate_limit": "2/h"}], indirect=True
)
async def test_configured_per_manager_sign_in_limit_applies(base_url: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        csrf = csrf_from(await (await session.get(f"{base_url}/dashboard/login")).text())
        statuses = [(await _try_sign_in(session, base_url, csrf, "Taras", "guess")).status for _ in range(2)]
        assert statuses == [401, 401]
        limited = await _try_sign_in(session, base_url, csrf, "taras", PASSWORDS["taras"])
        assert limited.status == 429
        assert 3500 <= int(limited.headers["Retry-After"]) <= 3601  # the configured hour, not a minute
        # Other managers from the same address are not held up (the per-address limit is off).
        for _ in range(2):
            assert (await _try_sign_in(session, base_url, csrf, "iryna", "guess")).status == 401
        assert (await _try_sign_in(session, base_url, csrf, "olena", PASSWORDS["olena"])).status == 303


async def test_metrics_are_open_without_a_token(http: aiohttp.ClientSession, base_url: str) -> None:
    resp = await http.get(f"{base_url}/metrics")
    assert resp.status == 200 and "hub_store_up 1.0" in await resp.text()
    # A stray Authorization header changes nothing while no token is configured.
    resp = await http.get(f"{base_url}/metrics", headers={"Authorization": "Bearer whatever"})
    assert resp.status == 200


@pytest.mark.parametrize("settings", [{"metrics_token": METRICS_TOKEN}], indirect=True)
async def test_metrics_need_the_bearer_token_when_one_is_set(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    refused = [
        {},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": METRICS_TOKEN},
    ]
    for headers in refused:
        resp = await http.get(f"{base_url}/metrics", headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        text = await resp.text()
        assert "hub_" not in text and METRICS_TOKEN not in text
    resp = await http.get(f"{base_url}/metrics", params={"token": METRICS_TOKEN})
    assert resp.status == 401  # only the header, never the query string (it ends up in logs)
    ok = await http.get(f"{base_url}/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN}"})
    assert ok.status == 200 and ok.headers["Content-Type"].startswith("text/plain")
    assert "hub_store_up 1.0" in await ok.text()
    # The rest of the hub does not take the metrics token for anything else.
    health = await http.get(f"{base_url}/healthz")
    assert health.status == 200
    api = await http.get(f"{base_url}/api/v1/leads", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert api.status == 401
