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

# Windows are stretched a little: the server sees our requests later than we time them,
# and jitter in between must not push two sends into one of its windows.
SAFETY = 1.03


class _Window:
    """At most `count` events in any `seconds`-long sliding window."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count = max(count, 1)
        self.seconds = seconds * SAFETY
        self.times: deque[float] = deque()

    def wait(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        if len(self.times) < self.count:
            return 0.0
        return self.times[0] + self.seconds - now

    def take(self, now: float) -> None:
        self.times.append(now)


def _window(rate: float, per: float) -> _Window:
    """A window for `rate` events per `per` seconds (fractional rates widen the window)."""
    if rate >= 1:
        return _Window(int(rate), per)
    return _Window(1, per / rate)


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
            self._chats[chat_id] = _window(self._limits.chat_per_second, 1.0)
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

    async def acquire(self, chat_id: int | None) -> None:
        """Wait for a free slot for this chat and take it."""
        while True:
            wait = self.delay(chat_id)
            if wait <= 0:
                now = self._clock()
                for window in self._windows(chat_id):
                    window.take(now)
                return
            self.waited += wait
            await asyncio.sleep(wait)

    def hold(self, chat_id: int | None, seconds: float) -> None:
        """Telegram answered 429 for this chat: send nothing there for `seconds`."""
        until = self._clock() + seconds
        self._blocked_until[chat_id] = max(self._blocked_until.get(chat_id, 0.0), until)
