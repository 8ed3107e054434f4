"""Web forms and the REST API, end to end over loopback HTTP against a real SQLite file."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import aiohttp

from channels.webform import stored_payload, validate_submission
from hub.app import Hub
from hub.domain import (
    DeliveryState,
    Direction,
    Identity,
    IdentityKind,
    LeadKind,
    Message,
    new_id,
    utcnow,
)


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


async def test_idempotency_key_makes_double_submit_one_lead(hub: Hub, http, base_url) -> None:
    headers = {"Idempotency-Key": "submit-0001-abc"}
    fields = {"email": "twice@example.com", "message": "double click"}
    first = await http.post(f"{base_url}/forms/contact", json=fields, headers=headers)
    second = await http.post(f"{base_url}/forms/contact", json=fields, headers=headers)
    assert (first.status, second.status) == (201, 200)
    assert (await first.json())["lead"] == (await second.json())["lead"] == "L-1"
    assert len(await hub.store.list_messages(1)) == 1


async def test_idempotency_key_reused_for_other_fields_is_422_and_stores_nothing(
    hub: Hub, http, base_url
) -> None:
    headers = {"Idempotency-Key": "idem-key-00000001", "Accept-Language": "uk"}
    first = {"name": "Перший", "email": "first@example.com", "message": "first body"}
    created = await http.post(f"{base_url}/forms/contact", json=first, headers=headers)
    assert created.status == 201 and (await created.json())["lead"] == "L-1"
    inbox = await hub.store.inbox_list("done")

    second = {"name": "Другий", "email": "second@example.com", "message": "SECOND body"}
    reused = await http.post(f"{base_url}/forms/contact", json=second, headers=headers)
    assert reused.status == 422
    body = await reused.json()
    assert body["error"] == "idempotency_key_reused"
    assert "Idempotency-Key" in body["detail"] and "новий ключ" in body["detail"]
    assert await hub.store.inbox_list("done") == inbox and await hub.store.inbox_list("pending") == []
    assert await hub.store.get_lead(2) is None
    assert [m.text for m in await hub.store.list_messages(1)] == ["first body"]

    # A true retry: the same fields once validated, though the JSON's spacing, the padding of
    # the values and the language differ.
    retry = '{ "name" : " Перший ",\n "email": "First@Example.com", "message": "first body", "lang": "en" }'
    again = await http.post(
        f"{base_url}/forms/contact", data=retry, headers={**headers, "Content-Type": "application/json"}
    )
    assert again.status == 200 and (await again.json())["lead"] == "L-1"


async def test_a_browser_reusing_its_token_for_other_fields_gets_the_form_with_a_new_token(
    hub: Hub, http, base_url
) -> None:
    fields = {"email": "tok@example.com", "message": "first", "_token": "form-token-0002", "lang": "uk"}
    assert (await http.post(f"{base_url}/forms/contact", data=fields)).status == 201
    resp = await http.post(f"{base_url}/forms/contact", data={**fields, "message": "edited after Back"})
    assert (resp.status, resp.content_type) == (422, "text/html")
    page = await resp.text()
    assert "Цю форму вже надіслано з іншим вмістом" in page and "edited after Back" in page
    assert 'value="form-token-0002"' not in page
    assert await hub.store.get_lead(2) is None
    assert [m.text for m in await hub.store.list_messages(1)] == ["first"]


async def test_a_quarantined_key_still_answers_202(hub: Hub, http, base_url) -> None:
    _, result = await hub.inbox.submit("webform", "contact:quarantined-key-01", b"not json")
    assert result is None and len(await hub.store.inbox_list("quarantined")) == 1
    resp = await http.post(
        f"{base_url}/forms/contact",
        json={"email": "q@example.com", "message": "other"},
        headers={"Idempotency-Key": "quarantined-key-01"},
    )
    assert resp.status == 202 and (await resp.json())["error"] == "not_processed"
    assert await hub.store.get_lead(1) is None


async def test_browser_double_submit_thanks_twice_but_the_second_answer_is_200(
    hub: Hub, http, base_url
) -> None:
    fields = {"email": "twice@example.com", "message": "double click", "_token": "form-token-0001"}
    first = await http.post(f"{base_url}/forms/contact", data=fields)
    second = await http.post(f"{base_url}/forms/contact", data=fields)
    assert (first.status, second.status) == (201, 200)
    for resp in (first, second):
        assert resp.content_type == "text/html"
        assert 'data-lead="L-1"' in await resp.text()
    assert len(await hub.store.list_messages(1)) == 1


async def test_validation_errors_are_field_level_and_store_nothing(hub: Hub, http, base_url) -> None:
    resp = await http.post(f"{base_url}/forms/contact", json={"email": "nope", "phone": "12", "message": ""})
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "validation_failed"
    assert set(body["fields"]) == {"email", "phone", "message"}
    assert await hub.store.get_lead(1) is None
    assert await hub.store.inbox_list("pending") == [] and await hub.store.inbox_list("done") == []


async def test_unknown_form_oversized_body_and_honeypot(hub: Hub, http, base_url) -> None:
    assert (await http.post(f"{base_url}/forms/nope", json={"message": "x"})).status == 404
    assert (await http.get(f"{base_url}/forms/nope")).status == 404
    big = await http.post(f"{base_url}/forms/contact", json={"email": "a@b.cd", "message": "x" * 400_000})
    assert big.status == 413
    assert (await big.json())["error"] == "too_large"
    bot = await http.post(
        f"{base_url}/forms/contact", json={"email": "a@b.cd", "message": "buy", "website": "http://spam"}
    )
    assert bot.status == 400
    assert await hub.store.get_lead(1) is None


async def test_rate_limit_answers_429_with_retry_after(settings_factory, http) -> None:
    hub = Hub(settings_factory(web={"form_rate_limit": "2/m"}))
    await hub.start()
    try:
        url = f"http://127.0.0.1:{hub.web_port}/forms/contact"
        statuses = [
            (await http.post(url, json={"email": f"r{i}@example.com", "message": "hi"})).status
            for i in range(3)
        ]
        assert statuses == [201, 201, 429]
        limited = await http.post(url, json={"email": "r9@example.com", "message": "hi"})
        assert int(limited.headers["Retry-After"]) > 0
    finally:
        await hub.stop()


async def test_api_requires_the_bearer_token(hub: Hub, http, base_url) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        resp = await http.get(f"{base_url}/api/v1/leads", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
    health = await (await http.get(f"{base_url}/healthz")).json()
    assert health == {"status": "ok", "storage": "sqlite"}


async def test_a_blank_api_token_in_the_config_keeps_the_api_closed(settings_factory, http) -> None:
    # `api: {token: ""}` let anyone in who sent `Authorization: Bearer ` with nothing after it.
    hub = Hub(settings_factory(api={"token": ""}, web={"secret_key": "  "}))
    await hub.start()
    try:
        for headers in ({"Authorization": "Bearer "}, {"Authorization": "Bearer"}, {}):
            resp = await http.get(f"http://127.0.0.1:{hub.web_port}/api/v1/leads", headers=headers)
            assert resp.status == 401, await resp.text()
    finally:
        await hub.stop()
    # The same for every key that signs or authenticates: blank is unset, never an empty key.
    assert hub.settings.api.token is None and hub.settings.web.secret_key is None


async def test_api_lead_lifecycle(hub: Hub, http, base_url, auth) -> None:
    created = await http.post(
        f"{base_url}/api/v1/leads",
        json={
            "name": "CRM",
            "email": "crm@example.com",
            "text": "From the website backend",
            "kind": "service_request",
            "external_id": "crm-42",
        },
        headers=auth,
    )
    assert created.status == 201
    lead = await created.json()
    assert (lead["lead"], lead["channel"], lead["kind"]) == ("L-1", "api", "service_request")
    again = await http.post(
        f"{base_url}/api/v1/leads",
        json={
            "name": "CRM",
            "email": "crm@example.com",
            "text": "From the website backend",
            "kind": "service_request",
            "external_id": "crm-42",
            "language": "uk",
        },
        headers=auth,
    )
    assert again.status == 200 and (await again.json())["lead"] == "L-1"
    other = await http.post(
        f"{base_url}/api/v1/leads",
        json={"email": "crm@example.com", "text": "Another lead", "external_id": "crm-42"},
        headers=auth,
    )
    assert other.status == 422
    assert (await other.json())["error"] == "idempotency_key_reused"
    assert await hub.store.get_lead(2) is None
    assert [m.text for m in await hub.store.list_messages(1)] == ["From the website backend"]

    # The router gave the service request to iryna; staff hand it to andrii.
    assigned = await http.post(
        f"{base_url}/api/v1/leads/L-1/assign", json={"manager": "andrii"}, headers=auth
    )
    assert assigned.status == 200 and (await assigned.json())["assignee"] == "andrii"
    bad_manager = await http.post(
        f"{base_url}/api/v1/leads/L-1/assign", json={"manager": "ghost"}, headers=auth
    )
    assert bad_manager.status == 422
    empty = await http.post(
        f"{base_url}/api/v1/leads/L-1/replies", json={"text": " ", "author": "iryna"}, headers=auth
    )
    assert empty.status == 422
    reply = await http.post(
        f"{base_url}/api/v1/leads/L-1/replies", json={"text": "Готово", "author": "iryna"}, headers=auth
    )
    assert reply.status == 201 and (await reply.json())["direction"] == "out"
    resolved = await http.post(f"{base_url}/api/v1/leads/L-1/resolve", headers=auth)
    assert (await resolved.json())["status"] == "resolved"
    assert (await http.post(f"{base_url}/api/v1/leads/L-1/resolve", headers=auth)).status == 409
    assert (await http.get(f"{base_url}/api/v1/leads/L-99", headers=auth)).status == 404
    detail = await (await http.get(f"{base_url}/api/v1/leads/L-1", headers=auth)).json()
    types = [e["type"] for e in detail["events"]]
    assert types.count("lead.assigned") == 2 and "reply.recorded" in types and "lead.resolved" in types


async def test_list_filters_and_cursor_pagination(hub: Hub, http, base_url, auth) -> None:
    for i in range(7):
        form = "service" if i % 2 else "contact"
        resp = await http.post(
            f"{base_url}/forms/{form}", json={"email": f"p{i}@example.com", "message": f"m{i}"}
        )
        assert resp.status == 201
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        url = f"{base_url}/api/v1/leads?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await http.get(url, headers=auth)).json()
        seen += [i["lead"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"L-{n}" for n in range(7, 0, -1)]
    service = await (await http.get(f"{base_url}/api/v1/leads?kind=service_request", headers=auth)).json()
    assert {i["kind"] for i in service["items"]} == {"service_request"} and len(service["items"]) == 3
    bad = await http.get(f"{base_url}/api/v1/leads?kind=bogus", headers=auth)
    assert bad.status == 422 and (await bad.json())["error"] == "validation_failed"


async def test_empty_list_filters_are_no_filters(hub: Hub, http, base_url, auth) -> None:
    for form in ("contact", "service"):
        resp = await http.post(f"{base_url}/forms/{form}", json={"email": "e@example.com", "message": form})
        assert resp.status == 201
    # What an HTML form or a query builder sends for "any": it found nothing for team, assignee
    # and channel, and was 422 for kind, status, breached, limit and cursor.
    empty = {name: "" for name in ("status", "kind", "assignee", "team", "channel", "breached", "q")}
    for params in [empty, {"limit": "", "cursor": ""}, {"team": " "}]:
        resp = await http.get(f"{base_url}/api/v1/leads", params=params, headers=auth)
        assert resp.status == 200, (params, await resp.text())
        assert [i["lead"] for i in (await resp.json())["items"]] == ["L-2", "L-1"], params


async def test_the_inbox_listing_pages_past_its_limit(hub: Hub, http, base_url, auth) -> None:
    for n in range(5):
        resp = await http.post(
            f"{base_url}/forms/contact", json={"email": f"i{n}@example.com", "message": "m"}
        )
        assert resp.status == 201
    # It listed the newest 200 and nothing more: older items could not be found to retry.
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"status": "done", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await http.get(f"{base_url}/api/v1/inbox", params=params, headers=auth)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    for bad in ({"limit": "0"}, {"limit": "x"}, {"cursor": "abc"}):
        resp = await http.get(f"{base_url}/api/v1/inbox", params=bad, headers=auth)
        assert resp.status == 422, bad


async def test_reply_with_idempotency_key_is_recorded_once(hub: Hub, http, base_url, auth) -> None:
    await http.post(f"{base_url}/forms/contact", json={"email": "idem@example.com", "message": "hi"})
    headers = {**auth, "Idempotency-Key": "reply-777"}
    body = {"text": "Одна відповідь", "author": "olena"}
    first, second = [
        await http.post(f"{base_url}/api/v1/leads/L-1/replies", json=body, headers=headers) for _ in range(2)
    ]
    assert (first.status, second.status) == (201, 200)
    assert (await first.json())["id"] == (await second.json())["id"]
    outgoing = [m for m in await hub.store.list_messages(1) if m.direction.value == "out"]
    assert len(outgoing) == 1
    assert (await hub.store.outbox_counts())["queued"] == 1


async def _leads(http: aiohttp.ClientSession, base_url: str, count: int) -> None:
    for i in range(count):
        resp = await _submit(http, base_url, "contact", email=f"c{i}@example.com", message=f"m{i}")
        assert resp.status == 201


async def test_a_reply_idempotency_key_is_scoped_to_its_lead(hub: Hub, http, base_url, auth) -> None:
    await _leads(http, base_url, 2)
    headers = {**auth, "Idempotency-Key": "reply-0001"}
    anna = await http.post(
        f"{base_url}/api/v1/leads/L-1/replies", json={"text": "for Anna", "author": "olena"}, headers=headers
    )
    bohdan = await http.post(
        f"{base_url}/api/v1/leads/L-2/replies",
        json={"text": "for Bohdan", "author": "olena"},
        headers=headers,
    )
    assert (anna.status, bohdan.status) == (201, 201), await bohdan.text()
    assert (await bohdan.json())["text"] == "for Bohdan"
    for number, text in ((1, "for Anna"), (2, "for Bohdan")):
        out = [m for m in await hub.store.list_messages(number) if m.direction is Direction.OUT]
        assert [m.text for m in out] == [text]
        lead = await hub.store.get_lead(number)
        assert lead is not None and lead.first_response_at is not None  # the clock stopped on both


async def test_a_reply_idempotency_key_reused_for_another_reply_is_422(
    hub: Hub, http, base_url, auth
) -> None:
    await _leads(http, base_url, 1)
    url = f"{base_url}/api/v1/leads/L-1/replies"
    headers = {**auth, "Idempotency-Key": "reply-0002"}
    first = await http.post(url, json={"text": "Перша", "author": "olena"}, headers=headers)
    assert first.status == 201
    for body in ({"text": "Друга", "author": "olena"}, {"text": "Перша", "author": "taras"}):
        resp = await http.post(url, json=body, headers=headers)
        assert resp.status == 422, await resp.text()
        error = await resp.json()
        assert error["error"] == "idempotency_key_reused" and "L-1" in error["detail"]
    out = [m for m in await hub.store.list_messages(1) if m.direction is Direction.OUT]
    assert [(m.text, m.author) for m in out] == [("Перша", "olena")]
    assert (await hub.store.outbox_counts())["queued"] == 1


async def test_a_reply_stored_under_an_unscoped_key_is_a_retry_only_on_its_own_lead(
    hub: Hub, http, base_url, auth
) -> None:
    await _leads(http, base_url, 2)
    # How replies were keyed before keys were scoped to their lead: `source:key`.
    channel = (await hub.replies.record_reply(1, "probe", "olena")).channel
    legacy = Message(
        id=new_id(),
        lead_number=1,
        direction=Direction.OUT,
        channel=channel,
        author="olena",
        text="Стара відповідь",
        external_id="api:reply-0003",
        created_at=utcnow(),
        delivery=DeliveryState.QUEUED,
    )
    await hub.store.add_outbound(legacy, None)
    headers = {**auth, "Idempotency-Key": "reply-0003"}
    body = {"text": "Стара відповідь", "author": "olena"}
    retry = await http.post(f"{base_url}/api/v1/leads/L-1/replies", json=body, headers=headers)
    assert retry.status == 200 and (await retry.json())["id"] == legacy.id
    reused = await http.post(
        f"{base_url}/api/v1/leads/L-1/replies", json={**body, "text": "Інша"}, headers=headers
    )
    assert reused.status == 422 and (await reused.json())["error"] == "idempotency_key_reused"
    other = await http.post(f"{base_url}/api/v1/leads/L-2/replies", json=body, headers=headers)
    assert other.status == 201 and (await other.json())["id"] != legacy.id
    assert [m.text for m in await hub.store.list_messages(2) if m.direction is Direction.OUT] == [
        body["text"]
    ]


async def test_a_reply_to_a_lead_whose_contact_was_erased_is_409_and_records_nothing(
    hub: Hub, http, base_url, auth
) -> None:
    resp = await _submit(http, base_url, "contact", name="Gone", email="gone@example.com", message="Hi")
    assert resp.status == 201
    lead = await hub.store.get_lead(1)
    assert lead is not None
    await hub.store.erase_contact(lead.contact_id)
    url = f"{base_url}/api/v1/leads/L-1/replies"
    body = {"text": "Відповідь", "author": "olena"}
    for headers in (auth, {**auth, "Idempotency-Key": "reply-to-gone-1"}):
        refused = await http.post(url, json=body, headers=headers)
        assert refused.status == 409, await refused.text()
        error = await refused.json()
        assert error["error"] == "contact_erased" and "erased" in error["detail"], error
    assert await hub.store.list_messages(1) == []
    assert await hub.store.list_events(types=["reply.recorded", "delivery.failed"]) == []


async def test_a_keyed_reply_retried_after_the_contact_got_an_email_is_not_sent_again(
    hub: Hub, http, base_url, auth
) -> None:
    resp = await _submit(
        http, base_url, "contact", name="Phone Only", phone="+380 67 123 45 67", message="Hi"
    )
    assert resp.status == 201
    url = f"{base_url}/api/v1/leads/L-1/replies"
    headers = {**auth, "Idempotency-Key": "reply-channel-1"}
    body = {"text": "Передзвонимо", "author": "olena"}
    first = await http.post(url, json=body, headers=headers)
    assert first.status == 201, await first.text()
    # Between the attempts the contact gains an email (a dashboard merge): the reply would now go there.
    lead = await hub.store.get_lead(1)
    assert lead is not None
    await hub.store.add_identity(lead.contact_id, Identity(IdentityKind.EMAIL, "phone.only@example.com"))
    retry = await http.post(url, json=body, headers=headers)
    assert retry.status == 200, await retry.text()
    assert (await retry.json())["id"] == (await first.json())["id"]
    out = [m for m in await hub.store.list_messages(1) if m.direction is Direction.OUT]
    assert [m.text for m in out] == ["Передзвонимо"]
    assert (await hub.store.outbox_counts()).get("queued", 0) == 0


async def test_an_api_idempotency_key_reused_for_another_form_is_422(hub: Hub, http, base_url, auth) -> None:
    headers = {**auth, "Idempotency-Key": "lead-key-form-01"}
    fields = {"email": "forms@example.com", "message": "one request"}
    url = f"{base_url}/api/v1/leads"
    first = await http.post(url, json={**fields, "form": "contact"}, headers=headers)
    assert first.status == 201, await first.text()
    other = await http.post(url, json={**fields, "form": "service"}, headers=headers)
    assert other.status == 422 and (await other.json())["error"] == "idempotency_key_reused"
    retry = await http.post(url, json={**fields, "form": "contact"}, headers=headers)
    assert retry.status == 200 and (await retry.json())["number"] == (await first.json())["number"]
    assert [m.text for m in await hub.store.list_messages(1)] == ["one request"]
    assert len(await hub.store.list_events(types=["message.added"])) == 1


async def test_a_submission_stored_under_a_form_scoped_key_is_still_found_by_its_retry(
    hub: Hub, http, base_url
) -> None:
    # How form submissions were keyed before keys were unique per source: `form:key`.
    fields = {"email": "legacy@example.com", "message": "stored long ago"}
    submission, _ = validate_submission(fields, "en")
    assert submission is not None
    payload = stored_payload("contact", LeadKind.MESSAGE, submission, "en", "", None)
    await hub.inbox.submit("webform", "contact:legacy-key-0001", json.dumps(payload).encode())
    headers = {"Idempotency-Key": "legacy-key-0001"}
    retry = await http.post(f"{base_url}/forms/contact", json=fields, headers=headers)
    assert retry.status == 200 and (await retry.json())["lead"] == "L-1"
    changed = await http.post(
        f"{base_url}/forms/contact", json={**fields, "message": "other"}, headers=headers
    )
    assert changed.status == 422
    assert [m.text for m in await hub.store.list_messages(1)] == ["stored long ago"]


async def test_an_api_lead_with_both_text_and_message_is_422_naming_both(
    hub: Hub, http, base_url, auth
) -> None:
    body = {"email": "both@example.com", "text": "one", "message": "two"}
    resp = await http.post(f"{base_url}/api/v1/leads", json=body, headers=auth)
    assert resp.status == 422, await resp.text()
    assert set((await resp.json())["fields"]) == {"text", "message"}
    only_text = await http.post(
        f"{base_url}/api/v1/leads", json={"email": "both@example.com", "text": "one"}, headers=auth
    )
    assert only_text.status == 201, await only_text.text()
    assert [m.text for m in await hub.store.list_messages(1)] == ["one"]


async def test_an_api_leads_form_must_be_configured_and_brings_its_kind_and_team(
    settings_factory, http, auth
) -> None:
    forms = {
        "contact": {"kind": "message"},
        "service": {"kind": "service_request"},
        "partner": {"kind": "service_request", "team": "service"},
    }
    rules = [{"name": "landing page", "match": {"form": "landing"}, "team": "support"}]
    hub = Hub(settings_factory(forms=forms, routing={"rules": rules}))
    await hub.start()
    try:
        url = f"http://127.0.0.1:{hub.web_port}/api/v1/leads"
        fields = {"email": "form@example.com", "message": "Потрібен монтаж"}
        unknown = await http.post(url, json={**fields, "form": "partnr"}, headers=auth)
        assert unknown.status == 422, await unknown.text()
        body = await unknown.json()
        assert body["error"] == "unknown_form" and "partnr" in body["detail"]
        assert body["forms"] == ["contact", "service", "partner", "landing", "api"]
        assert await hub.store.list_events(types=["lead.created"]) == []
        partner = await (await http.post(url, json={**fields, "form": "partner"}, headers=auth)).json()
        assert (partner["kind"], partner["team"]) == ("service_request", "service")
        # A kind the client names wins over the form's.
        told = await http.post(
            url,
            json={**fields, "email": "told@example.com", "form": "partner", "kind": "message"},
            headers=auth,
        )
        assert (await told.json())["kind"] == "message"
        for form in ("landing", "api", None):
            sent = await http.post(
                url, json={**fields, "email": f"{form}@example.com", "form": form}, headers=auth
            )
            assert sent.status == 201, (form, await sent.text())
    finally:
        await hub.stop()


async def test_the_documented_phone_formats_are_the_accepted_ones(hub: Hub, http, base_url, auth) -> None:
    document = await (await http.get(f"{base_url}/api/v1/openapi.json")).json()
    described = document["components"]["schemas"]["LeadCreate"]["properties"]["phone"]["description"]
    examples = re.findall(r"`([^`]+)`", described)
    assert "067 123 45 67" in examples and "International format" not in described
    for i, phone in enumerate(e for e in examples if not e.startswith("+380671")):
        body = {"phone": phone, "message": f"дзвінок {i}"}
        resp = await http.post(f"{base_url}/api/v1/leads", json=body, headers=auth)
        assert resp.status == 201, (phone, await resp.text())
        lead = await (
            await http.get(f"{base_url}/api/v1/leads/{(await resp.json())['lead']}", headers=auth)
        ).json()
        assert lead["contact"]["identities"] == [{"kind": "phone", "value": "+380671234567"}]


async def test_an_api_token_configured_with_a_trailing_space_still_lets_its_client_in(
    settings_factory, http
) -> None:
    hub = Hub(settings_factory(api={"token": "spaced-api-token-1234 \n"}))
    await hub.start()
    try:
        headers = {"Authorization": "Bearer spaced-api-token-1234"}
        resp = await http.get(f"http://127.0.0.1:{hub.web_port}/api/v1/leads", headers=headers)
        assert resp.status == 200, await resp.text()
    finally:
        await hub.stop()
