"""Web forms and the REST API, end to end over loopback HTTP against a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timedelta

import aiohttp

from hub.app import Hub


async def _submit(
    http: aiohttp.ClientSession, base_url: str, form: str, **fields: str
) -> aiohttp.ClientResponse:
    return await http.post(f"{base_url}/forms/{form}", json=fields)


async def test_contact_form_json_creates_assigned_lead_due_in_4h(hub: Hub, http, base_url, auth) -> None:
    resp = await _submit(
        http, base_url, "contact", name="Олена", email="olena@example.com", message="Привіт!"
    )
    assert resp.status == 201
    body = await resp.json()
    assert body["lead"] == "L-1"
    assert body["kind"] == "message"
    leads = await (await http.get(f"{base_url}/api/v1/leads", headers=auth)).json()
    (lead,) = leads["items"]
    assert lead["assignee"] in {"olena", "taras"}
    created = datetime.fromisoformat(lead["created_at"])
    due = datetime.fromisoformat(lead["first_response_due"])
    assert due - created == timedelta(hours=4)


async def test_service_form_is_due_in_12h_and_goes_to_service_team(hub: Hub, http, base_url, auth) -> None:
    resp = await _submit(
        http, base_url, "service", name="Петро", phone="+380 67 123 45 67", message="Зламався котел"
    )
    assert resp.status == 201
    body = await resp.json()
    assert body["kind"] == "service_request"
    lead = await (await http.get(f"{base_url}/api/v1/leads/{body['lead']}", headers=auth)).json()
    assert lead["team"] == "service"
    assert lead["assignee"] in {"iryna", "andrii"}
    due = datetime.fromisoformat(lead["first_response_due"]) - datetime.fromisoformat(lead["created_at"])
    assert due == timedelta(hours=12)
    assert lead["contact"]["identities"] == [{"kind": "phone", "value": "+380671234567"}]
    assert [m["text"] for m in lead["messages"]] == ["Зламався котел"]
    assert {"lead.created", "lead.assigned", "message.added"} <= {e["type"] for e in lead["events"]}
