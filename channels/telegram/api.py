"""The Bot API client the channel uses: aiogram's Bot behind the rate limiter, with retries.

Every outbound call goes through `TelegramApi.call`: it waits for a slot of the target
chat, honours 429 `retry_after`, retries 5xx and network errors with jittered backoff,
and translates what remains into the hub's TransientError / PermanentError.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import Response, TelegramMethod

from channels.telegram.ratelimit import TelegramRateLimiter
from hub.delivery_failures import TOO_LARGE, UNREACHABLE
from hub.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A 429 longer than this is not waited out inline: the caller reschedules the work.
MAX_INLINE_RETRY_AFTER = 60.0
NETWORK_ATTEMPTS = 4
#: Seconds one Bot API request may take (aiogram's default is a minute).
REQUEST_TIMEOUT = 20


#: aiogram parametrizes its generic `Response` model on every call, and pydantic caches the
#: parametrized class only weakly: after each garbage collection it is built again (~5 ms of
#: CPU). Holding one per return type keeps that cache warm.
_RESPONSE_TYPES: dict[Any, Any] = {}


def _keep_response_type(method: TelegramMethod[Any]) -> None:
    returning = method.__returning__
    if returning not in _RESPONSE_TYPES:
        _RESPONSE_TYPES[returning] = Response[returning]  # type: ignore[valid-type]


def thread_not_found(exc: Exception) -> bool:
    """True for the Bot API's answer when a forum topic was deleted by hand."""
    text = str(exc).lower()
    return isinstance(exc, TelegramBadRequest) and (
        "thread not found" in text or "topic_deleted" in text or "topic not found" in text
    )


def chat_label(chat_id: int | None) -> str:
    """A chat for the logs: group ids as they are, a customer's private chat redacted."""
    if chat_id is None:
        return "the bot"
    return f"chat {chat_id}" if chat_id < 0 else "a private chat"


def make_bot(token: str, api_base: str) -> Bot:
    """An aiogram Bot talking to `api_base` (Telegram, or a local Bot API server), HTML by default."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base.rstrip("/")))
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode="HTML"))


class TelegramApi:
    """Rate-limited, retrying calls to the Bot API; counts what it did for metrics and benches."""

    def __init__(self, bot: Bot, limiter: TelegramRateLimiter, rng: random.Random | None = None) -> None:
        self.bot = bot
        self.limiter = limiter
        self._rng = rng or random.Random()
        self.calls = 0
        self.retry_afters = 0
        self.closed = False

    async def call(
        self,
        method: TelegramMethod[T],
        chat_id: int | None = None,
        paced: bool = True,
        timeout: int = REQUEST_TIMEOUT,
    ) -> T:
        """Run one Bot API method for `chat_id` within the limits; see the module docstring."""
        network_failures = 0
        _keep_response_type(method)
        while True:
            if self.closed:
                # Stopping: what was not sent stays queued (outbox rows) for the next start.
                raise TransientError(f"Telegram {method.__api_method__}: the hub is stopping")
            slot = await self.limiter.acquire(chat_id) if paced else None
            self.calls += 1
            try:
                if self.closed:
                    # Closed while this call waited for its slot: aiogram would open a new
                    # HTTP session for it, and nothing would ever close that one.
                    raise TransientError(f"Telegram {method.__api_method__}: the hub is stopping")
                return await self.bot(method, request_timeout=timeout)
            except TelegramRetryAfter as exc:
                self.retry_afters += 1
                wait = float(exc.retry_after)
                self.limiter.hold(chat_id, wait)
                log.warning(
                    "telegram %s: 429 for %s, retry after %ss",
                    method.__api_method__,
                    chat_label(chat_id),
                    wait,
                )
                if wait > MAX_INLINE_RETRY_AFTER:
                    raise TransientError(f"Telegram flood control: retry after {wait}s", wait) from exc
            except TelegramEntityTooLarge as exc:
                raise PermanentError(
                    f"Telegram {method.__api_method__}: too large: {exc}", code=TOO_LARGE
                ) from exc
            except (TelegramServerError, TelegramNetworkError) as exc:
                network_failures += 1
                if network_failures >= NETWORK_ATTEMPTS:
                    raise TransientError(
                        f"Telegram {method.__api_method__} failed {network_failures} times: {exc}"
                    ) from exc
                delay = self._rng.uniform(0.25, 0.5) * 2**network_failures
                log.warning(
                    "telegram %s: %s, retry %s in %.1fs",
                    method.__api_method__,
                    exc,
                    network_failures,
                    delay,
                )
                await asyncio.sleep(delay)
            except TelegramForbiddenError as exc:
                # Blocked by the user, a deleted account, or a chat the bot was removed from.
                raise PermanentError(
                    f"Telegram refused {method.__api_method__}: {exc}", code=UNREACHABLE
                ) from exc
            except TelegramUnauthorizedError as exc:
                raise PermanentError(f"Telegram refused {method.__api_method__}: {exc}") from exc
            finally:
                if slot is not None:
                    slot.done()

    async def close(self) -> None:
        """Refuse further calls and close the HTTP session."""
        self.closed = True
        await self.bot.session.close()


def as_dict(value: Any) -> dict[str, Any]:
    """An aiogram object as plain JSON-ready data (what the Bot API sent)."""
    dumped: dict[str, Any] = value.model_dump(mode="json", exclude_none=True, by_alias=True)
    return dumped
