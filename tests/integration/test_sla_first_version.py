"""The SLA sweep (APScheduler job) marks an unanswered lead breached exactly once."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from hub.app import Hub
from tests.support.settings import make_settings


async def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_unanswered_lead_breaches_once_answered_lead_does_not(
    tmp_path, http: aiohttp.ClientSession, auth
) -> None:
    settings = make_settings(
        tmp_path,
        sla={
            "check_every": "1s",
            "policies": {"message": {"first_response": "2s"}, "service_request": {"first_response": "2s"}},
        },
    )
    hub = Hub(settings)
    await hub.start()
    try:
        base = f"http://127.0.0.1:{hub.web_port}"
        first = await (
            await http.post(f"{base}/forms/contact", json={"email": "a@example.com", "message": "1"})
        ).json()
        second = await (
            await http.post(f"{base}/forms/contact", json={"email": "b@example.com", "message": "2"})
        ).json()
        reply = await http.post(
            f"{base}/api/v1/leads/{second['lead']}/replies",
            json={"text": "Відповідаємо!", "author": "olena"},
            headers=auth,
        )
        assert reply.status == 201

        async def breached() -> bool:
            lead = await (await http.get(f"{base}/api/v1/leads/{first['lead']}", headers=auth)).json()
            return bool(lead["breached"])

        await _wait_for(breached)
        await asyncio.sleep(2.5)  # two more sweeps must not add a second mark
        events = await hub.store.list_events(types=["sla.breached"])
        assert [e.lead_number for e in events] == [1]
        answered = await (await http.get(f"{base}/api/v1/leads/{second['lead']}", headers=auth)).json()
        assert answered["breached"] is False
        assert answered["first_response_at"] is not None
        assert answered["status"] == "waiting_customer"
        breached_list = await (await http.get(f"{base}/api/v1/leads?breached=true", headers=auth)).json()
        assert [i["lead"] for i in breached_list["items"]] == [first["lead"]]
    finally:
        await hub.stop()
