"""Dashboard test helpers: managers with passwords, signing in with a real cookie jar."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import aiohttp

from hub.web.dashboard.auth import hash_password

PASSWORDS = {
    "olena": "olena-pass-1",
    "taras": "taras-pass-2",
    "iryna": "iryna-pass-3",
    "andrii": "andrii-pass-4",
}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@cache
def _hashes() -> dict[str, str]:
    return {manager: hash_password(password) for manager, password in PASSWORDS.items()}


def managers_with_passwords() -> list[dict[str, Any]]:
    """The test config's four managers, each with an argon2 password hash."""
    hashes = _hashes()
    return [
        {"id": "olena", "name": "Олена Коваль", "role": "lead", "teams": ["support"], "telegram_id": 111,
         "password_hash": hashes["olena"]},
        {"id": "taras", "name": "Тарас Бондар", "role": "agent", "teams": ["support"], "telegram_id": 222,
         "password_hash": hashes["taras"]},
        {"id": "iryna", "name": "Ірина Мельник", "role": "agent", "teams": ["service"], "telegram_id": 333,
         "password_hash": hashes["iryna"]},
        {"id": "andrii", "name": "Андрій Шевчук", "role": "lead", "teams": ["service"], "telegram_id": 444,
         "password_hash": hashes["andrii"]},
    ]  # fmt: skip


def csrf_from(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


async def sign_in(base_url: str, manager: str) -> tuple[aiohttp.ClientSession, str]:
    """A client session signed in as `manager` and its CSRF token (close the session after use)."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    page = await session.get(f"{base_url}/dashboard/login")
    csrf = csrf_from(await page.text())
    resp = await session.post(
        f"{base_url}/dashboard/login",
        data={"csrf": csrf, "username": manager, "password": PASSWORDS[manager], "next": "/dashboard"},
    )
    assert resp.status == 200 and str(resp.url).endswith("/dashboard"), (resp.status, resp.url)
    return session, csrf_from(await resp.text())
