"""Helpers for hostile-input tests: what the store holds, and the API's error shape."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from hub.app import Hub
from storage.base import LeadQuery


@dataclass(frozen=True)
class Stored:
    """A fingerprint of everything intake can write: raw inbox rows and leads."""

    inbox: int
    newest_lead: int


async def stored(hub: Hub) -> Stored:
    """How many inbox rows (any status) and the newest lead number, read from the store."""
    rows = 0
    for status in ("pending", "done", "quarantined"):
        rows += len(await hub.store.inbox_list(status, limit=100_000))
    page = await hub.store.list_leads(LeadQuery(), 1)
    return Stored(rows, page.items[0].number if page.items else 0)


async def assert_json_error(resp: aiohttp.ClientResponse, status: int | tuple[int, ...]) -> dict[str, object]:
    """The response has the expected status and the API's `{"error", "detail"}` JSON body."""
    expected = (status,) if isinstance(status, int) else status
    text = await resp.text()
    assert resp.status in expected, f"{resp.status} (expected {expected}): {text[:500]}"
    assert resp.content_type == "application/json", f"{resp.content_type}: {text[:500]}"
    body = await resp.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body
