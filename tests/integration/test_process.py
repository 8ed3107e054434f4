"""`hub run` as a real process: starts on the embedded default, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import HubProcess
from tests.support.settings import base_config


async def _serves_a_form(hub: HubProcess) -> None:
    """Start the process and see it take one submission."""
    hub.start()
    await hub.wait_ready()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{hub.url}/forms/contact", json={"email": "p@example.com", "message": "hi"})
        assert resp.status == 201


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_and_shuts_down_cleanly(tmp_path: Path, sig: int) -> None:
    hub = HubProcess(tmp_path, base_config(tmp_path))
    try:
        await _serves_a_form(hub)
        hub.kill(sig)
        assert hub.proc is not None and hub.proc.returncode == 0, hub.log()
        assert "stopped" in hub.log()
    finally:
        hub.stop()


def _thread_cpus(pid: int) -> set[str]:
    """Cpus_allowed_list of every thread of a process (proc(5))."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_run_on_the_configured_event_loop_and_cpu(tmp_path: Path, event_loop: str) -> None:
    config = base_config(tmp_path)
    config["process"] = {"event_loop": event_loop, "cpus": [0]}
    hub = HubProcess(tmp_path, config)
    try:
        await _serves_a_form(hub)
        assert hub.proc is not None
        # Every thread, the database thread included, stays on CPU 0.
        assert _thread_cpus(hub.proc.pid) == {"0"}
        assert f"process: {event_loop} event loop, CPUs 0" in hub.log()
    finally:
        assert hub.stop() == 0, hub.log()


async def test_a_cpu_the_process_may_not_use_is_a_config_error(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    config["process"] = {"cpus": [4096]}
    hub = HubProcess(tmp_path, config)
    hub.start()
    assert hub.proc is not None
    assert hub.proc.wait(timeout=30) == 2
    assert "process.cpus: CPU 4096 is not available to this process" in hub.log()


async def test_a_stop_right_after_the_start_waits_for_running_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub.app import Hub
    from tests.support.settings import make_settings

    hub = Hub(make_settings(tmp_path))
    started, finished = asyncio.Event(), []

    async def slow_sweep(now: object) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append("sweep")

    monkeypatch.setattr(hub.sweeper, "sweep", slow_sweep)
    await hub.start()
    await asyncio.wait_for(started.wait(), 10)  # the scheduler runs the first sweep at once
    await hub.stop()
    # The stop waited for the sweep (its store is closed after it), and nothing was cancelled
    # under APScheduler, which would log it as an ERROR.
    assert finished == ["sweep"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
