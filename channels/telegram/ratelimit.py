"""Pacing of Bot API calls to Telegram's flood limits, so that 429s are the exception.

Telegram's bot FAQ: about one message per second in one chat, at most 20 messages per
minute in a group, about 30 messages per second overall. A 429 carries `retry_after`;
the chat (or, for global floods, every chat) is then held back for that long.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from hub.config import TelegramLimits

#: Extra spacing between two messages to one chat, for requests overtaking each other.
JITTER = 0.02


class _Mark:
    """When one call counted against a window: from taking the slot until it completed.

    Telegram counts a call when it arrives, somewhere in between; counting it until its
    answer is back keeps us conservative however long the request was on its way.
    """

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class _Window:
    """At most `count` events in any `seconds`-long sliding window."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count = max(count, 1)
        self.seconds = seconds
        self.marks: deque[_Mark] = deque()

    def wait(self, now: float) -> float:
        while self.marks and self.marks[0].at <= now - self.seconds:
            self.marks.popleft()
        if len(self.marks) < self.count:
            return 0.0
        return max(self.marks[0].at + self.seconds - now, 0.001)

    def take(self, mark: _Mark) -> None:
        self.marks.append(mark)


def _window(rate: float, per: float) -> _Window:
    """A window for `rate` events per `per` seconds (fractional rates widen the window)."""
    if rate >= 1:
        return _Window(int(rate), per)
    return _Window(1, per / rate)


class Slot:
    """A taken slot; `done()` when the call's answer is back."""

    def __init__(self, mark: _Mark, clock: Callable[[], float]) -> None:
        self._mark = mark
        self._clock = clock

    def done(self) -> None:
        """The call's answer is back: count the call until now."""
        self._mark.at = max(self._mark.at, self._clock())


class TelegramRateLimiter:
    """`await acquire(chat_id)` returns when one more message to that chat stays within limits."""

    def __init__(self, limits: TelegramLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._global = _window(limits.global_per_second, 1.0)
        self._chats: dict[int, _Window] = {}
        self._groups: dict[int, _Window] = {}
        self._blocked_until: dict[int | None, float] = {}
        self.waited = 0.0

    def _windows(self, chat_id: int | None) -> list[_Window]:
        windows = [self._global]
        if chat_id is None:
            return windows
        if chat_id not in self._chats:
            # "About one message per second" in a chat is a spacing, not a burst allowance.
            self._chats[chat_id] = _Window(1, 1.0 / self._limits.chat_per_second + JITTER)
        windows.append(self._chats[chat_id])
        if chat_id < 0:  # groups and channels have negative ids
            if chat_id not in self._groups:
                self._groups[chat_id] = _window(self._limits.group_per_minute, 60.0)
            windows.append(self._groups[chat_id])
        return windows

    def delay(self, chat_id: int | None) -> float:
        """Seconds until a message to this chat would be allowed (0 = now)."""
        now = self._clock()
        blocked = max(self._blocked_until.get(chat_id, 0.0), self._blocked_until.get(None, 0.0))
        return max([blocked - now, *(w.wait(now) for w in self._windows(chat_id))])

    async def acquire(self, chat_id: int | None) -> Slot:
        """Wait for a free slot for this chat and take it."""
        while True:
            wait = self.delay(chat_id)
            if wait <= 0:
                mark = _Mark(self._clock())
                for window in self._windows(chat_id):
                    window.take(mark)
                return Slot(mark, self._clock)
            self.waited += wait
            await asyncio.sleep(wait)

    async def ready(self, chat_id: int | None) -> None:
        """Wait until a message to this chat would be allowed now, without taking the slot."""
        while (wait := self.delay(chat_id)) > 0:
            self.waited += wait
            await asyncio.sleep(wait)

    def hold(self, chat_id: int | None, seconds: float) -> None:
        """Telegram answered 429 for this chat: send nothing there for `seconds`."""
        until = self._clock() + seconds
        self._blocked_until[chat_id] = max(self._blocked_until.get(chat_id, 0.0), until)
