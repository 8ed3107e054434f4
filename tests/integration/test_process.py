"""`hub run` as a real process: starts on the embedded default, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import HubProcess, free_port
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


async def _logged(hub: HubProcess, text: str, every: float = 0.05) -> None:
    """Wait (bounded) until the hub's log shows `text`."""
    deadline = time.monotonic() + 60
    for _ in iter(lambda: text in hub.log() or time.monotonic() > deadline, True):
        await asyncio.sleep(every)


def _exits(hub: HubProcess, timeout: float = 30.0) -> int:
    """The exit code of a hub that must end on its own (SIGKILL and fail if it hangs)."""
    assert hub.proc is not None
    try:
        return hub.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        hub.kill()
        raise AssertionError(f"the hub hung instead of exiting:\n{hub.log()}") from None


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_a_port_in_use_ends_the_start_with_one_line(tmp_path: Path, event_loop: str) -> None:
    config = base_config(tmp_path)
    config["process"] = {"event_loop": event_loop}
    first = HubProcess(tmp_path, config, name="first")
    second = HubProcess(tmp_path, config, name="second")
    second.port = first.port
    second.config_path.write_text(first.config_path.read_text(encoding="utf-8"), encoding="utf-8")
    try:
        first.start()
        await first.wait_ready()
        second.start()
        # It stops what it started (the store's thread kept the process alive) and exits.
        assert _exits(second) == 1, second.log()
        log = second.log()
        assert f"web: cannot listen on 127.0.0.1:{first.port}: address already in use" in log
        assert "Traceback" not in log and "unexpected error" not in log
    finally:
        second.stop()
        assert first.stop() == 0, first.log()


@pytest.mark.parametrize("path", ["/proc/hub.db", "DIR"])
async def test_an_unusable_sqlite_path_is_one_line_naming_storage_url(tmp_path: Path, path: str) -> None:
    config = base_config(tmp_path)
    path = str(tmp_path) if path == "DIR" else path
    config["storage"] = {"url": f"sqlite:///{path}"}
    hub = HubProcess(tmp_path, config)
    hub.start()
    assert _exits(hub) == 1, hub.log()
    log = hub.log()
    assert f"storage.url sqlite:///{path}: cannot open the store" in log, log
    assert "Traceback" not in log and "Event loop is closed" not in log, log


async def test_an_unreachable_mongodb_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    url = f"mongodb://hub:s3cr3t-pw@127.0.0.1:{free_port()}/hub?serverSelectionTimeoutMS=300"
    config["storage"] = {"url": url}
    hub = HubProcess(tmp_path, config)
    hub.start()
    assert _exits(hub) == 1, hub.log()
    log = hub.log()
    assert "storage.url mongodb://hub:***@127.0.0.1:" in log, log
    assert "cannot open the store" in log and "Traceback" not in log and "s3cr3t-pw" not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_during_the_start_stops_promptly(tmp_path: Path, sig: int) -> None:
    config = base_config(tmp_path)
    # Nothing listens there: the start waits for server selection for a minute.
    config["storage"] = {"url": f"mongodb://127.0.0.1:{free_port()}/hub?serverSelectionTimeoutMS=60000"}
    hub = HubProcess(tmp_path, config)
    hub.start()
    await _logged(hub, "process: ")
    await asyncio.sleep(0.5)
    assert hub.proc is not None
    hub.proc.send_signal(sig)
    assert _exits(hub, timeout=15) == 0, hub.log()
    log = hub.log()
    assert "stopped" in log and "Traceback" not in log and "unexpected error" not in log, log


async def test_a_signal_early_in_the_start_stops_without_a_traceback(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, base_config(tmp_path))
    hub.start()
    await _logged(hub, "process: ", every=0.01)
    assert hub.proc is not None
    hub.proc.send_signal(signal.SIGINT)
    assert _exits(hub) in (0, 130), hub.log()
    assert "Traceback" not in hub.log(), hub.log()


def _open_writer_once_read(fifo: Path) -> int:
    """The write end of `fifo`, opened (bounded wait) as soon as a reader has it open."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def test_sigterm_while_the_config_is_still_being_read_is_a_clean_exit(tmp_path: Path) -> None:
    # A config read from a pipe (`--config <(...)`) or a slow disk: the hub waits in its read,
    # its config not loaded, when the service manager stops it.
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    hub = HubProcess(tmp_path, base_config(tmp_path))
    hub.config_path = fifo
    hub.start()
    writer = _open_writer_once_read(fifo)
    try:
        assert hub.proc is not None
        hub.proc.send_signal(signal.SIGTERM)
        assert _exits(hub) == 128 + signal.SIGTERM, hub.log()
    finally:
        os.close(writer)
    assert hub.log().strip() == "hub: stopped by SIGTERM before it started", hub.log()
