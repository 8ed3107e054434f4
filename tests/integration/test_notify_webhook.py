"""The outgoing webhook against a real HTTP server on loopback: JSON body, signature, retries."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from hub.app import Hub
from hub.config import Settings
from hub.domain import Identity, IdentityKind, Inbound, LeadKind

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class Receiver:
    """A webhook endpoint that fails the first `fail` requests with 503."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.fail = fail
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if len(self.requests) <= self.fail:
            return web.Response(status=self.status, text="try later")
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver(fail=2)
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    recv.url = f"http://127.0.0.1:{port}/hook"
    yield recv
    await runner.cleanup()


async def _breach_one(settings: Settings) -> Hub:
    hub = Hub(settings)
    await hub.store.open()
    inbound = Inbound(
        channel="webform",
        external_id="wh-1",
        sender=Identity(IdentityKind.EMAIL, "hook@example.com"),
        text="Де моє замовлення?",
        received_at=T0,
        kind_hint=LeadKind.MESSAGE,
    )
    await hub.intake.accept(inbound, now=T0)
    await hub.sweeper.sweep(T0 + timedelta(hours=5))
    assert hub.webhook is not None
    await hub.webhook.drain()
    return hub


async def test_breach_is_posted_with_signature_after_retries(
    settings_factory: Any, receiver: Receiver
) -> None:
    settings = settings_factory(
        notify={"webhook": {"url": receiver.url, "backoff_base": 0.05, "max_attempts": 5, "secret": "s3cret"}}
    )
    hub = await _breach_one(settings)
    try:
        bodies = [json.loads(body) for _, body in receiver.requests]
        events = [b["event"] for b in bodies]
        # The warning and the breach; the first two posts got 503 and were retried.
        assert sorted(set(events)) == ["sla.breached", "sla.warning"]
        assert hub.webhook is not None and hub.webhook.delivered == 2 and hub.webhook.failed == 0
        assert len(receiver.requests) == 4
        headers, raw = next((h, b) for h, b in receiver.requests if json.loads(b)["event"] == "sla.breached")
        expected = "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
        assert headers["X-Hub-Signature-256"] == expected
        breach = json.loads(raw)
        assert breach["lead"] == "L-1"
        assert breach["data"]["target"] == "first_response"
        assert breach["lead_summary"]["assignee"] in {"olena", "taras"}
    finally:
        assert hub.webhook is not None
        await hub.webhook.close()
        await hub.store.close()


async def test_client_error_is_not_retried(settings_factory: Any, receiver: Receiver) -> None:
    receiver.fail, receiver.status = 100, 400
    settings = settings_factory(
        notify={"webhook": {"url": receiver.url, "backoff_base": 0.05, "events": ["sla.breached"]}}
    )
    hub = await _breach_one(settings)
    try:
        assert len(receiver.requests) == 1
        assert hub.webhook is not None and hub.webhook.failed == 1
    finally:
        assert hub.webhook is not None
        await hub.webhook.close()
        await hub.store.close()
