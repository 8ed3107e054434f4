"""The bytes of a reply's files, fetched where they are kept, for channels that must send them.

An attachment's ref says where its file is (`tg-copy:` a staff message in Telegram, `sha256:`
the email attachment store); the channel that keeps such files registers a fetcher for its
prefix, and a sender that has to carry the bytes itself (SMTP) asks here. A file that cannot be
had raises `FileUnavailable` with a `hub.delivery_failures.FILE_*` code, so the reply can go
out without it and staff be told why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hub.delivery_failures import FILE_UNSUPPORTED
from hub.domain import Attachment
from hub.errors import HubError

#: Fetches one file of at most `limit` bytes; raises FileUnavailable.
FetchFile = Callable[[Attachment, int], Awaitable[bytes]]


class FileUnavailable(HubError):
    """A reply's file cannot be had; `code` is a `hub.delivery_failures.FILE_*` reason."""


class FileSources:
    """Fetchers by ref prefix."""

    def __init__(self) -> None:
        self._fetchers: dict[str, FetchFile] = {}

    def register(self, prefix: str, fetch: FetchFile) -> None:
        """Fetch files whose ref starts with `prefix` with `fetch` (one fetcher per prefix)."""
        if prefix in self._fetchers:
            raise ValueError(f"files: a fetcher for {prefix!r} is registered twice")
        self._fetchers[prefix] = fetch

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        """The file's bytes (at most `limit`); FileUnavailable when it cannot be had."""
        for prefix, fetch in self._fetchers.items():
            if attachment.ref.startswith(prefix):
                return await fetch(attachment, limit)
        raise FileUnavailable(
            f"no source keeps {attachment.name!r} ({attachment.ref!r})", code=FILE_UNSUPPORTED
        )
