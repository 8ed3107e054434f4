"""A Bot API emulator for tests: the methods the hub uses, on 127.0.0.1, recording every call.

URL shape `/bot<token>/<method>` like api.telegram.org (aiogram sends multipart forms; JSON
bodies work too). It serves queued updates to getUpdates (long polling, confirming by
offset) or POSTs them to the webhook with the secret token, keeps chats, messages and forum
topics, can answer 429 (retry_after) and 5xx on demand, says "message thread not found"
for topics deleted by hand, and can enforce Telegram's flood limits (time scaled down);
with `strict_html` it refuses HTML that Telegram's parser would refuse. Files uploaded with
sendDocument (multipart, `attach://` as aiogram sends them) are kept with their name and bytes,
up to the Bot API's 50 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.telegram_html import html_problems

_STRING_FIELDS = {"text", "caption", "name", "url", "secret_token", "callback_query_id", "data", "parse_mode"}
BOT_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # what the Bot API lets a bot download
SENDING = {"sendMessage", "copyMessage", "createForumTopic", "sendPhoto", "sendDocument"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200


#: The Bot API's limit for a file a bot uploads.
MAX_UPLOAD = 50 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """A file sent in a multipart request."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class Sent:
    chat_id: int
    message_id: int
    text: str
    thread: int | None = None
    method: str = "sendMessage"
    reply_markup: Any = None
    copied_from: tuple[int, int] | None = None
    edits: list[str] = field(default_factory=list)
    caption: str = ""  # of a copy, once edited (the original's caption is not emulated)
    document: Upload | None = None  # sendDocument's file


@dataclass
class Topic:
    chat_id: int
    thread: int
    name: str
    closed: bool = False
    deleted: bool = False


class _Window:
    def __init__(self, count: int, seconds: float) -> None:
        self.count, self.seconds, self.times = count, seconds, deque[float]()

    def check(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        return 0.0 if len(self.times) < self.count else self.times[0] + self.seconds - now


class TelegramEmulator:
    """Start with `await emu.start()`; point the hub's telegram.api_base at `emu.base_url`."""

    def __init__(self, token: str = "123456:TEST-TOKEN", username: str = "hub_test_bot") -> None:
        self.token = token
        self.bot_id = int(token.split(":")[0])
        self.username = username
        self.calls: list[Call] = []
        self.updates: list[dict[str, Any]] = []
        self.confirmed_offset = 0
        self.next_update_id = 1000
        self.chats: dict[int, dict[str, Any]] = {}
        self.sent: list[Sent] = []
        self.topics: dict[tuple[int, int], Topic] = {}
        self.left_chats: list[int] = []
        self.callback_answers: list[dict[str, Any]] = []
        #: Users who blocked the bot: sending to their private chat is a 403, as on Telegram.
        self.blocked: set[int] = set()
        self.webhook_url = ""
        self.webhook_secret = ""
        self.faults: dict[str, deque[tuple[int, float | None, int | None]]] = {}
        self.too_many = 0
        # Off by default: on, HTML that Telegram's parser would refuse is answered with a 400.
        self.strict_html = False
        self.rejected_html: list[str] = []
        #: Files the bot may download, by file_id (see `add_file`); downloads served, by file_path.
        self.files: dict[str, bytes] = {}
        self.downloads: list[str] = []
        self.download_status = 200  # another status fails every download (getFile still answers)
        self.limits: tuple[float, float, float] | None = None  # per chat/s, group/min, global/s
        self._windows: dict[Any, _Window] = {}
        self._msg_ids: dict[int, int] = {}
        self._new_updates = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_UPLOAD + 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("GET", "/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        self._new_updates.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- scenario helpers -------------------------------------------------------------------
    def add_file(self, file_id: str, data: bytes) -> None:
        """Keep a file's bytes under `file_id` for getFile and the download URL."""
        self.files[file_id] = data

    def add_group(self, chat_id: int, forum: bool = True, title: str = "Support") -> None:
        self.chats[chat_id] = {"id": chat_id, "type": "supergroup", "title": title, "is_forum": forum}

    def enforce_limits(
        self, chat_per_second: float, group_per_minute: float, global_per_second: float
    ) -> None:
        """Answer 429 like Telegram when a client exceeds these limits."""
        self.limits = (chat_per_second, group_per_minute, global_per_second)

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: float | None = 1,
        times: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """The next `times` calls of `method` (to `chat_id`, if given) fail with this status."""
        queue = self.faults.setdefault(method, deque())
        for _ in range(times):
            queue.append((status, retry_after, chat_id))

    def delete_topic(self, chat_id: int, thread: int) -> None:
        """Staff deleted a topic by hand."""
        self.topics[(chat_id, thread)].deleted = True

    def _new_message_id(self, chat_id: int) -> int:
        self._msg_ids[chat_id] = self._msg_ids.get(chat_id, 0) + 1
        return self._msg_ids[chat_id]

    def user(
        self, user_id: int, first_name: str = "Customer", language: str = "uk", username: str = ""
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": language,
        }
        if username:
            data["username"] = username
        return data

    def _chat_of(self, chat_id: int, user: dict[str, Any]) -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": user["first_name"]}
        chat = self.chats.get(chat_id, {"id": chat_id, "type": "supergroup", "title": "Other"})
        return {k: v for k, v in chat.items() if k != "is_forum"} | (
            {"is_forum": True} if chat.get("is_forum") else {}
        )

    def message(
        self,
        chat_id: int,
        user: dict[str, Any],
        text: str | None = None,
        thread: int | None = None,
        reply_to: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A message as Telegram would deliver it (gets a fresh message_id in its chat)."""
        message: dict[str, Any] = {
            "message_id": self._new_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chat_of(chat_id, user),
            "from": user,
        }
        if text is not None:
            message["text"] = text
        if thread is not None:
            message["message_thread_id"] = thread
            message["is_topic_message"] = True
        if reply_to is not None:
            message["reply_to_message"] = {
                "message_id": reply_to,
                "date": int(time.time()),
                "chat": self._chat_of(chat_id, user),
            }
        message.update(extra)
        return message

    def enqueue(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Queue one update (`message`, `edited_message`, `callback_query`, ...) for getUpdates."""
        update = {"update_id": self.next_update_id, kind: payload}
        self.next_update_id += 1
        self.updates.append(update)
        self._new_updates.set()
        return update

    def send_text(self, chat_id: int, user: dict[str, Any], text: str, **kw: Any) -> dict[str, Any]:
        """A user writes `text` in a chat (private when chat_id > 0); returns the update."""
        return self.enqueue("message", self.message(chat_id, user, text, **kw))

    def press(self, chat_id: int, user: dict[str, Any], message_id: int, data: str) -> dict[str, Any]:
        """A user presses an inline button with `data` under message `message_id`."""
        message = {"message_id": message_id, "date": int(time.time()), "chat": self._chat_of(chat_id, user)}
        topic = next(
            (s.thread for s in self.sent if s.chat_id == chat_id and s.message_id == message_id), None
        )
        if topic is not None:
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
        query = {
            "id": f"cb{self.next_update_id}",
            "from": user,
            "chat_instance": "ci",
            "message": message,
            "data": data,
        }
        return self.enqueue("callback_query", query)

    async def post_to_webhook(self, update: dict[str, Any], secret: str | None = None) -> int:
        """Deliver one update to the webhook as Telegram does; returns the HTTP status."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {}
        token = self.webhook_secret if secret is None else secret
        if token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = token
        async with self._session.post(self.webhook_url, json=update, headers=headers) as resp:
            return resp.status

    # --- what the hub did --------------------------------------------------------------------
    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def sent_to(self, chat_id: int, thread: int | None = None) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id and (thread is None or s.thread == thread)]

    def texts_to(self, chat_id: int, thread: int | None = None) -> list[str]:
        return [s.text for s in self.sent_to(chat_id, thread)]

    def topics_in(self, chat_id: int) -> list[Topic]:
        return [t for (c, _), t in sorted(self.topics.items()) if c == chat_id]

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """Poll `check` until it returns something truthy (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                methods = [c.method for c in self.calls[-30:]]
                raise AssertionError(f"timed out waiting for {what}; last calls: {methods}")
            await asyncio.sleep(0.02)

    # --- the Bot API -------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        raw: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict):
                    return raw | body
        elif request.can_read_body:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    raw[key] = Upload(value.filename, value.content_type, value.file.read())
                else:
                    raw[key] = value
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _STRING_FIELDS or not isinstance(value, str):
                params[key] = value
                continue
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
        return params

    def _error(self, status: int, description: str, retry_after: float | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return web.json_response(body, status=status)

    def _flood_wait(self, method: str, chat_id: Any) -> float:
        if self.limits is None or method not in SENDING:
            return 0.0
        per_chat, group_per_min, global_per_s = self.limits
        now = time.monotonic()
        keys: list[tuple[Any, int, float]] = [("global", max(1, int(global_per_s)), 1.0)]
        if isinstance(chat_id, int):
            keys.append((("chat", chat_id), 1, 1.0 / per_chat))
            if chat_id < 0:
                keys.append((("group", chat_id), max(1, int(group_per_min)), 60.0))
        waits = []
        for key, count, seconds in keys:
            window = self._windows.setdefault(key, _Window(count, seconds))
            waits.append(window.check(now))
        wait = max(waits)
        if wait <= 0:
            for key, _, _ in keys:
                self._windows[key].times.append(now)
        return wait

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        params = await self._params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        faults = self.faults.get(method)
        if faults and faults[0][2] in (None, params.get("chat_id")):
            status, retry_after, _ = faults.popleft()
            call.status = status
            if status == 429:
                self.too_many += 1
                return self._error(429, f"Too Many Requests: retry after {retry_after}", retry_after)
            return self._error(status, "Internal Server Error")
        wait = self._flood_wait(method, params.get("chat_id"))
        if wait > 0:
            call.status = 429
            self.too_many += 1
            retry = max(1, math.ceil(wait))
            return self._error(429, f"Too Many Requests: retry after {retry}", retry)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, f"Not Found: method {method} is not emulated")
        try:
            result = await handler(params)
        except _ApiError as exc:
            call.status = exc.status
            return self._error(exc.status, exc.description)
        return web.json_response({"ok": True, "result": result})

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Hub", "username": self.username}

    async def _m_getMe(self, params: dict[str, Any]) -> Any:
        return self._bot_user()

    async def _m_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        if offset:
            self.confirmed_offset = max(self.confirmed_offset, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        if not self.updates and timeout > 0:
            self._new_updates.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_updates.wait(), timeout=timeout)
        return self.updates[:limit]

    async def _m_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook_url = str(params.get("url", ""))
        self.webhook_secret = str(params.get("secret_token", ""))
        return True

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook_url = ""
        return True

    def _check_thread(self, chat_id: int, thread: Any) -> int | None:
        if thread is None:
            return None
        topic = self.topics.get((chat_id, int(thread)))
        if topic is None or topic.deleted:
            raise _ApiError(400, "Bad Request: message thread not found")
        return int(thread)

    def _message_result(self, sent: Sent) -> dict[str, Any]:
        result: dict[str, Any] = {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": self._chat_of(sent.chat_id, {"first_name": "Customer"}),
            "from": self._bot_user(),
            "text": sent.text,
        }
        if sent.thread is not None:
            result["message_thread_id"] = sent.thread
            result["is_topic_message"] = True
        return result

    def _check_html(self, params: dict[str, Any]) -> None:
        if self.strict_html and params.get("parse_mode") == "HTML":
            problems = html_problems(str(params.get("text", "")))
            if problems:
                self.rejected_html.append(str(params.get("text", "")))
                raise _ApiError(400, f"Bad Request: can't parse entities: {problems[0]}")

    def _check_blocked(self, chat_id: int) -> None:
        if chat_id in self.blocked:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")

    async def _m_sendMessage(self, params: dict[str, Any]) -> Any:
        self._check_html(params)
        chat_id = int(params["chat_id"])
        self._check_blocked(chat_id)
        thread = self._check_thread(chat_id, params.get("message_thread_id"))
        text = str(params.get("text", ""))
        if not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096 * 2:  # HTML source; entities excluded by Telegram's own count
            raise _ApiError(400, "Bad Request: message is too long")
        sent = Sent(
            chat_id, self._new_message_id(chat_id), text, thread, reply_markup=params.get("reply_markup")
        )
        self.sent.append(sent)
        return self._message_result(sent)

    async def _m_copyMessage(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        self._check_blocked(chat_id)
        thread = self._check_thread(chat_id, params.get("message_thread_id"))
        origin = (int(params["from_chat_id"]), int(params["message_id"]))
        sent = Sent(
            chat_id, self._new_message_id(chat_id), "", thread, method="copyMessage", copied_from=origin
        )
        self.sent.append(sent)
        return {"message_id": sent.message_id}

    async def _m_sendDocument(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        self._check_blocked(chat_id)
        thread = self._check_thread(chat_id, params.get("message_thread_id"))
        document = params.get("document")
        if isinstance(document, str) and document.startswith("attach://"):
            document = params.get(document.removeprefix("attach://"))
        if not isinstance(document, Upload):
            raise _ApiError(400, "Bad Request: there is no document in the request")
        if len(document.data) > MAX_UPLOAD:
            raise _ApiError(413, "Request Entity Too Large")
        sent = Sent(
            chat_id,
            self._new_message_id(chat_id),
            str(params.get("caption", "")),
            thread,
            method="sendDocument",
            document=document,
        )
        self.sent.append(sent)
        result = self._message_result(sent)
        del result["text"]
        if sent.text:
            result["caption"] = sent.text
        result["document"] = {
            "file_id": f"doc{sent.message_id}",
            "file_unique_id": f"udoc{sent.message_id}",
            "file_name": document.filename,
            "mime_type": document.content_type,
            "file_size": len(document.data),
        }
        return result

    async def _m_editMessageCaption(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        message_id = int(params["message_id"])
        caption = str(params.get("caption", ""))
        if self.strict_html and params.get("parse_mode") == "HTML" and html_problems(caption):
            raise _ApiError(400, f"Bad Request: can't parse entities: {html_problems(caption)[0]}")
        if len(caption) > 1024 * 2:
            raise _ApiError(400, "Bad Request: message caption is too long")
        for sent in self.sent:
            if sent.chat_id == chat_id and sent.message_id == message_id:
                if sent.method != "copyMessage":
                    raise _ApiError(400, "Bad Request: there is no caption in the message to edit")
                sent.edits.append(sent.caption)
                sent.caption = caption
                return self._message_result(sent)
        raise _ApiError(400, "Bad Request: message to edit not found")

    async def _m_editMessageText(self, params: dict[str, Any]) -> Any:
        self._check_html(params)
        chat_id = int(params["chat_id"])
        message_id = int(params["message_id"])
        for sent in self.sent:
            if sent.chat_id == chat_id and sent.message_id == message_id:
                if sent.method == "copyMessage":
                    # The hub copies only media (photos, documents, voice...), which have no text.
                    raise _ApiError(400, "Bad Request: there is no text in the message to edit")
                if sent.text == params.get("text") and sent.reply_markup == params.get("reply_markup"):
                    raise _ApiError(400, "Bad Request: message is not modified")
                sent.edits.append(sent.text)
                sent.text = str(params.get("text", ""))
                sent.reply_markup = params.get("reply_markup", sent.reply_markup)
                return self._message_result(sent)
        raise _ApiError(400, "Bad Request: message to edit not found")

    async def _m_createForumTopic(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        if not self.chats.get(chat_id, {}).get("is_forum"):
            raise _ApiError(400, "Bad Request: the chat is not a forum")
        thread = self._new_message_id(chat_id)
        self.topics[(chat_id, thread)] = Topic(chat_id, thread, str(params.get("name", "")))
        return {"message_thread_id": thread, "name": params.get("name", ""), "icon_color": 7322096}

    async def _m_closeForumTopic(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        thread = self._check_thread(chat_id, params.get("message_thread_id"))
        assert thread is not None
        self.topics[(chat_id, thread)].closed = True
        return True

    async def _m_reopenForumTopic(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        thread = self._check_thread(chat_id, params.get("message_thread_id"))
        assert thread is not None
        self.topics[(chat_id, thread)].closed = False
        return True

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        self.callback_answers.append(params)
        return True

    async def _m_getFile(self, params: dict[str, Any]) -> Any:
        file_id = str(params.get("file_id") or "")
        data = self.files.get(file_id)
        if data is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        if len(data) > BOT_DOWNLOAD_LIMIT:
            raise _ApiError(400, "Bad Request: file is too big")
        path = f"documents/file_{list(self.files).index(file_id)}"
        return {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_size": len(data),
            "file_path": path,
        }

    async def _download(self, request: web.Request) -> web.Response:
        """`{base}/file/bot<token>/<file_path>`, as the Bot API serves a getFile path."""
        if request.match_info["token"] != self.token:
            return web.Response(status=401, text="Unauthorized")
        path = request.match_info["path"]
        self.downloads.append(path)
        if self.download_status != 200:
            return web.Response(status=self.download_status, text="Internal Server Error")
        prefix, _, index = path.rpartition("_")
        ids = list(self.files)
        if prefix != "documents/file" or not index.isdigit() or int(index) >= len(ids):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=self.files[ids[int(index)]], content_type="application/octet-stream")

    async def _m_leaveChat(self, params: dict[str, Any]) -> Any:
        self.left_chats.append(int(params["chat_id"]))
        return True


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


@contextlib.asynccontextmanager
async def running_emulator(
    staff_group: int, alerts_chat: int | None = None
) -> AsyncIterator[TelegramEmulator]:
    """A started emulator with a forum staff group (and a plain alerts chat), stopped afterwards."""
    emulator = TelegramEmulator()
    await emulator.start()
    emulator.add_group(staff_group, forum=True)
    if alerts_chat is not None:
        emulator.add_group(alerts_chat, forum=False, title="Alerts")
    try:
        yield emulator
    finally:
        await emulator.stop()
