"""Staff files for channels that cannot copy a Telegram message (email): fetched via the Bot API.

getFile names the file's path on the API server, and the bytes are downloaded from
`{api_base}/file/bot<token>/<path>`, so a local Bot API server (telegram.api_base) serves them too.
"""

from __future__ import annotations

import contextlib
import logging

import aiohttp
from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from aiogram.methods import GetFile

from channels.telegram.api import TelegramApi
from channels.telegram.sender import parse_copy_ref
from hub.delivery_failures import FILE_TOO_LARGE, FILE_UNAVAILABLE
from hub.domain import Attachment
from hub.errors import HubError
from hub.files import FileUnavailable

log = logging.getLogger(__name__)

#: The Bot API lets a bot download files up to 20 MB.
BOT_DOWNLOAD_LIMIT = 20 * 1024 * 1024
DOWNLOAD_TIMEOUT = 60


class StaffFiles:
    """The `tg-copy:` fetcher of `hub.files.FileSources`."""

    def __init__(self, api: TelegramApi, token: str) -> None:
        self._api = api
        self._token = token

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        """The bytes of a staff message's file, at most `limit` (and Telegram's 20 MB)."""
        limit = min(limit, BOT_DOWNLOAD_LIMIT)
        _, _, file_id = parse_copy_ref(attachment.ref)
        if not file_id:
            raise FileUnavailable(f"{attachment.name!r}: stored without its file id", code=FILE_UNAVAILABLE)
        if attachment.size > limit:
            raise FileUnavailable(f"{attachment.name!r}: {attachment.size} bytes", code=FILE_TOO_LARGE)
        try:
            file = await self._api.call(GetFile(file_id=file_id), paced=False)
        except TelegramAPIError as exc:
            code = FILE_TOO_LARGE if "too big" in exc.message.lower() else FILE_UNAVAILABLE
            raise FileUnavailable(f"{attachment.name!r}: getFile: {exc.message}", code=code) from exc
        except (HubError, ClientDecodeError) as exc:
            raise FileUnavailable(f"{attachment.name!r}: getFile: {exc}", code=FILE_UNAVAILABLE) from exc
        if file.file_size is not None and file.file_size > limit:
            raise FileUnavailable(f"{attachment.name!r}: {file.file_size} bytes", code=FILE_TOO_LARGE)
        if not file.file_path:
            raise FileUnavailable(f"{attachment.name!r}: getFile named no path", code=FILE_UNAVAILABLE)
        session = self._api.bot.session
        url = session.api.file_url(self._token, file.file_path)
        data = bytearray()
        try:
            async with contextlib.aclosing(session.stream_content(url, timeout=DOWNLOAD_TIMEOUT)) as chunks:
                async for chunk in chunks:
                    data.extend(chunk)
                    if len(data) > limit:
                        raise FileUnavailable(f"{attachment.name!r}: over {limit} bytes", code=FILE_TOO_LARGE)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The URL holds the bot token: name the error, never the URL.
            raise FileUnavailable(
                f"{attachment.name!r}: download failed: {type(exc).__name__}", code=FILE_UNAVAILABLE
            ) from exc
        log.info("telegram: fetched a staff file of %s bytes for another channel", len(data))
        return bytes(data)
