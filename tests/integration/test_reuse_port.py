"""Two hub processes' worth of web servers on one host and port (`web.reuse_port`)."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub, StartError
from hub.config import settings_from_dict
from storage.base import LeadQuery
from tests.support.settings import base_config, deep_merge


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_two_hubs_share_a_port_only_with_reuse_port(tmp_path: Path) -> None:
    port = _free_port()
    shared = deep_merge(base_config(tmp_path), {"web": {"port": port, "reuse_port": True}})
    first, second = Hub(settings_from_dict(shared, env={})), Hub(settings_from_dict(shared, env={}))
    await first.start()
    try:
        await second.start()
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(20):
                    body = {"name": f"Клієнт {i}", "email": f"r{i}@example.com", "message": "Питання"}
                    async with session.post(
                        f"http://127.0.0.1:{port}/forms/contact", json=body, headers={"Connection": "close"}
                    ) as resp:
                        assert resp.status == 201, await resp.text()
            page = await first.store.list_leads(LeadQuery(), limit=100)
            assert len(page.items) == 20
        finally:
            await second.stop()
        # Without the option the port stays taken: a second hub must fail loudly, not share.
        alone = Hub(settings_from_dict(deep_merge(base_config(tmp_path), {"web": {"port": port}}), env={}))
        with pytest.raises(
            StartError, match=f"web: cannot listen on 127.0.0.1:{port}: address already in use"
        ):
            await alone.start()
        await alone.stop()
    finally:
        await first.stop()
