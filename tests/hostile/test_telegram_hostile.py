"""Telegram hostile input not covered elsewhere: a non-manager pressing the staff buttons or
sending staff commands, and the bot added to a foreign group by a stranger (my_chat_member).

Forged webhook calls (wrong or missing secret token) are in tests/integration/test_telegram.py
(`test_webhook_requires_secret`), a stranger writing in a topic and the bot in an unknown group
in `test_stranger_is_ignored_and_unknown_group_left`.
"""

from __future__ import annotations

import time

from hub.domain import LeadStatus
from tests.integration.test_telegram import STAFF, STRANGER, Env, customer, emu, env, open_lead

__all__ = ["emu", "env"]  # fixtures used by the tests below


async def test_non_manager_buttons_and_commands_change_nothing(env: Env) -> None:
    user = customer()
    thread = await open_lead(env, user)
    before = await env.hub.store.get_lead(1)
    assert before is not None
    card = next(s for s in env.emu.sent_to(STAFF, thread) if s.reply_markup)
    for action in ("take:1", "resolve:1", "spam:1", "assign:1:taras", "reassign:1"):
        env.emu.press(STAFF, STRANGER, card.message_id, action)
    env.emu.send_text(STAFF, STRANGER, "/resolve", thread=thread)
    env.emu.send_text(STAFF, STRANGER, "/away")
    await env.emu.wait_for(lambda: len(env.emu.callback_answers) >= 5, what="every press answered")
    after = await env.hub.store.get_lead(1)
    assert after is not None
    assert (after.status, after.assignee) == (before.status, before.assignee)
    assert after.status != LeadStatus.RESOLVED
    events = await env.hub.store.list_events(1)
    assert not [e for e in events if e.data.get("by") in ("999", str(STRANGER["id"]))], events
    # The customer heard nothing from the stranger's attempts.
    assert all("resolve" not in t.lower() for t in env.emu.texts_to(user["id"]))


async def test_bot_added_to_a_foreign_group_leaves_and_stores_no_lead(env: Env) -> None:
    foreign = -100888
    env.emu.add_group(foreign, forum=False, title="Someone else's group")
    chat = {"id": foreign, "type": "supergroup", "title": "Someone else's group"}
    bot = {"id": int(env.emu.token.split(":")[0]), "is_bot": True, "first_name": "bot"}
    env.emu.enqueue(
        "my_chat_member",
        {
            "chat": chat,
            "from": STRANGER,
            "date": int(time.time()),
            "old_chat_member": {"status": "left", "user": bot},
            "new_chat_member": {"status": "member", "user": bot},
        },
    )
    await env.emu.wait_for(lambda: foreign in env.emu.left_chats, what="the bot leaves the group")
    assert await env.hub.store.get_lead(1) is None
