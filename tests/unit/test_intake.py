"""Intake on a real SQLite file: idempotency, threading by contact, reopening, routing fairness."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hub.app import Hub
from hub.domain import Identity, IdentityKind, Inbound, LeadKind, LeadStatus, ThreadHints
from hub.errors import IdempotencyKeyReused

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
async def core(make_hub: Callable[..., Awaitable[Hub]]) -> Hub:
    return await make_hub(web={"enabled": False})


def inbound(external_id: str, email: str = "c@example.com", text: str = "hello", **kw: object) -> Inbound:
    return Inbound(
        channel=str(kw.pop("channel", "webform")),
        external_id=external_id,
        sender=Identity(IdentityKind.EMAIL, email, "Customer"),
        text=text,
        received_at=T0,
        **kw,  # type: ignore[arg-type]
    )


async def test_redelivery_changes_nothing(core: Hub) -> None:
    first = await core.intake.accept(inbound("x1"), now=T0)
    again = await core.intake.accept(inbound("x1"), now=T0 + timedelta(minutes=1))
    assert again.duplicate and not again.created_lead
    assert again.lead.number == first.lead.number
    assert len(await core.store.list_messages(first.lead.number)) == 1
    assert len(await core.store.list_events(lead_number=first.lead.number)) == len(first.events)


async def test_same_contact_same_channel_joins_active_lead(core: Hub) -> None:
    first = await core.intake.accept(inbound("a1", text="one"), now=T0)
    second = await core.intake.accept(inbound("a2", text="two"), now=T0)
    other = await core.intake.accept(inbound("b1", email="other@example.com"), now=T0)
    assert second.lead.number == first.lead.number and not second.created_lead
    assert other.lead.number != first.lead.number
    assert [m.text for m in await core.store.list_messages(first.lead.number)] == ["one", "two"]


async def test_a_service_request_opens_its_own_lead_beside_an_open_question(core: Hub) -> None:
    question = await core.intake.accept(inbound("k1", text="when is delivery?"), now=T0)
    request = await core.intake.accept(
        inbound("k2", text="the washer is broken", subject="Repair", kind_hint=LeadKind.SERVICE_REQUEST),
        now=T0,
    )
    assert request.created_lead and request.lead.number != question.lead.number
    assert request.lead.kind == LeadKind.SERVICE_REQUEST and request.lead.subject == "Repair"
    # The service policy's 12 h, not the question's 4 h.
    assert request.lead.first_response_due == T0 + timedelta(hours=12)
    # Then a question, or a second request, joins the open request.
    follow_up = await core.intake.accept(inbound("k3", text="any news?"), now=T0)
    again = await core.intake.accept(inbound("k4", kind_hint=LeadKind.SERVICE_REQUEST), now=T0)
    assert follow_up.lead.number == again.lead.number == request.lead.number


async def test_customer_message_reopens_resolved_lead(core: Hub) -> None:
    first = await core.intake.accept(inbound("r1", channel="email", own_refs=("<m1@x>",)), now=T0)
    await core.actions.resolve(first.lead.number, by="olena", now=T0)
    reply = await core.intake.accept(
        inbound("r2", channel="email", thread=ThreadHints(message_ids=("<m1@x>",))),
        now=T0 + timedelta(hours=1),
    )
    assert reply.lead.number == first.lead.number
    assert reply.lead.status == LeadStatus.OPEN
    assert "lead.reopened" in [e.type for e in reply.events]


async def test_a_reply_on_a_thread_resolved_long_ago_opens_a_new_lead_naming_the_old(core: Hub) -> None:
    first = await core.intake.accept(inbound("o1", channel="email", own_refs=("<o1@x>",)), now=T0)
    await core.actions.resolve(first.lead.number, by="olena", now=T0)
    old = await core.store.get_lead(first.lead.number)
    assert old is not None and old.resolved_at is not None
    late = old.resolved_at + timedelta(days=90)
    reply = await core.intake.accept(
        replace(
            inbound("o2", channel="email", text="the same order again?", own_refs=("<o2@x>",)),
            thread=ThreadHints(message_ids=("<o1@x>",)),
            received_at=late,
        ),
        now=late,
    )
    # A new lead with its own clock (the old resolved lead was reopened with its old history).
    assert reply.created_lead and reply.lead.number != first.lead.number
    assert reply.lead.status == LeadStatus.NEW and reply.lead.created_at == late
    follows = [e for e in reply.events if e.type == "lead.follows_up"]
    assert [e.data for e in follows] == [{"follows": first.lead.number}]
    kept = await core.store.get_lead(first.lead.number)
    assert kept is not None and kept.status == LeadStatus.RESOLVED
    assert [m.text for m in await core.store.list_messages(first.lead.number)] == ["hello"]
    # The customer's next reply on the thread (it names both leads' mails) joins the new lead.
    again = await core.intake.accept(
        replace(
            inbound("o3", channel="email", text="any news?"),
            thread=ThreadHints(message_ids=("<o1@x>", "<o2@x>")),
            received_at=late,
        ),
        now=late,
    )
    assert again.lead.number == reply.lead.number and not again.created_lead


async def test_the_reopen_window_is_one_setting_for_every_channel(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    core = await make_hub(web={"enabled": False}, leads={"reopen_within": "1h"})
    first = await core.intake.accept(inbound("w1", channel="email", own_refs=("<w1@x>",)), now=T0)
    await core.actions.resolve(first.lead.number, by="olena", now=T0)
    resolved = await core.store.get_lead(first.lead.number)
    assert resolved is not None and resolved.resolved_at is not None

    def reply(external_id: str, after: timedelta) -> Inbound:
        return replace(
            inbound(external_id, channel="email"),
            thread=ThreadHints(message_ids=("<w1@x>",)),
            received_at=resolved.resolved_at + after,  # type: ignore[operator]
        )

    within = await core.intake.accept(reply("w2", timedelta(minutes=59)), now=T0 + timedelta(hours=2))
    assert within.lead.number == first.lead.number and within.lead.status == LeadStatus.OPEN
    await core.actions.resolve(first.lead.number, by="olena", now=T0 + timedelta(hours=2))
    again = await core.store.get_lead(first.lead.number)
    assert again is not None and again.resolved_at is not None
    after = await core.intake.accept(
        replace(reply("w3", timedelta()), received_at=again.resolved_at + timedelta(minutes=61)),
        now=T0 + timedelta(hours=4),
    )
    assert after.created_lead and after.lead.number != first.lead.number
    # A config written when only Telegram had the window keeps its value for every channel.
    legacy = await make_hub(web={"enabled": False}, telegram={"reopen_within": "2d"})
    assert legacy.settings.leads.reopen_within == timedelta(days=2)
    assert legacy.settings.telegram.reopen_within == timedelta(days=2)


async def test_an_auto_reply_is_filed_without_reopening_or_restarting_the_clock(core: Hub) -> None:
    first = await core.intake.accept(inbound("r1", channel="email", own_refs=("<m1@x>",)), now=T0)
    resolved = await core.actions.resolve(first.lead.number, by="olena", now=T0)
    auto = await core.intake.accept(
        inbound(
            "r2",
            channel="email",
            text="I am out of office",
            thread=ThreadHints(message_ids=("<m1@x>",)),
            meta={"automatic": "Auto-Submitted: auto-replied"},
        ),
        now=T0 + timedelta(hours=1),
    )
    assert auto.lead.number == first.lead.number and not auto.duplicate
    lead = await core.store.get_lead(first.lead.number)
    assert lead is not None and lead.status == LeadStatus.RESOLVED
    assert lead == resolved
    assert "lead.reopened" not in [e.type for e in auto.events]
    assert [m.text for m in await core.store.list_messages(lead.number)][-1] == "I am out of office"


async def test_lead_token_only_honoured_for_the_leads_own_contact(core: Hub) -> None:
    mine = await core.intake.accept(inbound("t1", channel="email"), now=T0)
    stranger = await core.intake.accept(
        inbound(
            "t2",
            channel="email",
            email="stranger@example.com",
            thread=ThreadHints(lead_number=mine.lead.number),
        ),
        now=T0,
    )
    assert stranger.lead.number != mine.lead.number


async def test_least_loaded_spreads_concurrent_leads_evenly(core: Hub) -> None:
    results = await asyncio.gather(
        *(core.intake.accept(inbound(f"c{i}", email=f"u{i}@example.com"), now=T0) for i in range(40))
    )
    numbers = [r.lead.number for r in results]
    assert sorted(numbers) == list(range(1, 41))
    counts = Counter(r.lead.assignee for r in results)
    assert counts == {"olena": 20, "taras": 20}


async def test_reply_stops_first_response_clock_and_queues_delivery(core: Hub) -> None:
    result = await core.intake.accept(inbound("q1", channel="email"), now=T0)
    message = await core.replies.record_reply(
        result.lead.number, "Дякуємо", "olena", now=T0 + timedelta(minutes=5)
    )
    lead = await core.store.get_lead(result.lead.number)
    assert lead is not None and lead.first_response_at == T0 + timedelta(minutes=5)
    assert message.channel == "email" and message.delivery is not None and message.delivery.value == "queued"
    assert await core.store.claim_due_breaches(T0 + timedelta(days=1), 10) == []


async def test_a_replayed_staff_reply_is_recorded_once_and_its_key_is_the_leads_own(core: Hub) -> None:
    # The Telegram staff path: the key is the staff message, replayed as is after a lost ack.
    first = (await core.intake.accept(inbound("r1", email="a@example.com"), now=T0)).lead
    second = (await core.intake.accept(inbound("r2", email="b@example.com"), now=T0)).lead
    key = "tg:-100:5"
    sent = await core.replies.record_reply(first.number, "Так", "olena", source="telegram", external_id=key)
    again = await core.replies.record_reply(first.number, "Так", "olena", source="telegram", external_id=key)
    other = await core.replies.record_reply(second.number, "Ні", "olena", source="telegram", external_id=key)
    assert again.id == sent.id and other.id != sent.id
    assert sent.external_id == f"L-{first.number}:telegram:{key}"
    with pytest.raises(IdempotencyKeyReused):
        await core.replies.record_reply(first.number, "Інше", "olena", source="telegram", external_id=key)
    for number, text in ((first.number, "Так"), (second.number, "Ні")):
        assert [m.text for m in await core.store.list_messages(number) if m.direction.value == "out"] == [
            text
        ]


async def test_a_burst_from_a_new_customer_opens_one_lead(core: Hub) -> None:
    results = await asyncio.gather(
        *(core.intake.accept(inbound(f"burst{i}", text=str(i)), now=T0) for i in range(5))
    )
    assert {r.lead.number for r in results} == {1}
    assert len(await core.store.list_messages(1)) == 5
