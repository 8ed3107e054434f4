"""MIME parsing in helper processes: same results as in the hub, and a dead worker costs nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from channels.email.parse_pool import ParsePool, parse_all
from hub.errors import DecodeError

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "email"


def _raws() -> list[bytes]:
    # The whole corpus (broken MIME included), an empty message and plain garbage.
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))] + [b"", b"\x00\xff not mail"]


def _same(left: list[object], right: list[object]) -> bool:
    return [str(x) if isinstance(x, DecodeError) else x for x in left] == [
        str(x) if isinstance(x, DecodeError) else x for x in right
    ]


async def test_workers_parse_exactly_what_the_hub_would() -> None:
    raws = _raws()
    pool = ParsePool(2)
    try:
        parsed = await pool.parse(raws)
    finally:
        await pool.close()
    expected = parse_all(raws)
    assert len(parsed) == len(raws)
    assert any(isinstance(p, DecodeError) for p in parsed)
    assert _same(list(parsed), list(expected))


async def test_a_dead_worker_means_the_hub_parses_that_batch(caplog: pytest.LogCaptureFixture) -> None:
    raws = _raws()
    pool = ParsePool(1)
    try:
        await pool.parse(raws[:2])  # starts the worker
        executor = pool._pool
        assert executor is not None
        for process in list(executor._processes.values()):  # type: ignore[union-attr]
            process.kill()
            process.join(timeout=10)
        with caplog.at_level(logging.WARNING):
            parsed = await pool.parse(raws)
        assert _same(list(parsed), list(parse_all(raws)))
        assert "a parse worker died" in caplog.text
        # The next batch gets a fresh worker.
        assert _same(list(await pool.parse(raws)), list(parse_all(raws)))
        assert pool._pool is not None and pool._pool is not executor
    finally:
        await pool.close()


def test_workers_leave_when_the_hub_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from channels.email.parse_pool import ParsePool

        async def main():
            pool = ParsePool(1)
            await pool.parse([b"From: a@example.com\\r\\n\\r\\nhi"])
            print(*pool._pool._processes, flush=True)
            os._exit(0)  # as after SIGKILL: nothing is shut down

        asyncio.run(main())
        """
    )
    out = tmp_path / "workers.txt"
    with out.open("w") as sink:
        # A file, not a pipe: a worker that stays would hold a pipe open and hang the run.
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=sink,
            timeout=60,
            check=True,
        )
    workers = [int(pid) for pid in out.read_text().split()]
    assert workers
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a parse worker outlived the hub"
