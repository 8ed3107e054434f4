"""Telegram end to end: the hub against the Bot API emulator on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from channels.telegram.texts import local_time
from hub.app import Hub
from hub.attachments import AttachmentStore, attachment_ref
from hub.config import Settings
from hub.domain import Attachment, Direction, Identity, IdentityKind, Inbound, LeadStatus, utcnow
from storage.base import LeadChanges
from tests.support.telegram_emulator import MAX_UPLOAD, TelegramEmulator, running_emulator
from tests.support.telegram_html import html_problems

STAFF = -100100
ALERTS = -100200
OLENA = {"id": 111, "is_bot": False, "first_name": "Olena", "language_code": "uk"}
TARAS = {"id": 222, "is_bot": False, "first_name": "Taras", "language_code": "uk"}
STRANGER = {"id": 999, "is_bot": False, "first_name": "Random", "language_code": "en"}
SECRET_KEY = "test-secret-key-for-links"


def telegram_config(emu: TelegramEmulator, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "enabled": True,
        "token": emu.token,
        "api_base": emu.base_url,
        "staff_group_id": STAFF,
        "alerts_chat_id": ALERTS,
        "poll_timeout": "1s",
        "poller_lease": "3s",
        "limits": {"chat_per_second": 100, "group_per_minute": 100000, "global_per_second": 1000},
    }
    config.update(extra)
    return config


@dataclass
class Env:
    emu: TelegramEmulator
    hub: Hub


@pytest.fixture
async def emu() -> AsyncIterator[TelegramEmulator]:
    async with running_emulator(STAFF, ALERTS) as emulator:
        yield emulator


@pytest.fixture
async def env(emu: TelegramEmulator, settings_factory: Callable[..., Settings]) -> AsyncIterator[Env]:
    settings = settings_factory(telegram=telegram_config(emu), web={"secret_key": SECRET_KEY})
    hub = Hub(settings)
    await hub.start()
    try:
        yield Env(emu, hub)
    finally:
        await hub.stop()


def customer(user_id: int = 5001, name: str = "Марія", language: str = "uk") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": name, "language_code": language}


async def open_lead(env: Env, user: dict[str, Any], text: str = "Hello, my boiler is broken") -> int:
    """A customer writes; wait until the lead's topic and card exist; returns the thread id."""
    env.emu.send_text(user["id"], user, text)
    topic = await env.emu.wait_for(
        lambda: next((t for t in env.emu.topics_in(STAFF) if f"· {user['first_name']} ·" in t.name), None),
        what="topic",
    )
    await env.emu.wait_for(lambda: env.emu.texts_to(STAFF, topic.thread), what="card")
    return int(topic.thread)


async def test_customer_dm_becomes_lead_with_topic_card_and_ack(env: Env) -> None:
    user = customer()
    env.emu.send_text(user["id"], user, "Котел не працює <b>терміново</b>")
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    assert topic.name.startswith("L-1 · Марія · Telegram")
    card = (await env.emu.wait_for(lambda: env.emu.sent_to(STAFF, topic.thread), what="card"))[0]
    assert "L-1" in card.text and "Котел не працює &lt;b&gt;терміново&lt;/b&gt;" in card.text
    buttons = [b["callback_data"] for row in card.reply_markup["inline_keyboard"] for b in row]
    assert buttons == ["take:1", "resolve:1", "reassign:1", "spam:1"]
    ack = await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    assert "L-1" in ack[0] and "Дякуємо" in ack[0]
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.channel == "telegram"
    # A second message joins the same lead and the same topic; no second ack.
    env.emu.send_text(user["id"], user, "Ще одне питання")
    await env.emu.wait_for(
        lambda: any("Ще одне питання" in t for t in env.emu.texts_to(STAFF, topic.thread)), what="second"
    )
    assert len(env.emu.topics_in(STAFF)) == 1
    assert len(env.emu.texts_to(user["id"])) == 1
    messages = await env.hub.store.list_messages(1)
    assert [m.text for m in messages if m.direction == Direction.IN][-1] == "Ще одне питання"


async def test_start_greets_in_language_and_offers_kinds(env: Env) -> None:
    env.emu.send_text(6001, customer(6001, "Ivan", "ru"), "/start")
    env.emu.send_text(6002, customer(6002, "John", "en"), "/start")
    uk = (await env.emu.wait_for(lambda: env.emu.sent_to(6001), what="uk greeting"))[0]
    en = (await env.emu.wait_for(lambda: env.emu.sent_to(6002), what="en greeting"))[0]
    assert "Вітаємо, Ivan" in uk.text and "Hello, John" in en.text
    labels = [b["text"] for row in en.reply_markup["keyboard"] for b in row]
    assert labels[:2] == ["Service request", "Question"]
    # Choosing "Service request" makes the next message a service request lead.
    john = customer(6002, "John", "en")
    env.emu.send_text(6002, john, "Service request")
    await env.emu.wait_for(lambda: len(env.emu.sent_to(6002)) >= 2, what="prompt")
    env.emu.send_text(6002, john, "Washing machine leaks")
    await _first_lead_is_service_and_kind_cleared(env, 6002)


async def test_kind_button_and_message_in_one_batch(env: Env) -> None:
    """The button and the message arrive in the same getUpdates answer: the lead still gets the
    chosen kind, and the choice does not linger for the customer's next lead."""
    olha = customer(6003, "Olha", "en")
    env.emu.send_text(6003, olha, "Service request")
    env.emu.send_text(6003, olha, "The dishwasher does not drain")
    await _first_lead_is_service_and_kind_cleared(env, 6003)


async def _first_lead_is_service_and_kind_cleared(env: Env, user_id: int) -> None:
    """Lead 1 opened as a service request, and the customer's chosen kind was used up."""
    await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.kind.value == "service_request"

    async def kind_cleared() -> bool:
        return await env.hub.store.get_state(f"tg.kind.{user_id}") is None

    await env.emu.wait_for(kind_cleared, what="the chosen kind applies to one lead only")


async def test_staff_reply_reaches_customer_and_note_does_not(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    env.emu.send_text(STAFF, OLENA, "// check warranty first", thread=thread)
    env.emu.send_text(STAFF, OLENA, "/note called the customer", thread=thread)
    env.emu.send_text(STAFF, OLENA, "We will send a technician <tomorrow> & call", thread=thread)
    replies = await env.emu.wait_for(lambda: env.emu.texts_to(user["id"])[1:], what="reply")
    assert replies == ["We will send a technician &lt;tomorrow&gt; &amp; call"]
    messages = await env.hub.store.list_messages(1)
    notes = [m.text for m in messages if m.direction == Direction.NOTE]
    assert notes == ["check warranty first", "called the customer"]
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.first_response_at is not None
    assert all("warranty" not in t for t in env.emu.texts_to(user["id"]))


async def test_commands_and_buttons(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    env.emu.send_text(STAFF, OLENA, "/assign taras", thread=thread)
    await env.emu.wait_for(
        lambda: any("Тарас" in t for t in env.emu.texts_to(STAFF, thread)), what="assigned notice"
    )
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.assignee == "taras"
    env.emu.send_text(STAFF, OLENA, "/kind service", thread=thread)
    await env.emu.wait_for(
        lambda: _lead_matches(env, lambda lead: lead.kind.value == "service_request"), what="kind"
    )
    card = env.emu.sent_to(STAFF, thread)[0]
    env.emu.press(STAFF, TARAS, card.message_id, "take:1")
    await env.emu.wait_for(lambda: env.emu.callback_answers, what="callback answer")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.assignee == "taras"
    env.emu.press(STAFF, OLENA, card.message_id, "resolve:1")
    topic = env.emu.topics[(STAFF, thread)]
    await env.emu.wait_for(lambda: topic.closed, what="topic closed")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.RESOLVED
    # The card shows the new state.
    assert "Статус: вирішене" in env.emu.sent_to(STAFF, thread)[0].text
    # A new customer message reopens the lead and its topic.
    env.emu.send_text(user["id"], user, "It broke again")
    await env.emu.wait_for(lambda: not topic.closed, what="topic reopened")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.OPEN
    env.emu.send_text(STAFF, OLENA, "/resolve", thread=thread)
    await env.emu.wait_for(lambda: topic.closed, what="closed by command")


async def _lead_matches(env: Env, check: Callable[[Any], bool]) -> bool:
    lead = await env.hub.store.get_lead(1)
    return lead is not None and check(lead)


async def test_stranger_is_ignored_and_unknown_group_left(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    env.emu.send_text(STAFF, STRANGER, "I am answering the customer", thread=thread)
    hint = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(STAFF, thread) if "999" in t], what="hint"
    )
    assert len(hint) == 1
    assert env.emu.texts_to(user["id"])[1:] == []
    messages = await env.hub.store.list_messages(1)
    assert all(m.direction == Direction.IN or m.author == "bot" for m in messages)
    env.emu.add_group(-100777, forum=False, title="Spam group")
    env.emu.send_text(-100777, STRANGER, "hello bot")
    await env.emu.wait_for(lambda: -100777 in env.emu.left_chats, what="left the unknown group")


async def test_redelivered_update_is_a_no_op(env: Env) -> None:
    user = customer()
    update = env.emu.send_text(user["id"], user, "Only once please")
    await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic")
    await env.emu.wait_for(lambda: env.emu.confirmed_offset > update["update_id"], what="offset")
    # Telegram sends the same update again (e.g. the ack was lost): nothing changes.
    env.emu.updates.append(update)
    env.emu.enqueue("message", env.emu.message(user["id"], user, "marker"))
    await env.emu.wait_for(lambda: any("marker" in t for t in env.emu.texts_to(STAFF)), what="marker relayed")
    messages = await env.hub.store.list_messages(1)
    assert [m.text for m in messages if m.direction == Direction.IN] == ["Only once please", "marker"]
    assert len(env.emu.topics_in(STAFF)) == 1
    assert sum("Only once please" in t for t in env.emu.texts_to(STAFF)) == 1


async def test_429_retry_after_is_respected_nothing_lost_or_duplicated(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    env.emu.fail_next("sendMessage", status=429, retry_after=1, chat_id=user["id"])
    env.emu.fail_next("sendMessage", status=502, retry_after=None, chat_id=user["id"])
    env.emu.send_text(STAFF, OLENA, "First answer", thread=thread)
    env.emu.send_text(STAFF, OLENA, "Second answer", thread=thread)
    texts = await env.emu.wait_for(
        lambda: env.emu.texts_to(user["id"])[1:3] if len(env.emu.texts_to(user["id"])) >= 3 else None,
        timeout=15,
        what="both replies",
    )
    assert texts == ["First answer", "Second answer"]
    failed = [c for c in env.emu.calls_of("sendMessage") if c.status == 429]
    assert failed, "the emulator answered 429"
    after = [
        c
        for c in env.emu.calls_of("sendMessage")
        if c.at > failed[0].at and c.params.get("chat_id") == user["id"]
    ]
    assert after and after[0].at - failed[0].at >= 0.95, "retried before retry_after passed"
    assert env.emu.texts_to(user["id"]).count("First answer") == 1

    async def all_sent() -> bool:
        counts = await env.hub.store.outbox_counts()
        assert counts.get("failed", 0) == 0
        return counts.get("queued", 0) == 0

    await env.emu.wait_for(all_sent, what="every outbox row marked sent")


async def test_deleted_topic_is_recreated(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    env.emu.delete_topic(STAFF, thread)
    env.emu.send_text(user["id"], user, "Are you there?")
    topics = await env.emu.wait_for(
        lambda: [t for t in env.emu.topics_in(STAFF) if not t.deleted], what="new topic"
    )
    assert topics[0].thread != thread
    texts = await env.emu.wait_for(lambda: env.emu.texts_to(STAFF, topics[0].thread), what="new card")
    joined = "\n".join(texts)
    assert "Hello, my boiler is broken" in joined and "Are you there?" in joined
    env.emu.send_text(STAFF, OLENA, "Yes we are", thread=topics[0].thread)
    await env.emu.wait_for(lambda: "Yes we are" in env.emu.texts_to(user["id"]), what="reply from new topic")


async def test_a_burst_of_new_leads_gets_every_topic_before_any_card(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    """Under the group's rate limit, topics for all waiting new leads come first; each card then
    carries every message its lead had by then, instead of a card plus follow-ups."""
    limits = {"chat_per_second": 5, "group_per_minute": 100000, "global_per_second": 1000}
    hub = Hub(settings_factory(telegram=telegram_config(emu, limits=limits)))
    people = [customer(7000 + k, f"Client{k}") for k in range(3)]
    for person in people:  # waiting before the hub starts: one getUpdates answer, one burst
        emu.send_text(person["id"], person, f"first from {person['first_name']}")
        emu.send_text(person["id"], person, f"second from {person['first_name']}")
    await hub.start()
    try:
        await emu.wait_for(lambda: len(emu.topics_in(STAFF)) == 3, what="three topics")
        await emu.wait_for(lambda: len([m for m in emu.sent_to(STAFF) if m.thread]) >= 3, what="3 cards")
        staff_calls = [
            c.method
            for c in emu.calls
            if c.method in ("createForumTopic", "sendMessage") and str(c.params.get("chat_id")) == str(STAFF)
        ]
        assert staff_calls[:3] == ["createForumTopic"] * 3
        cards = [m for m in emu.sent_to(STAFF) if m.thread is not None]
        for person in people:
            card = next(m for m in cards if f"first from {person['first_name']}" in m.text)
            assert f"second from {person['first_name']}" in card.text  # no follow-up needed
    finally:
        await hub.stop()


async def test_group_without_topics(emu: TelegramEmulator, settings_factory: Callable[..., Settings]) -> None:
    plain = -100300
    emu.add_group(plain, forum=False)
    settings = settings_factory(telegram=telegram_config(emu, staff_group_id=plain))
    hub = Hub(settings)
    await hub.start()
    try:
        user = customer()
        emu.send_text(user["id"], user, "No topics here")
        card = (await emu.wait_for(lambda: emu.sent_to(plain), what="card"))[0]
        assert "No topics here" in card.text and card.thread is None
        emu.send_text(plain, OLENA, "Answer by reply", reply_to=card.message_id)
        await emu.wait_for(lambda: "Answer by reply" in emu.texts_to(user["id"]), what="relayed reply")
        emu.send_text(plain, OLENA, "not a reply: staff talk, ignored")
        emu.send_text(plain, OLENA, "/resolve")
        await emu.wait_for(lambda: any("не пов'язана" in t for t in emu.texts_to(plain)), what="hint")
        assert "not a reply: staff talk, ignored" not in emu.texts_to(user["id"])
        lead = await hub.store.get_lead(1)
        assert lead is not None and lead.is_active
    finally:
        await hub.stop()


async def test_customer_edit_updates_topic_copy(env: Env) -> None:
    user = customer()
    env.emu.send_text(user["id"], user, "Original text")
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    card = (await env.emu.wait_for(lambda: env.emu.sent_to(STAFF, topic.thread), what="card"))[0]
    original_id = 1  # the customer's first message in their chat
    edited = env.emu.message(user["id"], user, "Edited text")
    edited["message_id"] = original_id
    edited["edit_date"] = edited["date"]
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(lambda: "Edited text" in card.text, what="card edited")
    events = await env.hub.store.list_events(1, ["message.edited"])
    assert events and events[0].data["before"] == "Original text"


async def test_a_customers_edit_on_a_resolved_lead_is_said_and_reopens_it_within_the_window(
    env: Env,
) -> None:
    """An edit of an old message after the lead was resolved ("it leaks again") only rewrote the
    old post in the closed topic: nobody was told and the lead stayed resolved."""
    user = customer()
    thread = await open_lead(env, user, "Кран тече")
    topic = env.emu.topics[(STAFF, thread)]

    def edit(text: str) -> None:
        edited = env.emu.message(user["id"], user, text)
        edited["message_id"], edited["edit_date"] = 1, edited["date"]
        env.emu.enqueue("edited_message", edited)

    env.emu.send_text(STAFF, TARAS, "/resolve", thread=thread)
    await env.emu.wait_for(lambda: topic.closed, what="resolved")
    edit("Кран тече. Знову тече після ремонту")
    notice = "Клієнт змінив своє повідомлення у вирішеному зверненні"
    posted = await env.emu.wait_for(
        lambda: next((t for t in env.emu.texts_to(STAFF, thread) if notice in t), None), what="notice"
    )
    assert "Знову тече після ремонту" in posted
    await env.emu.wait_for(lambda: not topic.closed, what="the topic reopened")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.OPEN
    assert [e.data["by"] for e in await env.hub.store.list_events(1, ["lead.reopened"])] == ["customer"]

    # Resolved longer ago than leads.reopen_within: said in the topic, the lead stays resolved.
    env.emu.send_text(STAFF, TARAS, "/resolve", thread=thread)
    await env.emu.wait_for(lambda: topic.closed, what="resolved again")
    await env.emu.wait_for(lambda: _lead_matches(env, lambda lead: not lead.is_active), what="resolved")
    await env.hub.store.update_lead(1, LeadChanges(resolved_at=utcnow() - timedelta(days=8)))
    edit("Кран тече. Дякую, все добре")
    await env.emu.wait_for(
        lambda: any("Дякую, все добре" in t and notice in t for t in env.emu.texts_to(STAFF, thread)),
        what="the second notice",
    )
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.RESOLVED
    assert len(await env.hub.store.list_events(1, ["lead.reopened"])) == 1


async def test_a_customers_reply_to_our_message_shows_what_it_answers(env: Env) -> None:
    """The customer's Telegram Reply was dropped: staff read "Так, підходить" with no idea to what."""
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.sent_to(user["id"]), what="ack")
    env.emu.send_text(
        STAFF, OLENA, "Можемо приїхати   завтра о 10:00 або в четвер " + "x" * 80, thread=thread
    )
    reply = await env.emu.wait_for(
        lambda: next((s for s in env.emu.sent_to(user["id"]) if "завтра" in (s.text or "")), None),
        what="our reply",
    )
    answered = {"message_id": reply.message_id, "date": 0, "chat": {"id": user["id"], "type": "private"}}
    answered |= {"from": {"id": 1, "is_bot": True, "first_name": "Bot"}, "text": reply.text}
    env.emu.send_text(user["id"], user, "Так, підходить", reply_to_message=answered)
    quoted = "↩ Можемо приїхати завтра о 10:00 або в четвер " + "x" * 35 + "…"
    assert len(quoted) == 2 + 80
    await env.emu.wait_for(
        lambda: any(f"{quoted}\nТак, підходить" in t for t in env.emu.texts_to(STAFF, thread)), what="quote"
    )
    stored = [m.text for m in await env.hub.store.list_messages(1)]
    assert f"{quoted}\nТак, підходить" in stored  # what the dashboard's lead page shows
    assert stored[0] == "Hello, my boiler is broken"


async def test_staff_edit_is_relayed(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    update = env.emu.send_text(STAFF, OLENA, "Price is 100", thread=thread)
    reply = await env.emu.wait_for(
        lambda: next((s for s in env.emu.sent_to(user["id"]) if s.text == "Price is 100"), None), what="reply"
    )
    edited = dict(update["message"], text="Price is 120", edit_date=update["message"]["date"])
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(lambda: reply.text == "Price is 120", what="edit relayed")


async def test_deep_link_links_telegram_to_web_contact(env: Env, http: Any) -> None:
    url = f"http://127.0.0.1:{env.hub.web_port}/forms/contact"
    async with http.post(
        url, json={"name": "Petro", "email": "petro@example.com", "message": "Via the web"}
    ) as resp:
        assert resp.status == 201
    lead = await env.hub.store.get_lead(1)
    assert lead is not None
    link = env.hub.telegram_link(lead)
    assert link.startswith("https://t.me/hub_test_bot?start=L1_")
    token = link.split("start=")[1]
    petro = customer(7001, "Petro", "en")
    env.emu.send_text(7001, petro, f"/start {token}")
    greeting = await env.emu.wait_for(lambda: env.emu.texts_to(7001), what="linked greeting")
    assert "L-1" in greeting[0]
    contact = await env.hub.store.get_contact(lead.contact_id)
    assert contact is not None and any(i.value == "7001" for i in contact.identities)
    # The thank-you page a browser gets carries the same kind of link.
    form = {"name": "Petro", "email": "petro2@example.com", "message": "Second request"}
    async with http.post(url, data=form, headers={"Accept": "text/html"}) as resp:
        assert resp.status == 201
        assert "https://t.me/hub_test_bot?start=L2_" in await resp.text()
    # A forged token links nothing.
    env.emu.send_text(7002, customer(7002, "Eve", "en"), "/start L1_AAAAAAAAAAAAAAAA")
    bad = await env.emu.wait_for(lambda: env.emu.texts_to(7002), what="bad link answer")
    assert "not valid" in bad[0]


async def test_shared_phone_merges_with_web_contact(env: Env, http: Any) -> None:
    url = f"http://127.0.0.1:{env.hub.web_port}/forms/contact"
    async with http.post(
        url, json={"name": "Oksana", "phone": "+380671234567", "message": "Call me"}
    ) as resp:
        assert resp.status == 201
    web_lead = await env.hub.store.get_lead(1)
    assert web_lead is not None
    user = customer(8001, "Oksana")
    contact_card = {"phone_number": "+380671234567", "first_name": "Oksana", "user_id": 8001}
    env.emu.enqueue("message", env.emu.message(8001, user, None, contact=contact_card))
    await env.emu.wait_for(lambda: any("номер" in t for t in env.emu.texts_to(8001)), what="thanks")
    contact = await env.hub.store.get_contact(web_lead.contact_id)
    assert contact is not None
    kinds = {i.kind.value for i in contact.identities}
    assert {"phone", "telegram"} <= kinds


async def test_someone_elses_contact_card_is_not_thanked_for(env: Env) -> None:
    """Only the sender's own number is saved: a card of someone else gets a note saying so."""
    user = customer(8002, "Petro")
    card = {"phone_number": "+380501112233", "first_name": "Friend", "user_id": 8999}
    env.emu.enqueue("message", env.emu.message(8002, user, None, contact=card))
    answer = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(8002) if "номер" in t], what="the note"
    )
    assert "лише ваш власний номер" in answer[0]
    assert not any("Дякуємо, ми зберегли" in t for t in env.emu.texts_to(8002))
    own = {"phone_number": "380501112244", "first_name": "Petro", "user_id": 8002}
    env.emu.enqueue("message", env.emu.message(8002, user, None, contact=own))
    await env.emu.wait_for(
        lambda: any("Дякуємо, ми зберегли" in t for t in env.emu.texts_to(8002)), what="thanks"
    )
    lead = await env.hub.store.get_lead(1)
    contact = await env.hub.store.get_contact(lead.contact_id) if lead else None
    assert contact is not None
    assert [i.value for i in contact.identities if i.kind.value == "phone"] == ["+380501112244"]


async def test_sla_breach_is_posted_to_topic_and_alerts(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.first_response_due is not None
    from datetime import timedelta

    await env.hub.sweeper.sweep(lead.first_response_due + timedelta(seconds=1))
    alerts = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(ALERTS) if "L-1" in t and "ПОРУШЕНО" in t], what="alert"
    )
    await env.emu.wait_for(
        lambda: any("SLA" in t for t in env.emu.texts_to(STAFF, thread)), what="topic alert"
    )
    if lead.assignee:
        assert any("tg://user?id=" in t for t in alerts)


async def test_my_and_away(env: Env) -> None:
    user = customer()
    await open_lead(env, user)
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.assignee is not None
    manager = env.hub.settings.manager(lead.assignee)
    assert manager is not None and manager.telegram_id is not None
    me = {"id": manager.telegram_id, "is_bot": False, "first_name": manager.name, "language_code": "uk"}
    env.emu.send_text(manager.telegram_id, me, "/my")
    listing = await env.emu.wait_for(lambda: env.emu.texts_to(manager.telegram_id), what="/my")
    assert "L-1" in listing[0]
    env.emu.send_text(STAFF, me, "/away")
    await env.emu.wait_for(lambda: any("/back" in t for t in env.emu.texts_to(STAFF)), what="away ack")
    assert await env.hub.availability.is_away(manager.id)
    env.emu.send_text(manager.telegram_id, me, "/dashboard")
    link = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(manager.telegram_id) if "/dashboard/link/" in t],
        what="sign-in link",
    )
    assert len(link) == 1
    env.emu.send_text(STAFF, me, "/dashboard")
    await env.emu.wait_for(
        lambda: any("/dashboard" in t for t in env.emu.texts_to(STAFF)), what="private hint"
    )
    assert not any("/dashboard/link/" in t for t in env.emu.texts_to(STAFF))
    states = {s.name: s.connected for s in env.hub.channel_states.snapshot()}
    assert states.get("telegram") is True


async def test_webhook_requires_secret(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    from hub.config import ConfigError

    no_secret = settings_factory(telegram=telegram_config(emu, mode="webhook"))
    with pytest.raises(ConfigError, match="webhook_secret"):
        Hub(no_secret)
    settings = settings_factory(
        telegram=telegram_config(emu, mode="webhook", webhook_secret="s3cret-token"),
    )
    hub = Hub(settings)
    await hub.start()
    try:
        emu.webhook_url = f"http://127.0.0.1:{hub.web_port}/telegram/webhook"
        emu.webhook_secret = "s3cret-token"
        user = customer()
        update = {"update_id": 1, "message": emu.message(user["id"], user, "via webhook")}
        assert await emu.post_to_webhook(update, secret="wrong") == 401
        assert (
            await emu.post_to_webhook(
                {"update_id": 2, "message": emu.message(user["id"], user, "x")}, secret=""
            )
            == 401
        )
        assert await hub.store.get_lead(1) is None
        assert await hub.store.inbox_list("pending") == [] and await hub.store.inbox_list("done") == []
        assert await emu.post_to_webhook(update) == 200
        assert await emu.post_to_webhook(update) == 200  # redelivery: no-op
        lead = await hub.store.get_lead(1)
        assert lead is not None
        messages = await hub.store.list_messages(1)
        assert [m.text for m in messages if m.direction == Direction.IN] == ["via webhook"]
        topic = (await emu.wait_for(lambda: emu.topics_in(STAFF), what="topic from webhook lead"))[0]
        staff_update = {
            "update_id": 3,
            "message": emu.message(STAFF, OLENA, "Reply via webhook", thread=topic.thread),
        }
        assert await emu.post_to_webhook(staff_update) == 200
        await emu.wait_for(lambda: "Reply via webhook" in emu.texts_to(user["id"]), what="DM in webhook mode")
    finally:
        await hub.stop()


async def test_media_is_copied_both_ways_and_long_replies_split(env: Env) -> None:
    user = customer()
    photo = [{"file_id": "ph1", "file_unique_id": "u1", "width": 800, "height": 600, "file_size": 5000}]
    update = env.emu.enqueue(
        "message", env.emu.message(user["id"], user, None, photo=photo, caption="Ось фото")
    )
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    copy = await env.emu.wait_for(
        lambda: [s for s in env.emu.sent_to(STAFF, topic.thread) if s.method == "copyMessage"],
        what="media copy",
    )
    assert copy[0].copied_from == (user["id"], update["message"]["message_id"])
    staff_photo = env.emu.message(STAFF, OLENA, None, thread=topic.thread, photo=photo, caption="Схема")
    env.emu.enqueue("message", staff_photo)
    relayed = await env.emu.wait_for(
        lambda: [s for s in env.emu.sent_to(user["id"]) if s.method == "copyMessage"], what="staff media"
    )
    assert relayed[0].copied_from == (STAFF, staff_photo["message_id"])
    long_text = "Детальна інструкція. " * 400  # about 8,400 characters
    env.emu.send_text(STAFF, OLENA, long_text, thread=topic.thread)
    # ack, the media copy, then three parts
    await env.emu.wait_for(lambda: len(env.emu.texts_to(user["id"])) >= 5, what="all parts")
    parts = [t for t in env.emu.texts_to(user["id"])[1:] if t]
    assert all(len(p) <= 4096 for p in parts) and len(parts) == 3
    assert "".join(parts).replace(" ", "") == long_text.strip().replace(" ", "")


async def test_email_in_a_message_merges_with_the_web_contact(env: Env, http: Any) -> None:
    url = f"http://127.0.0.1:{env.hub.web_port}/forms/contact"
    async with http.post(
        url, json={"name": "Lesia", "email": "lesia@example.com", "message": "Web first"}
    ) as resp:
        assert resp.status == 201
    user = customer(9001, "Lesia")
    env.emu.send_text(9001, user, "Це я, моя пошта Lesia@Example.com")
    await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic")

    async def merged() -> bool:
        web_lead = await env.hub.store.get_lead(1)
        assert web_lead is not None
        contact = await env.hub.store.get_contact(web_lead.contact_id)
        return contact is not None and any(i.kind.value == "telegram" for i in contact.identities)

    await env.emu.wait_for(merged, what="contacts merged")


async def test_take_reopen_reassign_and_spam(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    env.emu.send_text(STAFF, TARAS, "/take", thread=thread)
    await env.emu.wait_for(lambda: _lead_matches(env, lambda lead: lead.assignee == "taras"), what="/take")
    env.emu.send_text(STAFF, TARAS, "/resolve", thread=thread)
    await env.emu.wait_for(lambda: env.emu.topics[(STAFF, thread)].closed, what="closed")
    env.emu.send_text(STAFF, TARAS, "/reopen", thread=thread)
    await env.emu.wait_for(lambda: not env.emu.topics[(STAFF, thread)].closed, what="reopened by command")
    card = env.emu.sent_to(STAFF, thread)[0]
    env.emu.press(STAFF, OLENA, card.message_id, "reassign:1")
    picker = await env.emu.wait_for(
        lambda: [
            s
            for s in env.emu.sent_to(STAFF, thread)
            if s.reply_markup and "assign:1:" in json.dumps(s.reply_markup)
        ],
        what="manager picker",
    )
    choices = [b["callback_data"] for row in picker[0].reply_markup["inline_keyboard"] for b in row]
    assert "assign:1:iryna" in choices
    env.emu.press(STAFF, OLENA, picker[0].message_id, "assign:1:iryna")
    await env.emu.wait_for(
        lambda: _lead_matches(env, lambda lead: lead.assignee == "iryna"), what="reassigned"
    )
    env.emu.press(STAFF, OLENA, card.message_id, "spam:1")
    await env.emu.wait_for(
        lambda: _lead_matches(env, lambda lead: "spam" in lead.tags and not lead.is_active), what="spam"
    )
    # A stranger's button press changes nothing.
    env.emu.press(STAFF, STRANGER, card.message_id, "take:1")
    await env.emu.wait_for(
        lambda: any("999" in (a.get("text") or "") for a in env.emu.callback_answers), what="hint"
    )
    assert await _lead_matches(env, lambda lead: lead.assignee == "iryna")


async def test_only_one_process_polls(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(telegram=telegram_config(emu))
    first, second = Hub(settings), Hub(settings)
    await first.start()
    await second.start()
    try:
        pollers = [_channel(first).poller, _channel(second).poller]
        await emu.wait_for(lambda: any(p is not None and p._holding for p in pollers), what="a poller")
        await emu.wait_for(lambda: len(emu.calls_of("getUpdates")) >= 2, what="polling")
        assert sum(1 for p in pollers if p is not None and p._holding) == 1
        user = customer()
        emu.send_text(user["id"], user, "one lead, one topic")
        await emu.wait_for(lambda: emu.topics_in(STAFF), what="topic")
        assert len(emu.topics_in(STAFF)) == 1
    finally:
        await second.stop()
        await first.stop()


def _channel(hub: Hub) -> Any:
    return next(c for c in hub.channels if c.name == "telegram")


async def test_dashboard_reply_is_shown_in_the_topic_and_sent(env: Env, http: Any) -> None:
    from tests.support.settings import API_TOKEN

    user = customer()
    thread = await open_lead(env, user)
    url = f"http://127.0.0.1:{env.hub.web_port}/api/v1/leads/1/replies"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with http.post(
        url, json={"text": "Answer from the dashboard", "author": "olena"}, headers=headers
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
    await env.emu.wait_for(lambda: "Answer from the dashboard" in env.emu.texts_to(user["id"]), what="DM")
    await env.emu.wait_for(
        lambda: any("Answer from the dashboard" in t for t in env.emu.texts_to(STAFF, thread)),
        what="topic copy",
    )


async def test_backlog_coalesces_customer_messages_into_one_post(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user, "first")
    before = len(env.emu.sent_to(STAFF, thread))
    # The group is flooded for two seconds: what the customer writes meanwhile waits, then
    # goes out together.
    env.emu.fail_next("sendMessage", status=429, retry_after=2, chat_id=STAFF)
    for i in range(2, 8):
        env.emu.send_text(user["id"], user, f"follow-up {i}")
    await env.emu.wait_for(
        lambda: all(any(f"follow-up {i}" in t for t in env.emu.texts_to(STAFF, thread)) for i in range(2, 8)),
        timeout=15,
        what="all follow-ups",
    )
    posts = env.emu.sent_to(STAFF, thread)[before:]
    assert len(posts) <= 3, [p.text for p in posts]
    assert max(len(p.text) for p in posts) <= 4096
    for i in range(2, 8):
        assert sum(f"follow-up {i}" in p.text for p in posts) == 1  # nothing twice
    assert env.emu.too_many == 1


async def test_webhook_is_registered_with_the_secret(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        telegram=telegram_config(emu, mode="webhook", webhook_secret="s3cret-token"),
        web={"public_url": "https://hub.example.com"},
    )
    hub = Hub(settings)
    await hub.start()
    try:
        assert emu.webhook_url == "https://hub.example.com/telegram/webhook"
        assert emu.webhook_secret == "s3cret-token"
        assert emu.calls_of("getUpdates") == []
    finally:
        await hub.stop()


async def test_kind_button_after_writing_sets_the_open_leads_kind(env: Env) -> None:
    user = customer(6100, "Olha", "uk")
    await open_lead(env, user, "Не працює пральна машина")
    env.emu.send_text(user["id"], user, "Заявка на сервіс")
    await env.emu.wait_for(
        lambda: _lead_matches(env, lambda lead: lead.kind.value == "service_request"), what="kind from button"
    )
    messages = await env.hub.store.list_messages(1)
    assert [m.text for m in messages if m.direction == Direction.IN] == ["Не працює пральна машина"]


async def test_queued_alert_survives_a_restart(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(telegram=telegram_config(emu))
    first = Hub(settings)
    await first.start()
    desk = _channel(first).desk
    await desk.stop()  # the worker is gone, as in a crash right after the alert was queued
    await desk.post_to(ALERTS, "🔥 queued before the crash")
    await first.stop()
    assert "🔥 queued before the crash" not in emu.texts_to(ALERTS)
    second = Hub(settings)
    await second.start()
    try:
        await emu.wait_for(
            lambda: "🔥 queued before the crash" in emu.texts_to(ALERTS), what="alert after restart"
        )
        assert emu.texts_to(ALERTS).count("🔥 queued before the crash") == 1
    finally:
        await second.stop()


async def test_a_stop_during_the_batch_lease_keepers_end_is_not_swallowed(env: Env) -> None:
    """The poller is cancelled while it waits for its lease keeper to end (right after a
    batch): the cancellation must end the polling loop, not be taken for the keeper's."""
    await open_lead(env, customer(7000, "Oksana"))  # the poller holds its lease and polls
    channel = next(c for c in env.hub.channels if c.name == "telegram")
    poller = channel.poller  # type: ignore[attr-defined]
    task = poller._task
    assert task is not None
    real = poller._ingest.process_all
    cancelled_at_the_end: list[bool] = []

    async def process_then_stop(items: Any) -> Any:
        result = await real(items)
        # Delivered while poll_once waits for the keeper it has just cancelled.
        asyncio.get_running_loop().call_soon(task.cancel)
        cancelled_at_the_end.append(True)
        return result

    poller._ingest.process_all = process_then_stop
    env.emu.send_text(7001, customer(7001, "Olha"), "Доброго дня")
    await env.emu.wait_for(lambda: cancelled_at_the_end, what="the batch")
    done, _ = await asyncio.wait({task}, timeout=5.0)
    assert task in done, "the poller kept polling after it was cancelled"
    assert task.cancelled()


async def test_service_messages_and_unrelayable_staff_messages_do_not_reach_the_customer(env: Env) -> None:
    """A pin in a lead's topic is Telegram's service message, not a reply; a manager's dice or
    poll cannot be relayed, so the manager is told and the customer gets nothing."""
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    card = env.emu.sent_to(STAFF, thread)[0]
    pinned = {"message_id": card.message_id, "date": 0, "chat": env.emu._chat_of(STAFF, OLENA), "text": "x"}
    env.emu.enqueue("message", env.emu.message(STAFF, OLENA, None, thread=thread, pinned_message=pinned))
    env.emu.enqueue("message", env.emu.message(STAFF, OLENA, None, thread=thread, video_chat_started={}))
    env.emu.enqueue(
        "message", env.emu.message(STAFF, OLENA, None, thread=thread, dice={"emoji": "🎲", "value": 3})
    )
    env.emu.send_text(STAFF, OLENA, "marker reply", thread=thread)
    await env.emu.wait_for(lambda: "marker reply" in env.emu.texts_to(user["id"]), what="marker")
    assert env.emu.texts_to(user["id"])[1:] == ["marker reply"]
    hints = [t for t in env.emu.texts_to(STAFF, thread) if "кубик" in t]
    assert len(hints) == 1  # for the dice only
    messages = await env.hub.store.list_messages(1)
    assert [m.text for m in messages if m.direction == Direction.OUT and m.author != "bot"] == [
        "marker reply"
    ]


async def test_router_reassignment_updates_the_card_and_tags_the_new_assignee(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    """/away hands the lead to someone else: the card shows them and the topic tags them."""
    settings = settings_factory(telegram=telegram_config(emu), routing={"reassign_when_away": True})
    hub = Hub(settings)
    await hub.start()
    try:
        env = Env(emu, hub)
        thread = await open_lead(env, customer())
        lead = await hub.store.get_lead(1)
        assert lead is not None and lead.assignee is not None
        first = hub.settings.manager(lead.assignee)
        assert first is not None and first.telegram_id is not None
        other = next(m for m in hub.settings.managers if m.id != first.id and "support" in m.teams)
        me = {"id": first.telegram_id, "is_bot": False, "first_name": first.name, "language_code": "uk"}
        card = emu.sent_to(STAFF, thread)[0]
        assert f"Відповідальний: {first.name}" in card.text
        emu.send_text(first.telegram_id, me, "/away")
        notice = await emu.wait_for(
            lambda: [t for t in emu.texts_to(STAFF, thread)[1:] if f"tg://user?id={other.telegram_id}" in t],
            what="a notice tagging the new assignee",
        )
        assert "автоматичний розподіл" in notice[0]
        await emu.wait_for(lambda: f"Відповідальний: {other.name}" in card.text, what="card updated")
        # Nobody else in the team is left: the lead goes back to the queue, and the card says so.
        assert other.telegram_id is not None
        emu.send_text(other.telegram_id, {**me, "id": other.telegram_id}, "/away")
        await emu.wait_for(lambda: "Відповідальний: не призначено" in card.text, what="card unassigned")
    finally:
        await hub.stop()


async def test_a_manual_unassign_updates_the_card_and_says_who_did_it(env: Env) -> None:
    thread = await open_lead(env, customer())
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.assignee is not None
    card = env.emu.sent_to(STAFF, thread)[0]
    await env.hub.actions.unassign(1, by="olena")
    await env.emu.wait_for(lambda: "Відповідальний: не призначено" in card.text, what="card unassigned")
    notice = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(STAFF, thread)[1:] if "Призначення знято" in t], what="notice"
    )
    assert "olena" in notice[0]


async def test_sla_warning_states_the_deadline_not_the_time_of_the_warning(env: Env) -> None:
    thread = await open_lead(env, customer())
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.warn_due is not None and lead.first_response_due is not None
    tz = env.hub.settings.sla.calendar.timezone
    deadline, warned = local_time(lead.first_response_due, tz), local_time(lead.warn_due, tz)
    assert deadline != warned
    await env.hub.sweeper.sweep(lead.warn_due + timedelta(seconds=1))
    alert = (await env.emu.wait_for(lambda: env.emu.texts_to(ALERTS), what="alert"))[0]
    notice = (await env.emu.wait_for(lambda: env.emu.texts_to(STAFF, thread)[1:], what="notice"))[0]
    for text in (alert, notice):
        assert f"до {deadline}" in text and warned not in text


async def test_next_response_alerts_and_my_leads_name_the_next_response(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    """The customer wrote again after an answer: the alerts and /my are about the next response."""
    policy = {"first_response": "4h", "next_response": "1h"}
    sla = {"policies": {"message": policy, "service_request": policy}}
    hub = Hub(settings_factory(telegram=telegram_config(emu), sla=sla))
    await hub.start()
    try:
        env = Env(emu, hub)
        user = customer()
        thread = await open_lead(env, user)
        emu.send_text(STAFF, OLENA, "First answer", thread=thread)
        await emu.wait_for(lambda: "First answer" in emu.texts_to(user["id"]), what="answer")
        emu.send_text(user["id"], user, "One more thing")
        await emu.wait_for(
            lambda: _lead_matches(env, lambda lead: lead.sla_target == "next_response"), what="next due"
        )
        lead = await hub.store.get_lead(1)
        assert lead is not None and lead.sla_due is not None and lead.assignee is not None
        manager = hub.settings.manager(lead.assignee)
        assert manager is not None
        mine = await _channel(hub).staff.my_leads(manager, lead.sla_due + timedelta(minutes=10))
        assert "наступна відповідь -0 год 10 хв" in mine and "✓" not in mine
        await hub.sweeper.sweep(lead.sla_due + timedelta(seconds=1))
        deadline = local_time(lead.sla_due, hub.settings.sla.calendar.timezone)
        await emu.wait_for(lambda: any("ПОРУШЕНО" in t for t in emu.texts_to(STAFF, thread)), what="breach")
        alerts = [n for t in emu.texts_to(STAFF, thread) for n in t.split("\n\n") if "SLA" in n]
        assert len(alerts) == 2 and all("наступну відповідь" in t for t in alerts)
        assert all(f"до {deadline}" in t for t in alerts)
    finally:
        await hub.stop()


async def test_the_card_names_the_deadline_that_runs_now(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    """First response, then none while the customer is owed nothing, then the next response."""
    policy = {"first_response": "4h", "next_response": "1h"}
    sla = {"policies": {"message": policy, "service_request": policy}}
    hub = Hub(settings_factory(telegram=telegram_config(emu), sla=sla))
    await hub.start()
    try:
        env = Env(emu, hub)
        user = customer()
        thread = await open_lead(env, user)
        card = emu.sent_to(STAFF, thread)[0]
        tz = hub.settings.sla.calendar.timezone
        lead = await hub.store.get_lead(1)
        assert lead is not None
        assert f"Термін (перша відповідь): {local_time(lead.first_response_due, tz)}" in card.text
        emu.send_text(STAFF, OLENA, "First answer", thread=thread)
        await emu.wait_for(lambda: "Термін: немає" in card.text, what="the card without a deadline")
        assert "Статус: чекаємо клієнта" in card.text
        emu.send_text(user["id"], user, "One more thing")
        await emu.wait_for(lambda: "наступна відповідь" in card.text, what="the next-response deadline")
        lead = await hub.store.get_lead(1)
        assert lead is not None and lead.sla_target == "next_response"
        assert f"Термін (наступна відповідь): {local_time(lead.sla_due, tz)}" in card.text
        assert "перша відповідь" not in card.text and "Статус: відкрите" in card.text
    finally:
        await hub.stop()


async def test_an_edit_that_makes_the_card_too_long_is_cut_as_valid_html(env: Env) -> None:
    env.emu.strict_html = True
    user = customer()
    thread = await open_lead(env, user, "a" * 3700)
    card = env.emu.sent_to(STAFF, thread)[0]
    edited = env.emu.message(user["id"], user, "&" * 4000 + " END")
    edited["message_id"], edited["edit_date"] = 1, edited["date"]
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(lambda: card.edits, what="the card re-rendered")
    assert html_problems(card.text) == [] and len(card.text) <= 4096
    assert card.text.endswith("&amp;…") and env.emu.rejected_html == []
    # The card cannot hold the edited text: it is also posted whole, in parts.
    await env.emu.wait_for(
        lambda: any(t.endswith(" END") for t in env.emu.texts_to(STAFF, thread)), what="end"
    )


async def test_a_managers_sticker_reaches_the_customer_as_a_sticker(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    sticker = {"file_id": "s1", "file_unique_id": "s1u", "type": "regular", "width": 512, "height": 512}
    sticker |= {"is_animated": False, "is_video": False, "emoji": "👍"}
    env.emu.enqueue("message", env.emu.message(STAFF, OLENA, None, thread=thread, sticker=sticker))
    copies = await env.emu.wait_for(lambda: env.emu.calls_of("copyMessage"), what="a copy of the sticker")
    assert copies[0].params["chat_id"] in (user["id"], str(user["id"]))
    assert all("sticker" not in t for t in env.emu.texts_to(user["id"]))


async def test_take_by_the_current_assignee_is_a_no_op(env: Env) -> None:
    thread = await open_lead(env, customer())
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.assignee is not None
    owner = env.hub.settings.manager(lead.assignee)
    assert owner is not None and owner.telegram_id is not None
    me = {"id": owner.telegram_id, "is_bot": False, "first_name": owner.name, "language_code": "uk"}
    before = [e for e in await env.hub.store.list_events(1) if e.type == "lead.assigned"]
    card = env.emu.sent_to(STAFF, thread)[0]
    env.emu.press(STAFF, me, card.message_id, "take:1")
    await env.emu.wait_for(lambda: env.emu.callback_answers, what="callback answer")
    assert "L-1 уже ваше" in (env.emu.callback_answers[0].get("text") or "")
    env.emu.send_text(STAFF, me, "/take", thread=thread)
    await env.emu.wait_for(lambda: "L-1 уже ваше." in env.emu.texts_to(STAFF, thread), what="/take answer")
    after = [e for e in await env.hub.store.list_events(1) if e.type == "lead.assigned"]
    assert len(after) == len(before)
    assert not any("Призначено" in t for t in env.emu.texts_to(STAFF, thread))


async def test_callback_answers_are_plain_text(env: Env) -> None:
    """Telegram shows a callback answer as it is: an escaped quote would show as &#x27;."""
    thread = await open_lead(env, customer())
    card = env.emu.sent_to(STAFF, thread)[0]
    env.emu.press(STAFF, OLENA, card.message_id, "assign:1:o'ghost")
    answer = (await env.emu.wait_for(lambda: env.emu.callback_answers, what="callback answer"))[0]
    text = answer.get("text") or ""
    assert "o'ghost" in text and "&#x27;" not in text and "&quot;" not in text


async def test_staff_failures_answers_and_statuses_are_in_the_staff_language(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core's English never reaches the group: refusals, button answers and statuses are localized."""
    thread = await open_lead(env, customer())
    card = env.emu.sent_to(STAFF, thread)[0]
    assert "Статус: нове" in card.text and "Канал: Telegram" in card.text
    lead = await env.hub.store.get_lead(1)
    owner = env.hub.settings.manager(lead.assignee or "") if lead else None
    assert lead is not None and owner is not None
    mine = await _channel(env.hub).staff.my_leads(owner, lead.created_at)
    assert "L-1 · нове · перша відповідь" in mine, mine
    other = TARAS if owner.id == "olena" else OLENA
    env.emu.press(STAFF, other, card.message_id, "take:1")
    answer = (await env.emu.wait_for(lambda: env.emu.callback_answers, what="callback answer"))[0]
    assert answer.get("text") == "Ви взяли L-1."
    env.emu.press(STAFF, other, card.message_id, "reassign:1")
    await env.emu.wait_for(lambda: len(env.emu.callback_answers) > 1, what="second answer")
    assert env.emu.callback_answers[1].get("text") == "Оберіть нижче, кому передати L-1."

    for command in ("/note", "/assign ghost", "/resolve", "/resolve"):
        env.emu.send_text(STAFF, OLENA, command, thread=thread)
    expected = [
        "⚠️ Спершу напишіть текст.",
        "Менеджера «ghost» немає. Менеджери: ",
        "⚠️ Це звернення вже вирішене.",
    ]
    await env.emu.wait_for(
        lambda: any(expected[2] in t for t in env.emu.texts_to(STAFF, thread)), what="second /resolve"
    )
    everything = "\n".join(env.emu.texts_to(STAFF, thread))
    assert all(e in everything for e in expected), everything
    for english in ("needs text", "unknown manager", "is already", "must not be empty"):
        assert english not in everything, english

    monkeypatch.setattr("channels.telegram.texts.STAFF_LANGUAGE", "en")
    refused = "⚠️ This lead is already resolved."
    env.emu.send_text(STAFF, OLENA, "/resolve", thread=thread)
    await env.emu.wait_for(lambda: refused in env.emu.texts_to(STAFF, thread), what="English refusal")
    env.emu.press(STAFF, OLENA, card.message_id, "resolve:1")
    await env.emu.wait_for(lambda: len(env.emu.callback_answers) > 2, what="third answer")
    assert env.emu.callback_answers[2].get("text") == refused


async def test_a_reply_in_the_topic_of_an_erased_contact_is_refused_with_a_hint(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    lead = await env.hub.store.get_lead(1)
    assert lead is not None
    await env.hub.store.erase_contact(lead.contact_id)
    env.emu.send_text(STAFF, OLENA, "Ось відповідь", thread=thread)
    hint = "⚠️ Відповідь не можна надіслати: контакт цього звернення стерто"
    await env.emu.wait_for(lambda: any(hint in t for t in env.emu.texts_to(STAFF, thread)), what="the hint")
    assert [m for m in await env.hub.store.list_messages(1) if m.direction == Direction.OUT] == []
    assert await env.hub.store.list_events(types=["delivery.failed"]) == []
    assert "Ось відповідь" not in env.emu.texts_to(user["id"])


async def test_spam_button_says_so_in_the_topic(env: Env) -> None:
    thread = await open_lead(env, customer())
    card = env.emu.sent_to(STAFF, thread)[0]
    env.emu.press(STAFF, OLENA, card.message_id, "spam:1")
    await env.emu.wait_for(
        lambda: any("Позначено як спам (olena)" in t for t in env.emu.texts_to(STAFF, thread)), what="notice"
    )


async def test_spam_is_one_action_for_telegram_and_the_dashboard(env: Env) -> None:
    """Telegram's Spam button had its own copy of the dashboard's spam action: it told no bus
    subscriber (the webhook never heard of the tag), a second press tagged the lead again with a
    second notice, and the dashboard's spam was not said in the topic."""
    heard: list[str] = []

    async def listen(event: Any, lead: Any) -> None:
        heard.append(event.type)

    env.hub.bus.subscribe("test.spam", listen)
    thread = await open_lead(env, customer())
    card = env.emu.sent_to(STAFF, thread)[0]
    notice = "Позначено як спам (olena)"
    env.emu.press(STAFF, OLENA, card.message_id, "spam:1")
    await env.emu.wait_for(lambda: any(notice in t for t in env.emu.texts_to(STAFF, thread)), what="notice")
    await env.emu.wait_for(lambda: "lead.tagged" in heard and "lead.resolved" in heard, what="the events")
    env.emu.press(STAFF, OLENA, card.message_id, "spam:1")
    await env.emu.wait_for(
        lambda: any("вже позначено як спам" in (a.get("text") or "") for a in env.emu.callback_answers),
        what="the refusal of a second press",
    )
    assert len(await env.hub.store.list_events(types=["lead.tagged"])) == 1
    assert sum(notice in t for t in env.emu.texts_to(STAFF, thread)) == 1

    other = await open_lead(env, customer(5002, "Ганна"))
    await env.hub.actions.mark_spam(2, "taras")
    await env.emu.wait_for(
        lambda: any("Позначено як спам (taras)" in t for t in env.emu.texts_to(STAFF, other)),
        what="the dashboard's spam in the topic",
    )


async def test_a_web_follow_ups_own_subject_is_shown_in_the_topic(env: Env, http: Any) -> None:
    url = f"http://127.0.0.1:{env.hub.web_port}/forms/contact"
    first = {"name": "Petro", "email": "petro@example.com", "subject": "Котел", "message": "Не гріє"}
    async with http.post(url, json=first) as resp:
        assert resp.status == 201
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    follow_up = {**first, "subject": "Рахунок <за> грудень", "message": "І ще питання"}
    async with http.post(url, json=follow_up) as resp:
        assert resp.status == 201
        assert (await resp.json())["lead"] == "L-1"
    post = await env.emu.wait_for(
        lambda: next((t for t in env.emu.texts_to(STAFF, topic.thread) if "І ще питання" in t), None),
        what="follow-up in the topic",
    )
    assert "Тема: <b>Рахунок &lt;за&gt; грудень</b>\nІ ще питання" in post
    assert not html_problems(post)


async def test_an_unknown_or_outdated_button_says_so_in_the_staff_language(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A button of an older card or another bot does nothing and says what to do instead ("?" before)."""
    thread = await open_lead(env, customer())
    card = env.emu.sent_to(STAFF, thread)[0]
    caplog.set_level("INFO", logger="channels.telegram.staff")
    for data in ("snooze:1", "take:L-1", "resolve:"):
        env.emu.press(STAFF, OLENA, card.message_id, data)
    answers = await env.emu.wait_for(
        lambda: env.emu.callback_answers if len(env.emu.callback_answers) >= 3 else None, what="answers"
    )
    stale = "Ця кнопка застаріла, нічого не зроблено. Відкрийте картку звернення"
    assert all((a.get("text") or "").startswith(stale) for a in answers), answers
    assert all(len(a.get("text") or "") <= 200 for a in answers)
    logged = [r.getMessage() for r in caplog.records if "unknown data" in r.getMessage()]
    assert [d for d in ("'snooze:1'", "'take:L-1'", "'resolve:'") if any(d in m for m in logged)] == [
        "'snooze:1'",
        "'take:L-1'",
        "'resolve:'",
    ]
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.NEW


async def test_a_customer_who_blocked_the_bot_gets_staff_a_localized_reason(env: Env) -> None:
    """A 403 "bot was blocked by the user" is told in the topic in the staff's words, with what to
    do; Telegram's English stays in the event and the log (it was the notice's whole text)."""
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    env.emu.blocked.add(user["id"])
    env.emu.send_text(STAFF, OLENA, "Майстер прийде завтра", thread=thread)
    notice = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(STAFF, thread) if "доставити" in t], what="failure notice"
    )
    assert notice == [
        "❗ Не вдалося доставити відповідь клієнту (Telegram). Клієнт заблокував бота або видалив свій "
        "акаунт Telegram. Зв&#x27;яжіться з ним інакше (телефон, email)."
    ], notice
    assert "Forbidden" not in "\n".join(env.emu.texts_to(STAFF, thread))
    failures = await env.hub.store.list_events(types=["delivery.failed"])
    assert len(failures) == 1 and failures[0].data["reason"] == "unreachable"
    assert "bot was blocked by the user" in failures[0].data["error"]


async def test_a_reply_to_a_phone_only_customer_tells_staff_to_call(env: Env) -> None:
    """A web-form customer who left only a phone number: the reply in the topic cannot go
    anywhere, and the topic says so in the staff's words (it showed the core's English)."""
    result = await env.hub.intake.accept(
        Inbound(
            "webform", "f-1", Identity(IdentityKind.PHONE, "+380671234567", "Петро"), "Передзвоніть", utcnow()
        )
    )
    thread = await env.emu.wait_for(
        lambda: next((t.thread for t in env.emu.topics_in(STAFF) if "Петро" in t.name), None), what="topic"
    )
    await env.emu.wait_for(lambda: env.emu.texts_to(STAFF, thread), what="card")
    env.emu.send_text(STAFF, OLENA, "Добрий день, ми вам передзвонимо", thread=thread)
    notice = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(STAFF, thread) if t.startswith("❗")], what="notice"
    )
    assert notice == [
        "❗ Відповідь клієнту не надіслано. Немає адреси, за якою можна написати цьому контакту. "
        "Зв&#x27;яжіться з клієнтом інакше (наприклад, телефоном)."
    ], notice
    (event,) = await env.hub.store.list_events(result.lead.number, ["delivery.failed"])
    assert event.data["reason"] == "no_address"


async def test_a_customers_edited_caption_is_shown_on_the_media_copy(env: Env) -> None:
    """Telegram refuses editMessageText on a photo: the copy's caption is edited instead (staff
    never saw a customer's corrected caption, e.g. a new address under the photo)."""
    user = customer()
    photo = [{"file_id": "ph1", "file_unique_id": "u1", "width": 800, "height": 600, "file_size": 5000}]
    update = env.emu.enqueue(
        "message", env.emu.message(user["id"], user, None, photo=photo, caption="Адреса: Хрещатик 1")
    )
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    copy = (
        await env.emu.wait_for(
            lambda: [s for s in env.emu.sent_to(STAFF, topic.thread) if s.method == "copyMessage"],
            what="media copy",
        )
    )[0]
    env.emu.strict_html = True
    edited = dict(
        update["message"], caption="Адреса: Хрещатик 10, кв. 5 <b>", edit_date=update["message"]["date"]
    )
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(lambda: copy.caption, what="caption edited")
    assert copy.caption == "<i>(змінено)</i>\nАдреса: Хрещатик 10, кв. 5 &lt;b&gt;"
    assert not [c for c in env.emu.calls_of("editMessageText") if c.status == 400]


async def test_a_mistyped_command_in_a_topic_gets_the_list_of_commands(env: Env) -> None:
    """ "/resolv" did nothing and said nothing; another bot's command is still left alone."""
    user = customer()
    thread = await open_lead(env, user)
    env.emu.send_text(STAFF, OLENA, "/resolv", thread=thread)
    env.emu.send_text(STAFF, OLENA, "/poll@other_bot Where?", thread=thread)
    env.emu.send_text(STAFF, OLENA, "/stats@hub_test_bot", thread=thread)
    hints = await env.emu.wait_for(
        lambda: (
            [t for t in env.emu.texts_to(STAFF, thread) if t.startswith("Команди ")]
            if sum(t.startswith("Команди ") for t in env.emu.texts_to(STAFF, thread)) >= 2
            else None
        ),
        what="hints",
    )
    assert hints[0].startswith("Команди /resolv немає. У темі звернення: /take,") and "/stats" in hints[1]
    assert not any("/poll" in t for t in env.emu.texts_to(STAFF, thread))
    assert not html_problems(hints[0])
    assert env.emu.texts_to(user["id"])[1:] == []
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.NEW


def _bot_status_change(emu: TelegramEmulator, user: dict[str, Any], status: str) -> None:
    """Telegram's my_chat_member update when a user blocks ("kicked") or restarts ("member") the bot."""
    bot = {"id": emu.bot_id, "is_bot": True, "first_name": "Hub", "username": emu.username}
    old = "member" if status == "kicked" else "kicked"
    emu.enqueue(
        "my_chat_member",
        {
            "chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]},
            "from": user,
            "date": 1_800_000_000,
            "old_chat_member": {"status": old, "user": bot, **({"until_date": 0} if old == "kicked" else {})},
            "new_chat_member": {
                "status": status,
                "user": bot,
                **({"until_date": 0} if status == "kicked" else {}),
            },
        },
    )


async def test_a_customer_blocking_the_bot_is_told_in_the_topic_at_once(env: Env) -> None:
    """Telegram says when a user blocks the bot; staff learned it only from a failed reply."""
    user = customer()
    thread = await open_lead(env, user)
    _bot_status_change(env.emu, user, "kicked")
    blocked = "🚫 Клієнт заблокував бота: відповіді в Telegram до нього не дійдуть."
    await env.emu.wait_for(
        lambda: any(t.startswith(blocked) for t in env.emu.texts_to(STAFF, thread)), what="blocked notice"
    )
    _bot_status_change(env.emu, user, "member")
    await env.emu.wait_for(
        lambda: any(t.startswith("✅ Клієнт знову відкрив чат") for t in env.emu.texts_to(STAFF, thread)),
        what="unblocked notice",
    )
    events = [e.type for e in await env.hub.store.list_events(1, ["telegram.blocked", "telegram.unblocked"])]
    assert events == ["telegram.blocked", "telegram.unblocked"]
    # Someone with no open lead blocking the bot posts nothing anywhere.
    _bot_status_change(env.emu, customer(5999, "Інший"), "kicked")
    env.emu.send_text(user["id"], user, "marker")
    await env.emu.wait_for(lambda: any("marker" in t for t in env.emu.texts_to(STAFF, thread)), what="marker")
    assert len(env.emu.topics_in(STAFF)) == 1


async def test_every_part_of_a_long_customer_message_names_its_author_and_part(env: Env) -> None:
    """A message longer than one post was split into bare text (no author, no time, no "1/2"),
    and a long email's attachment list was lost from the topic."""
    user = customer()
    text = "Tom & Jerry <script> " * 195 + "END"  # 4,098 characters, ~6,000 once escaped
    env.emu.send_text(user["id"], user, text)
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    posts = await env.emu.wait_for(
        lambda: (
            env.emu.texts_to(STAFF, topic.thread)[1:]
            if any("END" in t for t in env.emu.texts_to(STAFF, topic.thread))
            else None
        ),
        what="every part",
    )
    assert all(len(post) <= 4096 and not html_problems(post) for post in posts)
    pieces = "\n\n".join(posts).split("<b>Марія</b> <i>")[1:]
    total = len(pieces)
    assert total >= 2 and [re.search(r"</i> <i>\((\d+)/(\d+)\)</i>\n", p).groups() for p in pieces] == [  # type: ignore[union-attr]
        (str(n), str(total)) for n in range(1, total + 1)
    ], pieces
    body = "".join(piece.split("\n", 1)[1].removesuffix("\n\n") for piece in pieces)
    assert body.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace(
        " ", ""
    ) == text.replace(" ", "")

    files = (Attachment("акт.pdf", "application/pdf", 1200, "sha256:aa"),)
    await env.hub.intake.accept(
        Inbound(
            "email",
            "<m1@x>",
            Identity(IdentityKind.EMAIL, "p@example.com", "Петро"),
            "Лист. " * 1000,
            utcnow(),
            subject="Довгий лист",
            attachments=files,
        )
    )
    thread = await env.emu.wait_for(
        lambda: next((t.thread for t in env.emu.topics_in(STAFF) if "Петро" in t.name), None), what="topic"
    )
    mail = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(STAFF, thread) if "акт.pdf" in t], what="the file list"
    )
    assert mail[0].startswith("✉️ <b>Петро</b>")


async def test_a_topic_closed_by_hand_says_the_lead_is_still_open_and_reopens_for_the_customer(
    env: Env,
) -> None:
    """Closing a topic in Telegram resolved nothing and said nothing (the deadline ran on), and
    the customer's next message went into the closed topic."""
    user = customer()
    thread = await open_lead(env, user)
    topic = env.emu.topics[(STAFF, thread)]
    topic.closed = True
    env.emu.enqueue("message", env.emu.message(STAFF, OLENA, None, thread=thread, forum_topic_closed={}))
    hint = "📌 Тему закрито, але звернення L-1 не вирішене: його термін іде далі."
    await env.emu.wait_for(
        lambda: any(t.startswith(hint) for t in env.emu.texts_to(STAFF, thread)), what="the hint"
    )
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.is_active
    env.emu.send_text(user["id"], user, "Є новини?")
    await env.emu.wait_for(
        lambda: any("Є новини?" in t for t in env.emu.texts_to(STAFF, thread)), what="the message"
    )
    await env.emu.wait_for(lambda: not topic.closed, what="the topic reopened")
    assert env.emu.calls_of("reopenForumTopic")
    # The hub's own close (/resolve) is not "by hand", and a resolved lead's topic stays closed
    # when nobody writes.
    env.emu.send_text(STAFF, OLENA, "/resolve", thread=thread)
    await env.emu.wait_for(lambda: topic.closed, what="closed by /resolve")
    env.emu.enqueue("message", env.emu.message(STAFF, OLENA, None, thread=thread, forum_topic_closed={}))
    env.emu.send_text(STAFF, OLENA, "// marker", thread=thread)

    async def noted() -> bool:
        return any(m.text == "marker" for m in await env.hub.store.list_messages(1))

    await env.emu.wait_for(noted, what="the note")
    assert sum(t.startswith(hint) for t in env.emu.texts_to(STAFF, thread)) == 1


async def test_erasing_a_telegram_customer_leaves_no_text_they_edited(env: Env) -> None:
    user = customer()
    env.emu.send_text(user["id"], user, "Мій секретний номер рахунку 4441")
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    card = (await env.emu.wait_for(lambda: env.emu.sent_to(STAFF, topic.thread), what="card"))[0]
    edited = env.emu.message(user["id"], user, "Виправлено: рахунок 5552")
    edited["message_id"] = 1  # the customer's first message in their chat
    edited["edit_date"] = edited["date"]
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(lambda: "5552" in card.text, what="card edited")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None
    await env.hub.erasure.erase(lead.contact_id, by="olena")
    path = env.hub.settings.storage.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        dump = "\n".join(db.iterdump())
    # The edit's event kept both versions, and the state the topic copy is built from the new one.
    assert "4441" not in dump and "5552" not in dump


async def test_a_managers_private_message_to_the_bot_opens_no_lead(env: Env) -> None:
    """A manager who wrote to the bot (to try it, or by mistake) opened a lead of their own with
    a topic, an SLA clock and an acknowledgement; /start greeted them as a customer."""
    for text in ("hello bot, test", "/start", "/help"):
        env.emu.send_text(OLENA["id"], OLENA, text)
    env.emu.send_text(OLENA["id"], OLENA, "/my")
    await env.emu.wait_for(
        lambda: any("відкритих звернень" in t for t in env.emu.texts_to(OLENA["id"])), what="/my"
    )
    texts = env.emu.texts_to(OLENA["id"])
    hint = "Ви менеджер, тож тут ваші повідомлення не стають зверненнями."
    assert sum(t.startswith(hint) for t in texts) == 3, texts
    assert not any("Дякуємо" in t or "Вітаємо" in t for t in texts), texts
    assert env.emu.topics_in(STAFF) == []
    assert await env.hub.store.get_lead(1) is None


async def test_a_staff_edit_made_while_the_reply_waits_is_what_the_customer_gets(env: Env) -> None:
    """A reply corrected while it waited (a 429 on the customer's chat) reached the customer
    with the old text: the edit found nothing relayed yet and was dropped."""
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    env.emu.fail_next("sendMessage", status=429, retry_after=2, chat_id=user["id"])
    update = env.emu.send_text(STAFF, OLENA, "Ціна 100 грн", thread=thread)
    await env.emu.wait_for(
        lambda: [c for c in env.emu.calls_of("sendMessage") if c.status == 429], what="the 429"
    )
    edited = dict(update["message"], text="Ціна 120 грн", edit_date=update["message"]["date"])
    env.emu.enqueue("edited_message", edited)
    reply = await env.emu.wait_for(
        lambda: next((s for s in env.emu.sent_to(user["id"])[1:] if s.text), None), timeout=15, what="reply"
    )
    await env.emu.wait_for(lambda: reply.text == "Ціна 120 грн", what="the corrected text")
    assert [s.text for s in env.emu.sent_to(user["id"])[1:]] == ["Ціна 120 грн"]


async def _state_gone(env: Env, key: str) -> None:
    for _ in range(100):
        if await env.hub.store.get_state(key) is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} is still kept: {await env.hub.store.get_state(key)!r}")


async def test_a_staff_edit_waiting_for_its_reply_is_forgotten_once_applied(env: Env, http: Any) -> None:
    """Each staff reply edited before it went out left a `tg.relay_edit.*` row for good (and one
    for every edited reply to an email lead, which no sender ever reads)."""
    user = customer()
    thread = await open_lead(env, user)
    await env.emu.wait_for(lambda: env.emu.texts_to(user["id"]), what="ack")
    env.emu.fail_next("sendMessage", status=429, retry_after=2, chat_id=user["id"])
    update = env.emu.send_text(STAFF, OLENA, "Ціна 100 грн", thread=thread)
    await env.emu.wait_for(
        lambda: [c for c in env.emu.calls_of("sendMessage") if c.status == 429], what="the 429"
    )
    key = f"tg.relay_edit.tg:{STAFF}:{update['message']['message_id']}"
    edited = dict(update["message"], text="Ціна 120 грн", edit_date=update["message"]["date"])
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(
        lambda: "Ціна 120 грн" in [s.text for s in env.emu.sent_to(user["id"])], timeout=15, what="reply"
    )
    await _state_gone(env, key)

    url = f"http://127.0.0.1:{env.hub.web_port}/forms/contact"
    form = {"name": "Petro", "email": "petro@example.com", "subject": "Котел", "message": "Не гріє"}
    async with http.post(url, json=form) as resp:
        assert resp.status == 201
    topic = await env.emu.wait_for(
        lambda: next((t for t in env.emu.topics_in(STAFF) if "Petro" in t.name), None), what="topic"
    )
    update = env.emu.send_text(STAFF, OLENA, "Лист", thread=topic.thread)
    key = f"tg.relay_edit.tg:{STAFF}:{update['message']['message_id']}"
    edited = dict(update["message"], text="Лист 2", edit_date=update["message"]["date"])
    env.emu.enqueue("edited_message", edited)

    for _ in range(100):
        if len(await env.hub.store.list_events(types=["reply.edited"])) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(await env.hub.store.list_events(types=["reply.edited"])) == 2
    assert await env.hub.store.get_state(key) is None


async def test_a_customers_dice_and_unshowable_messages_read_in_the_staff_language(env: Env) -> None:
    """A dice or a story showed "[a message of a type the hub does not show]" in English."""
    user = customer()
    env.emu.enqueue("message", env.emu.message(user["id"], user, None, dice={"emoji": "🎲", "value": 4}))
    story = {"chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]}, "id": 7}
    env.emu.enqueue("message", env.emu.message(user["id"], user, None, story=story))
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    everything = await env.emu.wait_for(
        lambda: (
            "\n".join(env.emu.texts_to(STAFF, topic.thread))
            if "тут не показується" in "\n".join(env.emu.texts_to(STAFF, topic.thread))
            else None
        ),
        what="both messages",
    )
    assert "\n🎲 4" in everything and "does not show" not in everything
    assert "[повідомлення такого типу (гра, історія, рахунок…) тут не показується" in everything


async def test_an_acknowledgement_that_fails_is_not_called_a_reply(env: Env) -> None:
    """The bot's own acknowledgement to a customer who blocked the bot right after writing was
    reported as "could not deliver a reply", which sent staff looking for a reply nobody wrote."""
    user = customer()
    env.emu.blocked.add(user["id"])
    env.emu.send_text(user["id"], user, "Котел не гріє")
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    notice = await env.emu.wait_for(
        lambda: [t for t in env.emu.texts_to(STAFF, topic.thread) if t.startswith("❗")], what="notice"
    )
    assert notice[0].startswith(
        "❗ Не вдалося надіслати клієнту автоматичне підтвердження (Telegram). Клієнт заблокував бота"
    )
    (event,) = await env.hub.store.list_events(1, ["delivery.failed"])
    assert event.data["automatic"] is True


async def test_a_managers_location_reaches_the_customer_as_a_pin(env: Env) -> None:
    """A venue or location a manager shared reached the customer as "📍 50.450100, 30.523400"."""
    user = customer()
    thread = await open_lead(env, user)
    venue = {
        "location": {"latitude": 50.4501, "longitude": 30.5234},
        "title": "Сервісний центр",
        "address": "вул. Хрещатик, 1",
    }
    shared = env.emu.message(STAFF, OLENA, None, thread=thread, venue=venue, location=venue["location"])
    env.emu.enqueue("message", shared)
    copies = await env.emu.wait_for(
        lambda: [s for s in env.emu.sent_to(user["id"]) if s.method == "copyMessage"], what="the pin"
    )
    assert copies[0].copied_from == (STAFF, shared["message_id"])
    assert not any("📍" in t for t in env.emu.texts_to(user["id"]))
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.first_response_at is not None


async def test_a_switched_off_manager_is_told_so_not_to_ask_to_be_added(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings]
) -> None:
    """A manager with `active: false` was told to ask an administrator to add their Telegram id,
    which is in the config already."""
    from tests.support.settings import base_config

    managers = [dict(m) for m in base_config(Path("."))["managers"]]
    for manager in managers:
        if manager["id"] == "taras":
            manager["active"] = False
    settings = settings_factory(telegram=telegram_config(emu), managers=managers)
    hub = Hub(settings)
    await hub.start()
    try:
        env = Env(emu, hub)
        thread = await open_lead(env, customer())
        env.emu.send_text(STAFF, TARAS, "Я відповім", thread=thread)
        card = env.emu.sent_to(STAFF, thread)[0]
        env.emu.press(STAFF, TARAS, card.message_id, "take:1")
        hint = await env.emu.wait_for(
            lambda: [t for t in env.emu.texts_to(STAFF, thread) if "вимкнено" in t], what="hint"
        )
        assert hint[0].startswith("Ваш обліковий запис менеджера вимкнено (active: false)")
        answer = (await env.emu.wait_for(lambda: env.emu.callback_answers, what="answer"))[0]
        assert (answer.get("text") or "").startswith("Ваш обліковий запис менеджера вимкнено")
    finally:
        await hub.stop()


async def test_a_spammer_writing_again_does_not_reopen_the_spam_lead(env: Env) -> None:
    """The next message of a contact whose lead staff marked spam reopened it, back in the queue
    with a first response owed."""
    user = customer()
    thread = await open_lead(env, user)
    card = env.emu.sent_to(STAFF, thread)[0]
    env.emu.press(STAFF, OLENA, card.message_id, "spam:1")
    topic = env.emu.topics[(STAFF, thread)]
    await env.emu.wait_for(lambda: topic.closed, what="closed as spam")
    env.emu.send_text(user["id"], user, "BUY CHEAP again")

    async def filed() -> bool:
        return any(m.text == "BUY CHEAP again" for m in await env.hub.store.list_messages(1))

    await env.emu.wait_for(filed, what="the message filed on the spam lead")
    await env.emu.wait_for(lambda: env.hub.channels and _channel(env.hub).desk.idle(), what="desk idle")
    lead = await env.hub.store.get_lead(1)
    assert lead is not None and lead.status == LeadStatus.RESOLVED and "spam" in lead.tags
    assert not any("Відкрито знову" in t for t in env.emu.texts_to(STAFF, thread))
    assert topic.closed
    assert await env.hub.store.list_events(1, ["lead.reopened"]) == []


async def test_words_after_help_or_start_are_a_request_not_lost(env: Env) -> None:
    """ "/help my boiler leaks" got the greeting and the words were dropped: no lead."""
    user = customer(6101, "Ірина", "uk")
    env.emu.send_text(user["id"], user, "/help у мене тече бойлер")
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    await env.emu.wait_for(
        lambda: any("тече бойлер" in t for t in env.emu.texts_to(STAFF, topic.thread)), what="the words"
    )
    other = customer(6102, "Олег", "uk")
    env.emu.send_text(other["id"], other, "/start")
    greeting = await env.emu.wait_for(lambda: env.emu.texts_to(other["id"]), what="greeting")
    assert greeting[0].startswith("Вітаємо, Олег")
    assert len(env.emu.topics_in(STAFF)) == 1


async def test_an_edit_of_a_long_customer_message_is_posted_again_in_parts(env: Env) -> None:
    """The edit of a message shown in several posts rewrote only the last post, with the start of
    the edited text cut off at 4,096 characters; the end of the new text was never shown."""
    user = customer()
    update = env.emu.send_text(user["id"], user, "Старий опис. " * 450 + "КІНЕЦЬ")
    topic = (await env.emu.wait_for(lambda: env.emu.topics_in(STAFF), what="topic"))[0]
    await env.emu.wait_for(
        lambda: any("КІНЕЦЬ" in t for t in env.emu.texts_to(STAFF, topic.thread)), what="every part"
    )
    before = list(env.emu.sent_to(STAFF, topic.thread))
    edited = dict(
        update["message"], text="Новий опис. " * 450 + "НОВИЙ КІНЕЦЬ", edit_date=update["message"]["date"]
    )
    env.emu.enqueue("edited_message", edited)
    await env.emu.wait_for(
        lambda: any("НОВИЙ КІНЕЦЬ" in t for t in env.emu.texts_to(STAFF, topic.thread)), what="the new end"
    )
    new = env.emu.sent_to(STAFF, topic.thread)[len(before) :]
    assert new and all(
        "(змінено)" in s.text and len(s.text) <= 4096 and not html_problems(s.text) for s in new
    )
    assert all(not s.edits for s in before[1:]), "an older part was rewritten"


async def test_a_customers_mailed_files_follow_the_mails_text_in_the_topic_once(
    emu: TelegramEmulator, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """Staff in Telegram saw "📎 name (size B)" and could not open a customer's photo or invoice."""
    settings = settings_factory(
        telegram=telegram_config(emu), email={"attachments_dir": str(tmp_path / "attachments")}
    )
    photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8
    invoice = b"%PDF-1.4\n%%EOF\n"
    files = AttachmentStore(settings.email.attachments_dir)
    kept = [
        Attachment("Фото котла.jpg", "image/jpeg", len(photo), await files.put(photo)),
        Attachment("Рахунок №5.pdf", "application/pdf", len(invoice), await files.put(invoice)),
    ]
    huge = Attachment("відео.mp4", "video/mp4", MAX_UPLOAD + 1, attachment_ref(b"stands for 50 MB"))
    dropped = Attachment("архів.zip", "application/zip", 30_000_000, dropped_reason="over the limit")
    sender = Identity(IdentityKind.EMAIL, "petro@example.com", "Петро")

    def mail(external_id: str, text: str, attachments: tuple[Attachment, ...] = ()) -> Inbound:
        return Inbound("email", external_id, sender, text, utcnow(), subject="Котел", attachments=attachments)

    def posts() -> list[Any]:
        return [s for s in emu.sent if s.chat_id == STAFF and s.thread is not None]

    # The first hub posts the mail's text, then cannot upload (Telegram fails) and stops.
    emu.fail_next("sendDocument", status=500, times=1000)
    first = Hub(settings)
    await first.start()
    try:
        await first.intake.accept(
            mail("<m1@x>", "Фото і рахунок у вкладеннях", (kept[0], huge, kept[1], dropped))
        )
        await emu.wait_for(lambda: emu.calls_of("sendDocument"), what="an upload tried")
    finally:
        await first.stop()
    emu.faults.pop("sendDocument", None)
    assert [s.method for s in posts()] == ["sendMessage", "sendMessage"]  # the card, the mail

    second = Hub(settings)
    await second.start()
    try:
        await emu.wait_for(lambda: len([s for s in posts() if s.method == "sendDocument"]) >= 2, what="files")
        await second.intake.accept(mail("<m2@x>", "Ще одне питання"))
        await emu.wait_for(lambda: any("Ще одне питання" in s.text for s in posts()), what="the next mail")
    finally:
        await second.stop()
    third = Hub(settings)  # nothing left to post: a restart posts nothing again
    await third.start()
    try:
        await third.intake.accept(mail("<m3@x>", "Третій лист"))
        await emu.wait_for(lambda: any("Третій лист" in s.text for s in posts()), what="the third mail")
    finally:
        await third.stop()

    shown = posts()
    assert [s.method for s in shown] == ["sendMessage"] * 2 + ["sendDocument"] * 2 + ["sendMessage"] * 2
    card, text, *documents, _, _ = shown
    assert "Фото і рахунок" not in card.text and "Фото і рахунок у вкладеннях" in text.text
    # Files Telegram does not take from a bot (over 50 MB, or never kept) stay named in the text.
    assert "📎 відео.mp4" in text.text and "📎 архів.zip" in text.text
    assert "Фото котла" not in text.text and "Рахунок" not in text.text
    uploads = [s.document for s in documents]
    assert [(u.filename, u.data) for u in uploads if u] == [
        ("Фото котла.jpg", photo),
        ("Рахунок №5.pdf", invoice),
    ]
    assert sum("Фото і рахунок у вкладеннях" in s.text for s in emu.sent) == 1
