"""Faults against a real hub process: SIGKILL right after a 201 loses nothing, and the database
being unavailable for a while gives clear 503s (never a 201 that is then lost), a degraded
/healthz, and full service again afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import HubProcess
from tests.support.settings import API_TOKEN, base_config

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _submission(run: int, i: int) -> tuple[str, dict[str, str]]:
    key = f"kill-{run}-{i:05d}"
    return key, {"name": f"Client {run}/{i}", "email": f"k{run}.{i}@example.com", "message": f"msg {run}/{i}"}


async def _post(http: aiohttp.ClientSession, url: str, key: str, body: dict[str, str]) -> tuple[int, Any]:
    async with http.post(f"{url}/forms/contact", json=body, headers={"Idempotency-Key": key}) as resp:
        payload = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, payload


async def _post_until_killed(
    hub: HubProcess, run: int, kill_after: int, acknowledged: dict[str, tuple[str, dict[str, str]]]
) -> None:
    """Eight clients post until the `kill_after`-th 201 of this run, then SIGKILL the hub at once."""
    killed = asyncio.Event()
    counter = iter(range(10_000))
    acked = 0

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal acked
        while not killed.is_set():
            key, body = _submission(run, next(counter))
            try:
                status, payload = await _post(http, hub.url, key, body)
            except (aiohttp.ClientError, OSError):
                return  # the hub died under this request: it was never acknowledged
            if status == 201:
                acknowledged[key] = (payload["lead"], body)
                acked += 1
                if acked >= kill_after and not killed.is_set():
                    hub.kill()  # SIGKILL now, with other requests still in flight
                    killed.set()

    async with aiohttp.ClientSession() as http:
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(8))), timeout=60)


async def test_sigkill_right_after_a_201_loses_no_acknowledged_lead(tmp_path: Path) -> None:
    config = {**base_config(tmp_path), "log_level": "WARNING"}
    hub = HubProcess(tmp_path, config)
    acknowledged: dict[str, tuple[str, dict[str, str]]] = {}  # key -> (lead ref, body)
    rng = random.Random(7)
    try:
        for run in range(3):
            hub.start()
            await hub.wait_ready()
            kill_after = rng.randint(5, 40)
            await _post_until_killed(hub, run, kill_after, acknowledged)
            assert hub.proc is not None and hub.proc.returncode == -9
        hub.start()
        await hub.wait_ready()
        async with aiohttp.ClientSession() as http:
            for key, (lead, body) in acknowledged.items():
                async with http.get(f"{hub.url}/api/v1/leads/{lead}", headers=AUTH) as resp:
                    assert resp.status == 200, f"{key} was acknowledged as {lead}, now {resp.status}"
                    detail = await resp.json()
                assert [m["text"] for m in detail["messages"]] == [body["message"]]
                assert {"kind": "email", "value": body["email"]} in detail["contact"]["identities"]
                # A client retrying after the crash gets the same lead back, not a copy.
                status, payload = await _post(http, hub.url, key, body)
                assert (status, payload["lead"]) == (200, lead)
            async with http.get(f"{hub.url}/api/v1/leads", params={"limit": "200"}, headers=AUTH) as resp:
                leads = (await resp.json())["items"]
        subjects = [lead["lead"] for lead in leads]
        assert len(subjects) == len(set(subjects))
        assert len(acknowledged) >= 3 * 5
    finally:
        hub.stop()


class _WriteLock:
    """Another connection holding SQLite's write lock: every write of the hub fails meanwhile."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, timeout=10, isolation_level=None)

    def __enter__(self) -> _WriteLock:
        self._conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


async def _health(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/healthz") as resp:
        return resp.status, await resp.json()


async def test_database_unavailable_for_a_while_gives_503_then_recovers(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    config = {**base_config(tmp_path), "log_level": "WARNING"}
    config["storage"] = {"url": f"sqlite:///{db}?busy_timeout=1s"}
    hub = HubProcess(tmp_path, config)
    hub.start()
    try:
        await hub.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            key, body = _submission(0, 0)
            assert (await _post(http, hub.url, key, body))[0] == 201
            refused: dict[str, dict[str, str]] = {}
            with _WriteLock(db):
                for i in range(1, 4):
                    key, body = _submission(0, i)
                    async with http.post(
                        f"{hub.url}/forms/contact", json=body, headers={"Idempotency-Key": key}
                    ) as resp:
                        assert resp.status == 503, await resp.text()
                        error = await resp.json()
                    assert error["error"] == "unavailable" and error["detail"]
                    refused[key] = body
                status, health = await _health(http, hub.url)
                assert (status, health["status"]) == (503, "degraded")
                async with http.post(
                    f"{hub.url}/api/v1/leads", json={"email": "x@example.com", "message": "x"}, headers=AUTH
                ) as resp:
                    assert resp.status == 503
            # Back: health recovers and the refused submissions, retried, land exactly once.
            deadline = time.monotonic() + 15
            while (await _health(http, hub.url))[0] != 200:
                assert time.monotonic() < deadline, "healthz did not recover"
                await asyncio.sleep(0.1)
            leads = {}
            for key, body in refused.items():
                status, payload = await _post(http, hub.url, key, body)
                assert status == 201, payload
                leads[key] = payload["lead"]
                assert (await _post(http, hub.url, key, body))[1]["lead"] == payload["lead"]
            async with http.get(f"{hub.url}/api/v1/leads", params={"limit": "50"}, headers=AUTH) as resp:
                items = (await resp.json())["items"]
            assert len(items) == 1 + len(refused)
            assert len({item["lead"] for item in items}) == len(items)
    finally:
        with contextlib.suppress(Exception):
            hub.stop()


async def test_a_database_file_deleted_under_the_hub_is_degraded_and_refuses_submissions(
    tmp_path: Path,
) -> None:
    hub = HubProcess(tmp_path, base_config(tmp_path))
    hub.start()
    try:
        await hub.wait_ready()
        async with aiohttp.ClientSession() as http:
            form = {"email": "p@example.com", "message": "hi"}
            async with http.post(f"{hub.url}/forms/contact", json=form) as resp:
                assert resp.status == 201
            for suffix in ("", "-wal", "-shm"):
                (tmp_path / f"hub.db{suffix}").unlink(missing_ok=True)
            await asyncio.sleep(1.2)  # the file check is cached for a second
            async with http.get(f"{hub.url}/healthz") as resp:
                assert resp.status == 503, await resp.text()
            # Not acknowledged into a deleted file (lost at the stop): refused, to be retried.
            async with http.post(f"{hub.url}/forms/contact", json=form) as resp:
                assert resp.status == 503, await resp.text()
        assert "the database file was deleted while the hub had it open" in hub.log()
        assert not (tmp_path / "hub.db").exists()  # the health check created no empty file
    finally:
        hub.stop()
