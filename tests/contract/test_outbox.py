"""Store contract: the outbox (atomic with its message, claimed by one sender, delivery marked)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from hub.domain import DeliveryState
from storage.base import Store, StoreError
from tests.contract.builders import T0, at, outbound
from tests.contract.conftest import StoreFactory


async def test_add_outbound_stores_message_and_row(store: Store) -> None:
    msg, item = outbound(5, next_attempt_at=None)
    await store.add_outbound(msg, item)
    assert await store.get_message(msg.id) == msg
    assert [m.id for m in await store.list_messages(5)] == [msg.id]
    row = await store.outbox_get(item.id)
    assert row is not None
    assert (row.message_id, row.lead_number, row.channel, row.payload) == (msg.id, 5, "email", item.payload)
    assert (row.state, row.attempts, row.created_at) == (DeliveryState.QUEUED, 0, T0)
    assert row.next_attempt_at == T0  # due at once when no time is given
    assert await store.outbox_get("missing") is None
    assert await store.outbox_counts() == {"queued": 1, "sent": 0, "failed": 0}


async def test_add_outbound_without_a_row_stores_only_the_message(store: Store) -> None:
    msg, _ = outbound(5)
    failed = replace(msg, delivery=DeliveryState.FAILED)  # no channel to deliver on
    await store.add_outbound(failed, None)
    assert await store.get_message(msg.id) == failed
    assert await store.outbox_counts() == {"queued": 0, "sent": 0, "failed": 0}


async def test_add_outbound_is_all_or_nothing(store: Store) -> None:
    msg, item = outbound(5)
    await store.add_outbound(msg, item)
    second, _ = outbound(5)
    clash = replace(item, message_id=second.id)  # the row's id is taken
    with pytest.raises(StoreError):
        await store.add_outbound(second, clash)
    assert await store.get_message(second.id) is None
    assert [m.id for m in await store.list_messages(5)] == [msg.id]


async def test_claim_filters_channels_and_due_time(store: Store) -> None:
    email_now, email_row = outbound(1, "email")
    tg_now, tg_row = outbound(1, "telegram")
    later, later_row = outbound(2, "email", next_attempt_at=at(minutes=5))
    for m, i in ((email_now, email_row), (tg_now, tg_row), (later, later_row)):
        await store.add_outbound(m, i)

    assert await store.outbox_claim([], "w1", at(1), 30, 10) == []
    claimed = await store.outbox_claim(["email"], "w1", at(1), 3600, 10)
    assert [i.id for i in claimed] == [email_row.id]
    assert claimed[0].attempts == 1
    tg = await store.outbox_claim(["telegram", "sms"], "w2", at(1), 30, 10)
    assert [i.id for i in tg] == [tg_row.id]
    assert await store.outbox_claim(["email"], "w3", at(minutes=4), 600, 10) == []
    due_later = await store.outbox_claim(["email"], "w3", at(minutes=5), 30, 10)
    assert [i.id for i in due_later] == [later_row.id]


async def test_claim_limit_and_order(store: Store) -> None:
    rows = []
    for n in range(5):
        m, i = outbound(1, next_attempt_at=at(10 - n))
        await store.add_outbound(m, i)
        rows.append(i)
    first = await store.outbox_claim(["email"], "w1", at(60), 30, 2)
    assert [i.id for i in first] == [rows[4].id, rows[3].id]  # the longest-waiting first
    rest = await store.outbox_claim(["email"], "w2", at(60), 30, 10)
    assert [i.id for i in rest] == [rows[2].id, rows[1].id, rows[0].id]


async def test_claim_lease_lapses(store: Store) -> None:
    msg, item = outbound(1)
    await store.add_outbound(msg, item)
    assert len(await store.outbox_claim(["email"], "w1", at(0), 30, 10)) == 1
    assert await store.outbox_claim(["email"], "w2", at(29), 30, 10) == []
    # The holder died mid-send: after the lease another sender retries it.
    [again] = await store.outbox_claim(["email"], "w2", at(31), 30, 10)
    assert again.id == item.id and again.attempts == 2


async def test_sent_marks_row_and_message(store: Store) -> None:
    msg, item = outbound(1)
    await store.add_outbound(msg, item)
    await store.outbox_claim(["email"], "w1", at(0), 30, 10)
    await store.outbox_sent(item.id, at(3), "<sent-1@example.com>")
    row = await store.outbox_get(item.id)
    assert row is not None
    assert (row.state, row.sent_at, row.external_ref) == (DeliveryState.SENT, at(3), "<sent-1@example.com>")
    stored = await store.get_message(msg.id)
    assert stored is not None and stored.delivery == DeliveryState.SENT
    assert await store.outbox_claim(["email"], "w2", at(hours=1), 30, 10) == []
    assert await store.outbox_counts() == {"queued": 0, "sent": 1, "failed": 0}


async def test_retry_waits_until_the_next_attempt(store: Store) -> None:
    msg, item = outbound(1)
    await store.add_outbound(msg, item)
    await store.outbox_claim(["email"], "w1", at(0), 30, 10)
    await store.outbox_retry(item.id, at(120), "421 try later")
    row = await store.outbox_get(item.id)
    assert row is not None
    assert (row.state, row.next_attempt_at, row.last_error, row.attempts) == (
        DeliveryState.QUEUED,
        at(120),
        "421 try later",
        1,
    )
    stored = await store.get_message(msg.id)
    assert stored is not None and stored.delivery == DeliveryState.QUEUED
    # The retry released the claim, but the row waits for its time.
    assert await store.outbox_claim(["email"], "w2", at(119), 30, 10) == []
    [again] = await store.outbox_claim(["email"], "w2", at(120), 30, 10)
    assert again.attempts == 2


async def test_failed_marks_row_and_message(store: Store) -> None:
    msg, item = outbound(1, "telegram")
    await store.add_outbound(msg, item)
    await store.outbox_claim(["telegram"], "w1", at(0), 30, 10)
    await store.outbox_failed(item.id, "403 bot was blocked by the user")
    row = await store.outbox_get(item.id)
    assert row is not None and row.state == DeliveryState.FAILED
    assert row.last_error == "403 bot was blocked by the user"
    stored = await store.get_message(msg.id)
    assert stored is not None and stored.delivery == DeliveryState.FAILED
    assert await store.outbox_claim(["telegram"], "w2", at(hours=1), 30, 10) == []
    assert await store.outbox_counts() == {"queued": 0, "sent": 0, "failed": 1}


async def test_two_senders_never_hold_one_row(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    ids = set()
    for _ in range(30):
        m, i = outbound(1)
        await one.add_outbound(m, i)
        ids.add(i.id)
    claims = await asyncio.gather(
        *(s.outbox_claim(["email"], f"w{k}", at(1), 60, 4) for k, s in enumerate([one, two] * 6))
    )
    claimed = [i.id for batch in claims for i in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= ids
    assert len(claimed) == len(ids)  # 12 claims of 4 cover all 30 rows
