"""Stopping background tasks: a swallowed cancellation, a cancelled caller, a task that died."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from hub.tasks import stop_task


async def _swallows_first_cancel(started: asyncio.Event) -> None:
    started.set()
    # What a library's wait_for race does: the cancellation is lost and the loop goes on.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)
    await asyncio.sleep(60)


async def test_a_task_that_swallows_one_cancellation_is_still_stopped() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_swallows_first_cancel(started))
    await started.wait()
    stopper = asyncio.create_task(stop_task(task))
    done, _ = await asyncio.wait({stopper}, timeout=5)  # stop_task cancels again after 1 s
    assert stopper in done and task.cancelled()
    task.cancel()


async def test_cancelling_the_caller_is_not_swallowed() -> None:
    """The old `task.cancel(); with suppress(CancelledError): await task` swallowed a
    cancellation of the caller (a shutdown cut short) whenever it arrived during the await."""
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await release.wait()  # cleanup that takes a while
                raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()
    release.set()
    async with asyncio.timeout(5):
        await stop_task(task)


async def test_an_error_the_task_died_of_surfaces() -> None:
    async def broken() -> None:
        raise RuntimeError("the loop broke")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="the loop broke"):
        await stop_task(task)
