"""Telegram channel parts that need no server: pacing, splitting, signed links, classification."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from channels.telegram import links
from channels.telegram.files import StaffFiles
from channels.telegram.ratelimit import JITTER, TelegramRateLimiter
from channels.telegram.sender import copy_ref, parse_copy_ref
from channels.telegram.staff import StaffSide
from channels.telegram.texts import (
    MAX_TEXT,
    esc,
    split_html_escaped,
    split_text,
    truncate_html,
)
from channels.telegram.transport import Ingest
from channels.telegram.updates import CONTROL, CUSTOMER, CustomerDecoder, classify, private_sender
from hub import i18n
from hub.app import Hub
from hub.config import TelegramLimits
from hub.delivery_failures import FILE_TOO_LARGE, FILE_UNAVAILABLE
from hub.domain import Attachment, Identity, IdentityKind, Inbound, InboxItem, LeadKind
from hub.errors import HubError
from hub.files import FileUnavailable
from hub.refusals import REFUSALS
from storage.base import LeadChanges
from tests.support.telegram_html import html_problems


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_limiter_spaces_one_chat_and_caps_a_group_per_minute(monkeypatch: object) -> None:
    clock = FakeClock()
    limiter = TelegramRateLimiter(
        TelegramLimits(chat_per_second=1, group_per_minute=20, global_per_second=30), clock
    )
    assert limiter.delay(-100) == 0
    for _ in range(20):
        (await limiter.acquire(-100)).done()
        clock.now += 1.0 + JITTER
    # The 21st message to the group must wait until the first one leaves the minute window.
    assert limiter.delay(-100) > 30
    # A private chat is not affected by the group's minute.
    assert limiter.delay(42) == 0
    (await limiter.acquire(42)).done()
    assert 0.9 < limiter.delay(42) <= 1.0 + JITTER


async def test_limiter_holds_a_chat_after_429() -> None:
    clock = FakeClock()
    limiter = TelegramRateLimiter(TelegramLimits(), clock)
    limiter.hold(7, 5.0)
    assert limiter.delay(7) == 5.0
    assert limiter.delay(8) == 0
    clock.now = 5.0
    assert limiter.delay(7) == 0


async def test_limiter_acquire_waits_for_real() -> None:
    limiter = TelegramRateLimiter(TelegramLimits(chat_per_second=20))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(3):
        (await limiter.acquire(5)).done()
    assert loop.time() - start >= 2 * (1 / 20)


def test_split_text_respects_the_limit_and_keeps_everything() -> None:
    text = "\n".join(f"line {i} " + "x" * 50 for i in range(300))
    parts = split_text(text)
    assert all(len(p) <= MAX_TEXT for p in parts) and len(parts) > 1
    assert "".join(parts).replace("\n", "") == text.replace("\n", "")
    assert split_text("short") == ["short"]
    unbroken = "y" * 10_000
    assert [len(p) for p in split_text(unbroken)] == [4096, 4096, 1808]


def test_split_html_escaped_fits_after_escaping() -> None:
    text = "<&>" * 3000
    parts = split_html_escaped(text)
    assert all(len(p) <= MAX_TEXT for p in parts)
    assert "".join(parts) == esc(text)


def test_deep_link_tokens_are_signed_per_lead_and_contact() -> None:
    token = links.make_token("secret", 1042, "contact-a")
    assert len(token) <= 64 and token.startswith("L1042_")
    parsed = links.token_lead(token)
    assert parsed is not None
    number, signature = parsed
    assert number == 1042
    assert links.verify("secret", 1042, "contact-a", signature)
    assert not links.verify("secret", 1042, "contact-b", signature)
    assert not links.verify("other-secret", 1042, "contact-a", signature)
    assert links.token_lead("hello") is None
    assert links.deep_link("@hub_bot", token) == f"https://t.me/hub_bot?start={token}"


def _private(text: str | None = None, **extra: object) -> dict[str, object]:
    message: dict[str, object] = {
        "message_id": 5,
        "date": 1_700_000_000,
        "chat": {"id": 42, "type": "private"},
        "from": {
            "id": 42,
            "is_bot": False,
            "first_name": "Іван",
            "language_code": "ru",
            "username": "ivan_k",
        },
    }
    if text is not None:
        message["text"] = text
    message.update(extra)
    return {"update_id": 77, "message": message}


def test_classify_separates_customer_messages_from_control() -> None:
    assert classify(_private("Котел не гріє")) == CUSTOMER
    assert classify(_private("/start")) == CONTROL
    assert classify(_private("Question")) == CONTROL  # the kind keyboard
    assert classify(_private("write to me at a@b.com")) == CONTROL  # may merge contacts
    assert classify(_private(None, contact={"phone_number": "+380671234567", "first_name": "I"})) == CONTROL
    group = _private("hi")
    group["message"]["chat"] = {"id": -100, "type": "supergroup"}  # type: ignore[index]
    assert classify(group) == CONTROL
    assert classify({"update_id": 1, "callback_query": {}}) == CONTROL


def test_private_sender_keys_only_traffic_confined_to_one_customer() -> None:
    staff = frozenset({111})
    assert private_sender(_private("Котел не гріє"), staff) == 42
    assert private_sender(_private("/start"), staff) == 42
    assert private_sender(_private("Question"), staff) == 42
    edited = {"update_id": 78, "edited_message": _private("typo fixed")["message"]}
    assert private_sender(edited, staff) == 42
    # What may merge contacts or is staff traffic is processed alone, in its place.
    assert private_sender(_private("write to me at a@b.com"), staff) is None
    assert (
        private_sender(_private(None, contact={"phone_number": "+380671234567", "first_name": "I"}), staff)
        is None
    )
    assert private_sender(_private("/start L1-abc"), staff) is None
    manager = _private("/away")
    manager["message"]["from"]["id"] = 111  # type: ignore[index]
    assert private_sender(manager, staff) is None
    group = _private("hi")
    group["message"]["chat"] = {"id": -100, "type": "supergroup"}  # type: ignore[index]
    assert private_sender(group, staff) is None
    assert private_sender({"update_id": 1, "callback_query": {}}, staff) is None


async def test_process_all_keeps_each_customer_in_order_and_staff_updates_in_place() -> None:
    rng = random.Random(3)
    hub = SimpleNamespace(settings=SimpleNamespace(managers=[]))
    ingest = Ingest(hub, lambda: 1)  # type: ignore[arg-type]
    items: list[InboxItem] = []
    for index in range(60):
        if index in (20, 41):
            update = _private("staff")
            update["message"]["chat"] = {"id": -100, "type": "supergroup"}  # type: ignore[index]
        else:
            update = _private(f"m{index}")
            update["message"]["from"]["id"] = update["message"]["chat"]["id"] = rng.randrange(5)  # type: ignore[index]
        items.append(
            InboxItem(
                index, CUSTOMER, f"1:{index}", json.dumps(update).encode(), datetime(2026, 1, 1, tzinfo=UTC)
            )
        )
    done: list[int] = []
    running = 0
    most = 0

    async def process(item: InboxItem) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(rng.random() / 500)
        running -= 1
        done.append(item.id)

    ingest.process = process  # type: ignore[method-assign]
    await ingest.process_all(items)
    assert sorted(done) == list(range(60))
    assert most > 1  # different customers did run at once
    barriers = [done.index(20), done.index(41)]
    assert set(done[: barriers[0]]) == set(range(20))
    assert set(done[barriers[0] + 1 : barriers[1]]) == set(range(21, 41))
    for user in range(5):
        mine = [
            i
            for i in done
            if i not in (20, 41) and json.loads(items[i].payload)["message"]["chat"]["id"] == user
        ]
        assert mine == sorted(mine)


def _item(update: dict[str, object], meta: dict[str, object] | None = None) -> InboxItem:
    return InboxItem(
        1, CUSTOMER, "1:77", json.dumps(update).encode(), datetime(2026, 1, 1, tzinfo=UTC), meta=meta or {}
    )


def test_decoder_turns_media_and_locations_into_inbounds() -> None:
    decode = CustomerDecoder("uk")
    photo = _private(
        None,
        caption="Ось фото",
        photo=[
            {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 100},
            {"file_id": "big", "file_unique_id": "b", "width": 900, "height": 900, "file_size": 9000},
        ],
    )
    inbound = decode(_item(photo, {"kind": "service_request"}))
    assert inbound.channel == "telegram" and inbound.external_id == "42:5"
    assert inbound.sender.kind == IdentityKind.TELEGRAM and inbound.sender.value == "42"
    assert inbound.text == "Ось фото"
    assert [a.ref for a in inbound.attachments] == ["tg-file:big"]
    assert inbound.kind_hint == LeadKind.SERVICE_REQUEST
    assert inbound.language == "uk"  # `ru` gets the configured fallback
    assert any(
        i.kind == IdentityKind.TELEGRAM_USERNAME and i.value == "ivan_k" for i in inbound.other_identities
    )
    location = decode(_item(_private(None, location={"latitude": 50.45, "longitude": 30.52})))
    assert "50.450000, 30.520000" in location.text
    voice = decode(
        _item(
            _private(
                None, voice={"file_id": "v", "file_unique_id": "v", "duration": 3, "mime_type": "audio/ogg"}
            )
        )
    )
    assert voice.attachments[0].content_type == "audio/ogg" and voice.text
    someone_else = decode(
        _item(_private(None, contact={"phone_number": "+380671234567", "first_name": "X", "user_id": 999}))
    )
    assert not any(i.kind == IdentityKind.PHONE for i in someone_else.other_identities)
    own = decode(
        _item(_private(None, contact={"phone_number": "+380 67 123 45 67", "first_name": "I", "user_id": 42}))
    )
    assert any(i.kind == IdentityKind.PHONE and i.value == "+380671234567" for i in own.other_identities)
    # Telegram sends the international number without its "+": it is not read as a Ukrainian one.
    polish = decode(
        _item(_private(None, contact={"phone_number": "48601234567", "first_name": "I", "user_id": 42}))
    )
    assert [i.value for i in polish.other_identities if i.kind == IdentityKind.PHONE] == ["+48601234567"]


def test_truncate_html_never_cuts_inside_a_tag_or_an_entity() -> None:
    head = '<b>L-1</b> · <a href="tg://user?id=1">Mar&amp;ia</a>\n\n<b>Марія</b> <i>15:53</i>\n'
    html = head + esc("x<y&" * 1000) + "\n\n<b>Марія</b> <i>15:54</i>\nlast"
    for limit in [*range(20, 200), *range(200, len(html) + 10, 97)]:
        cut = truncate_html(html, limit)
        assert len(cut) <= limit or cut == html
        assert html_problems(cut) == [], (limit, cut[-40:])
        assert cut == html or re.sub(r"(</\w+>)+$", "", cut).endswith("…")


class _Filled(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "x"


def test_every_telegram_template_is_valid_html_in_both_languages() -> None:
    """Bot texts go out in HTML parse mode: a stray '<' or '&' makes Telegram refuse the message."""
    for language in i18n.SUPPORTED:
        templates = {k: v for k, v in i18n._catalog(language).items() if k.startswith("tg.")}
        assert templates
        for key, template in templates.items():
            assert html_problems(template.format_map(_Filled())) == [], (language, key)


def test_every_refusal_reads_as_one_sentence_in_telegram_in_both_languages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal is a whole sentence: it is not put after another "...:" (two colons in a row
    of clauses), says nothing of pages or forms, and is never the word "failed" twice."""
    hub: Any = SimpleNamespace(settings=SimpleNamespace(managers=[]))
    side = StaffSide(hub, cast(Any, None), cast(Any, None))
    for language in i18n.SUPPORTED:
        monkeypatch.setattr("channels.telegram.texts.STAFF_LANGUAGE", language)
        for code in sorted(REFUSALS):
            text = side._refusal(HubError("the core's English", code=code))
            assert text.count(":") <= 1, (language, code, text)
            reason = text.removeprefix("⚠️ ")
            assert reason != text, (language, code, text)
            assert reason[:1].isupper() and reason.endswith("."), (language, code, text)
            lowered = text.lower()
            for dashboard_only in ("сторінк", "форм", "page", "form "):
                assert dashboard_only not in lowered, (language, code, text)
            assert lowered.count("не вдалося") <= 1 and lowered.count("could not") <= 1, text
            assert not html_problems(esc(text)), text


def test_a_customers_poll_and_dice_keep_what_they_say() -> None:
    from aiogram.types import Message

    from channels.telegram.updates import content_of

    base = {"message_id": 2, "date": 1, "chat": {"id": 5, "type": "private"}}
    sender = {"from": {"id": 5, "is_bot": False, "first_name": "M"}}
    options = [
        {"persistent_id": str(i), "text": t, "voter_count": 0} for i, t in enumerate(["ранок", "вечір"])
    ]
    poll = {
        "id": "p1", "question": "Коли зручно?", "options": options, "total_voter_count": 0,
        "is_closed": False, "is_anonymous": True, "type": "regular", "allows_multiple_answers": False,
        "allows_revoting": False, "members_only": False,
    }  # fmt: skip
    asked = content_of(Message.model_validate({**base, **sender, "poll": poll}))
    assert asked.text == "📊 Коли зручно?\n• ранок\n• вечір"
    rolled = content_of(Message.model_validate({**base, **sender, "dice": {"emoji": "🎯", "value": 6}}))
    assert rolled.text == "🎯 6"


async def test_my_leads_lists_the_most_urgent_and_says_how_many_more(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    """/my listed the 50 newest leads, so a manager with more never saw the most overdue ones."""
    hub = await make_hub(web={"enabled": False})
    now = datetime.now(UTC)
    for number in range(1, 56):
        # The oldest lead is the overdue one; the others came in later, with time to spare.
        received = now - timedelta(hours=5) if number == 1 else now - timedelta(minutes=60 - number)
        inbound = Inbound("webform", f"f-{number}", Identity(IdentityKind.EMAIL, f"c{number}@example.com"),
                          "Допоможіть", received)  # fmt: skip
        result = await hub.intake.accept(inbound, now=received)
        await hub.store.update_lead(result.lead.number, LeadChanges(assignee="olena"))
    olena = hub.settings.manager("olena")
    assert olena is not None
    side = StaffSide(hub, cast(Any, None), cast(Any, None))
    listing = await side.my_leads(olena, now)
    lines = listing.split("\n")
    assert lines[1].startswith("L-1 · нове · перша відповідь -"), lines[:3]
    assert len(lines) == 52 and lines[-1] == "…і ще 5 (усі — у панелі, /dashboard)."


def test_copy_refs_keep_the_file_id_and_older_refs_still_parse() -> None:
    assert parse_copy_ref(copy_ref(-100100, 42, "BQACAgIAAxk-_d")) == (-100100, 42, "BQACAgIAAxk-_d")
    # Stored before the file id was kept: still copied to Telegram, only not fetchable.
    assert parse_copy_ref("tg-copy:-100100:42") == (-100100, 42, "")


async def test_a_staff_file_stored_without_its_file_id_is_unavailable_not_fetched() -> None:
    files = StaffFiles(cast(Any, None), "1:x")  # any Bot API call would fail on None
    with pytest.raises(FileUnavailable) as old:
        await files.fetch(Attachment("a.pdf", "application/pdf", 10, "tg-copy:-1:2"), 1000)
    assert old.value.code == FILE_UNAVAILABLE
    with pytest.raises(FileUnavailable) as big:
        await files.fetch(Attachment("a.pdf", "application/pdf", 21 * 1024 * 1024, "tg-copy:-1:2:F"), 10**9)
    assert big.value.code == FILE_TOO_LARGE
