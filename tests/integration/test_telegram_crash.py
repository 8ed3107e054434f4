"""The hub killed (SIGKILL) between storing a Telegram update and creating its lead loses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.domain import Direction
from storage.sqlite import SqliteStore
from tests.integration.test_telegram import STAFF, customer, telegram_config
from tests.support.process import HubProcess
from tests.support.settings import base_config
from tests.support.telegram_emulator import TelegramEmulator, running_emulator


@pytest.fixture
async def emu() -> AsyncIterator[TelegramEmulator]:
    async with running_emulator(STAFF) as emulator:
        yield emulator


async def test_kill_between_store_and_lead_loses_nothing(tmp_path: Path, emu: TelegramEmulator) -> None:
    config = base_config(tmp_path)
    config["telegram"] = telegram_config(emu)
    del config["telegram"]["alerts_chat_id"]
    holding = HubProcess(tmp_path, config, env={"HUB_TELEGRAM_TEST_HOLD_AFTER_STORE": "60"}, name="first")
    holding.start()
    store = SqliteStore(tmp_path / "hub.db")
    try:
        await holding.wait_ready()
        user = customer()
        update = emu.send_text(user["id"], user, "Please call me back")
        await store.open()

        async def stored() -> bool:
            return bool(await store.inbox_list("pending"))

        await emu.wait_for(stored, timeout=15, what="the raw update in the inbox")
        holding.kill()  # SIGKILL: stored, not yet processed
        assert await store.get_lead(1) is None
        assert emu.topics_in(STAFF) == []

        restarted = HubProcess(tmp_path, config, name="second")
        restarted.start()
        try:
            await restarted.wait_ready()
            topic = (
                await emu.wait_for(lambda: emu.topics_in(STAFF), timeout=20, what="topic after restart")
            )[0]
            texts = await emu.wait_for(lambda: emu.texts_to(STAFF, topic.thread), what="card")
            assert "Please call me back" in texts[0]
            await emu.wait_for(lambda: emu.texts_to(user["id"]), what="ack after restart")
            messages = await store.list_messages(1)
            assert [m.text for m in messages if m.direction == Direction.IN] == ["Please call me back"]
            assert await store.get_lead(2) is None
            # The offset ends past the stored update. (A kill between the batch's commit and the
            # offset's makes the restarted poller ask again; the inbox then keeps one copy.) It
            # polls once the dead holder's lease lapses, maybe after the replay made the lead.
            await emu.wait_for(
                lambda: emu.confirmed_offset == update["update_id"] + 1,
                timeout=15,
                what="the restarted poller to confirm the update",
            )
            assert emu.confirmed_offset == update["update_id"] + 1
        finally:
            restarted.stop()
    finally:
        holding.kill()
        await store.close()
