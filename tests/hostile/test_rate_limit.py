"""The per-IP form rate limit: 429 with Retry-After, and X-Forwarded-For believed only from a
configured trusted proxy (anyone else could pick a fresh address for every request)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.config import Settings
from tests.hostile.conftest import assert_json_error, stored


def _body(i: int) -> dict[str, str]:
    return {"name": "Rate", "email": f"rate{i}@example.com", "message": f"hello {i}"}


@pytest.fixture
async def limited_hub(
    request: pytest.FixtureRequest, settings_factory: Callable[..., Settings]
) -> AsyncIterator[Hub]:
    web: dict[str, Any] = {"form_rate_limit": "3/m", **getattr(request, "param", {})}
    hub = Hub(settings_factory(web=web))
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def test_fourth_submission_in_a_minute_is_429_with_retry_after(
    limited_hub: Hub, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{limited_hub.web_port}/forms/contact"
    for i in range(3):
        assert (await http.post(url, json=_body(i))).status == 201
    before = await stored(limited_hub)
    resp = await http.post(url, json=_body(3))
    body = await assert_json_error(resp, 429)
    assert body["error"] == "rate_limited"
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert await stored(limited_hub) == before


async def test_a_browser_over_the_limit_gets_the_form_again_with_retry_after(
    limited_hub: Hub, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{limited_hub.web_port}/forms/contact"
    for i in range(3):
        assert (await http.post(url, json=_body(i))).status == 201
    before = await stored(limited_hub)
    resp = await http.post(url, data={**_body(3), "_token": "token-0003"}, headers={"Accept-Language": "uk"})
    assert (resp.status, resp.content_type, resp.charset) == (429, "text/html", "utf-8")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    page = await resp.text()
    # Readable Ukrainian, not JSON escapes; the same token, so the retry is still one submission.
    assert "Забагато звернень з вашої адреси" in page and "\\u" not in page
    assert 'name="_token" value="token-0003"' in page and 'value="rate3@example.com"' in page
    assert await stored(limited_hub) == before


async def test_forwarded_for_is_ignored_without_a_trusted_proxy(
    limited_hub: Hub, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{limited_hub.web_port}/forms/contact"
    for i in range(3):
        resp = await http.post(url, json=_body(i), headers={"X-Forwarded-For": f"198.51.100.{i}"})
        assert resp.status == 201
    resp = await http.post(url, json=_body(9), headers={"X-Forwarded-For": "198.51.100.77"})
    await assert_json_error(resp, 429)


@pytest.mark.parametrize("limited_hub", [{"trusted_proxies": ["127.0.0.1/32"]}], indirect=True)
async def test_forwarded_for_from_a_trusted_proxy_limits_the_real_client(
    limited_hub: Hub, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{limited_hub.web_port}/forms/contact"
    # Two customers behind one proxy: each has their own budget.
    for i in range(3):
        assert (await http.post(url, json=_body(i), headers={"X-Forwarded-For": "203.0.113.5"})).status == 201
        assert (
            await http.post(url, json=_body(100 + i), headers={"X-Forwarded-For": "203.0.113.6"})
        ).status == 201
    resp = await http.post(url, json=_body(50), headers={"X-Forwarded-For": "203.0.113.5"})
    await assert_json_error(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    # A spoofed left-most hop does not buy a fresh budget: the nearest untrusted hop counts.
    resp = await http.post(url, json=_body(51), headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.5"})
    await assert_json_error(resp, 429)
    # The proxy itself (no header) has its own budget.
    assert (await http.post(url, json=_body(60))).status == 201


@pytest.mark.parametrize("limited_hub", [{"trusted_proxies": ["10.0.0.0/8"]}], indirect=True)
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    limited_hub: Hub, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{limited_hub.web_port}/forms/contact"
    for i in range(3):
        assert (
            await http.post(url, json=_body(i), headers={"X-Forwarded-For": f"203.0.113.{i}"})
        ).status == 201
    resp = await http.post(url, json=_body(7), headers={"X-Forwarded-For": "203.0.113.99"})
    await assert_json_error(resp, 429)


@pytest.mark.parametrize("limited_hub", [{"trusted_proxies": ["127.0.0.1/32"]}], indirect=True)
async def test_garbage_forwarded_for_does_not_crash(limited_hub: Hub, http: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{limited_hub.web_port}/forms/contact"
    for i, value in enumerate(["", ",,,", "not-an-ip", "[::1]:80", "1.2.3.4\t, ,", "x" * 4000]):
        resp = await http.post(url, json=_body(i), headers={"X-Forwarded-For": value})
        assert resp.status in (201, 429), value
