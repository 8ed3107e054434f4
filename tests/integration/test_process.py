"""`hub run` as a real process: starts on the embedded default, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import HubProcess
from tests.support.settings import base_config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_and_shuts_down_cleanly(tmp_path: Path, sig: int) -> None:
    hub = HubProcess(tmp_path, base_config(tmp_path))
    hub.start()
    try:
        await hub.wait_ready()
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{hub.url}/forms/contact", json={"email": "p@example.com", "message": "hi"}
            )
            assert resp.status == 201
        hub.kill(sig)
        assert hub.proc is not None and hub.proc.returncode == 0, hub.log()
        assert "stopped" in hub.log()
    finally:
        hub.stop()
