"""Stopping background tasks, when one cancellation may not be enough."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_until_done(task: asyncio.Task[Any], grace: float | None = None, every: float = 1.0) -> bool:
    """Cancel `task` until it ends: a library's wait_for (aiosmtplib's, aioimaplib's, aiohttp's on
    Python 3.11) can swallow one cancellation. False if it still runs after `grace` seconds."""
    loop = asyncio.get_running_loop()
    deadline = None if grace is None else loop.time() + grace
    while not task.done():
        left = every if deadline is None else min(every, deadline - loop.time())
        if left <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=left)
    return True


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it has ended, then re-raise any error it died of. A cancellation of
    the caller itself propagates (`await task` under suppress(CancelledError) would swallow it)."""
    await cancel_until_done(task)
    if not task.cancelled():
        task.result()
