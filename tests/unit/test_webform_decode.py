"""The live form path builds its Inbound from the validated submission instead of decoding
the bytes it just stored: both ways must give the same Inbound, and a key stored earlier
must still be processed from its own stored bytes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels import webform
from hub.app import Hub
from hub.domain import InboxItem, LeadKind
from hub.errors import IdempotencyKeyReused

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

# Values a visitor types: Cyrillic, padding, CRLF, mixed-case addresses, spaced phone numbers.
words = st.sampled_from(["Олена", "Ї ґ є", "  hello ", "line\r\nbreak", "tab\there", "Zoë", ""])
emails = st.sampled_from(["", "Olena@Example.COM", " olena@example.com ", "o.k+tag@пошта.укр"])
phones = st.sampled_from(["", "+380 67 123 45 67", "067-123-45-67", "+38 (050) 000 00 01"])
telegrams = st.sampled_from(["", "@olena_k", "olena_k", "https://t.me/olena_k"])


@settings(max_examples=300, deadline=None)
@given(
    name=words,
    email=emails,
    phone=phones,
    telegram=telegrams,
    subject=words,
    message=st.lists(words, min_size=1, max_size=4).map(" ".join),
    language=st.sampled_from(["uk", "en"]),
    kind=st.sampled_from(list(LeadKind)),
    team=st.sampled_from([None, "sales"]),
)
def test_the_live_inbound_is_what_decoding_the_stored_bytes_gives(
    name: str,
    email: str,
    phone: str,
    telegram: str,
    subject: str,
    message: str,
    language: str,
    kind: LeadKind,
    team: str | None,
) -> None:
    raw = {"name": name, "email": email, "phone": phone, "telegram": telegram, "subject": subject}
    submission, _ = webform.validate_submission({**raw, "message": message}, language)
    if submission is None:
        return  # refused at the edge: nothing is stored, nothing decoded
    payload = webform.stored_payload("contact", kind, submission, language, "127.0.0.1", team)
    item = InboxItem(
        id=7,
        channel="webform",
        external_id="contact:key-0001",
        payload=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        received_at=T0,
    )
    assert webform._inbound(item, submission, payload) == webform.decode(item)


@pytest.fixture
async def core(make_hub: Callable[..., Awaitable[Hub]]) -> Hub:
    return await make_hub()  # the form channel registers its decoder


async def test_a_key_stored_before_is_processed_from_its_own_bytes(core: Hub) -> None:
    """A first attempt stored its submission but did not process it (a crash, an outage); the
    retry under the same key carries the same fields in another language: the lead gets what
    was stored first."""
    submission, _ = webform.validate_submission(
        {"name": "A", "email": "a@example.com", "message": "first"}, "en"
    )
    assert submission is not None
    stored = webform.stored_payload("contact", LeadKind.MESSAGE, submission, "uk", "127.0.0.1", None)
    await core.store.inbox_put(
        "webform", "contact:key-0001", json.dumps(stored).encode("utf-8"), T0, {"ip": "127.0.0.1"}
    )

    result = await webform.submit(
        core, "webform", "contact", LeadKind.MESSAGE, submission, "key-0001", "en", "::1"
    )

    assert result is not None
    assert [m.text for m in await core.store.list_messages(result.lead.number)] == ["first"]
    contact = await core.store.get_contact(result.lead.contact_id)
    assert contact is not None and contact.language == "uk"


async def test_a_key_stored_before_with_other_fields_is_refused_and_left_for_the_replay(core: Hub) -> None:
    """The retry under a stored key carries another message: refused, and the stored item is
    neither replaced nor processed here (the replay processes it from its own bytes)."""
    first, _ = webform.validate_submission({"name": "A", "email": "a@example.com", "message": "first"}, "en")
    second, _ = webform.validate_submission(
        {"name": "A", "email": "a@example.com", "message": "second"}, "en"
    )
    assert first is not None and second is not None
    stored = webform.stored_payload("contact", LeadKind.MESSAGE, first, "en", "127.0.0.1", None)
    item, _ = await core.store.inbox_put(
        "webform", "contact:key-0001", json.dumps(stored).encode("utf-8"), T0, {"ip": "127.0.0.1"}
    )

    with pytest.raises(IdempotencyKeyReused):
        await webform.submit(core, "webform", "contact", LeadKind.MESSAGE, second, "key-0001", "en", "::1")

    after = await core.store.inbox_get(item.id)
    assert after is not None and (after.status, after.payload) == ("pending", item.payload)
    assert await core.store.get_lead(1) is None
    await core.inbox.process(after)
    assert [m.text for m in await core.store.list_messages(1)] == ["first"]
