"""Store contract: messages of a conversation and the reference ids threading relies on."""

from __future__ import annotations

from hub.domain import Attachment, DeliveryState, Direction
from storage.base import Store
from tests.contract.builders import at, message


async def test_add_is_idempotent_on_channel_and_external_id(store: Store) -> None:
    first = message(1, external_id="tg:1:10", text="перше", html="<p>перше</p>", refs=["<a@x>"])
    stored, created = await store.add_message(first)
    assert created and stored == first
    again, created_again = await store.add_message(message(1, external_id="tg:1:10", text="друге"))
    assert not created_again
    assert again == first  # the stored message comes back, not the redelivery
    # Same external id on another channel is another message.
    _, created_other = await store.add_message(message(1, channel="email", external_id="tg:1:10"))
    assert created_other
    assert len(await store.list_messages(1)) == 2


async def test_messages_without_external_id_are_all_kept(store: Store) -> None:
    for n in range(3):
        _, created = await store.add_message(message(5, direction=Direction.NOTE, text=f"note {n}"))
        assert created
    assert [m.text for m in await store.list_messages(5)] == ["note 0", "note 1", "note 2"]


async def test_round_trip_and_lookup(store: Store) -> None:
    full = message(
        3,
        direction=Direction.OUT,
        channel="email",
        author="olena",
        text="Доброго дня",
        html="<b>Доброго дня</b>",
        attachments=[
            Attachment("рахунок.pdf", "application/pdf", 1234, "sha256:ab"),
            Attachment("big.zip", "application/zip", 99_000_000, "", "too large"),
        ],
        external_id="<m1@example.com>",
        refs=["<m1@example.com>", "<m0@example.com>"],
        delivery=DeliveryState.QUEUED,
        created_at=at(7),
    )
    await store.add_message(full)
    assert await store.get_message(full.id) == full
    assert await store.find_message("email", "<m1@example.com>") == full
    assert await store.find_message("telegram", "<m1@example.com>") is None
    assert await store.get_message("missing") is None


async def test_conversation_order_is_insertion_order(store: Store) -> None:
    texts = [f"m{n}" for n in range(12)]
    for n, text in enumerate(texts):
        # Same timestamp for some: order must not depend on the clock.
        await store.add_message(message(9, text=text, external_id=f"e{n}", created_at=at(n // 3)))
    await store.add_message(message(10, text="other lead"))
    assert [m.text for m in await store.list_messages(9)] == texts
    assert await store.list_messages(11) == []


async def test_refs_find_the_lead_and_the_most_recent_lead_wins(store: Store) -> None:
    await store.add_refs(3, ["<a@x>", "<b@x>"])
    await store.add_refs(8, ["<b@x>", "<c@x>"])
    await store.add_refs(5, ["<c@x>"])  # an older lead does not take a ref back
    await store.add_refs(4, [])
    assert await store.find_lead_by_refs(["<a@x>"]) == 3
    assert await store.find_lead_by_refs(["<b@x>"]) == 8
    assert await store.find_lead_by_refs(["<c@x>"]) == 8
    assert await store.find_lead_by_refs(["<zzz@x>", "<a@x>"]) == 3
    assert await store.find_lead_by_refs(["<a@x>", "<c@x>"]) == 8
    assert await store.find_lead_by_refs(["<zzz@x>"]) is None
    assert await store.find_lead_by_refs([]) is None


async def test_a_follow_ups_own_subject_round_trips(store: Store) -> None:
    follow_up = message(4, external_id="api:k1", text="ще одне питання", subject="Рахунок за грудень")
    await store.add_message(follow_up)
    plain = message(4, external_id="api:k2", text="без теми")
    await store.add_message(plain)
    assert [(m.subject, m.text) for m in await store.list_messages(4)] == [
        ("Рахунок за грудень", "ще одне питання"),
        ("", "без теми"),
    ]
    assert await store.get_message(follow_up.id) == follow_up
